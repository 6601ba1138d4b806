"""Semantic segmentation answers from a SegFormer engine's logits, as transformers makes them.

    maps = post_process_semantic_segmentation(logits, [(h, w), ...])   # label id per pixel, per image
    segments(maps[0], labels)     # [{"id", "label", "pixels", "share"}] per label present, by id
    draw_segmentation(photo, maps[0], labels) -> PIL image: coloured mask over the photo, a legend

`post_process_semantic_segmentation` is SegformerImageProcessor's: each image's logits
(L, H / 4, W / 4) resized bilinearly (align_corners=False) to the image's own size, then the
argmax over labels (the first label wins a tie). The resize is torch's, the op transformers
calls, so the upsampled scores and the labels are exactly transformers' on the same logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputValueError


def upsampled_scores(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One image's logits (L, h, w) resized bilinearly to (L, H, W)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))[None]
    with torch.inference_mode():
        return F.interpolate(x, size=tuple(int(v) for v in size), mode="bilinear", align_corners=False)[0].numpy()


def post_process_semantic_segmentation(
    logits: np.ndarray, target_sizes: Sequence[tuple[int, int]] | None = None
) -> list[np.ndarray]:
    """Logits (B, L, h, w) -> per image an int64 (H, W) map of label ids at its target size
    (target_sizes: (height, width) per image; None keeps the logits' grid)."""
    logits = np.asarray(logits)
    if logits.ndim != 4:
        raise InputValueError(f"logits of shape {list(logits.shape)}: expected (batch, labels, height, width)")
    if target_sizes is None:
        return [m.astype(np.int64) for m in logits.argmax(1)]
    if len(target_sizes) != len(logits):
        raise InputValueError(f"{len(target_sizes)} target sizes for {len(logits)} images: expected one per image")
    import torch

    out = []
    for row, size in zip(logits, target_sizes):
        scores = torch.from_numpy(upsampled_scores(row, size))
        out.append(scores.argmax(0).numpy().astype(np.int64))  # torch's argmax: transformers' tie rule
    return out


def segments(label_map: np.ndarray, labels: Sequence[str]) -> list[dict]:
    """The labels present in a map, by id (transformers' pipeline lists them in this order):
    [{"id", "label", "pixels", "share"}], share = the fraction of the image's pixels."""
    ids, counts = np.unique(label_map, return_counts=True)
    total = int(label_map.size)
    return [
        {"id": int(i), "label": labels[int(i)], "pixels": int(n), "share": int(n) / total} for i, n in zip(ids, counts)
    ]


# --- the picture -----------------------------------------------------------------------------------


def label_colours(count: int) -> np.ndarray:
    """A distinct RGB colour per label id (count, 3) uint8: hues spaced by the golden angle, two
    alternating brightness levels so that neighbouring ids differ in lightness too."""
    import colorsys

    out = np.zeros((max(count, 1), 3), np.uint8)
    for i in range(count):
        h = (i * 0.618033988749895) % 1.0
        s, v = (0.75, 0.95) if i % 2 == 0 else (0.9, 0.7)
        out[i] = [round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v)]
    return out


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def draw_segmentation(
    image, label_map: np.ndarray, labels: Sequence[str], alpha: float = 0.5, max_legend: int = 12
):  # -> PIL.Image.Image
    """The photo (a PIL RGB image of the map's size) with each label's pixels tinted by its
    colour (`alpha` of the colour), and a legend of the labels present (the largest
    `max_legend`, then how many more) in the top-left corner. The picture is the photo's size."""
    from PIL import Image, ImageDraw

    photo = np.asarray(image.convert("RGB"), dtype=np.float32)
    if photo.shape[:2] != label_map.shape:
        raise InputValueError(
            f"a {photo.shape[1]}x{photo.shape[0]} photo and a {label_map.shape[1]}x"
            f"{label_map.shape[0]} label map: expected the same size"
        )
    colours = label_colours(len(labels))
    tint = colours[label_map].astype(np.float32)
    blended = (photo * (1 - alpha) + tint * alpha).round().clip(0, 255).astype(np.uint8)
    out = Image.fromarray(blended)

    found = sorted(segments(label_map, labels), key=lambda s: -s["pixels"])
    shown, rest = found[:max_legend], len(found) - max_legend
    size = max(10, min(16, out.height // 30))
    font, pad, swatch = _font(size), 4, size
    rows = [f"{s['label']} {100 * s['share']:.1f}%" for s in shown] + ([f"+{rest} more"] if rest > 0 else [])
    overlay = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    width = max(draw.textlength(r, font=font) for r in rows) + swatch + 3 * pad
    height = len(rows) * (size + pad) + pad
    draw.rectangle([0, 0, width, height], fill=(0, 0, 0, 160))
    for k, row in enumerate(rows):
        y = pad + k * (size + pad)
        if k < len(shown):
            draw.rectangle([pad, y, pad + swatch, y + swatch], fill=tuple(int(c) for c in colours[shown[k]["id"]]))
        draw.text((2 * pad + swatch, y), row, fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(out.convert("RGBA"), overlay).convert("RGB")
