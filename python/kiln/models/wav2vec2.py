"""Wav2Vec2: raw 16 kHz waveform in, CTC character logits or an utterance label out.

Attribute names are the Hugging Face state-dict names (`wav2vec2.feature_extractor.conv_layers.0.conv`,
`wav2vec2.encoder.layers.3.attention.q_proj`, `lm_head`, `projector`, `classifier`), so a
checkpoint loads by name. The loading rules that are not a plain name match:

    base_model_prefix  "wav2vec2." in a head checkpoint, nothing in a Wav2Vec2Model one
    head_keys          lm_head (CTC) or projector + classifier (classification)
    ignored_keys       pre-training-only keys (masked_spec_embed, quantizer, project_hid/q)
                       and the other task's head
    checkpoint_renames the positional conv's weight norm: checkpoints written before
                       torch.nn.utils.parametrizations (transformers < 4.33 / torch < 2.1) name
                       its tensors `weight_g` / `weight_v`, newer ones
                       `parametrizations.weight.original0` / `original1`; kiln uses the new names

Both feature-encoder layouts are implemented: feat_extract_norm="group" (GroupNorm on the
first conv only; "base" checkpoints) and "layer" (LayerNorm after every conv; "large-lv60",
with the pre-LN `do_stable_layer_norm` encoder). The encoder is post-LN or pre-LN by
`do_stable_layer_norm`.

Every forward takes (input_values float32 [B, S], attention_mask int64 [B, S]). The mask is
reduced to frames the way transformers does it (number of real samples -> conv output
length -> the first that many frames are real); padded frames are zeroed before the
positional conv and masked in attention, exactly as transformers computes *when it is given
an attention mask*. transformers runs "base" (group-norm) checkpoints without a mask; with
an all-ones mask kiln computes the same thing, so the pipeline feeds all ones for those
(the feature extractor's `return_attention_mask` says which). Dropout, SpecAugment, LayerDrop
and the adapter are absent (inference only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..deploy import TaskCheck, argmax_check, audio_model, ctc_transcript_check
from ..errors import InvalidArgumentError
from ..manifest import TensorSpec
from .base import HFConfig, KilnModel
from .layers import activation, additive_padding_mask, check_activation, masked_mean


@dataclass
class Wav2Vec2Config(HFConfig):
    model_type: ClassVar[str] = "wav2vec2"
    display_name: ClassVar[str] = "Wav2Vec2"
    unsupported: ClassVar[tuple[tuple[str, str], ...]] = (
        ("add_adapter", "the adapter after the encoder"),
        ("use_weighted_layer_sum", "the weighted sum of every layer's hidden states"),
        ("adapter_attn_dim", "attention adapters (MMS)"),
    )
    vocab_size: int = 32
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512, 512, 512, 512, 512, 512, 512)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    classifier_proj_size: int = 256
    pad_token_id: int = 0
    initializer_range: float = 0.02
    mask_time_prob: float = 0.05  # > 0 (or mask_feature_prob > 0): checkpoints carry masked_spec_embed
    mask_feature_prob: float = 0.0
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})

    def __post_init__(self) -> None:
        check_activation(self.hidden_act)
        check_activation(self.feat_extract_activation, "feat_extract_activation")
        self.conv_dim, self.conv_stride, self.conv_kernel = (
            tuple(int(x) for x in self.conv_dim),
            tuple(int(x) for x in self.conv_stride),
            tuple(int(x) for x in self.conv_kernel),
        )
        if not (len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel) >= 1):
            raise InvalidArgumentError(
                f"conv_dim ({len(self.conv_dim)}), conv_stride ({len(self.conv_stride)}) and "
                f"conv_kernel ({len(self.conv_kernel)}) must have the same, non-zero length"
            )
        if self.feat_extract_norm not in ("group", "layer"):
            raise InvalidArgumentError(f"feat_extract_norm={self.feat_extract_norm!r}: expected 'group' or 'layer'")
        self.check_multiple("hidden_size", "num_attention_heads")
        self.check_multiple("hidden_size", "num_conv_pos_embedding_groups")
        self.check_labels()

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def frames(self, samples: int) -> int:
        """Encoder frames for `samples` input samples (the conv output length; 0 if too short)."""
        for k, s in zip(self.conv_kernel, self.conv_stride):
            samples = (samples - k) // s + 1
        return max(samples, 0)

    @property
    def min_samples(self) -> int:
        """The fewest samples that give one frame (400 for the standard 7-conv encoder)."""
        n = 1
        for k, s in reversed(list(zip(self.conv_kernel, self.conv_stride))):
            n = (n - 1) * s + k
        return n

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "num_feat_extract_layers": len(self.conv_dim)}


class Wav2Vec2Output(NamedTuple):
    last_hidden_state: torch.Tensor  # (B, T, H)
    frame_mask: torch.Tensor  # (B, T) int64: 1 for frames of real audio


# --- feature encoder ------------------------------------------------------------------------


class Wav2Vec2ConvLayer(nn.Module):
    """conv -> norm -> activation. norm is "group" (GroupNorm with one group per channel:
    each channel normalised over time), "layer" (LayerNorm over channels, per frame) or None."""

    def __init__(self, config: Wav2Vec2Config, layer_id: int, norm: str | None):
        super().__init__()
        in_dim = config.conv_dim[layer_id - 1] if layer_id > 0 else 1
        out_dim = config.conv_dim[layer_id]
        self.conv = nn.Conv1d(
            in_dim,
            out_dim,
            kernel_size=config.conv_kernel[layer_id],
            stride=config.conv_stride[layer_id],
            bias=config.conv_bias,
        )
        self.norm = norm
        self.layer_norm: nn.Module
        if norm == "group":
            self.layer_norm = nn.GroupNorm(out_dim, out_dim, affine=True)
        elif norm == "layer":
            self.layer_norm = nn.LayerNorm(out_dim)  # HF: torch's default eps, not layer_norm_eps
        self.activation = activation(config.feat_extract_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)  # (B, C, T')
        if self.norm == "group":
            x = self.layer_norm(x)
        elif self.norm == "layer":
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)  # normalise channels per frame
        return self.activation(x)


class Wav2Vec2FeatureEncoder(nn.Module):
    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        n = len(config.conv_dim)
        if config.feat_extract_norm == "group":
            norms = ["group"] + [None] * (n - 1)
        else:
            norms = ["layer"] * n
        self.conv_layers = nn.ModuleList(Wav2Vec2ConvLayer(config, i, norms[i]) for i in range(n))

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        x = input_values[:, None]  # (B, 1, S)
        for layer in self.conv_layers:
            x = layer(x)
        return x  # (B, C, T)


class Wav2Vec2FeatureProjection(nn.Module):
    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


# --- positional conv embedding (weight-normalised) -------------------------------------------


class _WeightNorm(nn.Module):
    """The two tensors of torch's weight_norm parametrization, under its state-dict names:
    original0 = g (1, 1, K), the per-kernel-position magnitude; original1 = v (H, H/groups, K)."""

    def __init__(self, g_shape: tuple[int, ...], v_shape: tuple[int, ...]):
        super().__init__()
        self.original0 = nn.Parameter(torch.ones(g_shape))
        self.original1 = nn.Parameter(torch.zeros(v_shape))

    def forward(self) -> torch.Tensor:
        # weight_norm(dim=2): v scaled to unit L2 norm over (out, in) for each kernel position
        v = self.original1
        return v * (self.original0 / torch.linalg.vector_norm(v, dim=(0, 1), keepdim=True))


class _Parametrizations(nn.Module):
    def __init__(self, weight: _WeightNorm):
        super().__init__()
        self.weight = weight


class Wav2Vec2WeightNormConv(nn.Module):
    """A grouped Conv1d whose weight is g * v / ||v||; `parametrizations.weight.original0/1`
    and `bias`, the names torch.nn.utils.parametrizations.weight_norm gives them.

    export: the normalised weight is computed in forward from the two parameters rather than
    once at load. The state dict then stays the checkpoint's (save_model round-trips, strict
    loading needs no special case), and the few elementwise ops on parameters alone are
    constant-folded where it matters (Inductor freezing, ONNX/TensorRT constant folding); in
    TorchScript they cost one pass over H*H/groups*K weights per call, negligible next to
    the encoder.
    """

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        h, k, groups = config.hidden_size, config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups
        self.parametrizations = _Parametrizations(_WeightNorm((1, 1, k), (h, h // groups, k)))
        self.bias = nn.Parameter(torch.zeros(h))
        self.padding = k // 2
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(x, self.parametrizations.weight(), self.bias, padding=self.padding, groups=self.groups)


class Wav2Vec2PositionalConvEmbedding(nn.Module):
    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.conv = Wav2Vec2WeightNormConv(config)
        # an even kernel with padding K//2 gives one frame too many: HF drops the last
        self.num_pad_remove = 1 if config.num_conv_pos_embeddings % 2 == 0 else 0
        self.activation = activation(config.feat_extract_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        y = self.conv(x.transpose(1, 2))  # (B, H, T + 1 - num_pad_remove)
        # export: a slice to the input length rather than [..., :-1]: one expression whatever
        # the kernel parity, and the output length is visibly T
        y = y[:, :, :T]
        return self.activation(y).transpose(1, 2)  # (B, T, H)


# --- encoder --------------------------------------------------------------------------------


class Wav2Vec2Attention(nn.Module):
    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        h = config.hidden_size
        self.k_proj = nn.Linear(h, h)
        self.v_proj = nn.Linear(h, h)
        self.q_proj = nn.Linear(h, h)
        self.out_proj = nn.Linear(h, h)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        # export: SDPA, as in BERT (one aten op; the ONNX exporter decomposes it)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bias)  # (B, nh, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, H))


class Wav2Vec2FeedForward(nn.Module):
    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = activation(config.hidden_act)
        self.output_dense = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(self.intermediate_act_fn(self.intermediate_dense(x)))


class Wav2Vec2EncoderLayer(nn.Module):
    """Post-LN (`do_stable_layer_norm=False`) or pre-LN (True); the same parameters either way."""

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.pre_ln = config.do_stable_layer_norm
        self.attention = Wav2Vec2Attention(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = Wav2Vec2FeedForward(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        if self.pre_ln:  # fixed at construction, not data-dependent
            x = x + self.attention(self.layer_norm(x), mask_bias)
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x, mask_bias))
        return self.final_layer_norm(x + self.feed_forward(x))


class Wav2Vec2Encoder(nn.Module):
    """HF's Wav2Vec2Encoder (post-LN: LayerNorm after the positional embedding) and
    Wav2Vec2EncoderStableLayerNorm (pre-LN: LayerNorm after the last layer) in one class."""

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        self.pre_ln = config.do_stable_layer_norm
        self.pos_conv_embed = Wav2Vec2PositionalConvEmbedding(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(Wav2Vec2EncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        # padded frames are zeroed before the positional conv sees them (as HF does)
        x = x * frame_mask[:, :, None].to(x.dtype)  # (B, T, H)
        x = x + self.pos_conv_embed(x)
        if not self.pre_ln:
            x = self.layer_norm(x)
        mask_bias = additive_padding_mask(frame_mask, x.dtype)  # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, mask_bias)
        if self.pre_ln:
            x = self.layer_norm(x)
        return x  # (B, T, H)


# --- checkpoint tables ----------------------------------------------------------------------

# Wav2Vec2ForPreTraining checkpoints (facebook/wav2vec2-base, -large-lv60) carry the
# quantizer and the contrastive projections; SpecAugment's masked_spec_embed is in nearly
# every checkpoint (mask_time_prob > 0 by default). None is used at inference.
_PRETRAINING_KEYS = (
    "wav2vec2.masked_spec_embed",
    "quantizer.codevectors",
    "quantizer.weight_proj.weight",
    "quantizer.weight_proj.bias",
    "project_hid.weight",
    "project_hid.bias",
    "project_q.weight",
    "project_q.bias",
)
_CTC_HEAD = ("lm_head.weight", "lm_head.bias")
_CLS_HEAD = ("projector.weight", "projector.bias", "classifier.weight", "classifier.bias")

# the positional conv's weight norm before torch.nn.utils.parametrizations existed
_RENAMES = ((".weight_g", ".parametrizations.weight.original0"), (".weight_v", ".parametrizations.weight.original1"))


class _Wav2Vec2Base(KilnModel):
    """The loading contract shared by every Wav2Vec2 class (see the module docstring)."""

    config_class = Wav2Vec2Config
    base_model_prefix = "wav2vec2"
    checkpoint_renames = _RENAMES
    hf_architecture = "Wav2Vec2Model"

    def init_weight(self, name: str, tensor: torch.Tensor, owner: nn.Module, generator: torch.Generator) -> None:
        init_like_hf(name, tensor, owner, self.config, generator)


def init_like_hf(
    name: str, tensor: torch.Tensor, module: nn.Module, config: Wav2Vec2Config, generator: torch.Generator
) -> None:
    """Wav2Vec2PreTrainedModel._init_weights for one parameter: norms at identity; the feature
    projection uniform(+-1/sqrt(in)); feature-encoder convs Kaiming-normal with uniform biases;
    the positional conv's v normal(0, 2/sqrt(K*H)) with g = ||v|| (so its weight starts at v);
    other Linear weights normal(0, initializer_range) with zero biases."""

    def draw(shape, std):
        return torch.empty(shape, dtype=torch.float32).normal_(0.0, std, generator=generator)

    def uniform(shape, k):
        return torch.empty(shape, dtype=torch.float32).uniform_(-k, k, generator=generator)

    leaf = name.rpartition(".")[2]
    with torch.no_grad():
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            tensor.fill_(1.0 if leaf == "weight" else 0.0)
        elif isinstance(module, _WeightNorm):
            if leaf == "original0":
                tensor.fill_(1.0)  # set from v when original1 is drawn (sorted order: 0 before 1)
            else:
                k, h = config.num_conv_pos_embeddings, config.hidden_size
                tensor.copy_(draw(tensor.shape, 2 * (1 / (k * h)) ** 0.5))
                module.original0.copy_(torch.linalg.vector_norm(tensor, dim=(0, 1), keepdim=True))
        elif isinstance(module, Wav2Vec2WeightNormConv):  # its bias
            tensor.zero_()
        elif isinstance(module, nn.Conv1d):
            fan_in = module.in_channels * module.kernel_size[0]
            if leaf == "weight":
                tensor.copy_(draw(tensor.shape, (2 / fan_in) ** 0.5))  # kaiming_normal_, fan_in, ReLU gain
            else:
                tensor.copy_(uniform(tensor.shape, (module.groups / fan_in) ** 0.5))
        elif isinstance(module, nn.Linear) and name.endswith("feature_projection.projection." + leaf):
            tensor.copy_(uniform(tensor.shape, (1 / module.in_features) ** 0.5))
        elif leaf == "bias":
            tensor.zero_()
        else:
            tensor.copy_(draw(tensor.shape, config.initializer_range))


def feature_lengths(config: Wav2Vec2Config, lengths: torch.Tensor) -> torch.Tensor:
    """Sample counts -> frame counts through the conv stack (HF's _get_feat_extract_output_lengths)."""
    for k, s in zip(config.conv_kernel, config.conv_stride):
        lengths = torch.div(lengths - k, s, rounding_mode="floor") + 1
    return lengths


class Wav2Vec2Model(_Wav2Vec2Base):
    """The body: waveform -> (B, frames, H) hidden states, plus the frame mask."""

    ignored_keys = tuple(k.removeprefix("wav2vec2.") for k in _PRETRAINING_KEYS)

    def __init__(self, config: Wav2Vec2Config):
        super().__init__(config)
        self.feature_extractor = Wav2Vec2FeatureEncoder(config)
        self.feature_projection = Wav2Vec2FeatureProjection(config)
        self.encoder = Wav2Vec2Encoder(config)

    def frame_mask(self, attention_mask: torch.Tensor, frames: int | torch.SymInt) -> torch.Tensor:
        """(B, S) sample mask -> (B, frames) int64 frame mask: the first
        conv_length(sum(mask)) frames are real, as transformers reduces it.

        export: arange-and-compare on the frame count from the conv output's shape; no
        scatter, no data-dependent shapes (HF builds it with an indexed write and a flipped
        cumsum, which is the same set of frames).
        """
        lengths = feature_lengths(self.config, attention_mask.sum(-1))  # (B,)
        # export: `frames` is symbolic (a SymInt) under torch.export; arange takes it as it is
        positions = torch.arange(frames, device=attention_mask.device)  # type: ignore[arg-type]  # (T,)
        return (positions[None, :] < lengths[:, None]).to(torch.int64)  # (B, T)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> Wav2Vec2Output:
        feats = self.feature_extractor(input_values).transpose(1, 2)  # (B, T, C)
        frame_mask = self.frame_mask(attention_mask, feats.shape[1])  # (B, T)
        hidden = self.feature_projection(feats)  # (B, T, H)
        return Wav2Vec2Output(self.encoder(hidden, frame_mask), frame_mask)


class Wav2Vec2ForCTC(_Wav2Vec2Base):
    """logits (B, frames, vocab_size): per-frame CTC scores (greedy decode: kiln.processing.ctc)."""

    head_keys = _CTC_HEAD
    ignored_keys = _PRETRAINING_KEYS + _CLS_HEAD
    hf_architecture = "Wav2Vec2ForCTC"

    def __init__(self, config: Wav2Vec2Config):
        super().__init__(config)
        self.wav2vec2 = Wav2Vec2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.wav2vec2(input_values, attention_mask)  # (B, T, H)
        return self.lm_head(hidden)  # (B, T, V)


class Wav2Vec2ForSequenceClassification(_Wav2Vec2Base):
    """logits (B, num_labels): projector, mean over the real frames, classifier."""

    head_keys = _CLS_HEAD
    ignored_keys = _PRETRAINING_KEYS + _CTC_HEAD
    hf_architecture = "Wav2Vec2ForSequenceClassification"

    def __init__(self, config: Wav2Vec2Config):
        super().__init__(config)
        self.wav2vec2 = Wav2Vec2Model(config)
        self.projector = nn.Linear(config.hidden_size, config.classifier_proj_size)
        self.classifier = nn.Linear(config.classifier_proj_size, config.num_labels)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden, frame_mask = self.wav2vec2(input_values, attention_mask)  # (B, T, H), (B, T)
        pooled = masked_mean(self.projector(hidden), frame_mask)  # (B, P)
        return self.classifier(pooled)  # (B, L)


# --- deployables ----------------------------------------------------------------------------
# Tiny sizes for the registry-driven tests: the standard 7-conv stack (so 1 s of audio is 49
# frames, as at real size), narrow, in the pre-LN "lv60" layout whose processor returns an
# attention mask. The audio fixture sets vocab_size to its character vocabulary's.
_TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    conv_dim=[16] * 7,
    conv_stride=[5, 2, 2, 2, 2, 2, 2],
    conv_kernel=[10, 3, 3, 3, 3, 2, 2],
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
    conv_bias=True,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4,
    classifier_proj_size=8,
)

DEPLOYABLES = (
    audio_model(
        Wav2Vec2ForCTC,
        "automatic-speech-recognition",
        lambda c: (TensorSpec("logits", "float32", ("batch", "frames", c.vocab_size)),),
        TaskCheck("same transcript", ctc_transcript_check()),
        tiny=_TINY,
    ),
    audio_model(
        Wav2Vec2ForSequenceClassification,
        "audio-classification",
        lambda c: (TensorSpec("logits", "float32", ("batch", c.num_labels)),),
        TaskCheck("same top-1 label", argmax_check("logits")),
        labels=True,
        tiny=_TINY,
    ),
)
