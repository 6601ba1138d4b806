"""ConvNeXT: config, the convolutional body, and the image-classification head kiln deploys.

Attribute names are the Hugging Face state-dict names (`convnext.embeddings.patch_embeddings`,
`convnext.encoder.stages.1.downsampling_layer.0`, `...layers.0.dwconv`, `...pwconv1`,
`...layer_scale_parameter`, `convnext.layernorm`, `classifier`), so a checkpoint loads by name;
the loading rules are declared on the class (see kiln/models/bert.py for their meaning).

`forward(pixel_values)` takes float32 [B, C, H, W] and returns logits [B, num_labels].
Stochastic depth (drop_path) is a training-only identity and is absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..deploy import image_classification
from ..errors import InvalidArgumentError
from .base import HFConfig, KilnModel
from .layers import activation, check_activation

# The block and stem LayerNorms use a fixed eps in the reference implementation; only the
# final pooled LayerNorm reads config.layer_norm_eps.
_BLOCK_EPS = 1e-6


@dataclass
class ConvNextConfig(HFConfig):
    model_type: ClassVar[str] = "convnext"
    display_name: ClassVar[str] = "ConvNeXT"
    num_channels: int = 3
    patch_size: int = 4
    num_stages: int = 4
    hidden_sizes: list[int] = field(default_factory=lambda: [96, 192, 384, 768])
    depths: list[int] = field(default_factory=lambda: [3, 3, 9, 3])
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    layer_scale_init_value: float = 1e-6
    image_size: int = 224
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})

    def __post_init__(self) -> None:
        check_activation(self.hidden_act)
        self.hidden_sizes = [int(h) for h in self.hidden_sizes]
        self.depths = [int(d) for d in self.depths]
        if not (len(self.hidden_sizes) == len(self.depths) == self.num_stages):
            raise InvalidArgumentError(
                f"hidden_sizes {self.hidden_sizes} and depths {self.depths}: expected "
                f"num_stages={self.num_stages} entries each"
            )
        self.check_labels()

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.image_size), int(self.image_size)


# --- blocks -------------------------------------------------------------------------------


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over C of a (B, C, H, W) tensor (HF: ConvNextLayerNorm, channels_first)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # export: permute + the stock layer_norm op rather than hand-written mean/var, so every
        # backend sees one LayerNormalization
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNextEmbeddings(nn.Module):
    """Patchify stem: a patch_size x patch_size conv with stride patch_size, then LayerNorm."""

    def __init__(self, config: ConvNextConfig):
        super().__init__()
        self.patch_embeddings = nn.Conv2d(
            config.num_channels, config.hidden_sizes[0], kernel_size=config.patch_size, stride=config.patch_size
        )
        self.layernorm = ChannelsFirstLayerNorm(config.hidden_sizes[0], eps=_BLOCK_EPS)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layernorm(self.patch_embeddings(pixel_values))  # (B, C0, H/p, W/p)


class ConvNextLayer(nn.Module):
    """x + gamma * pwconv2(gelu(pwconv1(LN(dwconv7x7(x))))), the MLP in channels-last layout."""

    def __init__(self, config: ConvNextConfig, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.layernorm = nn.LayerNorm(dim, eps=_BLOCK_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = activation(config.hidden_act)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.layer_scale_parameter = (
            nn.Parameter(torch.full((dim,), config.layer_scale_init_value))
            if config.layer_scale_init_value > 0
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.pwconv2(self.act(self.pwconv1(self.layernorm(y))))  # (B, H, W, C)
        if self.layer_scale_parameter is not None:  # fixed at construction, not data-dependent
            y = self.layer_scale_parameter * y
        return x + y.permute(0, 3, 1, 2)  # (B, C, H, W)


class ConvNextStage(nn.Module):
    """Optional downsampling (LayerNorm + 2x2 stride-2 conv), then `depth` blocks."""

    def __init__(self, config: ConvNextConfig, in_channels: int, out_channels: int, stride: int, depth: int):
        super().__init__()
        if in_channels != out_channels or stride > 1:
            self.downsampling_layer = nn.ModuleList(
                [
                    ChannelsFirstLayerNorm(in_channels, eps=_BLOCK_EPS),
                    nn.Conv2d(in_channels, out_channels, kernel_size=stride, stride=stride),
                ]
            )
        else:
            self.downsampling_layer = nn.ModuleList()
        self.layers = nn.ModuleList(ConvNextLayer(config, out_channels) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.downsampling_layer:
            x = layer(x)
        for layer in self.layers:
            x = layer(x)
        return x


class ConvNextEncoder(nn.Module):
    def __init__(self, config: ConvNextConfig):
        super().__init__()
        prev = config.hidden_sizes[0]
        stages = []
        for i, (out, depth) in enumerate(zip(config.hidden_sizes, config.depths)):
            stages.append(ConvNextStage(config, prev, out, stride=2 if i > 0 else 1, depth=depth))
            prev = out
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


# --- models ---------------------------------------------------------------------------------


class _ConvNextBase(KilnModel):
    config_class = ConvNextConfig
    base_model_prefix = "convnext"
    hf_architecture = "ConvNextModel"

    def init_weight(self, name: str, tensor: torch.Tensor, owner: nn.Module, generator: torch.Generator) -> None:
        init_like_hf(name, tensor, owner, self.config, generator)


class ConvNextModel(_ConvNextBase):
    """Stem and stages, then global average pooling and LayerNorm: pooled features (B, C_last)."""

    def __init__(self, config: ConvNextConfig):
        super().__init__(config)
        self.embeddings = ConvNextEmbeddings(config)
        self.encoder = ConvNextEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_sizes[-1], eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.embeddings(pixel_values))  # (B, C, h, w)
        return self.layernorm(x.mean(dim=(-2, -1)))  # (B, C)


class ConvNextForImageClassification(_ConvNextBase):
    """logits (B, num_labels) from the pooled, layer-normed features."""

    head_keys = ("classifier.weight", "classifier.bias")
    hf_architecture = "ConvNextForImageClassification"

    def __init__(self, config: ConvNextConfig):
        super().__init__(config)
        self.convnext = ConvNextModel(config)
        self.classifier = nn.Linear(config.hidden_sizes[-1], config.num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.convnext(pixel_values))  # (B, L)


def init_like_hf(
    name: str, tensor: torch.Tensor, module: nn.Module, config: ConvNextConfig, generator: torch.Generator
) -> None:
    """HF ConvNeXT's initialisation of one parameter, drawn from `generator` (in place): biases
    zero, LayerNorm weights one, layer scale layer_scale_init_value, other weights
    normal(0, initializer_range)."""
    with torch.no_grad():
        if name.endswith("layer_scale_parameter"):
            tensor.fill_(config.layer_scale_init_value)
        elif name.endswith("bias"):
            tensor.zero_()
        elif isinstance(module, nn.LayerNorm):
            tensor.fill_(1.0)
        else:
            tensor.copy_(
                torch.empty(tensor.shape, dtype=torch.float32).normal_(
                    0.0, config.initializer_range, generator=generator
                )
            )


# --- deployables ----------------------------------------------------------------------------

DEPLOYABLES = (
    image_classification(
        ConvNextForImageClassification,
        tiny=dict(hidden_sizes=[8, 16, 24], depths=[1, 2, 1], num_stages=3, image_size=32),
    ),
)
