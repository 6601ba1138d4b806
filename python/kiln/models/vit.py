"""ViT: config, encoder, and the image-classification head kiln deploys.

Attribute names are the Hugging Face state-dict names as checkpoints store them
(`vit.embeddings.patch_embeddings.projection`, `vit.encoder.layer.0.attention.attention.query`,
`vit.layernorm`, `classifier`), so a checkpoint loads by name; the loading rules that are not
a plain name match are declared on the class (see kiln/models/bert.py for their meaning).

`forward(pixel_values)` takes float32 [B, C, H, W] at the configured image_size (the learned
position table is used as is: no interpolation) and returns logits [B, num_labels].
Dropout is absent (inference only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..deploy import image_classification
from ..errors import InvalidArgumentError
from .base import HFConfig, KilnModel
from .layers import activation, check_activation


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        if len(v) != 2:
            raise InvalidArgumentError(f"expected an int or [height, width], got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


@dataclass
class ViTConfig(HFConfig):
    model_type: ClassVar[str] = "vit"
    display_name: ClassVar[str] = "ViT"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    image_size: int | list[int] = 224
    patch_size: int | list[int] = 16
    num_channels: int = 3
    qkv_bias: bool = True
    initializer_range: float = 0.02
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})

    def __post_init__(self) -> None:
        check_activation(self.hidden_act)
        self.check_multiple("hidden_size", "num_attention_heads")
        (h, w), (ph, pw) = _pair(self.image_size), _pair(self.patch_size)
        if h % ph or w % pw:
            raise InvalidArgumentError(
                f"image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        self.check_labels()

    @property
    def image_hw(self) -> tuple[int, int]:
        return _pair(self.image_size)

    @property
    def num_patches(self) -> int:
        (h, w), (ph, pw) = _pair(self.image_size), _pair(self.patch_size)
        return (h // ph) * (w // pw)


# --- blocks -------------------------------------------------------------------------------


class ViTPatchEmbeddings(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        patch = _pair(config.patch_size)
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=patch, stride=patch)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.projection(pixel_values)  # (B, H, h, w)
        return x.flatten(2).transpose(1, 2)  # (B, N, H)


class ViTEmbeddings(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embeddings = ViTPatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches + 1, config.hidden_size))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embeddings(pixel_values)  # (B, N, H)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, H)
        # export: the position table is added whole; the input H/W are fixed by the engine's
        # spec, so no interpolation branch is needed
        return torch.cat((cls, x), dim=1) + self.position_embeddings  # (B, N+1, H)


class ViTSelfAttention(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.key = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)
        self.value = nn.Linear(config.hidden_size, config.hidden_size, bias=config.qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        q = self.query(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        # export: SDPA without a mask (every patch attends to every patch); see bert.py
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)


class ViTSelfOutput(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class ViTAttention(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.attention = ViTSelfAttention(config)
        self.output = ViTSelfOutput(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.attention(x))


class ViTIntermediate(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class ViTOutput(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class ViTLayer(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ViTAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = ViTIntermediate(config)
        self.output = ViTOutput(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output(self.intermediate(self.layernorm_after(x)))


class ViTEncoder(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.layer = nn.ModuleList(ViTLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


# --- models ---------------------------------------------------------------------------------

# A ViTModel checkpoint (e.g. google/vit-base-patch16-224-in21k) carries the [CLS] pooler,
# which the classification head does not use (it reads the layer-normed [CLS] state).
_POOLER_KEYS = ("pooler.dense.weight", "pooler.dense.bias")


class _ViTBase(KilnModel):
    config_class = ViTConfig
    base_model_prefix = "vit"
    hf_architecture = "ViTModel"

    def init_weight(self, name: str, tensor: torch.Tensor, owner: nn.Module, generator: torch.Generator) -> None:
        init_like_hf(name, tensor, owner, self.config.initializer_range, generator)


class ViTModel(_ViTBase):
    """Embeddings, pre-LN encoder, final LayerNorm: last_hidden_state (B, N+1, H)."""

    ignored_keys = _POOLER_KEYS

    def __init__(self, config: ViTConfig):
        super().__init__(config)
        self.embeddings = ViTEmbeddings(config)
        self.encoder = ViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layernorm(self.encoder(self.embeddings(pixel_values)))  # (B, N+1, H)


class ViTForImageClassification(_ViTBase):
    """logits (B, num_labels) from the final [CLS] state."""

    head_keys = ("classifier.weight", "classifier.bias")
    ignored_keys = tuple(f"vit.{k}" for k in _POOLER_KEYS)
    hf_architecture = "ViTForImageClassification"

    def __init__(self, config: ViTConfig):
        super().__init__(config)
        self.vit = ViTModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = self.vit(pixel_values)  # (B, N+1, H)
        return self.classifier(hidden[:, 0])  # (B, L)


def init_like_hf(name: str, tensor: torch.Tensor, module: nn.Module, std: float, generator: torch.Generator) -> None:
    """HF ViT's initialisation of one parameter, drawn from `generator` (in place): biases
    zero, LayerNorm weights one, [CLS] and positions truncated normal(0, std), other weights
    normal(0, std)."""
    with torch.no_grad():
        if name.endswith("bias"):
            tensor.zero_()
        elif isinstance(module, nn.LayerNorm):
            tensor.fill_(1.0)
        elif name.endswith(("cls_token", "position_embeddings")):
            tmp = torch.empty(tensor.shape, dtype=torch.float32)
            nn.init.trunc_normal_(tmp, mean=0.0, std=std, generator=generator)
            tensor.copy_(tmp)
        else:
            tensor.copy_(torch.empty(tensor.shape, dtype=torch.float32).normal_(0.0, std, generator=generator))


# --- deployables ----------------------------------------------------------------------------

DEPLOYABLES = (
    image_classification(
        ViTForImageClassification,
        tiny=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=48,
            image_size=32,
            patch_size=8,
        ),
    ),
)
