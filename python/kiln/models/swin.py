"""The Swin Transformer as a backbone (transformers' SwinBackbone): the feature map of every stage.

Mask2Former checkpoints store it below `model.pixel_level_module.encoder.` with these names:

    embeddings.patch_embeddings.projection, embeddings.norm                   patch embedding
    encoder.layers.{i}.blocks.{j}.layernorm_before, .layernorm_after
    encoder.layers.{i}.blocks.{j}.attention.self.{query,key,value}            window attention
    encoder.layers.{i}.blocks.{j}.attention.self.relative_position_bias_table
    encoder.layers.{i}.blocks.{j}.attention.output.dense
    encoder.layers.{i}.blocks.{j}.intermediate.dense, .output.dense            MLP
    encoder.layers.{i}.downsample.{norm,reduction}                             patch merging
    hidden_states_norms.stage{i+1}                                             one LayerNorm per output

(transformers 5 renames the attention and MLP into `q_proj` ... `mlp.fc2` when it loads and writes
the names above when it saves; its save also writes `swin.layernorm.*`, the pooled model's final
norm, which the hub's checkpoints lack and the backbone never reads.)

export: transformers' SwinBackbone runs every block with `always_partition=True`: the window is
config.window_size and the shift window_size // 2 (odd blocks) whatever the stage's size, so
kiln fixes both per block at construction and never changes them. Every feature map is padded
(bottom, right, with zeros after the LayerNorm, as transformers pads) to a multiple of the window,
the pad amount `(-n) % window` computed from the static H and W (possibly 0: F.pad runs anyway,
so no Python branch depends on the size). H and W are static per engine; batch is dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError
from .layers import activation, check_activation


@dataclass
class SwinConfig:
    """transformers' SwinConfig keys the backbone reads (defaults: microsoft/swin-tiny-patch4-window7-224)."""

    num_channels: int = 3
    patch_size: int = 4
    embed_dim: int = 96
    depths: list[int] = field(default_factory=lambda: [2, 2, 6, 2])
    num_heads: list[int] = field(default_factory=lambda: [3, 6, 12, 24])
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    use_absolute_embeddings: bool = False
    out_features: list[str] = field(default_factory=lambda: ["stage1", "stage2", "stage3", "stage4"])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SwinConfig:
        if d.get("model_type", "swin") != "swin":
            raise InvalidArgumentError(
                f"backbone_config model_type={d.get('model_type')!r}: kiln implements the Swin backbone ('swin')"
            )
        if d.get("use_absolute_embeddings"):
            raise InvalidArgumentError(
                "backbone_config use_absolute_embeddings=true: kiln's Swin implements relative position bias only"
            )
        names = set(cls.__dataclass_fields__)
        c = cls(**{k: v for k, v in d.items() if k in names and v is not None})
        c.depths, c.num_heads = [int(v) for v in c.depths], [int(v) for v in c.num_heads]
        if len(c.depths) != len(c.num_heads) or not c.depths:
            raise InvalidArgumentError(
                f"backbone_config depths {c.depths} and num_heads {c.num_heads} differ in length"
            )
        for i, heads in enumerate(c.num_heads):
            if c.stage_dim(i) % heads:
                raise InvalidArgumentError(f"Swin stage {i}: width {c.stage_dim(i)} is not a multiple of {heads} heads")
        check_activation(c.hidden_act, "backbone_config hidden_act")
        wanted = [f"stage{i + 1}" for i in range(len(c.depths))]
        if list(c.out_features or []) != wanted:
            raise InvalidArgumentError(
                f"backbone_config out_features={c.out_features}: kiln's Swin backbone returns every stage {wanted}"
            )
        return c

    def stage_dim(self, i: int) -> int:
        return int(self.embed_dim * 2**i)

    @property
    def channels(self) -> list[int]:
        return [self.stage_dim(i) for i in range(len(self.depths))]


class SwinPatchEmbeddings(nn.Module):
    def __init__(self, c: SwinConfig):
        super().__init__()
        self.patch_size = c.patch_size
        self.projection = nn.Conv2d(c.num_channels, c.embed_dim, kernel_size=c.patch_size, stride=c.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        h, w = pixel_values.shape[2], pixel_values.shape[3]
        x = F.pad(pixel_values, (0, (-w) % p, 0, (-h) % p))  # to whole patches (static sizes)
        return self.projection(x)  # (B, C, h, w)


class SwinEmbeddings(nn.Module):
    def __init__(self, c: SwinConfig):
        super().__init__()
        self.patch_embeddings = SwinPatchEmbeddings(c)
        self.norm = nn.LayerNorm(c.embed_dim)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.patch_embeddings(pixel_values)
        h, w = x.shape[2], x.shape[3]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w  # (B, h*w, C)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws*ws, ws*ws) index into the (2ws-1)^2 bias table of each pair of window positions."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # (2, N)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # (N, N, 2)
    return rel[:, :, 0] * (2 * ws - 1) + rel[:, :, 1]


class SwinSelfAttention(nn.Module):
    relative_position_index: torch.Tensor

    def __init__(self, c: SwinConfig, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_size = dim // heads
        self.window = c.window_size
        self.query = nn.Linear(dim, dim, bias=c.qkv_bias)
        self.key = nn.Linear(dim, dim, bias=c.qkv_bias)
        self.value = nn.Linear(dim, dim, bias=c.qkv_bias)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * c.window_size - 1) ** 2, heads))
        self.register_buffer(
            "relative_position_index", relative_position_index(c.window_size).flatten(), persistent=False
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B*nW, N, C) windows of N = ws*ws tokens; mask (nW, N, N) additive or None."""
        Bw, N, C = x.shape
        q = self.query(x).view(Bw, N, self.heads, self.head_size).transpose(1, 2)  # (Bw, nh, N, hs)
        k = self.key(x).view(Bw, N, self.heads, self.head_size).transpose(1, 2)
        v = self.value(x).view(Bw, N, self.heads, self.head_size).transpose(1, 2)
        bias = self.relative_position_bias_table[self.relative_position_index]  # (N*N, nh)
        bias = bias.view(N, N, self.heads).permute(2, 0, 1)[None]  # (1, nh, N, N)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.head_size**-0.5  # (Bw, nh, N, N)
        if mask is not None:  # fixed per block at construction (shifted blocks have one)
            nW = mask.shape[0]
            scores = scores.view(Bw // nW, nW, self.heads, N, N) + (bias + mask[:, None])[None]
            scores = scores.view(Bw, self.heads, N, N)
        else:
            scores = scores + bias
        # export: explicit attention (transformers' eager path): SDPA over these shapes failed the
        # ONNX decomposition in transformers' Swin (non-contiguous view of its output)
        y = torch.matmul(torch.softmax(scores, dim=-1), v)  # (Bw, nh, N, hs)
        return y.transpose(1, 2).reshape(Bw, N, C)


class SwinSelfOutput(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


class SwinAttention(nn.Module):
    def __init__(self, c: SwinConfig, dim: int, heads: int):
        super().__init__()
        self.self = SwinSelfAttention(c, dim, heads)
        self.output = SwinSelfOutput(dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, mask))


class SwinIntermediate(nn.Module):
    def __init__(self, c: SwinConfig, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, int(c.mlp_ratio * dim))
        self.act = activation(c.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class SwinOutput(nn.Module):
    def __init__(self, c: SwinConfig, dim: int):
        super().__init__()
        self.dense = nn.Linear(int(c.mlp_ratio * dim), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/ws * W/ws, ws*ws, C), windows in row-major order per image."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C).transpose(2, 3)  # (B, H/ws, W/ws, ws, ws, C)
    return x.reshape(-1, ws * ws, C)


def window_reverse(windows: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    """(B * nW, ws*ws, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C).transpose(2, 3)  # (B, H/ws, ws, W/ws, ws, C)
    return x.reshape(-1, H, W, C)


def shifted_window_mask(H: int, W: int, ws: int, shift: int, dtype: torch.dtype) -> torch.Tensor:
    """(nW, N, N) additive mask of shifted-window attention over a padded (H, W) map: -100 between
    tokens that the cyclic shift brought together from different regions (transformers' value)."""
    hr = (torch.arange(H) >= H - ws).long() + (torch.arange(H) >= H - shift).long()  # region along each axis
    wr = (torch.arange(W) >= W - ws).long() + (torch.arange(W) >= W - shift).long()
    regions = (hr[None, :, None, None] * 3 + wr[None, None, :, None]).to(dtype)  # (1, H, W, 1)
    m = window_partition(regions, ws).squeeze(-1)  # (nW, N)
    diff = m[:, None, :] - m[:, :, None]  # (nW, N, N)
    return torch.where(diff != 0, torch.full_like(diff, -100.0), torch.zeros_like(diff))


class SwinLayer(nn.Module):
    """Pre-LN block over (shifted) windows: x + W-MSA(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, c: SwinConfig, dim: int, heads: int, shift: int):
        super().__init__()
        self.window = c.window_size
        self.shift = shift  # fixed at construction (transformers' backbone: always_partition)
        self.layernorm_before = nn.LayerNorm(dim, eps=c.layer_norm_eps)
        self.attention = SwinAttention(c, dim, heads)
        self.layernorm_after = nn.LayerNorm(dim, eps=c.layer_norm_eps)
        self.intermediate = SwinIntermediate(c, dim)
        self.output = SwinOutput(c, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, _, C = x.shape
        ws, s = self.window, self.shift
        y = self.layernorm_before(x).view(B, h, w, C)
        y = F.pad(y, (0, 0, 0, (-w) % ws, 0, (-h) % ws))  # zeros after the norm, as transformers pads
        Hp, Wp = h + (-h) % ws, w + (-w) % ws
        mask = None
        if s > 0:  # fixed per block
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
            mask = shifted_window_mask(Hp, Wp, ws, s, y.dtype).to(y.device)
        y = window_reverse(self.attention(window_partition(y, ws), mask), ws, Hp, Wp)
        if s > 0:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + y[:, :h, :w, :].reshape(B, h * w, C)
        return x + self.output(self.intermediate(self.layernorm_after(x)))


class SwinPatchMerging(nn.Module):
    """2x2 neighbours concatenated (padded to even sizes), LayerNorm, Linear 4C -> 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, _, C = x.shape
        y = F.pad(x.view(B, h, w, C), (0, 0, 0, w % 2, 0, h % 2))
        # transformers' order: (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1)
        y = torch.cat([y[:, r::2, c::2, :] for c in range(2) for r in range(2)], dim=-1)  # (B, h', w', 4C)
        return self.reduction(self.norm(y.reshape(B, -1, 4 * C)))


class SwinStage(nn.Module):
    def __init__(self, c: SwinConfig, i: int):
        super().__init__()
        dim = c.stage_dim(i)
        self.blocks = nn.ModuleList(
            SwinLayer(c, dim, c.num_heads[i], 0 if j % 2 == 0 else c.window_size // 2) for j in range(c.depths[i])
        )
        self.downsample = SwinPatchMerging(dim) if i < len(c.depths) - 1 else None


class SwinEncoder(nn.Module):
    def __init__(self, c: SwinConfig):
        super().__init__()
        self.layers = nn.ModuleList(SwinStage(c, i) for i in range(len(c.depths)))


class SwinBackbone(nn.Module):
    """forward(pixel_values (B, C, H, W)) -> every stage's output before its patch merging, each
    normalised by its hidden_states_norms LayerNorm, as (B, C_i, H / (p * 2^i), W / (p * 2^i)) maps
    (rounded up)."""

    def __init__(self, c: SwinConfig):
        super().__init__()
        self.embeddings = SwinEmbeddings(c)
        self.encoder = SwinEncoder(c)
        self.hidden_states_norms = nn.ModuleDict(
            {f"stage{i + 1}": nn.LayerNorm(dim) for i, dim in enumerate(c.channels)}
        )

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        x, h, w = self.embeddings(pixel_values)  # (B, h*w, C)
        B = x.shape[0]
        features = []
        for i, stage in enumerate(cast(list[SwinStage], self.encoder.layers)):
            for block in stage.blocks:
                x = block(x, h, w)
            y = self.hidden_states_norms[f"stage{i + 1}"](x)
            features.append(y.view(B, h, w, -1).permute(0, 3, 1, 2).contiguous())  # (B, C, h, w)
            if stage.downsample is not None:
                x = stage.downsample(x, h, w)
                h, w = (h + 1) // 2, (w + 1) // 2
        return features
