"""BART (BartForConditionalGeneration): config, post-LN encoder and decoder, LM head, and the
two generation graphs.

Attribute names are the Hugging Face state-dict names (`model.shared`, `model.encoder.layers.0.self_attn.q_proj`,
`model.decoder.layers.0.encoder_attn`, `lm_head` tied to `model.shared`, the `final_logits_bias`
buffer). Learned positions are offset by 2, as fairseq's BART laid them out.

Generation runs two graphs: the encoder (`encode`), which also projects its output through
every decoder layer's cross-attention keys and values once per input, and the decoder
(`decode`), which takes the self-attention cache and those cross keys/values. Caches are
one tensor each, (layers, 2 [keys, values], batch, heads, seq, head_dim). mBART (models/mbart.py)
is the same model with pre-LN layers and final LayerNorms (`pre_norm`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..deploy import hf_cache_tensor, seq2seq
from ..manifest import Cache
from .base import HFConfig, KilnModel
from .layers import (
    activation,
    additive_padding_mask,
    cached_attention,
    causal_cache_mask,
    check_activation,
    merge_heads,
    split_heads,
)

POSITION_OFFSET = 2  # fairseq reserved the first two position rows


@dataclass
class BartConfig(HFConfig):
    model_type: ClassVar[str] = "bart"
    display_name: ClassVar[str] = "BART"
    # mBART: LayerNorm before each sublayer (not after), and a final one after each stack
    pre_norm: ClassVar[bool] = False
    unsupported: ClassVar[tuple[tuple[str, str], ...]] = (
        ("add_bias_logits", "a learned logits bias beside final_logits_bias"),
        ("normalize_before", "pre-layer-norm blocks (mBART)"),
        ("add_final_layer_norm", "final encoder/decoder LayerNorms (mBART)"),
    )
    vocab_size: int = 50265
    max_position_embeddings: int = 1024
    d_model: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 12
    encoder_attention_heads: int = 16
    decoder_attention_heads: int = 16
    encoder_ffn_dim: int = 4096
    decoder_ffn_dim: int = 4096
    activation_function: str = "gelu"
    scale_embedding: bool = False
    init_std: float = 0.02
    bos_token_id: int | None = 0
    pad_token_id: int | None = 1
    eos_token_id: int | None = 2
    decoder_start_token_id: int | None = 2
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = 2
    tie_word_embeddings: bool = True
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})

    def __post_init__(self) -> None:
        check_activation(self.activation_function, "activation_function")
        self.check_multiple("d_model", "encoder_attention_heads")
        self.check_multiple("d_model", "decoder_attention_heads")
        self.check_labels()


class BartAttention(nn.Module):
    """Multi-head attention over given keys/values (projected here, or precomputed)."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (d_model // heads) ** -0.5
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return split_heads(self.k_proj(x), self.heads), split_heads(self.v_proj(x), self.heads)  # (B, nh, S, hs)

    def attend(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.q_proj(x), self.heads)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.out_proj(merge_heads(y))  # (B, T, C)

    def attend_cached(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        past_k: torch.Tensor,
        past_v: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """attend() over the cache and the new tokens' keys / values, without concatenating them
        (layers.cached_attention)."""
        q = split_heads(self.q_proj(x), self.heads)  # (B, nh, T, hs)
        return self.out_proj(merge_heads(cached_attention(q, k, v, past_k, past_v, mask, self.scale)))


class BartEncoderLayer(nn.Module):
    def __init__(self, config: BartConfig):
        super().__init__()
        d = config.d_model
        self.self_attn = BartAttention(d, config.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.act = activation(config.activation_function)
        self.pre_norm = config.pre_norm

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:  # mBART
            h = self.self_attn_layer_norm(x)
            x = x + self.self_attn.attend(h, *self.self_attn.project_kv(h), mask)
            return x + self.fc2(self.act(self.fc1(self.final_layer_norm(x))))
        k, v = self.self_attn.project_kv(x)
        x = self.self_attn_layer_norm(x + self.self_attn.attend(x, k, v, mask))
        return self.final_layer_norm(x + self.fc2(self.act(self.fc1(x))))


class BartDecoderLayer(nn.Module):
    def __init__(self, config: BartConfig):
        super().__init__()
        d = config.d_model
        self.self_attn = BartAttention(d, config.decoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = BartAttention(d, config.decoder_attention_heads)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.act = activation(config.activation_function)
        self.pre_norm = config.pre_norm

    def forward(self, x, self_mask, past_k, past_v, cross_k, cross_v, cross_mask):
        """-> (output (B, T, C), the new tokens' self-attention keys and values (2, B, nh, T, hs))."""
        h = self.self_attn_layer_norm(x) if self.pre_norm else x
        k, v = self.self_attn.project_kv(h)  # (B, nh, T, hs)
        if self.pre_norm:  # mBART
            x = x + self.self_attn.attend_cached(h, k, v, past_k, past_v, self_mask)
            x = x + self.encoder_attn.attend(self.encoder_attn_layer_norm(x), cross_k, cross_v, cross_mask)
            return x + self.fc2(self.act(self.fc1(self.final_layer_norm(x)))), torch.stack([k, v])
        x = self.self_attn_layer_norm(x + self.self_attn.attend_cached(x, k, v, past_k, past_v, self_mask))
        x = self.encoder_attn_layer_norm(x + self.encoder_attn.attend(x, cross_k, cross_v, cross_mask))
        return self.final_layer_norm(x + self.fc2(self.act(self.fc1(x)))), torch.stack([k, v])


class _Embeddings(nn.Module):
    """Token embeddings (scaled when scale_embedding) + learned positions, then layernorm_embedding."""

    def __init__(self, config: BartConfig, shared: nn.Embedding):
        super().__init__()
        self.embed_tokens = shared
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET, config.d_model)
        self.layernorm_embedding = nn.LayerNorm(config.d_model)
        self.embed_scale = config.d_model**0.5 if config.scale_embedding else 1.0

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids) * self.embed_scale + self.embed_positions(position_ids + POSITION_OFFSET)
        return self.layernorm_embedding(x)  # (B, T, C)


class BartEncoder(_Embeddings):
    def __init__(self, config: BartConfig, shared: nn.Embedding):
        super().__init__(config, shared)
        self.layers = nn.ModuleList(BartEncoderLayer(config) for _ in range(config.encoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model) if config.pre_norm else nn.Identity()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]  # (1, S)
        x = self.embed(input_ids, positions)
        mask = additive_padding_mask(attention_mask, x.dtype)  # (B, 1, 1, S)
        for layer in self.layers:
            x = layer(x, mask)
        return self.layer_norm(x)  # (B, S, C)


class BartDecoder(_Embeddings):
    def __init__(self, config: BartConfig, shared: nn.Embedding):
        super().__init__(config, shared)
        self.layers = nn.ModuleList(BartDecoderLayer(config) for _ in range(config.decoder_layers))
        self.layer_norm = nn.LayerNorm(config.d_model) if config.pre_norm else nn.Identity()

    def forward(
        self, input_ids, attention_mask, position_ids, encoder_attention_mask, past_key_values, cross_key_values
    ):
        x = self.embed(input_ids, position_ids)
        self_mask = causal_cache_mask(attention_mask, input_ids.shape[1], x.dtype)  # (B, 1, T, P+T)
        cross_mask = additive_padding_mask(encoder_attention_mask, x.dtype)  # (B, 1, 1, S)
        new = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(
                x,
                self_mask,
                past_key_values[i, 0],
                past_key_values[i, 1],
                cross_key_values[i, 0],
                cross_key_values[i, 1],
                cross_mask,
            )
            new.append(kv)  # (2, B, nh, T, hs)
        # the present cache written once: (B, T, C), (L, 2, B, nh, P+T, hs)
        return self.layer_norm(x), torch.cat([past_key_values, torch.stack(new)], dim=4)


class BartModel(nn.Module):
    def __init__(self, config: BartConfig):
        super().__init__()
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        # tie_word_embeddings false (transformers 5): the encoder, the decoder and the LM head each
        # have their own table, loaded from the checkpoint; `shared` is then stored but unused
        tied = config.tie_word_embeddings
        self.encoder = BartEncoder(config, self.shared if tied else nn.Embedding(config.vocab_size, config.d_model))
        self.decoder = BartDecoder(config, self.shared if tied else nn.Embedding(config.vocab_size, config.d_model))


class BartForConditionalGeneration(KilnModel):
    """encode(input_ids, attention_mask) -> cross_key_values (L, 2, B, nh, S, hs);
    decode(input_ids, attention_mask (B, P+T), position_ids, encoder_attention_mask, past_key_values,
    cross_key_values) -> (logits (B, T, V), present_key_values (L, 2, B, nh, P+T, hs));
    forward(input_ids, attention_mask, decoder_input_ids) -> logits: both, without a cache."""

    config_class = BartConfig
    base_model_prefix = "model"
    hf_architecture = "BartForConditionalGeneration"
    tied_keys = {
        "lm_head.weight": "model.shared.weight",
        "model.encoder.embed_tokens.weight": "model.shared.weight",
        "model.decoder.embed_tokens.weight": "model.shared.weight",
    }
    head_keys = ("final_logits_bias",)

    def __init__(self, config: BartConfig):
        super().__init__(config)
        self.model = BartModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.shared.weight
        else:  # a fine-tuned head of its own: loaded from the checkpoint, whose lack of it is an error
            self.tied_keys = {}
        self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size))

    @property
    def cache_layout(self) -> tuple[int, int, int]:
        c = self.config
        return c.decoder_layers, c.decoder_attention_heads, c.d_model // c.decoder_attention_heads

    def empty_cache(self, batch: int) -> torch.Tensor:
        layers, heads, head_dim = self.cache_layout
        return torch.zeros(layers, 2, batch, heads, 0, head_dim)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model.encoder(input_ids, attention_mask)  # (B, S, C)
        layers = cast(list[BartDecoderLayer], list(self.model.decoder.layers))
        return torch.stack(
            [torch.stack(layer.encoder_attn.project_kv(hidden)) for layer in layers]
        )  # (L, 2, B, nh, S, hs)

    def decode(
        self, input_ids, attention_mask, position_ids, encoder_attention_mask, past_key_values, cross_key_values
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, present = self.model.decoder(
            input_ids, attention_mask, position_ids, encoder_attention_mask, past_key_values, cross_key_values
        )
        return self.lm_head(hidden) + self.final_logits_bias, present

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
        """transformers' BART init: normal(0, init_std) for weights and embeddings, zero biases
        and final_logits_bias, LayerNorm 1/0."""
        with torch.no_grad():
            if name.endswith("bias"):
                tensor.zero_()
            elif isinstance(owner, nn.LayerNorm):
                tensor.fill_(1.0)
            else:
                tensor.copy_(torch.empty(tensor.shape).normal_(0.0, self.config.init_std, generator=generator))


# --- deployables ----------------------------------------------------------------------------


def _cache(c: BartConfig) -> Cache:
    return Cache(c.decoder_layers, c.decoder_attention_heads, c.d_model // c.decoder_attention_heads)


_GENERATION_KEYS = (
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
)


def _defaults(c: BartConfig) -> dict:
    return {k: getattr(c, k) for k in _GENERATION_KEYS if getattr(c, k, None) is not None}


def _source(config: BartConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two source rows, the second right-padded."""
    ids = rng.integers(3, config.vocab_size, (2, 11), dtype=np.int64)
    mask = np.ones((2, 11), np.int64)
    mask[1, 7:] = 0
    return ids, mask


def _run_hf(hf_model, ids: np.ndarray, mask: np.ndarray, decoder_ids: np.ndarray):
    import torch

    return hf_model(
        input_ids=torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        decoder_input_ids=torch.from_numpy(decoder_ids),
        use_cache=True,
    )


def _encoder_case(hf_model, config: BartConfig, rng: np.random.Generator) -> tuple[dict, dict]:
    """transformers' cross-attention keys and values for a padded source batch."""
    ids, mask = _source(config, rng)
    out = _run_hf(hf_model, ids, mask, np.full((2, 1), config.decoder_start_token_id, np.int64))
    return {"input_ids": ids, "attention_mask": mask}, {
        "cross_key_values": hf_cache_tensor(out.past_key_values.cross_attention_cache)
    }


def _decoder_case(hf_model, config: BartConfig, rng: np.random.Generator) -> tuple[dict, dict]:
    """The decoder's prefill over transformers' cross keys/values, and transformers' logits and cache."""
    ids, mask = _source(config, rng)
    new = 5
    decoder_ids = rng.integers(3, config.vocab_size, (2, new), dtype=np.int64)
    out = _run_hf(hf_model, ids, mask, decoder_ids)
    layers, heads, head_dim = config.decoder_layers, config.decoder_attention_heads, _cache(config).head_dim
    feed = {
        "input_ids": decoder_ids,
        "attention_mask": np.ones((2, new), np.int64),
        "position_ids": np.broadcast_to(np.arange(new), (2, new)).copy(),
        "encoder_attention_mask": mask,
        "past_key_values": np.zeros((layers, 2, 2, heads, 0, head_dim), np.float32),
        "cross_key_values": hf_cache_tensor(out.past_key_values.cross_attention_cache).detach().numpy(),
    }
    return feed, {"logits": out.logits, "present_key_values": hf_cache_tensor(out.past_key_values.self_attention_cache)}


_TINY = dict(
    d_model=64,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=128,
    decoder_ffn_dim=128,
    max_position_embeddings=128,
    bos_token_id=0,
    pad_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=2,
    forced_bos_token_id=0,
    forced_eos_token_id=2,
)

DEPLOYABLES = tuple(
    seq2seq(
        BartForConditionalGeneration,
        task,
        cache=_cache,
        positions=lambda c: c.max_position_embeddings,
        defaults=_defaults,
        tokenizer="bart",
        encoder_case=_encoder_case,
        decoder_case=_decoder_case,
        tiny=_TINY,
    )
    for task in ("summarization", "translation")
)
