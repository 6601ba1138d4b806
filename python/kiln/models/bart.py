"""BART (BartForConditionalGeneration): config, post-LN encoder and decoder, LM head, and the
two generation graphs.

Attribute names are the Hugging Face state-dict names (`model.shared`, `model.encoder.layers.0.self_attn.q_proj`,
`model.decoder.layers.0.encoder_attn`, `lm_head` tied to `model.shared`, the `final_logits_bias`
buffer). Learned positions are offset by 2, as fairseq's BART laid them out.

Generation runs two graphs: the encoder, which also projects its output through every decoder
layer's cross-attention keys and values once per input (BartEncoderGraph), and the decoder,
which takes the self-attention cache and those cross keys/values (BartDecoderGraph). Caches are
one tensor each, (layers, 2 [keys, values], batch, heads, seq, head_dim). mBART's pre-LN
variant is not implemented (model_type "mbart" is refused by the config).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .base import HFConfig, KilnModel
from .layers import (activation, additive_padding_mask, causal_cache_mask, check_activation, merge_heads,
                     split_heads)

POSITION_OFFSET = 2  # fairseq reserved the first two position rows


@dataclass
class BartConfig(HFConfig):
    model_type: ClassVar[str] = "bart"
    display_name: ClassVar[str] = "BART"
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
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

    def forward(self, x, self_mask, past_k, past_v, cross_k, cross_v, cross_mask):
        k, v = self.self_attn.project_kv(x)
        k = torch.cat([past_k, k], dim=2)  # (B, nh, P+T, hs)
        v = torch.cat([past_v, v], dim=2)
        x = self.self_attn_layer_norm(x + self.self_attn.attend(x, k, v, self_mask))
        x = self.encoder_attn_layer_norm(x + self.encoder_attn.attend(x, cross_k, cross_v, cross_mask))
        return self.final_layer_norm(x + self.fc2(self.act(self.fc1(x)))), k, v


class _Embeddings(nn.Module):
    """Token embeddings (scaled when scale_embedding) + learned positions, then layernorm_embedding."""

    def __init__(self, config: BartConfig, shared: nn.Embedding):
        super().__init__()
        self.embed_tokens = shared
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET, config.d_model)
        self.layernorm_embedding = nn.LayerNorm(config.d_model)
        self.embed_scale = config.d_model ** 0.5 if config.scale_embedding else 1.0

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids) * self.embed_scale + self.embed_positions(position_ids + POSITION_OFFSET)
        return self.layernorm_embedding(x)  # (B, T, C)


class BartEncoder(_Embeddings):
    def __init__(self, config: BartConfig, shared: nn.Embedding):
        super().__init__(config, shared)
        self.layers = nn.ModuleList(BartEncoderLayer(config) for _ in range(config.encoder_layers))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]  # (1, S)
        x = self.embed(input_ids, positions)
        mask = additive_padding_mask(attention_mask, x.dtype)  # (B, 1, 1, S)
        for layer in self.layers:
            x = layer(x, mask)
        return x  # (B, S, C)


class BartDecoder(_Embeddings):
    def __init__(self, config: BartConfig, shared: nn.Embedding):
        super().__init__(config, shared)
        self.layers = nn.ModuleList(BartDecoderLayer(config) for _ in range(config.decoder_layers))

    def forward(self, input_ids, attention_mask, position_ids, encoder_attention_mask, past_key_values,
                cross_key_values):
        x = self.embed(input_ids, position_ids)
        self_mask = causal_cache_mask(attention_mask, input_ids.shape[1], x.dtype)  # (B, 1, T, P+T)
        cross_mask = additive_padding_mask(encoder_attention_mask, x.dtype)  # (B, 1, 1, S)
        present = []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, self_mask, past_key_values[i, 0], past_key_values[i, 1],
                            cross_key_values[i, 0], cross_key_values[i, 1], cross_mask)
            present.append(torch.stack([k, v]))  # (2, B, nh, P+T, hs)
        return x, torch.stack(present)  # (B, T, C), (L, 2, B, nh, P+T, hs)


class BartModel(nn.Module):
    def __init__(self, config: BartConfig):
        super().__init__()
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = BartEncoder(config, self.shared)
        self.decoder = BartDecoder(config, self.shared)


class BartForConditionalGeneration(KilnModel):
    """encode(input_ids, attention_mask) -> cross_key_values (L, 2, B, nh, S, hs);
    decode(input_ids, attention_mask (B, P+T), position_ids, encoder_attention_mask, past_key_values,
    cross_key_values) -> (logits (B, T, V), present_key_values (L, 2, B, nh, P+T, hs));
    forward(input_ids, attention_mask, decoder_input_ids) -> logits: both, without a cache."""

    config_class = BartConfig
    base_model_prefix = "model"
    hf_architecture = "BartForConditionalGeneration"
    tied_keys = {"lm_head.weight": "model.shared.weight",
                 "model.encoder.embed_tokens.weight": "model.shared.weight",
                 "model.decoder.embed_tokens.weight": "model.shared.weight"}
    head_keys = ("final_logits_bias",)

    def __init__(self, config: BartConfig):
        super().__init__(config)
        self.model = BartModel(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.model.shared.weight
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
        return torch.stack([torch.stack(layer.encoder_attn.project_kv(hidden))
                            for layer in self.model.decoder.layers])  # (L, 2, B, nh, S, hs)

    def decode(self, input_ids, attention_mask, position_ids, encoder_attention_mask, past_key_values,
               cross_key_values) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, present = self.model.decoder(input_ids, attention_mask, position_ids, encoder_attention_mask,
                                             past_key_values, cross_key_values)
        return self.lm_head(hidden) + self.final_logits_bias, present

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                decoder_input_ids: torch.Tensor) -> torch.Tensor:
        b, t = decoder_input_ids.shape
        positions = torch.arange(t, device=decoder_input_ids.device)[None, :].expand(b, t)
        logits, _ = self.decode(decoder_input_ids, torch.ones_like(decoder_input_ids), positions, attention_mask,
                                self.empty_cache(b), self.encode(input_ids, attention_mask))
        return logits

    def init_weight(self, name: str, tensor: torch.Tensor, owner: nn.Module,
                    generator: torch.Generator) -> None:
        """transformers' BART init: normal(0, init_std) for weights and embeddings, zero biases
        and final_logits_bias, LayerNorm 1/0."""
        with torch.no_grad():
            if name.endswith("bias"):
                tensor.zero_()
            elif isinstance(owner, nn.LayerNorm):
                tensor.fill_(1.0)
            else:
                tensor.copy_(torch.empty(tensor.shape).normal_(0.0, self.config.init_std, generator=generator))


class BartEncoderGraph(nn.Module):
    """input_ids, attention_mask (B, S) -> cross_key_values (L, 2, B, nh, S, hs), once per input."""

    input_names = ("input_ids", "attention_mask")
    output_names = ("cross_key_values",)

    def __init__(self, model: BartForConditionalGeneration):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model.encode(input_ids, attention_mask)


class BartDecoderGraph(nn.Module):
    """One decoder step (or the prefill of the start tokens) over the self-attention cache."""

    input_names = ("input_ids", "attention_mask", "position_ids", "encoder_attention_mask", "past_key_values",
                   "cross_key_values")
    output_names = ("logits", "present_key_values")

    def __init__(self, model: BartForConditionalGeneration):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, encoder_attention_mask, past_key_values,
                cross_key_values):
        return self.model.decode(input_ids, attention_mask, position_ids, encoder_attention_mask,
                                 past_key_values, cross_key_values)


MODEL_CLASSES = {cls.__name__: cls for cls in (BartForConditionalGeneration,)}

__all__ = ["BartConfig", "BartForConditionalGeneration", "BartEncoderGraph", "BartDecoderGraph", "MODEL_CLASSES"]
