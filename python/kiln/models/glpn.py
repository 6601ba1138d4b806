"""GLPN: the MiT encoder, the selective-feature-fusion decoder and the depth head.

Attribute names are the Hugging Face checkpoint names (`glpn.encoder.*`, see mit.py;
`decoder.stages.{i}.convolution` (absent where the stage keeps its width),
`decoder.stages.{i}.fusion.convolutional_layer{1,2}.{0,1}` (conv + BatchNorm; stage 0 has no
fusion), `decoder.stages.{i}.fusion.convolutional_layer3`, `head.head.{0,2}`), so a checkpoint
loads by name. The BatchNorms' `num_batches_tracked` (a training counter) are known unused keys.

`forward(pixel_values)` takes float32 [B, 3, H, W], H and W multiples of 32, values in [0, 1]
(rescaled, not normalised), and returns predicted_depth [B, H, W] = sigmoid(head) * max_depth:
the coarsest stage is projected to decoder_hidden_size and doubled, then each finer stage is
projected, fused with it (a learned per-pixel choice between the two) and doubled, and the last
map is doubled once more to the input's size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..deploy import depth_estimation
from ..errors import InvalidArgumentError
from .base import HFConfig
from .mit import FrozenBatchNorm2d, MiTConfig, MiTModel, MiTTaskModel


@dataclass
class GLPNConfig(MiTConfig, HFConfig):
    model_type: ClassVar[str] = "glpn"
    display_name: ClassVar[str] = "GLPN"
    decoder_hidden_size: int = 64
    max_depth: float = 10
    head_in_index: int = -1
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})  # unused by depth

    def __post_init__(self) -> None:
        self.check_mit()
        if self.num_encoder_blocks != 4 or self.strides != [4, 2, 2, 2]:
            raise InvalidArgumentError(
                f"num_encoder_blocks={self.num_encoder_blocks}, strides={self.strides}: kiln's GLPN implements "
                "4 stages with strides [4, 2, 2, 2], which its decoder doubles back to the input's size"
            )
        if self.head_in_index not in (-1, 3):
            raise InvalidArgumentError(
                f"head_in_index={self.head_in_index}: kiln's GLPN reads the decoder's last (full-size) map, -1"
            )
        if self.decoder_hidden_size < 2:
            raise InvalidArgumentError(f"decoder_hidden_size={self.decoder_hidden_size}: expected at least 2")
        self.check_labels()


# --- the decoder and the head -----------------------------------------------------------------


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1), FrozenBatchNorm2d(cout), nn.ReLU())


class GLPNSelectiveFeatureFusion(nn.Module):
    """Two 3x3 conv+BN+ReLU and a 3x3 conv to two sigmoid maps over the concatenated local
    (this stage) and global (the coarser stage) features: local * a0 + global * a1."""

    def __init__(self, channels: int):
        super().__init__()
        self.convolutional_layer1 = _conv_bn_relu(2 * channels, channels)
        self.convolutional_layer2 = _conv_bn_relu(channels, channels // 2)
        self.convolutional_layer3 = nn.Conv2d(channels // 2, 2, kernel_size=3, stride=1, padding=1)

    def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        x = torch.cat((local, global_), dim=1)  # (B, 2C, h, w)
        attn = torch.sigmoid(self.convolutional_layer3(self.convolutional_layer2(self.convolutional_layer1(x))))
        return local * attn[:, 0:1] + global_ * attn[:, 1:2]  # (B, C, h, w)


def _double(x: torch.Tensor) -> torch.Tensor:
    # export: scale_factor 2 as transformers' nn.Upsample (a Resize with scales in ONNX): with H and
    # W multiples of 32 every doubled map has exactly the size of the next finer stage
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class GLPNDecoderStage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, fusion: bool):
        super().__init__()
        # transformers leaves the projection out (Identity, no checkpoint key) where the widths agree
        self.convolution = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        self.fusion = GLPNSelectiveFeatureFusion(out_channels) if fusion else None

    def forward(self, x: torch.Tensor, coarser: torch.Tensor | None) -> torch.Tensor:
        if self.convolution is not None:
            x = self.convolution(x)
        if self.fusion is not None and coarser is not None:  # fixed per stage: stage 0 has neither
            x = self.fusion(x, coarser)
        return _double(x)


class GLPNDecoder(nn.Module):
    def __init__(self, config: GLPNConfig):
        super().__init__()
        out = config.decoder_hidden_size
        self.stages = nn.ModuleList(
            GLPNDecoderStage(h, out, fusion=i > 0) for i, h in enumerate(reversed(config.hidden_sizes))
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x: torch.Tensor | None = None
        for feature, stage in zip(reversed(features), self.stages):  # coarsest first
            x = stage(feature, x)
        assert x is not None
        return _double(x)  # (B, D, H, W): transformers' final_upsample


class GLPNDepthEstimationHead(nn.Module):
    def __init__(self, config: GLPNConfig):
        super().__init__()
        d = config.decoder_hidden_size
        self.max_depth = float(config.max_depth)
        self.head = nn.Sequential(
            nn.Conv2d(d, d, kernel_size=3, stride=1, padding=1), nn.ReLU(), nn.Conv2d(d, 1, kernel_size=3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # export: contiguous (see segformer.py: Inductor's convs return channels-last strides)
        return (torch.sigmoid(self.head(x)) * self.max_depth).squeeze(1).contiguous()  # (B, H, W)


# --- models ---------------------------------------------------------------------------------------


class GLPNForDepthEstimation(MiTTaskModel):
    """predicted_depth (B, H, W) in the checkpoint's units (metres for NYU / KITTI)."""

    config_class = GLPNConfig
    base_model_prefix = "glpn"
    hf_architecture = "GLPNForDepthEstimation"

    def __init__(self, config: GLPNConfig):
        super().__init__(config)
        self.glpn = MiTModel(config)
        self.decoder = GLPNDecoder(config)
        self.head = GLPNDepthEstimationHead(config)
        # a base checkpoint (GLPNModel, or a SegFormer-pretrained MiT renamed) lacks decoder and head
        self.head_keys = tuple(f"{part}.{k}" for part in ("decoder", "head") for k in getattr(self, part).state_dict())
        self.ignored_keys = tuple(  # every fusion BatchNorm's training counter
            f"decoder.stages.{i}.fusion.convolutional_layer{n}.1.num_batches_tracked"
            for i in range(1, config.num_encoder_blocks)
            for n in (1, 2)
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.glpn(pixel_values)))


# --- deployables ----------------------------------------------------------------------------------

_TINY = dict(
    hidden_sizes=[8, 16, 24, 32],
    depths=[1, 2, 1, 1],
    num_attention_heads=[1, 2, 3, 4],
    decoder_hidden_size=16,
)

DEPLOYABLES = (
    depth_estimation(
        GLPNForDepthEstimation,
        tiny=_TINY,
        tiny_preprocessor={
            "image_processor_type": "GLPNImageProcessor",
            "do_resize": True,
            "size_divisor": 32,
            "resample": 2,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
        },
    ),
)
