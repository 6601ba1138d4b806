"""Image pre-processing driven by a checkpoint's preprocessor_config.json.

    proc = ImageProcessor.from_dir("engines/vit-image-classification")
    pixel_values = proc(["cat.jpg", jpeg_bytes, pil_image, uint8_hwc_array])  # float32 [B, 3, H, W]

The steps and their order are those of transformers' ViTImageProcessor and
ConvNextImageProcessor (PIL backend): decode, convert to RGB (transparency composited onto
white), resize with Pillow and the configured resample filter, center crop, rescale
(uint8 * rescale_factor in float64, then float32), normalise ((x - mean) / std in float32).
ConvNeXT's resize: when size.shortest_edge < 384, the shortest edge goes to
int(shortest_edge / crop_pct) (aspect kept) and a shortest_edge square is center-cropped;
otherwise the image is warped to shortest_edge x shortest_edge.
SegformerImageProcessor: a resize to size (512 x 512 for ADE20K), rescale, normalise with the
ImageNet mean and std. GLPNImageProcessor (size_divisor): height and width each rounded down to
a multiple of size_divisor (32) and resized to that, rescaled, not normalised, so the images of
a batch may differ in size (`processed_size` says which size an image gets).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputValueError, InvalidArgumentError
from . import PREPROCESSOR_FILE, read_preprocessor_config

IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

# PIL.Image.Resampling values, as preprocessor_config.json stores them
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

# Per image_processor_type: what transformers assumes for keys a config leaves out
_DEFAULTS: dict[str, dict[str, Any]] = {
    "ViTImageProcessor": {"size": {"height": 224, "width": 224}, "resample": 2},
    "ConvNextImageProcessor": {"size": {"shortest_edge": 384}, "resample": 3, "crop_pct": 224 / 256},
    "SegformerImageProcessor": {
        "size": {"height": 512, "width": 512},
        "resample": 2,
        "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_std": IMAGENET_DEFAULT_STD,
    },
    "GLPNImageProcessor": {"size_divisor": 32, "resample": 2, "do_normalize": False},
    # Mask2Former: kiln's engines take one static size, so its configs give {height, width}
    "Mask2FormerImageProcessor": {
        "resample": 2,
        "image_mean": IMAGENET_DEFAULT_MEAN,
        "image_std": IMAGENET_DEFAULT_STD,
    },
}


def rgb_values(name: str, value: Any) -> tuple[float, ...]:
    """A processor's image_mean / image_std: one number for all three channels, or three (R, G, B)."""
    rgb = (float(value),) * 3 if isinstance(value, (int, float)) else tuple(map(float, value))
    if len(rgb) != 3:
        raise InvalidArgumentError(f"{name}={rgb}: expected 3 values (R, G, B)")
    return rgb


@dataclass
class ImageProcessor:
    size: dict[str, int] = field(default_factory=lambda: {"height": 224, "width": 224})
    resample: int = 2
    do_resize: bool = True
    do_center_crop: bool = False
    crop_size: dict[str, int] | None = None
    crop_pct: float | None = None  # ConvNeXT's resize rule (see the module docstring)
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = IMAGENET_STANDARD_MEAN
    image_std: tuple[float, ...] = IMAGENET_STANDARD_STD
    # GLPN: resize each side down to a multiple of this (size is not used); None: resize to size
    size_divisor: int | None = None

    def __post_init__(self) -> None:
        if self.size_divisor is not None and (
            isinstance(self.size_divisor, bool) or not isinstance(self.size_divisor, int) or self.size_divisor < 1
        ):
            raise InvalidArgumentError(f"size_divisor={self.size_divisor!r}: expected a positive integer")
        if self.resample not in _RESAMPLE_NAMES:
            raise InvalidArgumentError(
                f"resample={self.resample!r}: expected one of {sorted(_RESAMPLE_NAMES)} (PIL.Image.Resampling)"
            )
        if not ({"height", "width"} <= set(self.size) or "shortest_edge" in self.size):
            raise InvalidArgumentError(f"size={self.size}: expected {{height, width}} or {{shortest_edge}}")
        if self.do_center_crop and not (self.crop_size and {"height", "width"} <= set(self.crop_size)):
            raise InvalidArgumentError(f"crop_size={self.crop_size}: expected {{height, width}}")
        for name in ("image_mean", "image_std"):
            setattr(self, name, rgb_values(name, getattr(self, name)))

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageProcessor:
        kind = str(d.get("image_processor_type", d.get("feature_extractor_type", "ViTImageProcessor")))
        kind = kind.removesuffix("Pil").removesuffix("Fast").replace("FeatureExtractor", "ImageProcessor")
        d = {**_DEFAULTS.get(kind, {}), **{k: v for k, v in d.items() if v is not None}}
        size = d.get("size", {"height": 224, "width": 224})
        if isinstance(size, int):  # legacy configs: an int is a square (ViT) or the shortest edge (ConvNeXT)
            size = {"shortest_edge": size} if kind == "ConvNextImageProcessor" else {"height": size, "width": size}
        crop_size = d.get("crop_size")
        if isinstance(crop_size, int):
            crop_size = {"height": crop_size, "width": crop_size}
        names = set(cls.__dataclass_fields__) - {"size", "crop_size", "crop_pct", "size_divisor"}
        kwargs = {k: d[k] for k in names if k in d}
        if kind == "GLPNImageProcessor":  # its resize is always the size_divisor one
            kwargs["size_divisor"] = d.get("size_divisor", 32)
        return cls(
            size=dict(size),
            crop_size=crop_size,
            crop_pct=d.get("crop_pct") if kind == "ConvNextImageProcessor" else None,
            **kwargs,
        )

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> ImageProcessor:
        """From the preprocessor_config.json of a checkpoint or engine directory."""
        data = read_preprocessor_config(
            path,
            "an image model's checkpoint or engine directory "
            "carries one (transformers writes it with "
            "image_processor.save_pretrained)",
        )
        try:
            return cls.from_dict(data)
        except InvalidArgumentError as e:
            raise InvalidArgumentError(f"{Path(path) / PREPROCESSOR_FILE}: {e}") from None

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of every processed image."""
        if self.size_divisor is not None:
            raise InvalidArgumentError(
                f"size_divisor={self.size_divisor}: each image keeps its own size (rounded down to a multiple "
                f"of {self.size_divisor}); there is no one output size"
            )
        if self.do_center_crop and self.crop_size:
            return self.crop_size["height"], self.crop_size["width"]
        if "shortest_edge" in self.size:
            e = self.size["shortest_edge"]
            if self.crop_pct is not None:
                return e, e
            raise InvalidArgumentError(
                "size.shortest_edge without a crop gives images of varying "
                "shapes; a batch needs do_center_crop or crop_pct"
            )
        return self.size["height"], self.size["width"]

    # --- processing ------------------------------------------------------------------------

    def __call__(self, images) -> np.ndarray:
        """One image or a list of images -> float32 [B, 3, H, W]."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if len(images) == 0:
            raise InputValueError(
                "no image given; expected one or more images (paths, bytes, PIL images or HxWxC uint8 arrays)"
            )
        out = [self.process_one(load_image(img, i)) for i, img in enumerate(images)]
        shapes = {o.shape for o in out}
        if len(shapes) > 1:
            raise InvalidArgumentError(
                f"processed images have different shapes {sorted(shapes)}; "
                "the preprocessor_config.json needs a crop for batching"
            )
        return np.stack(out)

    def processed_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) an image of this size is resized to."""
        if not self.do_resize:
            return height, width
        if self.size_divisor is not None:
            return height // self.size_divisor * self.size_divisor, width // self.size_divisor * self.size_divisor
        if "shortest_edge" in self.size and self.crop_pct is None and not self.do_center_crop:
            edge, short = self.size["shortest_edge"], min(width, height)
            long_ = int(edge * max(width, height) / short)
            return (edge, long_) if height <= width else (long_, edge)
        return self.output_size

    def process_one(self, image) -> np.ndarray:
        """An RGB PIL image -> float32 [3, H, W]."""
        from PIL import Image

        if self.do_resize and self.size_divisor is not None:
            h, w = self.processed_size(image.width, image.height)
            if h == 0 or w == 0:
                raise InputValueError(
                    f"a {image.width}x{image.height} image is smaller than size_divisor={self.size_divisor} on a "
                    f"side; the model takes images of at least {self.size_divisor}x{self.size_divisor}"
                )
            image = image.resize((w, h), resample=self.resample)
        elif self.do_resize:
            image = self._resize(image, Image)
        x = np.asarray(image)  # (H, W, 3) uint8
        if self.do_center_crop and self.crop_size:
            x = center_crop(x, self.crop_size["height"], self.crop_size["width"])
        if self.do_rescale:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        else:
            x = x.astype(np.float32)
        if self.do_normalize:
            x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)  # (3, H, W)

    def _resize(self, image, Image):
        if "shortest_edge" not in self.size:
            return image.resize((self.size["width"], self.size["height"]), resample=self.resample)
        edge = self.size["shortest_edge"]
        if self.crop_pct is not None and edge >= 384:  # ConvNeXT at 384 and above: warp
            return image.resize((edge, edge), resample=self.resample)
        target = int(edge / self.crop_pct) if self.crop_pct is not None else edge
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = target, int(target * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        image = image.resize((new_w, new_h), resample=self.resample)
        if self.crop_pct is not None:
            x = center_crop(np.asarray(image), edge, edge)
            return Image.fromarray(np.ascontiguousarray(x))
        return image


def center_crop(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W, C] -> [height, width, C] around the centre, zero-padded where the image is smaller
    (transformers' center_crop)."""
    h, w = x.shape[:2]
    if h < height or w < width:
        nh, nw = max(h, height), max(w, width)
        padded = np.zeros((nh, nw) + x.shape[2:], x.dtype)
        top, left = -(-(nh - h) // 2), -(-(nw - w) // 2)
        padded[top : top + h, left : left + w] = x
        x, h, w = padded, nh, nw
    top, left = (h - height) // 2, (w - width) // 2
    return x[top : top + height, left : left + width]


def _describe(image, index: int) -> str:
    if isinstance(image, (str, os.PathLike)):
        name = str(os.fspath(image))
        return f"image {index} ({name if len(name) <= 120 else name[:117] + '...'})"
    return f"image {index}"


# the largest image decoded (a 7680x4320 frame is 33 megapixels): the header is checked before the
# pixels are decoded, so a decompression bomb (a tiny file declaring a huge image) allocates nothing
MAX_PIXELS = 64_000_000


def load_image(image, index: int = 0):
    """A path, encoded bytes, a PIL image or an HxW / HxWxC uint8 array -> an RGB PIL image
    (transparency composited onto white, as transformers does)."""
    from PIL import Image, UnidentifiedImageError

    what = _describe(image, index)
    img: Image.Image
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        if isinstance(image, (str, os.PathLike)):
            try:
                found = Path(image).is_file()
            except (OSError, ValueError) as e:  # a name too long, a NUL byte: not a path at all
                raise InputValueError(f"{what}: not a usable file path ({getattr(e, 'strerror', None) or e})") from None
            if not found:
                raise InputValueError(f"{what}: no such file; expected a JPEG or PNG image file")
        source = image if isinstance(image, (str, os.PathLike)) else io.BytesIO(bytes(image))
        try:
            img = Image.open(source)  # reads the header only
            if img.width * img.height > MAX_PIXELS:
                raise InputValueError(
                    f"{what}: {img.width}x{img.height} pixels, more than kiln decodes "
                    f"({MAX_PIXELS // 1_000_000} megapixels); resize it first"
                )
            img.load()  # decode now: a truncated file fails here, not later
        except Image.DecompressionBombError as e:
            raise InputValueError(f"{what}: refused as a decompression bomb ({e})") from None
        except UnidentifiedImageError:
            raise InputValueError(
                f"{what}: not a readable image (unknown or unsupported format); expected a JPEG or PNG file"
            ) from None
        except (OSError, SyntaxError, ValueError) as e:
            raise InputValueError(
                f"{what}: the image data is unreadable ({e}); the file may be truncated or corrupt"
            ) from None
    elif isinstance(image, Image.Image):
        img = image
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise InputValueError(
                f"{what}: array of dtype {image.dtype} and shape {list(image.shape)}; "
                "expected uint8 HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA)"
            )
        arr = image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image
        img = Image.fromarray(np.ascontiguousarray(arr))
    else:
        raise InputValueError(
            f"{what}: got {type(image).__name__}; expected a file path, encoded "
            "bytes, a PIL image or a uint8 HxWxC array"
        )
    if img.width == 0 or img.height == 0:
        raise InputValueError(f"{what}: the image is empty ({img.width}x{img.height})")
    has_alpha = "A" in img.getbands() or img.info.get("transparency") is not None
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def load_images(images: Sequence) -> list:
    return [load_image(img, i) for i, img in enumerate(images)]


__all__ = ["ImageProcessor", "PREPROCESSOR_FILE", "center_crop", "load_image", "load_images"]
