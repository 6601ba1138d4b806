"""The Mix Transformer (MiT) encoder that SegFormer and GLPN share, written once.

Hugging Face keeps two copies of it (`SegformerEncoder`, `GLPNEncoder`); checkpoints of both
store it under the same names below their base-model prefix (`segformer.` or `glpn.`):

    <prefix>.encoder.patch_embeddings.{i}.{proj,layer_norm}               overlapping patch embedding
    <prefix>.encoder.block.{i}.{j}.attention.self.{query,key,value}        efficient self-attention
    <prefix>.encoder.block.{i}.{j}.attention.self.{sr,layer_norm}          its key/value reduction (sr > 1)
    <prefix>.encoder.block.{i}.{j}.attention.output.dense
    <prefix>.encoder.block.{i}.{j}.layer_norm_{1,2}
    <prefix>.encoder.block.{i}.{j}.mlp.{dense1,dwconv.dwconv,dense2}       Mix-FFN
    <prefix>.encoder.layer_norm.{i}

(transformers 5 renames these into `stages.{i}.blocks.{j}...` when it loads a SegFormer, and
writes the names above when it saves: kiln keys on the saved names.) `MiTModel` is what sits
at the prefix; a task model names its attribute after its family's prefix (`self.segformer`,
`self.glpn`), and `mit_state_keys(config, prefix)` lists the keys it holds there.

`forward(pixel_values)` returns the four stage outputs (B, C_i, H / s_i, W / s_i), strides
4, 8, 16, 32 with the default patch strides. Dropout and stochastic depth are absent
(inference only). Every LayerNorm uses PyTorch's default eps (1e-5), as transformers'
modules do: config.layer_norm_eps is not read by either reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError
from .base import KilnModel
from .layers import activation, check_activation


@dataclass
class MiTConfig:
    """The config.json keys of the MiT encoder (SegFormer's and GLPN's configs both carry them;
    their defaults are MiT-b0's). A family's config subclasses this and HFConfig."""

    num_channels: int = 3
    num_encoder_blocks: int = 4
    depths: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    sr_ratios: list[int] = field(default_factory=lambda: [8, 4, 2, 1])
    hidden_sizes: list[int] = field(default_factory=lambda: [32, 64, 160, 256])
    patch_sizes: list[int] = field(default_factory=lambda: [7, 3, 3, 3])
    strides: list[int] = field(default_factory=lambda: [4, 2, 2, 2])
    num_attention_heads: list[int] = field(default_factory=lambda: [1, 2, 5, 8])
    mlp_ratios: list[int] = field(default_factory=lambda: [4, 4, 4, 4])
    hidden_act: str = "gelu"
    initializer_range: float = 0.02
    # read by neither transformers' SegFormer nor its GLPN (their LayerNorms use torch's 1e-5);
    # kept so that a config written back by kiln carries it
    layer_norm_eps: float = 1e-6

    def check_mit(self) -> None:
        """Normalise the per-stage lists and check they agree (call in __post_init__)."""
        check_activation(self.hidden_act)
        n = int(self.num_encoder_blocks)
        for name in ("depths", "sr_ratios", "hidden_sizes", "patch_sizes", "strides", "num_attention_heads"):
            value = [int(v) for v in getattr(self, name)]
            if len(value) != n:
                raise InvalidArgumentError(f"{name}={value}: expected num_encoder_blocks={n} entries")
            if any(v < 1 for v in value):
                raise InvalidArgumentError(f"{name}={value}: expected positive entries")
            setattr(self, name, value)
        if len(self.mlp_ratios) != n or any(v != int(v) or v < 1 for v in self.mlp_ratios):
            raise InvalidArgumentError(
                f"mlp_ratios={self.mlp_ratios}: expected num_encoder_blocks={n} positive integers"
            )
        self.mlp_ratios = [int(v) for v in self.mlp_ratios]
        for i, (h, heads) in enumerate(zip(self.hidden_sizes, self.num_attention_heads)):
            if h % heads:
                raise InvalidArgumentError(
                    f"hidden_sizes[{i}]={h} is not a multiple of num_attention_heads[{i}]={heads}"
                )

    @property
    def total_stride(self) -> int:
        """How much the last stage downsamples: H and W must be multiples of it for the stages
        to halve exactly (32 with the default strides)."""
        out = 1
        for s in self.strides:
            out *= s
        return out


# --- blocks -------------------------------------------------------------------------------


class MiTOverlapPatchEmbeddings(nn.Module):
    """A strided conv whose kernel overlaps its neighbours (padding kernel // 2), then LayerNorm."""

    def __init__(self, patch_size: int, stride: int, num_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size, stride=stride, padding=patch_size // 2)
        self.layer_norm = nn.LayerNorm(hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(pixel_values)  # (B, C, h, w)
        _, _, h, w = x.shape
        return self.layer_norm(x.flatten(2).transpose(1, 2)), h, w  # (B, h*w, C)


class MiTEfficientSelfAttention(nn.Module):
    """Self-attention whose keys and values come from the tokens reduced by a stride-sr conv
    (PvT's sequence reduction): queries attend over h*w / sr^2 positions."""

    def __init__(self, hidden_size: int, num_heads: int, sr_ratio: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_size = hidden_size // num_heads
        self.sr_ratio = sr_ratio
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(hidden_size, hidden_size, kernel_size=sr_ratio, stride=sr_ratio)
            self.layer_norm = nn.LayerNorm(hidden_size)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, T, C = x.shape
        q = self.query(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        kv = x
        if self.sr_ratio > 1:  # fixed per stage at construction: not data-dependent
            grid = x.transpose(1, 2).reshape(B, C, h, w)  # (B, C, h, w)
            kv = self.layer_norm(self.sr(grid).flatten(2).transpose(1, 2))  # (B, T', C)
        k = self.key(kv).view(B, -1, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T', hs)
        v = self.value(kv).view(B, -1, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T', hs)
        # export: SDPA without a mask, as in kiln's ViT (one op for TorchScript and Inductor;
        # MatMul/Softmax in ONNX)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)


class MiTSelfOutput(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class MiTAttention(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, sr_ratio: int):
        super().__init__()
        self.self = MiTEfficientSelfAttention(hidden_size, num_heads, sr_ratio)
        self.output = MiTSelfOutput(hidden_size)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.output(self.self(x, h, w))


class MiTDepthWiseConv(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, T, C = x.shape
        grid = x.transpose(1, 2).reshape(B, C, h, w)  # (B, C, h, w)
        return self.dwconv(grid).flatten(2).transpose(1, 2)  # (B, T, C)


class MiTMixFFN(nn.Module):
    """dense1 -> 3x3 depthwise conv (the only positional signal MiT has) -> act -> dense2."""

    def __init__(self, hidden_size: int, mlp_size: int, act: str):
        super().__init__()
        self.dense1 = nn.Linear(hidden_size, mlp_size)
        self.dwconv = MiTDepthWiseConv(mlp_size)
        self.act = activation(act)
        self.dense2 = nn.Linear(mlp_size, hidden_size)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.dense2(self.act(self.dwconv(self.dense1(x), h, w)))


class MiTLayer(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then x + MixFFN(LN(x))."""

    def __init__(self, config: MiTConfig, stage: int):
        super().__init__()
        hidden = config.hidden_sizes[stage]
        self.layer_norm_1 = nn.LayerNorm(hidden)
        self.attention = MiTAttention(hidden, config.num_attention_heads[stage], config.sr_ratios[stage])
        self.layer_norm_2 = nn.LayerNorm(hidden)
        self.mlp = MiTMixFFN(hidden, int(hidden * config.mlp_ratios[stage]), config.hidden_act)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attention(self.layer_norm_1(x), h, w)
        return x + self.mlp(self.layer_norm_2(x), h, w)


class MiTEncoder(nn.Module):
    def __init__(self, config: MiTConfig):
        super().__init__()
        n = config.num_encoder_blocks
        self.patch_embeddings = nn.ModuleList(
            MiTOverlapPatchEmbeddings(
                config.patch_sizes[i],
                config.strides[i],
                config.num_channels if i == 0 else config.hidden_sizes[i - 1],
                config.hidden_sizes[i],
            )
            for i in range(n)
        )
        self.block = nn.ModuleList(
            nn.ModuleList(MiTLayer(config, i) for _ in range(config.depths[i])) for i in range(n)
        )
        self.layer_norm = nn.ModuleList(nn.LayerNorm(config.hidden_sizes[i]) for i in range(n))

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        features = []
        x = pixel_values
        for embed, layers, norm in zip(self.patch_embeddings, self.block, self.layer_norm):
            tokens, h, w = embed(x)  # (B, h*w, C)
            for layer in cast(nn.ModuleList, layers):
                tokens = layer(tokens, h, w)
            tokens = norm(tokens)
            B, _, C = tokens.shape
            x = tokens.reshape(B, h, w, C).permute(0, 3, 1, 2).contiguous()  # (B, C, h, w)
            features.append(x)
        return features


class MiTModel(nn.Module):
    """What a SegFormer / GLPN checkpoint stores under its base-model prefix: the encoder.
    forward -> the stage outputs, finest first."""

    def __init__(self, config: MiTConfig):
        super().__init__()
        self.encoder = MiTEncoder(config)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(pixel_values)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d at inference: the checkpoint's weight, bias and running statistics, and no
    `num_batches_tracked` (a training counter: the family declares it as a known unused key).

    export: F.batch_norm with training=False is what an eval-mode nn.BatchNorm2d computes
    (one BatchNormalization node in ONNX, folded into the conv by Inductor and TensorRT)."""

    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


# --- the loading contract the two families share --------------------------------------------------


def mit_state_keys(config: MiTConfig, prefix: str) -> list[str]:
    """Every state-dict key of the MiT encoder stored under `prefix` ("segformer", "glpn")."""
    return [f"{prefix}.{k}" for k in MiTModel(config).state_dict()]


def init_like_hf(name: str, tensor: torch.Tensor, module: nn.Module, std: float, generator: torch.Generator) -> None:
    """transformers' default initialisation (PreTrainedModel._init_weights, which SegFormer and
    GLPN use) of one state-dict entry, drawn from `generator` (in place): Linear and Conv
    weights normal(0, std) and biases zero; LayerNorm and BatchNorm weights one, biases zero;
    running mean zero, running variance one."""
    with torch.no_grad():
        leaf = name.rpartition(".")[2]
        if isinstance(module, (nn.LayerNorm, FrozenBatchNorm2d)):
            tensor.fill_(1.0 if leaf in ("weight", "running_var") else 0.0)
        elif leaf == "bias":
            tensor.zero_()
        else:
            tensor.copy_(torch.empty(tensor.shape, dtype=torch.float32).normal_(0.0, std, generator=generator))


class MiTTaskModel(KilnModel):
    """The base of SegFormer's and GLPN's task models: transformers' initialisation."""

    def init_weight(self, name: str, tensor: torch.Tensor, owner: nn.Module, generator: torch.Generator) -> None:
        init_like_hf(name, tensor, owner, self.config.initializer_range or 0.02, generator)
