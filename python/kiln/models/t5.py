"""T5 (T5ForConditionalGeneration: t5-*, t5 v1.1, flan-t5-*): config, RMS-normed pre-LN encoder
and decoder with bucketed relative position bias, LM head, and the two generation graphs.

Attribute names are the Hugging Face state-dict names (`shared`, `encoder.block.0.layer.0.SelfAttention.q`,
`encoder.block.0.layer.0.SelfAttention.relative_attention_bias`, `decoder.block.0.layer.1.EncDecAttention`,
`encoder.block.0.layer.1.DenseReluDense.wi` or `.wi_0` / `.wi_1`, `lm_head`).

What T5 does differently from BART, each checked against transformers:
- no absolute positions: the first layer of each stack holds a relative position bias (buckets of
  key position - query position, bidirectional in the encoder, causal in the decoder), which
  every layer of the stack adds to its attention scores; the decoder's is computed inside the
  graph from the absolute positions (position_ids: past length + offset), so one graph serves
  prefill and decode;
- RMS LayerNorm (no mean, no bias) and no 1/sqrt(d) scaling of the attention scores;
- a ReLU feed-forward (t5 v1.0) or a gated one (`feed_forward_proj: gated-gelu`: v1.1, flan-t5);
- the decoder output scaled by d_model^-0.5 before a tied LM head. transformers 5 records this as
  `scale_decoder_outputs`; checkpoints saved before it say `tie_word_embeddings: false` (v1.1,
  flan-t5) for an untied head of their own and no scaling;
- decoding starts from the pad token (`decoder_start_token_id` = pad).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..deploy import hf_cache_tensor, seq2seq
from ..errors import InvalidArgumentError
from ..manifest import Cache
from .base import HFConfig, KilnModel
from .layers import (
    activation,
    additive_padding_mask,
    cached_attention,
    causal_cache_mask,
    check_activation,
    merge_heads,
)


@dataclass
class T5Config(HFConfig):
    model_type: ClassVar[str] = "t5"
    display_name: ClassVar[str] = "T5"
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    n_positions: int = 512  # the longest sequence it was trained on: kiln's range for source and total
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool | None = None  # transformers 5's name; None: tie_word_embeddings says
    task_specific_params: dict[str, Any] | None = None
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})

    def __post_init__(self) -> None:
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        if self.scale_decoder_outputs is None:
            self.scale_decoder_outputs = self.tie_word_embeddings
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise InvalidArgumentError(
                f"feed_forward_proj={self.feed_forward_proj!r}: expected ACT or gated-ACT, e.g. relu or gated-gelu"
            )
        check_activation(self.dense_act_fn, "feed_forward_proj")
        self.check_labels()

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        act = self.feed_forward_proj.split("-")[-1]
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else act  # as transformers maps it

    def task_settings(self, task: str) -> dict:
        """What the checkpoint's task_specific_params say for the task: the "prefix" ("summarize: ")
        and generation settings (t5-small: 4 beams, length_penalty 2, ...). For translation, English
        to German where present (t5-small's first), else the first translation_* entry."""
        params = self.task_specific_params or {}
        keys = (
            [task]
            if task != "translation"
            else ["translation_en_to_de", *sorted(k for k in params if k.startswith("translation"))]
        )
        entry: dict[str, Any] = next((params[k] for k in keys if isinstance(params.get(k), dict)), {})
        return dict(entry)


class T5LayerNorm(nn.Module):
    """RMS norm: x / sqrt(mean(x^2) + eps) * weight; no mean subtracted, no bias."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def relative_position_bucket(
    relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """Mesh TensorFlow's buckets of key position - query position: exact below num_buckets / 4
    (half of them per direction when bidirectional), logarithmic up to max_distance, one bucket beyond."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative > 0).to(torch.long) * num_buckets
        relative = torch.abs(relative)
    else:
        relative = -torch.min(relative, torch.zeros_like(relative))
    max_exact = num_buckets // 2
    is_small = relative < max_exact
    # export: log of a clamped float (no log(0) in the graph; those positions take the exact branch;
    # clamped as float: TensorRT has no INT64 Clip)
    large = max_exact + (
        torch.log(relative.float().clamp(min=1.0) / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(is_small, relative, large)


class T5Attention(nn.Module):
    """Attention without 1/sqrt(d) scaling; the first layer of a stack holds the relative bias."""

    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False, causal: bool = False):
        super().__init__()
        self.heads = config.num_heads
        inner = config.num_heads * config.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        self.causal = causal
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, -1).transpose(1, 2)  # (B, nh, T, d_kv)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.split(self.k(x)), self.split(self.v(x))

    def bias(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        """(..., Tq) query and (Tk,) key positions -> the bias (..., nh, Tq, Tk) (the first layer's table)."""
        relative = key_positions[None, :] - query_positions[..., None]  # (..., Tq, Tk)
        buckets = relative_position_bucket(relative, not self.causal, self.num_buckets, self.max_distance)
        values = self.relative_attention_bias(buckets)  # (..., Tq, Tk, nh)
        return values.movedim(-1, -3)  # (..., nh, Tq, Tk)

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.split(self.q(x))  # (B, nh, T, d_kv)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return self.o(merge_heads(y))


class T5FeedForward(nn.Module):
    """HF's DenseReluDense: wi -> act -> wo, or act(wi_0) * wi_1 -> wo (gated)."""

    def __init__(self, config: T5Config):
        super().__init__()
        if config.is_gated:
            self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
            self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        else:
            self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.act = activation(config.dense_act_fn)
        self.gated = config.is_gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(h)


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool, causal: bool):
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias, causal)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)


class T5LayerCrossAttention(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.EncDecAttention = T5Attention(config)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)


class T5LayerFF(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.DenseReluDense = T5FeedForward(config)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5EncoderBlock(nn.Module):
    def __init__(self, config: T5Config, first: bool):
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(config, first, causal=False), T5LayerFF(config)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        sa = cast(T5LayerSelfAttention, self.layer[0])
        h = sa.layer_norm(x)
        k, v = sa.SelfAttention.project_kv(h)
        x = x + sa.SelfAttention.attend(h, k, v, mask)
        return self.layer[1](x)


class T5DecoderBlock(nn.Module):
    def __init__(self, config: T5Config, first: bool):
        super().__init__()
        self.layer = nn.ModuleList(
            [T5LayerSelfAttention(config, first, causal=True), T5LayerCrossAttention(config), T5LayerFF(config)]
        )

    def forward(self, x, self_mask, past_k, past_v, cross_k, cross_v, cross_mask):
        sa, ca = cast(T5LayerSelfAttention, self.layer[0]), cast(T5LayerCrossAttention, self.layer[1])
        h = sa.layer_norm(x)
        att = sa.SelfAttention
        q, (k, v) = att.split(att.q(h)), att.project_kv(h)  # the new tokens' (B, nh, T, d_kv)
        # over the cache and themselves without concatenating them (layers.cached_attention); the
        # mask carries the relative position bias, (B, nh, T, P+T); T5 does not scale by 1/sqrt(d)
        x = x + att.o(merge_heads(cached_attention(q, k, v, past_k, past_v, self_mask, 1.0)))
        x = x + ca.EncDecAttention.attend(ca.layer_norm(x), cross_k, cross_v, cross_mask)
        return self.layer[2](x), torch.stack([k, v])


class T5Stack(nn.Module):
    def __init__(self, config: T5Config, shared: nn.Embedding, decoder: bool):
        super().__init__()
        self.embed_tokens = shared
        n = cast(int, config.num_decoder_layers) if decoder else config.num_layers
        block = T5DecoderBlock if decoder else T5EncoderBlock
        self.block = nn.ModuleList(block(config, first=i == 0) for i in range(n))
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    @property
    def relative(self) -> T5Attention:
        """The first layer's self-attention, which holds the stack's relative position table."""
        first = cast(T5EncoderBlock | T5DecoderBlock, self.block[0])
        return cast(T5LayerSelfAttention, first.layer[0]).SelfAttention


class T5ForConditionalGeneration(KilnModel):
    """encode(input_ids, attention_mask) -> cross_key_values (L, 2, B, nh, S, d_kv);
    decode(input_ids, attention_mask (B, P+T), position_ids, encoder_attention_mask, past_key_values,
    cross_key_values) -> (logits (B, T, V), present_key_values (L, 2, B, nh, P+T, d_kv));
    forward(input_ids, attention_mask, decoder_input_ids) -> logits: both, without a cache."""

    config_class = T5Config
    base_model_prefix = ""
    hf_architecture = "T5ForConditionalGeneration"
    tied_keys = {
        "lm_head.weight": "shared.weight",
        "encoder.embed_tokens.weight": "shared.weight",
        "decoder.embed_tokens.weight": "shared.weight",
    }
    # old checkpoints stored a relative table in the first cross-attention, which T5 never uses
    ignored_keys = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)

    def __init__(self, config: T5Config):
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, self.shared, decoder=False)
        self.decoder = T5Stack(config, self.shared, decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.shared.weight
        else:  # v1.1 / flan-t5: a head of its own, which the checkpoint must hold
            self.tied_keys = {k: v for k, v in self.tied_keys.items() if k != "lm_head.weight"}
        self.output_scale = config.d_model**-0.5 if config.scale_decoder_outputs else 1.0

    @property
    def cache_layout(self) -> Cache:
        c = self.config
        return Cache(cast(int, c.num_decoder_layers), c.num_heads, c.d_kv)

    def empty_cache(self, batch: int) -> torch.Tensor:
        c = self.cache_layout
        return torch.zeros(c.layers, 2, batch, c.heads, 0, c.head_dim)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.encoder.embed_tokens(input_ids)  # (B, S, C)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (S,)
        bias = self.encoder.relative.bias(positions, positions)[None]  # (1, nh, S, S)
        mask = bias + additive_padding_mask(attention_mask, x.dtype)  # (B, nh, S, S)
        for block in self.encoder.block:
            x = block(x, mask)
        hidden = self.encoder.final_layer_norm(x)
        layers = cast(list[T5DecoderBlock], list(self.decoder.block))
        return torch.stack(
            [
                torch.stack(cast(T5LayerCrossAttention, layer.layer[1]).EncDecAttention.project_kv(hidden))
                for layer in layers
            ]
        )  # (L, 2, B, nh, S, d_kv)

    def decode(
        self, input_ids, attention_mask, position_ids, encoder_attention_mask, past_key_values, cross_key_values
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.decoder.embed_tokens(input_ids)  # (B, T, C)
        keys = torch.arange(attention_mask.shape[1], device=input_ids.device)  # (P+T,)
        # export: the query positions come in as position_ids (past + offset), so the bias of a
        # decode step is the one transformers computes with its cache, in the same graph as the prefill
        bias = self.decoder.relative.bias(position_ids, keys)  # (B, nh, T, P+T)
        self_mask = bias + causal_cache_mask(attention_mask, input_ids.shape[1], x.dtype)
        cross_mask = additive_padding_mask(encoder_attention_mask, x.dtype)  # (B, 1, 1, S)
        new = []
        for i, block in enumerate(self.decoder.block):
            x, kv = block(
                x,
                self_mask,
                past_key_values[i, 0],
                past_key_values[i, 1],
                cross_key_values[i, 0],
                cross_key_values[i, 1],
                cross_mask,
            )
            new.append(kv)  # (2, B, nh, T, d_kv)
        hidden = self.decoder.final_layer_norm(x) * self.output_scale
        # the present cache written once: (L, 2, B, nh, P+T, d_kv)
        return self.lm_head(hidden), torch.cat([past_key_values, torch.stack(new)], dim=4)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor
    ) -> torch.Tensor:
        b, t = decoder_input_ids.shape
        positions = torch.arange(t, device=decoder_input_ids.device)[None, :].expand(b, t)
        logits, _ = self.decode(
            decoder_input_ids,
            torch.ones_like(decoder_input_ids),
            positions,
            attention_mask,
            self.empty_cache(b),
            self.encode(input_ids, attention_mask),
        )
        return logits

    def init_weight(self, name: str, tensor: torch.Tensor, owner: nn.Module, generator: torch.Generator) -> None:
        """transformers' T5 init: normal with per-projection scales, RMS norms 1."""
        c = self.config
        f = c.initializer_factor
        std = 1.0 * f  # shared embeddings and an untied lm_head
        if isinstance(owner, T5LayerNorm):
            with torch.no_grad():
                tensor.fill_(f)
            return
        leaf = name.rsplit(".", 2)[-2]
        if leaf in ("wi", "wi_0", "wi_1"):
            std = f * c.d_model**-0.5
        elif leaf == "wo":
            std = f * c.d_ff**-0.5
        elif leaf == "q":
            std = f * (c.d_model * c.d_kv) ** -0.5
        elif leaf in ("k", "v"):
            std = f * c.d_model**-0.5
        elif leaf == "o":
            std = f * (c.num_heads * c.d_kv) ** -0.5
        elif leaf == "relative_attention_bias":
            std = f * c.d_model**-0.5
        with torch.no_grad():
            tensor.copy_(torch.empty(tensor.shape).normal_(0.0, std, generator=generator))


# --- deployables ----------------------------------------------------------------------------


def _cache(c: T5Config) -> Cache:
    return Cache(cast(int, c.num_decoder_layers), c.num_heads, c.d_kv)


def _defaults(c: T5Config) -> dict:
    return {
        "pad_token_id": c.pad_token_id,
        "eos_token_id": c.eos_token_id,
        "decoder_start_token_id": c.decoder_start_token_id,
    }


def _source(config: T5Config, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two source rows ending in </s>, the second right-padded."""
    ids = rng.integers(3, config.vocab_size, (2, 11), dtype=np.int64)
    ids[:, -1] = config.eos_token_id
    mask = np.ones((2, 11), np.int64)
    mask[1, 7:] = 0
    return ids, mask


def _run_hf(hf_model: Any, ids: np.ndarray, mask: np.ndarray, decoder_ids: np.ndarray) -> Any:
    return hf_model(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        decoder_input_ids=torch.from_numpy(decoder_ids),
        use_cache=True,
    )


def _encoder_case(hf_model: Any, config: T5Config, rng: np.random.Generator) -> tuple[dict, dict]:
    """transformers' cross-attention keys and values for a padded source batch."""
    ids, mask = _source(config, rng)
    out = _run_hf(hf_model, ids, mask, np.full((2, 1), config.decoder_start_token_id, np.int64))
    return {"input_ids": ids, "attention_mask": mask}, {
        "cross_key_values": hf_cache_tensor(out.past_key_values.cross_attention_cache)
    }


def _decoder_case(hf_model: Any, config: T5Config, rng: np.random.Generator) -> tuple[dict, dict]:
    """The decoder's prefill over transformers' cross keys/values, and transformers' logits and cache."""
    ids, mask = _source(config, rng)
    new = 6
    decoder_ids = rng.integers(3, config.vocab_size, (2, new), dtype=np.int64)
    decoder_ids[:, 0] = config.decoder_start_token_id
    out = _run_hf(hf_model, ids, mask, decoder_ids)
    c = _cache(config)
    feed = {
        "input_ids": decoder_ids,
        "attention_mask": np.ones((2, new), np.int64),
        "position_ids": np.broadcast_to(np.arange(new), (2, new)).copy(),
        "encoder_attention_mask": mask,
        "past_key_values": np.zeros((c.layers, 2, 2, c.heads, 0, c.head_dim), np.float32),
        "cross_key_values": hf_cache_tensor(out.past_key_values.cross_attention_cache).detach().numpy(),
    }
    return feed, {"logits": out.logits, "present_key_values": hf_cache_tensor(out.past_key_values.self_attention_cache)}


_TINY = dict(
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=16,
    relative_attention_max_distance=32,
    n_positions=128,
    feed_forward_proj="gated-gelu",
    task_specific_params={
        "summarization": {"prefix": "summarize: "},
        "translation_en_to_de": {"prefix": "translate English to German: "},
    },
)

DEPLOYABLES = tuple(
    seq2seq(
        T5ForConditionalGeneration,
        task,
        cache=_cache,
        positions=lambda c: c.n_positions,
        defaults=_defaults,
        tokenizer="t5",
        task_settings=lambda c, task: c.task_settings(task),
        encoder_case=_encoder_case,
        decoder_case=_decoder_case,
        tiny=_TINY,
    )
    for task in ("summarization", "translation")
)
