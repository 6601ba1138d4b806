"""Object detection's pre- and post-processing, as transformers' DetrImageProcessor (PIL
backend) does it, driven by a checkpoint's preprocessor_config.json.

    proc = DetrImageProcessor.from_dir("engines/detr-object-detection")
    batch = proc(["street.jpg", pil_image, uint8_hwc_array])
    batch.pixel_values  # float32 [B, 3, H, W]: each image resized, rescaled, normalised, padded
    batch.pixel_mask    # int64 [B, H, W]: 1 on the image, 0 on the padding
    batch.sizes         # [(height, width)] of the original images: post-processing's target sizes
    results = post_process_object_detection(logits, pred_boxes, threshold=0.5, target_sizes=batch.sizes)
    answers = [detections(r, labels) for r in results]  # [{"score", "label", "box": {xmin, ...}}]

Pre-processing, per image: decode to RGB, resize with Pillow so that the shortest edge is
`shortest_edge` unless the longest would then pass `longest_edge` (sizes exactly as
transformers computes them, int() truncation and round() included), rescale (uint8 * factor in
float64, then float32), normalise ((x - mean) / std in float32); then the batch is padded with
zeros at the bottom and right to its largest height and largest width, and the pixel mask marks
each image's own pixels.

Post-processing is transformers' post_process_object_detection, computed with the same torch
operations in the same order so that the same raw outputs give the same floats: softmax over the
classes, the best class but the last ("no object"), boxes (cx, cy, w, h) -> (x0, y0, x1, y1) times
each image's (width, height), and the queries whose score is above the threshold, in query order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputValueError, InvalidArgumentError
from . import PREPROCESSOR_FILE, read_preprocessor_config
from .image import load_image, rgb_values

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
_RESAMPLE = (0, 1, 2, 3, 4, 5)  # PIL.Image.Resampling values, as preprocessor_config.json stores them
_KINDS = ("DetrImageProcessor", "DetrFeatureExtractor")


def size_with_aspect_ratio(height: int, width: int, shortest: int, longest: int | None) -> tuple[int, int]:
    """(height, width) after a resize to `shortest` on the shortest edge, or smaller so that the
    longest edge stays within `longest`: transformers' get_size_with_aspect_ratio, arithmetic
    included (a longest-edge bound rounds the new short edge; the long edge is truncated)."""
    size, raw = shortest, None
    if longest is not None:
        lo, hi = float(min(height, width)), float(max(height, width))
        if hi / lo * size > longest:
            raw = longest * lo / hi
            size = int(round(raw))
    if (height <= width and height == size) or (width <= height and width == size):
        return height, width
    if width < height:
        return (int(raw * height / width) if raw is not None else int(size * height / width)), size
    return size, (int(raw * width / height) if raw is not None else int(size * width / height))


@dataclass
class DetectionBatch:
    pixel_values: np.ndarray  # float32 [B, 3, H, W]
    pixel_mask: np.ndarray  # int64 [B, H, W]
    sizes: list[tuple[int, int]]  # the original images' (height, width)
    resized: list[tuple[int, int]]  # each image's (height, width) inside the padded batch

    def feed(self) -> dict[str, np.ndarray]:
        return {"pixel_values": self.pixel_values, "pixel_mask": self.pixel_mask}


@dataclass
class DetrImageProcessor:
    size: dict[str, int] = field(default_factory=lambda: {"shortest_edge": 800, "longest_edge": 1333})
    resample: int = 2
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    image_std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    do_pad: bool = True
    pad_size: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.resample not in _RESAMPLE:
            raise InvalidArgumentError(
                f"resample={self.resample!r}: expected one of {list(_RESAMPLE)} (PIL.Image.Resampling)"
            )
        keys = set(self.size)
        if not (
            {"shortest_edge", "longest_edge"} <= keys
            or {"height", "width"} <= keys
            or {"max_height", "max_width"} <= keys
        ):
            raise InvalidArgumentError(
                f"size={self.size}: expected {{shortest_edge, longest_edge}}, {{height, width}} "
                "or {max_height, max_width}"
            )
        if self.pad_size is not None and not {"height", "width"} <= set(self.pad_size):
            raise InvalidArgumentError(f"pad_size={self.pad_size}: expected {{height, width}}")
        for name in ("image_mean", "image_std"):
            setattr(self, name, rgb_values(name, getattr(self, name)))

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetrImageProcessor:
        """From a preprocessor_config.json dict, the legacy forms included (DetrFeatureExtractor,
        `size: 800` with `max_size: 1333`)."""
        kind = str(d.get("image_processor_type", d.get("feature_extractor_type", "DetrImageProcessor")))
        kind = kind.removesuffix("Pil").removesuffix("Fast")
        if kind not in _KINDS:
            raise InvalidArgumentError(f"image_processor_type={kind!r}: expected a DetrImageProcessor configuration")
        d = {k: v for k, v in d.items() if v is not None}
        size = d.get("size")
        if size is None:
            size = {"shortest_edge": 800, "longest_edge": 1333}
        elif isinstance(size, int):  # legacy: the shortest edge, with max_size the longest (transformers' 1333)
            size = {"shortest_edge": size, "longest_edge": int(d.get("max_size", 1333))}
        elif not isinstance(size, dict):
            raise InvalidArgumentError(f"size={size!r}: expected an int or a dict")
        if "do_pad" not in d and "pad_and_return_pixel_mask" in d:
            d["do_pad"] = d["pad_and_return_pixel_mask"]
        names = set(cls.__dataclass_fields__) - {"size"}
        return cls(size={k: int(v) for k, v in size.items()}, **{k: d[k] for k in names if k in d})

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> DetrImageProcessor:
        data = read_preprocessor_config(
            path,
            "a DETR checkpoint or engine directory carries one (transformers writes it with "
            "image_processor.save_pretrained)",
        )
        try:
            return cls.from_dict(data)
        except InvalidArgumentError as e:
            raise InvalidArgumentError(f"{Path(path) / PREPROCESSOR_FILE}: {e}") from None

    # --- processing ------------------------------------------------------------------------

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) an image of this size is resized to."""
        if not self.do_resize:
            return height, width
        s = self.size
        if "shortest_edge" in s and "longest_edge" in s:
            return size_with_aspect_ratio(height, width, s["shortest_edge"], s["longest_edge"])
        if "max_height" in s and "max_width" in s:  # transformers' get_image_size_for_max_height_width
            scale = min(s["max_height"] / height, s["max_width"] / width)
            return int(height * scale), int(width * scale)
        return s["height"], s["width"]

    def process_one(self, image: Any) -> np.ndarray:
        """An RGB PIL image -> float32 [3, h, w], resized, rescaled and normalised."""
        h, w = self.output_size(image.height, image.width)
        if (h, w) != (image.height, image.width):
            if h < 1 or w < 1:
                raise InputValueError(
                    f"a {image.width}x{image.height} image resizes to {w}x{h}: too thin to detect anything in"
                )
            image = image.resize((w, h), resample=self.resample)
        x = np.asarray(image)  # (h, w, 3) uint8
        if self.do_rescale:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if self.do_normalize:
            x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)

    def __call__(self, images: Any, min_size: tuple[int, int] = (1, 1)) -> DetectionBatch:
        """Images (paths, encoded bytes, PIL images, HxWxC uint8 arrays) -> a padded batch, at
        least `min_size` (height, width): an engine's smallest accepted size, reached by padding,
        which the pixel mask tells the model to ignore."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise InputValueError(
                "no image given; expected one or more images (paths, bytes, PIL images or HxWxC uint8 arrays)"
            )
        loaded = [load_image(img, i) for i, img in enumerate(images)]
        sizes = [(img.height, img.width) for img in loaded]
        processed = [self.process_one(img) for img in loaded]
        resized = [(p.shape[1], p.shape[2]) for p in processed]
        if not self.do_pad and len(set(resized)) > 1:
            raise InvalidArgumentError(
                f"processed images have different sizes {sorted(set(resized))} and do_pad is false: "
                "a batch needs padding (do_pad) or one image per call"
            )
        if self.pad_size is not None:
            height, width = self.pad_size["height"], self.pad_size["width"]
            if any(h > height or w > width for h, w in resized):
                raise InputValueError(f"an image resized to {resized} exceeds pad_size {self.pad_size}")
        else:
            height, width = max(h for h, _ in resized), max(w for _, w in resized)
        height, width = max(height, min_size[0]), max(width, min_size[1])
        pixels = np.zeros((len(processed), 3, height, width), np.float32)
        mask = np.zeros((len(processed), height, width), np.int64)
        for i, (p, (h, w)) in enumerate(zip(processed, resized)):
            pixels[i, :, :h, :w] = p
            mask[i, :h, :w] = 1
        return DetectionBatch(pixels, mask, sizes, resized)


# --- post-processing ------------------------------------------------------------------------


def post_process_object_detection(
    logits: Any, pred_boxes: Any, threshold: float = 0.5, target_sizes: Sequence[tuple[int, int]] | None = None
) -> list[dict[str, np.ndarray]]:
    """[B, Q, L + 1] logits and [B, Q, 4] boxes (cx, cy, w, h, relative) -> per image
    {"scores": float32 [N], "labels": int64 [N], "boxes": float32 [N, 4] (x0, y0, x1, y1)} for the
    N queries scoring above `threshold`, in query order; boxes in pixels of each target size
    (height, width), relative without one. transformers' function, op for op."""
    import torch

    out_logits = torch.as_tensor(np.asarray(logits, np.float32))
    out_bbox = torch.as_tensor(np.asarray(pred_boxes, np.float32))
    if out_logits.ndim != 3 or out_bbox.shape != (*out_logits.shape[:2], 4):
        raise InvalidArgumentError(
            f"logits {list(out_logits.shape)} and pred_boxes {list(out_bbox.shape)}: "
            "expected [B, Q, L + 1] and [B, Q, 4]"
        )
    if target_sizes is not None and len(target_sizes) != len(out_logits):
        raise InvalidArgumentError(f"{len(target_sizes)} target sizes for a batch of {len(out_logits)}")
    prob = torch.nn.functional.softmax(out_logits, -1)
    scores, labels = prob[..., :-1].max(-1)
    cx, cy, w, h = out_bbox.unbind(-1)
    boxes = torch.stack([(cx - 0.5 * w), (cy - 0.5 * h), (cx + 0.5 * w), (cy + 0.5 * h)], dim=-1)
    if target_sizes is not None:
        img_h = torch.Tensor([s[0] for s in target_sizes])
        img_w = torch.Tensor([s[1] for s in target_sizes])
        boxes = boxes * torch.stack([img_w, img_h, img_w, img_h], dim=1)[:, None, :]
    results = []
    for s, lab, b in zip(scores, labels, boxes):
        keep = s > threshold
        results.append({"scores": s[keep].numpy(), "labels": lab[keep].numpy(), "boxes": b[keep].numpy()})
    return results


def detections(result: dict[str, np.ndarray], labels: Sequence[str]) -> list[dict[str, Any]]:
    """One image's post-processed result as transformers' object-detection pipeline answers:
    [{"score": float, "label": str, "box": {"xmin", "ymin", "xmax", "ymax"}}], the box in whole
    pixels truncated toward zero (as the pipeline's box.int())."""
    out = []
    for score, label, box in zip(result["scores"].tolist(), result["labels"].tolist(), result["boxes"]):
        xmin, ymin, xmax, ymax = np.trunc(box).astype(np.int64).tolist()
        out.append(
            {
                "score": score,
                "label": labels[label] if 0 <= label < len(labels) else f"LABEL_{label}",
                "box": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax},
            }
        )
    return out


def draw_detections(image: Any, answers: Sequence[dict[str, Any]]) -> Any:
    """A copy of the RGB PIL image with each detection's box, label and score drawn on it."""
    from PIL import ImageDraw, ImageFont

    out = image.copy()
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(out.size) / 400))
    font = ImageFont.load_default(size=max(12, round(max(out.size) / 50)))
    palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]
    for i, a in enumerate(answers):
        b = a["box"]
        color = palette[i % len(palette)]
        draw.rectangle([b["xmin"], b["ymin"], b["xmax"], b["ymax"]], outline=color, width=width)
        text = f"{a['label']} {a['score']:.2f}"
        left, top, right, bottom = draw.textbbox((b["xmin"], b["ymin"]), text, font=font)
        y = b["ymin"] - (bottom - top) - 2 * width if b["ymin"] - (bottom - top) - 2 * width >= 0 else b["ymin"]
        left, top, right, bottom = draw.textbbox((b["xmin"] + width, y), text, font=font)
        draw.rectangle([left - width, top - width, right + width, bottom + width], fill=color)
        draw.text((b["xmin"] + width, y), text, fill=(255, 255, 255), font=font)
    return out


__all__ = [
    "DetectionBatch",
    "DetrImageProcessor",
    "detections",
    "draw_detections",
    "post_process_object_detection",
    "size_with_aspect_ratio",
]
