"""Depth-estimation answers from a GLPN engine's predicted_depth, as transformers makes them.

    depths = post_process_depth_estimation(predicted_depth, [(h, w), ...])  # float32 (H, W) per image
    depth_image(depths[0])       # the pipeline's 0-255 picture (uint8)
    draw_depth(depths[0]) -> PIL image: the depth colour-mapped, with a scale bar in metres

`post_process_depth_estimation` is GLPNImageProcessor's: each image's depth (h, w) resized
bicubically (align_corners=False) to the image's own size. The resize is torch's, the op
transformers calls, so the values are exactly transformers' on the same depth.
`depth_image` is the depth-estimation pipeline's picture: min-max scaled to 0-255 in float32
and truncated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..deploy import depth_image
from ..errors import InputValueError

__all__ = ["depth_image", "draw_depth", "post_process_depth_estimation"]


def post_process_depth_estimation(
    predicted_depth: np.ndarray, target_sizes: Sequence[tuple[int, int]] | None = None
) -> list[np.ndarray]:
    """predicted_depth (B, h, w) -> per image a float32 (H, W) depth at its target size
    (target_sizes: (height, width) per image; None keeps the model's grid)."""
    import torch
    import torch.nn.functional as F

    depth = np.asarray(predicted_depth)
    if depth.ndim != 3:
        raise InputValueError(f"predicted_depth of shape {list(depth.shape)}: expected (batch, height, width)")
    if target_sizes is None:
        return [np.array(d, dtype=np.float32) for d in depth]
    if len(target_sizes) != len(depth):
        raise InputValueError(f"{len(target_sizes)} target sizes for {len(depth)} images: expected one per image")
    out = []
    with torch.inference_mode():
        for d, size in zip(depth, target_sizes):
            x = torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32))[None, None]
            y = F.interpolate(x, size=tuple(int(v) for v in size), mode="bicubic", align_corners=False)
            out.append(y[0, 0].numpy())
    return out


# --- the picture -----------------------------------------------------------------------------------

# kiln's own colour ramp, near to far: pale yellow, orange, red, purple, deep blue-black (the
# near scene bright, as the eye reads a depth map)
_RAMP = np.array(
    [[255, 250, 200], [253, 190, 90], [238, 110, 50], [190, 40, 80], [110, 20, 120], [40, 10, 90], [5, 5, 30]],
    dtype=np.float32,
)


def colour_ramp(t: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (0 near, 1 far) -> RGB uint8 along kiln's depth ramp."""
    t = np.clip(np.nan_to_num(np.asarray(t, dtype=np.float32)), 0.0, 1.0) * (len(_RAMP) - 1)
    i = np.minimum(t.astype(np.int64), len(_RAMP) - 2)
    f = (t - i)[..., None]
    return (_RAMP[i] * (1 - f) + _RAMP[i + 1] * f).round().astype(np.uint8)


def draw_depth(depth: np.ndarray, unit: str = "m"):  # -> PIL.Image.Image
    """A depth map (H, W) colour-mapped (near bright, far dark) over its own range, with a scale
    bar (the ramp, its two ends in `unit`) in the bottom-left corner. The picture is (W, H)."""
    from PIL import Image, ImageDraw

    from .segmentation import _font

    d = np.asarray(depth, dtype=np.float32)
    lo, hi = float(d.min()), float(d.max())
    t = (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)
    out = Image.fromarray(colour_ramp(t)).convert("RGBA")
    size = max(10, min(16, out.height // 30))
    font, pad = _font(size), 4
    bar_w, bar_h = max(40, min(160, out.width // 3)), max(6, size // 2)
    labels = (f"{lo:.2f} {unit}", f"{hi:.2f} {unit}")
    overlay = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    text_w = draw.textlength(labels[1], font=font)
    box_w = bar_w + 2 * pad + max(0.0, text_w - bar_w / 2)
    box_h = bar_h + size + 3 * pad
    top = out.height - box_h
    draw.rectangle([0, top, box_w, out.height], fill=(0, 0, 0, 160))
    ramp = colour_ramp(np.linspace(0, 1, bar_w))[None].repeat(bar_h, 0)
    overlay.paste(Image.fromarray(ramp).convert("RGBA"), (pad, int(top + pad)))
    draw.text((pad, top + 2 * pad + bar_h), labels[0], fill=(255, 255, 255, 255), font=font)
    draw.text((pad + bar_w - text_w / 2, top + 2 * pad + bar_h), labels[1], fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(out, overlay).convert("RGB")
