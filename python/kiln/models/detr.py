"""DETR: config, the ResNet backbone with frozen BatchNorm, the encoder-decoder, and the
object-detection heads kiln deploys.

Attribute names are the Hugging Face state-dict names as checkpoints store them
(`model.backbone.conv_encoder.model.embedder.embedder.convolution`, `model.input_projection`,
`model.encoder.layers.0.self_attn.out_proj`, `model.decoder.layernorm`, `class_labels_classifier`,
`bbox_predictor.layers.2`), so a checkpoint loads by name. The backbone is spelt two ways:

    transformers' ResNet (use_timm_backbone=False)   ...conv_encoder.model.embedder.embedder.{convolution,normalization}
                                                    ...conv_encoder.model.encoder.stages.{i}.layers.{j}.layer.{k}.*
                                                    ...conv_encoder.model.encoder.stages.{i}.layers.{j}.shortcut.*
    timm's resnet50 (the hub's facebook/detr-*)     ...conv_encoder.model.{conv1,bn1}.*
                                                    ...conv_encoder.model.layer{i+1}.{j}.{conv,bn}{k+1}.*
                                                    ...conv_encoder.model.layer{i+1}.{j}.downsample.{0,1}.*

They are the same network (the stride on the 3x3, "ResNet v1.5"): kiln's modules carry
transformers' names and `checkpoint_key` reads timm's as those. Every frozen BatchNorm's
`num_batches_tracked` (timm checkpoints store some) is declared known and unused, key by key.

`forward(pixel_values, pixel_mask)` takes float32 [B, C, H, W] and int64 [B, H, W] (1 on the
image, 0 on padding) at any H, W and returns logits [B, Q, num_labels + 1] (the last class is
"no object") and pred_boxes [B, Q, 4] (cx, cy, w, h relative to the image's valid region).
Dropout is absent (inference only).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..deploy import object_detection
from ..errors import InvalidArgumentError
from .base import HFConfig, KilnModel
from .layers import activation, additive_padding_mask, check_activation, merge_heads, split_heads

# timm's ResNets by name -> blocks per stage (bottleneck, 64-wide stem, widths 256..2048)
TIMM_RESNETS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}
_BN_EPS = 1e-5  # DetrFrozenBatchNorm2d's, whatever the checkpoint's BatchNorm said


@dataclass(frozen=True)
class ResNetSpec:
    """The backbone a DETR config describes, resolved from either way of saying it."""

    layout: str  # "timm" (config names a timm model) or "transformers" (a ResNetConfig)
    num_channels: int
    embedding_size: int
    hidden_sizes: tuple[int, ...]
    depths: tuple[int, ...]
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False


@dataclass
class DetrConfig(HFConfig):
    model_type: ClassVar[str] = "detr"
    display_name: ClassVar[str] = "DETR"
    unsupported: ClassVar[tuple[tuple[str, str], ...]] = (
        ("dilation", "DC5 (dilation=True: a dilated, stride-1 last stage; the -dc5 checkpoints)"),
    )
    num_channels: int = 3
    num_queries: int = 100
    d_model: int = 256
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 8
    decoder_attention_heads: int = 8
    encoder_ffn_dim: int = 2048
    decoder_ffn_dim: int = 2048
    activation_function: str = "relu"
    position_embedding_type: str = "sine"
    init_std: float = 0.02
    init_xavier_std: float = 1.0
    # the backbone: a timm model by name (hub checkpoints) unless use_timm_backbone is false or a
    # backbone_config (transformers' ResNetConfig, or a timm_backbone config) is given
    use_timm_backbone: bool = True
    backbone: str = "resnet50"
    backbone_config: dict[str, Any] | None = None
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})

    def __post_init__(self) -> None:
        check_activation(self.activation_function, "activation_function")
        if self.position_embedding_type != "sine":
            raise InvalidArgumentError(
                f"position_embedding_type={self.position_embedding_type!r} is not supported; kiln's DETR "
                "implements the 'sine' position embedding (normalised, temperature 10000) of every DETR checkpoint"
            )
        self.check_multiple("d_model", "encoder_attention_heads")
        self.check_multiple("d_model", "decoder_attention_heads")
        if self.d_model % 2:
            raise InvalidArgumentError(f"d_model={self.d_model}: the sine position embedding needs an even size")
        self.resnet  # noqa: B018 -- refuses a backbone kiln does not implement now, not at build time
        self.check_labels()

    @property
    def resnet(self) -> ResNetSpec:
        bc = self.backbone_config
        if bc is None or bc.get("model_type") == "timm_backbone":
            if bc is None and not self.use_timm_backbone:
                bc = {"model_type": "resnet"}  # transformers' default: ResNetConfig(out_features=["stage4"])
            else:
                name = (bc or {}).get("backbone") or self.backbone
                if (bc or {}).get("output_stride") not in (None, 32):
                    raise InvalidArgumentError(
                        f"backbone_config output_stride={bc['output_stride']}: a dilated backbone (DC5) is not "  # type: ignore[index]
                        "implemented by kiln's DETR"
                    )
                if name not in TIMM_RESNETS:
                    raise InvalidArgumentError(
                        f"backbone={name!r}: kiln's DETR implements the timm backbones {', '.join(TIMM_RESNETS)}"
                    )
                return ResNetSpec("timm", self.num_channels, 64, (256, 512, 1024, 2048), TIMM_RESNETS[name])
        if bc.get("model_type") != "resnet":
            raise InvalidArgumentError(
                f"backbone_config model_type={bc.get('model_type')!r}: kiln's DETR implements ResNet backbones "
                "('resnet', or a timm resnet50/101/152)"
            )
        if bc.get("layer_type", "bottleneck") != "bottleneck":
            raise InvalidArgumentError(
                f"backbone_config layer_type={bc.get('layer_type')!r}: kiln's DETR implements bottleneck ResNets"
            )
        if bc.get("hidden_act", "relu") != "relu":
            raise InvalidArgumentError(f"backbone_config hidden_act={bc.get('hidden_act')!r}: expected 'relu'")
        depths = tuple(int(d) for d in bc.get("depths", (3, 4, 6, 3)))
        sizes = tuple(int(h) for h in bc.get("hidden_sizes", (256, 512, 1024, 2048)))
        if len(depths) != len(sizes) or not depths:
            raise InvalidArgumentError(f"backbone_config depths {list(depths)} and hidden_sizes {list(sizes)} differ")
        last = f"stage{len(depths)}"
        out = bc.get("out_features") or [last]
        if out[-1] != last:
            raise InvalidArgumentError(
                f"backbone_config out_features={out}: DETR reads the last stage ({last!r}); "
                "kiln does not implement a backbone cut short"
            )
        return ResNetSpec(
            "transformers",
            int(bc.get("num_channels", self.num_channels)),
            int(bc.get("embedding_size", 64)),
            sizes,
            depths,
            bool(bc.get("downsample_in_first_stage", False)),
            bool(bc.get("downsample_in_bottleneck", False)),
        )

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.backbone_config is not None:  # transformers refuses a backbone name beside a config
            del d["backbone"]
            d["use_timm_backbone"] = False
        return d


class DetrOutput(NamedTuple):
    logits: torch.Tensor  # (B, Q, L + 1)
    pred_boxes: torch.Tensor  # (B, Q, 4): cx, cy, w, h in [0, 1]


# --- the backbone -------------------------------------------------------------------------


class DetrFrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine terms (buffers, as transformers stores them)."""

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # transformers' arithmetic, in its order (the exporters fold it into constants)
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + _BN_EPS).rsqrt()
        bias = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        return x * scale + bias


class ResNetConvLayer(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, relu: bool = True):
        super().__init__()
        self.convolution = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.normalization = DetrFrozenBatchNorm2d(cout)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalization(self.convolution(x))
        return F.relu(x) if self.relu else x  # fixed at construction, not data-dependent


class ResNetShortCut(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.convolution = nn.Conv2d(cin, cout, 1, stride=stride, bias=False)
        self.normalization = DetrFrozenBatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalization(self.convolution(x))


class ResNetBottleNeckLayer(nn.Module):
    """relu(shortcut(x) + 1x1 -> 3x3 -> 1x1), channels reduced 4x inside; the stride on the 3x3
    (or on the first 1x1 with downsample_in_bottleneck)."""

    def __init__(self, cin: int, cout: int, stride: int, downsample_in_bottleneck: bool):
        super().__init__()
        mid = cout // 4
        self.shortcut: nn.Module = ResNetShortCut(cin, cout, stride) if cin != cout or stride != 1 else nn.Identity()
        self.layer = nn.Sequential(
            ResNetConvLayer(cin, mid, 1, stride=stride if downsample_in_bottleneck else 1),
            ResNetConvLayer(mid, mid, 3, stride=1 if downsample_in_bottleneck else stride),
            ResNetConvLayer(mid, cout, 1, relu=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.layer(x) + self.shortcut(x))


class ResNetStage(nn.Module):
    def __init__(self, spec: ResNetSpec, cin: int, cout: int, stride: int, depth: int):
        super().__init__()
        bottleneck = spec.downsample_in_bottleneck
        self.layers = nn.Sequential(
            ResNetBottleNeckLayer(cin, cout, stride, bottleneck),
            *(ResNetBottleNeckLayer(cout, cout, 1, bottleneck) for _ in range(depth - 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ResNetEncoder(nn.Module):
    def __init__(self, spec: ResNetSpec):
        super().__init__()
        ins = (spec.embedding_size, *spec.hidden_sizes[:-1])
        first = 2 if spec.downsample_in_first_stage else 1
        self.stages = nn.ModuleList(
            ResNetStage(spec, cin, cout, first if i == 0 else 2, depth)
            for i, (cin, cout, depth) in enumerate(zip(ins, spec.hidden_sizes, spec.depths))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


class ResNetEmbeddings(nn.Module):
    """The stem: 7x7 stride-2 convolution, BatchNorm, ReLU, 3x3 stride-2 max pool."""

    def __init__(self, spec: ResNetSpec):
        super().__init__()
        self.embedder = ResNetConvLayer(spec.num_channels, spec.embedding_size, 7, stride=2)
        self.pooler = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooler(self.embedder(x))


class ResNetBackbone(nn.Module):
    """The ResNet's last stage's feature map (B, C, H/32, W/32), which is all DETR reads."""

    def __init__(self, spec: ResNetSpec):
        super().__init__()
        self.embedder = ResNetEmbeddings(spec)
        self.encoder = ResNetEncoder(spec)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embedder(pixel_values))


class DetrConvEncoder(nn.Module):
    def __init__(self, config: DetrConfig):
        super().__init__()
        self.model = ResNetBackbone(config.resnet)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values)


def nearest_rows(size_in: int, size_out: int, device: torch.device) -> torch.Tensor:
    """(size_out, size_in) float32 selection matrix of "nearest" resampling: row i is one-hot at
    transformers' source index r = floor(i * size_in / size_out), i.e. where
    0 <= i * size_in - r * size_out < size_out."""
    i = torch.arange(size_out, device=device)[:, None] * size_in  # (out, 1)
    r = torch.arange(size_in, device=device)[None, :] * size_out  # (1, in)
    return ((i >= r) & (i - r < size_out)).to(torch.float32)  # (out, in)


def downsample_mask(pixel_mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, H, W] 0/1 mask -> [B, height, width] bool, the pixel nearest each feature position as
    transformers computes it (F.interpolate, "nearest": source index floor(i * H / height)).

    export: integer comparisons and one-hot selection matmuls rather than interpolate. The
    exporters each lower "nearest" their own way: ONNX Resize computes i / (height / H) in
    float32, which rounds below an exact integer at 430 of the 26,684 (H, i) pairs of H in
    320..1333 (the mask then moves one feature row at the padding's edge), and a reduced-precision
    TensorRT plan may compute the index in fp16. The exact index floor(i * H / height), found by
    integer products and comparisons in int64, equals PyTorch's float32 floor(i * (H / height))
    for every H up to 20,000 through a ResNet's /32 (measured; tests/test_detr.py checks it
    against F.interpolate). No division and no gather: Inductor fails to compile an integer
    division of symbolic sizes (truncdiv: sympy "Invalid NaN comparison" in its value-range
    analysis at ResNet-50 size), and the matmul of 0/1 values is exact in any precision.
    """
    m = pixel_mask.to(torch.float32)  # (B, H, W)
    rows = nearest_rows(pixel_mask.shape[1], height, pixel_mask.device)  # (height, H)
    cols = nearest_rows(pixel_mask.shape[2], width, pixel_mask.device)  # (width, W)
    return (rows @ m @ cols.transpose(0, 1)).to(torch.bool)  # (B, height, width)


class DetrSinePositionEmbedding(nn.Module):
    """The 2-D sine embedding of the valid region: per axis, the cumulative count of valid
    positions normalised to (0, 2 pi], then sin/cos at temperature 10000 ** (2 floor(i / 2) / n)."""

    dim_t: torch.Tensor

    def __init__(self, num_position_features: int, temperature: int = 10000):
        super().__init__()
        dim_t = torch.arange(num_position_features, dtype=torch.int64).to(torch.float32)
        dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_position_features)
        self.register_buffer("dim_t", dim_t, persistent=False)  # computed as transformers computes it
        self.scale = 2 * math.pi

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(torch.float32)  # (B, h, w)
        y = m.cumsum(1)
        x = m.cumsum(2)
        y = y / (y[:, -1:, :] + 1e-6) * self.scale
        x = x / (x[:, :, -1:] + 1e-6) * self.scale
        pos_x = x[:, :, :, None] / self.dim_t  # (B, h, w, n)
        pos_y = y[:, :, :, None] / self.dim_t
        pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).flatten(1, 2)  # (B, h*w, 2n)


class DetrConvModel(nn.Module):
    """The backbone and the position embedding of its feature map (transformers' legacy wrapper,
    whose name the checkpoints keep)."""

    def __init__(self, config: DetrConfig):
        super().__init__()
        self.conv_encoder = DetrConvEncoder(config)
        self.position_embedding = DetrSinePositionEmbedding(config.d_model // 2)

    def forward(
        self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.conv_encoder(pixel_values)  # (B, C, h, w)
        mask = downsample_mask(pixel_mask, features.shape[2], features.shape[3])  # (B, h, w)
        return features, mask.flatten(1), self.position_embedding(mask)  # (B, C, h, w), (B, h*w), (B, h*w, D)


# --- the transformer ------------------------------------------------------------------------


class DetrAttention(nn.Module):
    """Multi-head attention; DETR adds position embeddings to the queries and keys, not the values."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask_bias: torch.Tensor | None
    ) -> torch.Tensor:
        q = split_heads(self.q_proj(queries), self.heads)  # (B, nh, T, hs)
        k = split_heads(self.k_proj(keys), self.heads)  # (B, nh, S, hs)
        v = split_heads(self.v_proj(values), self.heads)  # (B, nh, S, hs)
        # export: SDPA, as in BERT (one aten op; the ONNX exporter decomposes it); scaled by 1/sqrt(hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bias)  # (B, nh, T, hs)
        return self.out_proj(merge_heads(y))  # (B, T, D)


class DetrEncoderLayer(nn.Module):
    """Post-LN: x = LN(x + attn(x + pos, x + pos, x)); x = LN(x + fc2(act(fc1(x))))."""

    def __init__(self, config: DetrConfig):
        super().__init__()
        d = config.d_model
        self.self_attn = DetrAttention(d, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.activation_fn = activation(config.activation_function)
        self.fc1 = nn.Linear(d, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        qk = x + pos
        x = self.self_attn_layer_norm(x + self.self_attn(qk, qk, x, mask_bias))
        return self.final_layer_norm(x + self.fc2(self.activation_fn(self.fc1(x))))


class DetrDecoderLayer(nn.Module):
    """Post-LN: self-attention over the queries (their position embedding on queries and keys),
    cross-attention to the image (query positions on the queries, image positions on the keys),
    then the feed-forward block."""

    def __init__(self, config: DetrConfig):
        super().__init__()
        d = config.d_model
        self.self_attn = DetrAttention(d, config.decoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = DetrAttention(d, config.decoder_attention_heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.activation_fn = activation(config.activation_function)
        self.fc1 = nn.Linear(d, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(
        self,
        x: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_keys: torch.Tensor,
        memory_mask_bias: torch.Tensor,
    ) -> torch.Tensor:
        qk = x + query_pos
        x = self.self_attn_layer_norm(x + self.self_attn(qk, qk, x, None))  # the queries attend to all queries
        x = self.encoder_attn_layer_norm(x + self.encoder_attn(x + query_pos, memory_keys, memory, memory_mask_bias))
        return self.final_layer_norm(x + self.fc2(self.activation_fn(self.fc1(x))))


class DetrEncoder(nn.Module):
    def __init__(self, config: DetrConfig):
        super().__init__()
        self.layers = nn.ModuleList(DetrEncoderLayer(config) for _ in range(config.encoder_layers))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, pos, mask_bias)
        return x


class DetrDecoder(nn.Module):
    def __init__(self, config: DetrConfig):
        super().__init__()
        self.layers = nn.ModuleList(DetrDecoderLayer(config) for _ in range(config.decoder_layers))
        self.layernorm = nn.LayerNorm(config.d_model)

    def forward(
        self,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_mask_bias: torch.Tensor,
    ) -> torch.Tensor:
        x = torch.zeros_like(query_pos)  # the queries start empty: their slots are the position embeddings
        keys = memory + memory_pos  # the image's positions on the cross-attention keys
        for layer in self.layers:
            x = layer(x, query_pos, memory, keys, memory_mask_bias)
        return self.layernorm(x)


class DetrMLPPredictionHead(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear: the box head."""

    def __init__(self, d_in: int, hidden: int, d_out: int, num_layers: int = 3):
        super().__init__()
        dims = [d_in] + [hidden] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [d_out]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:  # fixed at construction
                x = F.relu(x)
        return x


# --- models ---------------------------------------------------------------------------------

# timm's backbone names -> transformers' (the module tree's); `k` numbers convs and BNs from 1
_TIMM_KEY = re.compile(
    r"(^|\.)conv_encoder\.model\.(conv1|bn1|layer(\d+)\.(\d+)\.(conv(\d)|bn(\d)|downsample\.([01])))\."
)


def timm_to_transformers_key(name: str) -> str:
    """A DETR checkpoint key in timm's ResNet names as the key of transformers' ResNet (others as they are)."""

    def rename(m: re.Match) -> str:
        head = f"{m.group(1)}conv_encoder.model."
        part, stage, block, _, conv, bn, down = m.group(2, 3, 4, 5, 6, 7, 8)
        if part == "conv1":
            return head + "embedder.embedder.convolution."
        if part == "bn1":
            return head + "embedder.embedder.normalization."
        where = f"{head}encoder.stages.{int(stage) - 1}.layers.{block}."
        if down is not None:
            return where + ("shortcut.convolution." if down == "0" else "shortcut.normalization.")
        if conv is not None:
            return where + f"layer.{int(conv) - 1}.convolution."
        return where + f"layer.{int(bn) - 1}.normalization."

    return _TIMM_KEY.sub(rename, name, count=1)


class _DetrBase(KilnModel):
    config_class = DetrConfig
    base_model_prefix = "model"
    hf_architecture = "DetrModel"

    def _declare_unused_batchnorm_counters(self) -> None:
        """Every frozen BatchNorm's num_batches_tracked: stored by timm checkpoints (the hub's
        facebook/detr-resnet-50 has them on its downsample BNs), read by nothing."""
        self.ignored_keys = tuple(
            f"{name}.num_batches_tracked"
            for name, module in self.named_modules()
            if isinstance(module, DetrFrozenBatchNorm2d)
        )

    def checkpoint_key(self, name: str) -> str:
        return timm_to_transformers_key(name)

    def init_weight(self, name: str, tensor: torch.Tensor, owner: nn.Module, generator: torch.Generator) -> None:
        init_like_hf(name, tensor, owner, self.config, generator)


class DetrModel(_DetrBase):
    """Backbone, input projection, encoder over the image features, decoder over the object
    queries: the decoder's last hidden state (B, Q, D)."""

    def __init__(self, config: DetrConfig):
        super().__init__(config)
        self.backbone = DetrConvModel(config)
        self.input_projection = nn.Conv2d(config.resnet.hidden_sizes[-1], config.d_model, kernel_size=1)
        self.query_position_embeddings = nn.Embedding(config.num_queries, config.d_model)
        self.encoder = DetrEncoder(config)
        self.decoder = DetrDecoder(config)
        self._declare_unused_batchnorm_counters()

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
        features, mask, pos = self.backbone(pixel_values, pixel_mask)  # (B, C, h, w), (B, h*w), (B, h*w, D)
        x = self.input_projection(features).flatten(2).transpose(1, 2)  # (B, h*w, D)
        mask_bias = additive_padding_mask(mask, x.dtype)  # (B, 1, 1, h*w)
        memory = self.encoder(x, pos, mask_bias)  # (B, h*w, D)
        query_pos = self.query_position_embeddings.weight[None].expand(x.shape[0], -1, -1)  # (B, Q, D)
        return self.decoder(query_pos, memory, pos, mask_bias)  # (B, Q, D)


class DetrForObjectDetection(_DetrBase):
    """Class logits (num_labels + "no object") and boxes (sigmoid; cx, cy, w, h) per query."""

    head_keys = tuple(
        f"{m}.{p}"
        for m in ("class_labels_classifier", *(f"bbox_predictor.layers.{i}" for i in range(3)))
        for p in ("weight", "bias")
    )
    hf_architecture = "DetrForObjectDetection"

    def __init__(self, config: DetrConfig):
        super().__init__(config)
        self.model = DetrModel(config)
        self.class_labels_classifier = nn.Linear(config.d_model, config.num_labels + 1)
        self.bbox_predictor = DetrMLPPredictionHead(config.d_model, config.d_model, 4)
        self._declare_unused_batchnorm_counters()

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> DetrOutput:
        hidden = self.model(pixel_values, pixel_mask)  # (B, Q, D)
        return DetrOutput(self.class_labels_classifier(hidden), self.bbox_predictor(hidden).sigmoid())


def init_like_hf(
    name: str, tensor: torch.Tensor, module: nn.Module, config: DetrConfig, generator: torch.Generator
) -> None:
    """transformers' initialisation of one DETR state-dict entry, drawn from `generator` (in
    place): the backbone's convolutions kaiming-normal (fan_out, relu) and its BatchNorms the
    identity (ResNet's rule), every other weight normal(0, init_std), biases zero, LayerNorms
    the identity."""
    with torch.no_grad():
        leaf = name.rpartition(".")[2]
        if isinstance(module, DetrFrozenBatchNorm2d):
            tensor.fill_(1.0 if leaf in ("weight", "running_var") else 0.0)
        elif leaf == "bias":
            tensor.zero_()
        elif isinstance(module, nn.LayerNorm):
            tensor.fill_(1.0)
        elif isinstance(module, nn.Conv2d) and ".backbone." in f".{name}":
            tmp = torch.empty(tensor.shape, dtype=torch.float32)
            nn.init.kaiming_normal_(tmp, mode="fan_out", nonlinearity="relu", generator=generator)
            tensor.copy_(tmp)
        else:
            tensor.copy_(
                torch.empty(tensor.shape, dtype=torch.float32).normal_(0.0, config.init_std, generator=generator)
            )


# --- deployables ----------------------------------------------------------------------------

TINY_BACKBONE = {
    "model_type": "resnet",
    "embedding_size": 8,
    "hidden_sizes": [16, 16, 32, 32],
    "depths": [1, 2, 1, 1],
    "layer_type": "bottleneck",
    "out_features": ["stage4"],
}

DEPLOYABLES = (
    object_detection(
        DetrForObjectDetection,
        tiny=dict(
            use_timm_backbone=False,
            backbone_config=TINY_BACKBONE,
            d_model=16,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            num_queries=12,
        ),
        # DetrImageProcessor's steps at a smaller size, so that the tests' photos stay cheap
        tiny_preprocessor={
            "image_processor_type": "DetrImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": 480, "longest_edge": 800},
            "resample": 2,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
            "do_pad": True,
            "format": "coco_detection",
        },
        # the classifier, the query position embeddings and the cross-attention projections:
        # queries that differ, some scoring above 0.5 and some below (tests/test_detr.py)
        sharpen=(
            r"class_labels_classifier\.(weight|bias)",
            r"model\.query_position_embeddings\.weight",
            r"model\.decoder\.layers\.\d+\.encoder_attn\.(q|k|v|out)_proj\.weight",
        ),
    ),
)
