"""Mask2Former: the Swin backbone, the multi-scale deformable-attention pixel decoder, the
masked-attention transformer decoder, and the class and mask heads, for semantic, instance and
panoptic segmentation (one graph; the three answers are three post-processings of its outputs).

Attribute names are the Hugging Face checkpoint names (`model.pixel_level_module.encoder.*`, see
swin.py; `model.pixel_level_module.decoder.{input_projections,encoder.layers.N.self_attn.*,
level_embed,mask_projection,adapter_1,layer_1}`; `model.transformer_module.{queries_embedder,
queries_features,level_embed,input_projections,decoder.layers.N.{self_attn,cross_attn}.*,
decoder.layernorm,decoder.mask_predictor.mask_embedder.{0,1,2}.0}`; `class_predictor`), so a
checkpoint loads by name. Known and unused: `criterion.empty_weight` (a loss buffer) and
`model.pixel_level_module.encoder.swin.layernorm.*` (transformers 5 saves it; hub checkpoints lack it).

`forward(pixel_values)` takes float32 [B, 3, H, W] (ImageNet mean / std) at the engine's static
H, W and returns class_queries_logits [B, Q, num_labels + 1] (the last class is "no object") and
masks_queries_logits [B, Q, H / 4, W / 4], transformers' outputs of the last decoder layer, and
attention_mask_logits [B, Q, S]: what each decoder layer's masked attention switches on, the
previous layer's mask logits resized to the layer's level (transformers' `attention_mask` before
its `sigmoid < 0.5`), the layers concatenated. A position whose logit lies within fp32 rounding of
0 is blocked by one evaluation order and open in another, and the layers after it attend to other
pixels; parity reads these logits to tell such a switch from an error (`forward_pinned` reruns the
eager model with a given set of switch decisions).

export choices (see also swin.py):
- the cross-attention's packed `in_proj_weight` / `in_proj_bias` are sliced into q, k, v in an
  explicit attention (nn.MultiheadAttention's fast path has no export kernel);
- the masked attention's rule "a query whose mask blocks every position attends everywhere" is a
  multiply, not an index; the mask is an additive bias;
- level sizes and start offsets are Python ints from the static shapes (no int64 CumSum);
- multi-scale deformable attention has two implementations, chosen at construction
  (`deformable_attention`): "grid_sample" (transformers' arithmetic) and "gather" (bilinear
  sampling by GatherElements over a zero-padded map: portable to TensorRT, whose GridSample has
  been reported to miscompile deformable attention). They agree to fp32 rounding (~1e-6 of the outputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..deploy import universal_segmentation
from ..errors import InvalidArgumentError
from ..processing.mask2former import SUBTASKS
from .base import HFConfig, KilnModel
from .layers import activation, check_activation
from .swin import SwinBackbone, SwinConfig

DEFORMABLE_ATTENTION = ("gather", "grid_sample")
_LEVELS = 3  # transformers fixes the transformer's levels at 3 (and 4 sampling points)
_POINTS = 4


@dataclass
class Mask2FormerConfig(HFConfig):
    model_type: ClassVar[str] = "mask2former"
    display_name: ClassVar[str] = "Mask2Former"
    backbone_config: dict[str, Any] | None = None
    feature_size: int = 256
    mask_feature_size: int = 256
    hidden_dim: int = 256
    encoder_feedforward_dim: int = 1024
    activation_function: str = "relu"
    encoder_layers: int = 6
    decoder_layers: int = 10
    num_attention_heads: int = 8
    dim_feedforward: int = 2048
    pre_norm: bool = False
    enforce_input_projection: bool = False
    common_stride: int = 4
    num_queries: int = 100
    feature_strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    init_std: float = 0.02
    init_xavier_std: float = 1.0
    ignore_value: int = 255  # training only; kept so a written-back config carries it
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})

    def __post_init__(self) -> None:
        check_activation(self.activation_function, "activation_function")
        self.check_multiple("hidden_dim", "num_attention_heads")
        self.check_multiple("feature_size", "num_attention_heads")
        for name in ("feature_size", "mask_feature_size"):
            if getattr(self, name) % 32:
                raise InvalidArgumentError(
                    f"{name}={getattr(self, name)}: the pixel decoder's GroupNorm(32) needs a multiple of 32"
                )
        self.feature_strides = [int(s) for s in self.feature_strides]
        self.swin  # noqa: B018 -- refuses a backbone kiln does not implement now, not at build time
        if len(self.swin.depths) != 4 or len(self.feature_strides) != 4:
            raise InvalidArgumentError("kiln's Mask2Former reads four backbone stages (strides 4, 8, 16, 32)")
        if self.num_fpn_levels < 0:
            raise InvalidArgumentError(f"common_stride={self.common_stride}: finer than the backbone's strides")
        self.check_labels()

    @property
    def swin(self) -> SwinConfig:
        """The backbone (transformers' default when absent: Swin with depths [2, 2, 18, 2])."""
        bc = dict(self.backbone_config or {"model_type": "swin", "depths": [2, 2, 18, 2]})
        bc.setdefault("out_features", ["stage1", "stage2", "stage3", "stage4"])
        return SwinConfig.from_dict(bc)

    @property
    def num_channels(self) -> int:
        return self.swin.num_channels

    @property
    def num_fpn_levels(self) -> int:
        return int(math.log2(min(self.feature_strides[-_LEVELS:])) - math.log2(self.common_stride))

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["backbone_config"] = {"model_type": "swin", **(self.backbone_config or {})}
        return d


class Mask2FormerOutput(NamedTuple):
    class_queries_logits: torch.Tensor  # (B, Q, L + 1)
    masks_queries_logits: torch.Tensor  # (B, Q, H/4, W/4)
    attention_mask_logits: torch.Tensor  # (B, Q, S): every layer's switch logits, concatenated


# --- positions ------------------------------------------------------------------------------


def sine_positions(h: int, w: int, features: int, device: torch.device) -> torch.Tensor:
    """(h*w, 2 * features) normalised sine embedding of a map without padding (transformers'
    Mask2FormerSinePositionEmbedding, normalize=True, temperature 10000): y then x."""
    scale, eps = 2 * math.pi, 1e-6
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device)[:, None].expand(h, w)
    x = torch.arange(1, w + 1, dtype=torch.float32, device=device)[None, :].expand(h, w)
    y = y / (y[-1:, :] + eps) * scale
    x = x / (x[:, -1:] + eps) * scale
    dim_t = torch.arange(features, dtype=torch.int64, device=device).to(torch.float32)
    dim_t = 10000 ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / features)
    px, py = x[:, :, None] / dim_t, y[:, :, None] / dim_t  # (h, w, n)
    px = torch.stack((px[:, :, 0::2].sin(), px[:, :, 1::2].cos()), dim=3).flatten(2)
    py = torch.stack((py[:, :, 0::2].sin(), py[:, :, 1::2].cos()), dim=3).flatten(2)
    return torch.cat((py, px), dim=2).flatten(0, 1)  # (h*w, 2n)


def reference_points(shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """(sum h*w, 2) the centre of every position of every level in [0, 1] (x, y)."""
    out = []
    for h, w in shapes:
        ry, rx = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h, dtype=torch.float32, device=device),
            torch.linspace(0.5, w - 0.5, w, dtype=torch.float32, device=device),
            indexing="ij",
        )
        out.append(torch.stack((rx.reshape(-1) / w, ry.reshape(-1) / h), -1))
    return torch.cat(out, 0)


# --- multi-scale deformable attention ---------------------------------------------------------


def msda_grid_sample(
    value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """transformers' multi_scale_deformable_attention. value (B, S, nh, hd); locations
    (B, Q, nh, L, P, 2) in [0, 1] (x, y); weights (B, Q, nh, L, P) -> (B, Q, nh * hd)."""
    B, _, nh, hd = value.shape
    _, Q, _, L, P, _ = locations.shape
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        v = values[level].flatten(2).transpose(1, 2).reshape(B * nh, hd, h, w)
        g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B*nh, Q, P, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    w_ = weights.transpose(1, 2).reshape(B * nh, 1, Q, L * P)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * w_).sum(-1).view(B, nh * hd, Q)  # (B, nh*hd, Q)
    return out.transpose(1, 2)


def msda_gather(
    value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The same sampling without GridSample: bilinear interpolation (align_corners=False, zeros
    outside the map) by gathering the four neighbours from each level's map padded by one zero
    row / column on every side; every corner outside the map is clamped onto that zero border, so
    no validity mask is needed. Indices are computed in float32 (exact below 2^24 positions) and
    cast for GatherElements."""
    B, _, nh, hd = value.shape
    _, Q, _, L, P, _ = locations.shape
    values = value.split([h * w for h, w in shapes], dim=1)
    sampled = []
    for level, (h, w) in enumerate(shapes):
        v = values[level].flatten(2).transpose(1, 2).reshape(B * nh, hd, h, w)
        v = F.pad(v, (1, 1, 1, 1)).flatten(2)  # (B*nh, hd, (h+2)*(w+2))
        loc = locations[:, :, :, level].transpose(1, 2).flatten(0, 1).flatten(1, 2)  # (B*nh, Q*P, 2)
        grid = 2 * loc - 1  # grid_sample's arithmetic, so that the coordinates are its floats
        x = ((grid[..., 0] + 1) * w - 1) / 2  # pixel coordinates (align_corners=False)
        y = ((grid[..., 1] + 1) * h - 1) / 2
        # a NaN location (NaN in the input) would cast to an index out of bounds, which a compiled
        # gather aborts on: sample it off the map (zeros), as grid_sample lets NaN through unharmed
        x = torch.where(torch.isnan(x), torch.full_like(x, -2.0), x)
        y = torch.where(torch.isnan(y), torch.full_like(y, -2.0), y)
        x0, y0 = torch.floor(x), torch.floor(y)
        out = None
        for dy, wy in ((0.0, y0 + 1 - y), (1.0, y - y0)):
            for dx, wx in ((0.0, x0 + 1 - x), (1.0, x - x0)):
                xi = torch.clamp(x0 + dx, -1.0, float(w)) + 1  # into the padded map: the border is zero
                yi = torch.clamp(y0 + dy, -1.0, float(h)) + 1
                index = (yi * (w + 2) + xi).to(torch.int64)[:, None, :].expand(-1, hd, -1)  # (B*nh, hd, Q*P)
                term = torch.gather(v, 2, index) * (wy * wx)[:, None, :]
                out = term if out is None else out + term
        sampled.append(out.view(B * nh, hd, Q, P))  # type: ignore[union-attr]
    w_ = weights.transpose(1, 2).reshape(B * nh, 1, Q, L * P)
    out_ = (torch.stack(sampled, dim=-2).flatten(-2) * w_).sum(-1).view(B, nh * hd, Q)
    return out_.transpose(1, 2)


MSDA = {"grid_sample": msda_grid_sample, "gather": msda_gather}


class Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(nn.Module):
    def __init__(self, dim: int, heads: int, implementation: str):
        super().__init__()
        self.heads = heads
        self.sample = MSDA[implementation]
        self.sampling_offsets = nn.Linear(dim, heads * _LEVELS * _POINTS * 2)
        self.attention_weights = nn.Linear(dim, heads * _LEVELS * _POINTS)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        B, S, D = x.shape
        q = x + pos
        value = self.value_proj(x).view(B, S, self.heads, D // self.heads)
        offsets = self.sampling_offsets(q).view(B, S, self.heads, _LEVELS, _POINTS, 2)
        weights = self.attention_weights(q).view(B, S, self.heads, _LEVELS * _POINTS).softmax(-1)
        weights = weights.view(B, S, self.heads, _LEVELS, _POINTS)
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32, device=x.device)  # (L, 2)
        locations = ref[None, :, None, None, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(self.sample(value, shapes, locations, weights))


class Mask2FormerPixelDecoderEncoderLayer(nn.Module):
    """Post-LN: x = LN(x + MSDA(x + pos)); x = LN(x + fc2(relu(fc1(x))))."""

    def __init__(self, c: Mask2FormerConfig, implementation: str):
        super().__init__()
        d = c.feature_size
        self.self_attn = Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(
            d, c.num_attention_heads, implementation
        )
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, c.encoder_feedforward_dim)
        self.fc2 = nn.Linear(c.encoder_feedforward_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, ref: torch.Tensor, shapes: list[tuple[int, int]]):
        x = self.self_attn_layer_norm(x + self.self_attn(x, pos, ref, shapes))
        return self.final_layer_norm(x + self.fc2(F.relu(self.fc1(x))))


class Mask2FormerPixelDecoderEncoderOnly(nn.Module):
    def __init__(self, c: Mask2FormerConfig, implementation: str):
        super().__init__()
        self.layers = nn.ModuleList(
            Mask2FormerPixelDecoderEncoderLayer(c, implementation) for _ in range(c.encoder_layers)
        )


def _conv_gn(cin: int, cout: int, kernel: int, bias: bool, relu: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel_size=kernel, padding=kernel // 2, bias=bias),
        nn.GroupNorm(32, cout),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Mask2FormerPixelDecoder(nn.Module):
    """The three coarsest backbone maps projected, flattened, refined by the deformable encoder;
    then an FPN step per finer map (lateral 1x1 + the coarser map upsampled, 3x3 conv). Returns
    the mask features (finest map projected) and the three refined maps, coarsest first."""

    level_embed: nn.Parameter

    def __init__(self, c: Mask2FormerConfig, channels: list[int], implementation: str):
        super().__init__()
        fs = c.feature_size
        self.pos_features = fs // 2
        self.level_embed = nn.Parameter(torch.zeros(_LEVELS, fs))
        self.input_projections = nn.ModuleList(_conv_gn(cin, fs, 1, True) for cin in channels[-_LEVELS:][::-1])
        self.encoder = Mask2FormerPixelDecoderEncoderOnly(c, implementation)
        self.mask_projection = nn.Conv2d(fs, c.mask_feature_size, kernel_size=1)
        self.num_fpn_levels = c.num_fpn_levels
        for i, cin in enumerate(channels[: self.num_fpn_levels]):
            self.add_module(f"adapter_{i + 1}", _conv_gn(cin, fs, 1, False))
            self.add_module(f"layer_{i + 1}", _conv_gn(fs, fs, 3, False, relu=True))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        levels = features[::-1][:_LEVELS]  # coarsest first
        B = levels[0].shape[0]
        shapes = [(int(x.shape[2]), int(x.shape[3])) for x in levels]  # static: Python ints
        device = levels[0].device
        x = torch.cat([p(f).flatten(2).transpose(1, 2) for p, f in zip(self.input_projections, levels)], 1)
        pos = torch.cat(
            [
                sine_positions(h, w, self.pos_features, device) + self.level_embed[i][None]
                for i, (h, w) in enumerate(shapes)
            ],
            0,
        )[None]  # (1, S, D)
        ref = reference_points(shapes, device)  # (S, 2)
        for layer in self.encoder.layers:
            x = layer(x, pos, ref, shapes)
        outputs = [
            y.transpose(1, 2).reshape(B, -1, h, w) for y, (h, w) in zip(x.split([h * w for h, w in shapes], 1), shapes)
        ]
        for i in range(self.num_fpn_levels - 1, -1, -1):  # finer maps, coarse to fine
            lateral = getattr(self, f"adapter_{i + 1}")(features[i])
            up = F.interpolate(outputs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            outputs.append(getattr(self, f"layer_{i + 1}")(lateral + up))
        return self.mask_projection(outputs[-1]), outputs[:_LEVELS]


class Mask2FormerPixelLevelModule(nn.Module):
    def __init__(self, c: Mask2FormerConfig, implementation: str):
        super().__init__()
        self.encoder = SwinBackbone(c.swin)
        self.decoder = Mask2FormerPixelDecoder(c, c.swin.channels, implementation)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.decoder(self.encoder(pixel_values))


# --- the masked-attention transformer decoder -----------------------------------------------


class Mask2FormerAttention(nn.Module):
    """The queries' self-attention: positions on queries and keys, scaled queries."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        B, Q, D = x.shape
        hs = D // self.heads
        qk = x + pos
        q = (self.q_proj(qk) * hs**-0.5).view(B, Q, self.heads, hs).transpose(1, 2)  # (B, nh, Q, hs)
        k = self.k_proj(qk).view(B, Q, self.heads, hs).transpose(1, 2)
        v = self.v_proj(x).view(B, Q, self.heads, hs).transpose(1, 2)
        y = torch.matmul(torch.softmax(torch.matmul(q, k.transpose(2, 3)), -1), v)  # (B, nh, Q, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, Q, D))


class CrossAttention(nn.Module):
    """nn.MultiheadAttention's parameters (`in_proj_weight` packs q, k, v; `out_proj`) with its
    arithmetic written out: q scaled by 1/sqrt(head size), an additive mask.

    export: nn.MultiheadAttention's fused fast path has no export kernel; slices of the packed
    weight are three plain Linears."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """query (B, Q, D), key / value (B, S, D), bias (B, 1, Q, S) additive -> (B, Q, D)."""
        B, Q, D = query.shape
        S, hs = key.shape[1], D // self.heads
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        q = (F.linear(query, wq, bq) * hs**-0.5).view(B, Q, self.heads, hs).transpose(1, 2)  # (B, nh, Q, hs)
        k = F.linear(key, wk, bk).view(B, S, self.heads, hs).transpose(1, 2)  # (B, nh, S, hs)
        v = F.linear(value, wv, bv).view(B, S, self.heads, hs).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) + bias  # (B, nh, Q, S)
        y = torch.matmul(torch.softmax(scores, -1), v)
        return self.out_proj(y.transpose(1, 2).reshape(B, Q, D))


class Mask2FormerMaskedAttentionDecoderLayer(nn.Module):
    """Masked cross-attention to one level, self-attention among the queries, feed-forward; each
    with its residual, post-LN (or pre-LN with config.pre_norm)."""

    def __init__(self, c: Mask2FormerConfig):
        super().__init__()
        d = c.hidden_dim
        self.pre_norm = c.pre_norm
        self.cross_attn = CrossAttention(d, c.num_attention_heads)
        self.cross_attn_layer_norm = nn.LayerNorm(d)
        self.self_attn = Mask2FormerAttention(d, c.num_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.activation_fn = activation(c.activation_function)
        self.fc1 = nn.Linear(d, c.dim_feedforward)
        self.fc2 = nn.Linear(c.dim_feedforward, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(
        self,
        x: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        bias: torch.Tensor,
    ) -> torch.Tensor:
        if self.pre_norm:  # fixed at construction
            y = self.cross_attn_layer_norm(x)
            x = x + self.cross_attn(y + query_pos, memory + memory_pos, memory, bias)
            x = x + self.self_attn(self.self_attn_layer_norm(x), query_pos)
            return x + self.fc2(self.activation_fn(self.fc1(self.final_layer_norm(x))))
        x = self.cross_attn_layer_norm(x + self.cross_attn(x + query_pos, memory + memory_pos, memory, bias))
        x = self.self_attn_layer_norm(x + self.self_attn(x, query_pos))
        return self.final_layer_norm(x + self.fc2(self.activation_fn(self.fc1(x))))


class Mask2FormerPredictionBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.add_module("0", nn.Linear(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, "0")(x)


class Mask2FormerMaskPredictor(nn.Module):
    """The mask of every query: a 3-layer MLP of its state dotted with the per-pixel mask features."""

    def __init__(self, hidden: int, mask_features: int):
        super().__init__()
        self.mask_embedder = nn.ModuleList(
            Mask2FormerPredictionBlock(a, b) for a, b in ((hidden, hidden), (hidden, hidden), (hidden, mask_features))
        )

    def forward(self, x: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.mask_embedder):
            x = block(x)
            if i < 2:
                x = F.relu(x)
        return torch.einsum("bqc,bchw->bqhw", x, pixels)  # (B, Q, h, w)


def blocked_positions(logits: torch.Tensor) -> torch.Tensor:
    """The masked attention's switch on resized mask logits: blocked where sigmoid < 0.5
    (transformers' test, kept as written: sigmoid rounds to 0.5 at tiny negative logits)."""
    return logits.sigmoid() < 0.5


def attention_bias(
    masks: torch.Tensor, size: tuple[int, int], blocked: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The next layer's masked attention from the masks (B, Q, h, w): the masks resized to the
    level (bilinear), a position is blocked where `blocked_positions` says, or where `blocked`
    (B, Q, h'*w', bool) says when given; a query that blocks every position blocks none.
    -> (additive bias (B, 1, Q, h'*w'): 0 or finfo.min, the resized logits (B, Q, h'*w')).

    export: the empty-mask rule multiplies by (not all blocked), with no data-dependent index."""
    m = F.interpolate(masks, size=size, mode="bilinear", align_corners=False).flatten(2)  # (B, Q, S)
    shut = (blocked_positions(m) if blocked is None else blocked).to(masks.dtype)
    # float sums of 0/1 are exact up to 2^24 positions
    some_open = (shut.sum(-1, keepdim=True) != shut.shape[-1]).to(masks.dtype)  # (B, Q, 1)
    return (shut * some_open * torch.finfo(masks.dtype).min)[:, None], m


class Mask2FormerMaskedAttentionDecoder(nn.Module):
    def __init__(self, c: Mask2FormerConfig):
        super().__init__()
        self.layers = nn.ModuleList(Mask2FormerMaskedAttentionDecoderLayer(c) for _ in range(c.decoder_layers - 1))
        self.layernorm = nn.LayerNorm(c.hidden_dim)
        self.mask_predictor = Mask2FormerMaskPredictor(c.hidden_dim, c.mask_feature_size)


class Mask2FormerTransformerModule(nn.Module):
    def __init__(self, c: Mask2FormerConfig):
        super().__init__()
        d = c.hidden_dim
        self.pos_features = d // 2
        self.queries_embedder = nn.Embedding(c.num_queries, d)
        self.queries_features = nn.Embedding(c.num_queries, d)
        project = c.feature_size != d or c.enforce_input_projection
        self.input_projections = nn.ModuleList(
            nn.Conv2d(c.feature_size, d, kernel_size=1) if project else nn.Identity() for _ in range(_LEVELS)
        )
        self.decoder = Mask2FormerMaskedAttentionDecoder(c)
        self.level_embed = nn.Embedding(_LEVELS, d)

    def forward(
        self, levels: list[torch.Tensor], pixels: torch.Tensor, blocked: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> the last layer's normalised query states (B, Q, D), masks (B, Q, H/4, W/4) and every
        layer's switch logits (B, Q, S). `blocked` (B, Q, S, bool): switch decisions to take
        instead of the model's own (`forward_pinned`)."""
        B = pixels.shape[0]
        sizes = [(int(f.shape[2]), int(f.shape[3])) for f in levels]
        memory = [
            proj(f).flatten(2).transpose(1, 2) + self.level_embed.weight[i][None, None]
            for i, (proj, f) in enumerate(zip(self.input_projections, levels))
        ]  # (B, h*w, D) per level
        memory_pos = [sine_positions(h, w, self.pos_features, pixels.device)[None] for h, w in sizes]  # (1, h*w, D)
        query_pos = self.queries_embedder.weight[None].expand(B, -1, -1)  # (B, Q, D)
        x = self.queries_features.weight[None].expand(B, -1, -1)
        dec = self.decoder
        state = dec.layernorm(x)
        masks = dec.mask_predictor(state, pixels)
        switches, start = [], 0
        for i, layer in enumerate(dec.layers):
            level = i % _LEVELS
            h, w = sizes[level]
            pinned = None if blocked is None else blocked[:, :, start : start + h * w]
            start += h * w
            bias, logits = attention_bias(masks, sizes[level], pinned)
            switches.append(logits)
            x = layer(x, query_pos, memory[level], memory_pos[level], bias)
            state = dec.layernorm(x)
            masks = dec.mask_predictor(state, pixels)
        if blocked is not None and blocked.shape[-1] != start:
            raise InvalidArgumentError(
                f"blocked has {blocked.shape[-1]} switch positions per query; the layers have {start}"
            )
        return state, masks, torch.cat(switches, -1)


class Mask2FormerModel(nn.Module):
    def __init__(self, c: Mask2FormerConfig, implementation: str):
        super().__init__()
        self.pixel_level_module = Mask2FormerPixelLevelModule(c, implementation)
        self.transformer_module = Mask2FormerTransformerModule(c)

    def forward(
        self, pixel_values: torch.Tensor, blocked: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pixels, levels = self.pixel_level_module(pixel_values)
        return self.transformer_module(levels, pixels, blocked)


class Mask2FormerForUniversalSegmentation(KilnModel):
    """class_queries_logits (B, Q, L + 1), masks_queries_logits (B, Q, H/4, W/4) and
    attention_mask_logits (B, Q, S)."""

    config_class = Mask2FormerConfig
    base_model_prefix = "model"
    hf_architecture = "Mask2FormerForUniversalSegmentation"
    head_keys = ("class_predictor.weight", "class_predictor.bias")
    ignored_keys = (
        "criterion.empty_weight",  # the loss's class weights (training)
        # the pooled SwinModel's final norm: transformers 5 saves it, the backbone never reads it
        "model.pixel_level_module.encoder.swin.layernorm.weight",
        "model.pixel_level_module.encoder.swin.layernorm.bias",
    )

    def __init__(self, config: Mask2FormerConfig, deformable_attention: str = "gather", subtask: str = "panoptic"):
        super().__init__(config)
        if subtask not in SUBTASKS:
            raise InvalidArgumentError(f"subtask={subtask!r}: expected one of {', '.join(SUBTASKS)}")
        self.subtask = subtask  # the engine's default answer (post-processing only)
        if deformable_attention not in DEFORMABLE_ATTENTION:
            raise InvalidArgumentError(
                f"deformable_attention={deformable_attention!r}: expected one of {', '.join(DEFORMABLE_ATTENTION)}"
            )
        self.deformable_attention = deformable_attention
        self.model = Mask2FormerModel(config, deformable_attention)
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)

    def forward(self, pixel_values: torch.Tensor) -> Mask2FormerOutput:
        state, masks, switches = self.model(pixel_values)
        # export: contiguous, so every backend hands back dense buffers
        return Mask2FormerOutput(self.class_predictor(state), masks.contiguous(), switches)

    blocked_positions = staticmethod(blocked_positions)

    def forward_pinned(self, pixel_values: torch.Tensor, switch_logits: torch.Tensor) -> Mask2FormerOutput:
        """The outputs with every masked-attention switch decided as `switch_logits` (B, Q, S:
        another evaluation's attention_mask_logits) decide it through the model's own test.
        Eager only: parity's reference on a candidate's switches."""
        state, masks, switches = self.model(pixel_values, blocked_positions(switch_logits))
        return Mask2FormerOutput(self.class_predictor(state), masks.contiguous(), switches)

    def init_weight(self, name: str, tensor: torch.Tensor, owner: nn.Module, generator: torch.Generator) -> None:
        init_like_hf(name, tensor, owner, self.config, generator)


def init_like_hf(
    name: str, tensor: torch.Tensor, module: nn.Module, config: Mask2FormerConfig, generator: torch.Generator
) -> None:
    """A transformers-like initialisation of one state-dict entry, drawn from `generator` (in
    place): Linear / Conv weights normal(0, init_std), biases zero, norms the identity, embeddings
    and level embeddings normal(0, 1). (transformers' own rules differ in detail: xavier for the
    decoder, a fixed grid for the sampling offsets; random weights only need a sane scale.)"""
    with torch.no_grad():
        leaf = name.rpartition(".")[2]
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            tensor.fill_(1.0 if leaf == "weight" else 0.0)
        elif leaf in ("bias", "in_proj_bias"):
            tensor.zero_()
        elif isinstance(module, nn.Embedding) or leaf == "level_embed":
            tensor.copy_(torch.empty(tensor.shape).normal_(0.0, 1.0, generator=generator))
        elif leaf == "relative_position_bias_table":
            tensor.copy_(torch.empty(tensor.shape).normal_(0.0, 0.02, generator=generator))
        else:
            tensor.copy_(torch.empty(tensor.shape).normal_(0.0, config.init_std, generator=generator))


# --- deployables ----------------------------------------------------------------------------

TINY_BACKBONE = {
    "model_type": "swin",
    "image_size": 64,
    "embed_dim": 16,
    "depths": [1, 2, 1, 1],
    "num_heads": [1, 2, 2, 4],
    "window_size": 7,
    "out_features": ["stage1", "stage2", "stage3", "stage4"],
}
_TINY = dict(
    backbone_config=TINY_BACKBONE,
    feature_size=32,
    mask_feature_size=32,
    hidden_dim=32,
    encoder_feedforward_dim=64,
    dim_feedforward=64,
    encoder_layers=1,
    decoder_layers=4,
    num_attention_heads=2,
    num_queries=12,
)
TINY_PREPROCESSOR = {
    "image_processor_type": "Mask2FormerImageProcessor",
    "do_resize": True,
    "size": {"height": 64, "width": 64},
    "size_divisor": 32,
    "resample": 2,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "ignore_index": 255,
    "do_reduce_labels": False,
}

DEPLOYABLES = (
    universal_segmentation(
        Mask2FormerForUniversalSegmentation,
        tiny=_TINY,
        tiny_preprocessor=TINY_PREPROCESSOR,
        # the queries (features and position embeddings) make them differ (random weights leave
        # them alike: at Swin-tiny size a sharpened class head alone passes 0.8 on all 100 queries
        # of a photo or on none), the class head makes some confident, the mask head's last layer
        # makes masks decisive. Not the cross-attention, unlike DETR's: x15 on its packed q / k / v
        # (attention logits x225) made the decoder chaotic on photos (measured at Swin-tiny size:
        # 1e-6 relative noise on the pixel decoder's features moved class logits by 8, and every
        # compiled backend's fp32 reordering changed the answers); without it, 1e-4. Measured at
        # Swin-tiny size on 3 photos: 16-55 of 100 queries above 0.8
        sharpen=(
            r"model\.transformer_module\.queries_(embedder|features)\.weight",
            r"model\.transformer_module\.decoder\.mask_predictor\.mask_embedder\.2\.0\.(weight|bias)",
            r"class_predictor\.(weight|bias)",
        ),
        sharpen_factor=15.0,
    ),
)
