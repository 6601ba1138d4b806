"""SegFormer: the MiT encoder and the all-MLP decode head, for semantic segmentation.

Attribute names are the Hugging Face checkpoint names (`segformer.encoder.*`, see mit.py;
`decode_head.linear_c.{i}.proj`, `decode_head.linear_fuse`, `decode_head.batch_norm`,
`decode_head.classifier`), so a checkpoint loads by name. transformers 5 renames
`decode_head.linear_c` to `linear_projections` at load and back at save: kiln keys on the saved
names. `decode_head.batch_norm.num_batches_tracked` (a training counter) is a known unused key.

`forward(pixel_values)` takes float32 [B, 3, H, W] (normalised with the ImageNet mean and std)
and returns logits [B, num_labels, H / 4, W / 4]: every stage projected to decoder_hidden_size,
upsampled bilinearly to the first stage's grid, concatenated coarsest first, fused by a 1x1 conv
+ BatchNorm + ReLU, classified by a 1x1 conv. Post-processing (kiln.processing.segmentation)
upsamples the logits to the image's size and takes the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..deploy import semantic_segmentation
from ..errors import InvalidArgumentError
from .base import HFConfig
from .mit import FrozenBatchNorm2d, MiTConfig, MiTModel, MiTTaskModel


@dataclass
class SegformerConfig(MiTConfig, HFConfig):
    model_type: ClassVar[str] = "segformer"
    display_name: ClassVar[str] = "SegFormer"
    decoder_hidden_size: int = 256
    reshape_last_stage: bool = True
    semantic_loss_ignore_index: int = 255  # training only; kept so a written-back config carries it
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})

    def __post_init__(self) -> None:
        self.check_mit()
        if not self.reshape_last_stage:
            raise InvalidArgumentError(
                "reshape_last_stage=false: kiln's SegFormer implements the semantic-segmentation head, which "
                "reads every stage as a (B, C, h, w) map (every SegFormer segmentation checkpoint has true)"
            )
        self.check_labels()


# --- the decode head ----------------------------------------------------------------------------


class SegformerMLP(nn.Module):
    """One stage's channels projected to decoder_hidden_size (a Linear over the flattened map)."""

    def __init__(self, input_dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(input_dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, h, w = x.shape
        y = self.proj(x.flatten(2).transpose(1, 2))  # (B, h*w, D)
        return y.transpose(1, 2).reshape(B, -1, h, w)  # (B, D, h, w)


class SegformerDecodeHead(nn.Module):
    def __init__(self, config: SegformerConfig):
        super().__init__()
        d = config.decoder_hidden_size
        self.linear_c = nn.ModuleList(SegformerMLP(h, d) for h in config.hidden_sizes)
        self.linear_fuse = nn.Conv2d(d * config.num_encoder_blocks, d, kernel_size=1, bias=False)
        self.batch_norm = FrozenBatchNorm2d(d)
        self.classifier = nn.Conv2d(d, config.num_labels, kernel_size=1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[2:]  # the first stage's grid: H / 4, W / 4
        maps = []
        for i, (x, mlp) in enumerate(zip(features, self.linear_c)):
            y = mlp(x)  # (B, D, h_i, w_i)
            if i > 0:  # the first stage is already on the grid (transformers' resize to the same size is exact)
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            maps.append(y)
        fused = self.linear_fuse(torch.cat(maps[::-1], dim=1))  # coarsest first: (B, D, H/4, W/4)
        # export: contiguous, so every backend hands back a dense (B, L, h, w) buffer (Inductor's
        # frozen convs otherwise return channels-last strides)
        return self.classifier(torch.relu(self.batch_norm(fused))).contiguous()  # (B, L, H/4, W/4)


# --- models ---------------------------------------------------------------------------------------


class SegformerForSemanticSegmentation(MiTTaskModel):
    """logits (B, num_labels, H / 4, W / 4)."""

    config_class = SegformerConfig
    base_model_prefix = "segformer"
    hf_architecture = "SegformerForSemanticSegmentation"

    def __init__(self, config: SegformerConfig):
        super().__init__(config)
        self.segformer = MiTModel(config)
        self.decode_head = SegformerDecodeHead(config)
        # a base checkpoint (an ImageNet-pretrained MiT, the fine-tuning guides' start: nvidia/mit-b0)
        # lacks the decode head: random_head=True initialises it
        self.head_keys = tuple(f"decode_head.{k}" for k in self.decode_head.state_dict())
        self.ignored_keys = (
            "decode_head.batch_norm.num_batches_tracked",  # BatchNorm's training counter
            # SegformerForImageClassification's head, which an ImageNet-pretrained MiT carries
            "classifier.weight",
            "classifier.bias",
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.segformer(pixel_values))


# --- deployables ----------------------------------------------------------------------------------

# MiT at a tiny width: 4 stages (so every stride and reduction is exercised), one or two blocks
_TINY = dict(
    hidden_sizes=[8, 16, 24, 32],
    depths=[1, 2, 1, 1],
    num_attention_heads=[1, 2, 3, 4],
    decoder_hidden_size=16,
)

DEPLOYABLES = (
    semantic_segmentation(
        SegformerForSemanticSegmentation,
        tiny=_TINY,
        tiny_preprocessor={
            "image_processor_type": "SegformerImageProcessor",
            "do_resize": True,
            "size": {"height": 64, "width": 64},
            "resample": 2,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
            "do_reduce_labels": True,
        },
    ),
)
