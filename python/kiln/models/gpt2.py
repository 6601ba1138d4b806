"""GPT-2 (and DistilGPT-2, a config of it): config, decoder with an explicit KV cache, LM head.

Attribute names are the Hugging Face state-dict names (`transformer.wte`, `transformer.h.0.attn.c_attn`,
`transformer.ln_f`, `lm_head` tied to `transformer.wte`). GPT-2's projections are HF "Conv1D"
modules whose weight is stored (in, out); kiln keeps that layout so checkpoints load by name.

The KV cache is one tensor, (layers, 2 [keys, values], batch, heads, seq, head_dim), taken and
returned by forward: prefill is a call with an empty cache (seq 0), decode a call with the
present cache of the previous call. Dropout is absent (inference only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..deploy import causal_lm, hf_cache_tensor
from ..manifest import Cache, Tolerance
from .base import HFConfig, KilnModel
from .layers import activation, cached_attention, causal_cache_mask, check_activation, merge_heads, split_heads


@dataclass
class GPT2Config(HFConfig):
    model_type: ClassVar[str] = "gpt2"
    display_name: ClassVar[str] = "GPT-2"
    unsupported: ClassVar[tuple[tuple[str, str], ...]] = (
        ("scale_attn_by_inverse_layer_idx", "attention scaled by 1 / layer index (Mistral-style GPT-2)"),
        ("reorder_and_upcast_attn", "upcast attention reordering"),
        ("add_cross_attention", "cross-attention in GPT-2 (encoder-decoder use)"),
    )
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # None: 4 * n_embd
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None
    tie_word_embeddings: bool = True
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})

    def __post_init__(self) -> None:
        check_activation(self.activation_function, "activation_function")
        self.check_multiple("n_embd", "n_head")
        self.check_labels()

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# int8 decoders (kiln build --precision int8: int8 weights per channel, int8 activations per
# token). Measured by `kiln parity` on GPT-2 small (random weights, 49 of 49 linears int8) over
# the parity feeds: logits max abs 0.096 (cosine 0.99935), present_key_values 0.094 (0.99955).
# Bounds: about twice that (README "int8 engines").
INT8_LOGITS = Tolerance(0.2, 5e-2, "int8: measured max abs 0.096 on GPT-2 small (random weights); bound ~2x")
INT8_CACHE = Tolerance(0.2, 5e-2, "int8: measured max abs 0.094 on GPT-2 small (random weights); bound ~2x")


class Conv1D(nn.Module):
    """HF's GPT-2 projection: weight stored (in, out), y = x W + b."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # export: F.linear on the transposed weight, so Inductor's freezing folds the transpose
        # and packs the weight for oneDNN like any nn.Linear
        return F.linear(x, self.weight.t(), self.bias)


class GPT2Attention(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.scale = 1.0 / math.sqrt(config.head_dim) if config.scale_attn_weights else 1.0

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (output (B, T, C), the new tokens' keys and values (2, B, nh, T, hs))."""
        q, k, v = (split_heads(t, self.n_head) for t in self.c_attn(x).split(self.n_embd, dim=2))  # (B, nh, T, hs)
        y = cached_attention(q, k, v, past_k, past_v, mask, self.scale)  # (B, nh, T, hs)
        return self.c_proj(merge_heads(y)), torch.stack([k, v])


class GPT2MLP(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = Conv1D(config.n_embd, inner)
        self.c_proj = Conv1D(inner, config.n_embd)
        self.act = activation(config.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(self, x, mask, past_k, past_v):
        a, kv = self.attn(self.ln_1(x), mask, past_k, past_v)
        x = x + a
        return x + self.mlp(self.ln_2(x)), kv


class GPT2Model(nn.Module):
    def __init__(self, config: GPT2Config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(GPT2Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, input_ids, attention_mask, position_ids, past_key_values):
        x = self.wte(input_ids) + self.wpe(position_ids)  # (B, T, C)
        mask = causal_cache_mask(attention_mask, input_ids.shape[1], x.dtype)  # (B, 1, T, P+T)
        new = []
        for i, block in enumerate(self.h):
            x, kv = block(x, mask, past_key_values[i, 0], past_key_values[i, 1])
            new.append(kv)  # (2, B, nh, T, hs)
        # the present cache written once: (B, T, C), (L, 2, B, nh, P+T, hs)
        return self.ln_f(x), torch.cat([past_key_values, torch.stack(new)], dim=4)


class GPT2LMHeadModel(KilnModel):
    """forward(input_ids (B, T), attention_mask (B, P+T), position_ids (B, T),
    past_key_values (L, 2, B, nh, P, hs)) -> (logits (B, 1, V), present_key_values (L, 2, B, nh, P+T, hs)).

    The logits are the last new position's only: generation reads nothing else, and the
    vocabulary projection over every position of a prompt (79 GFLOP and a 206 MB tensor at
    8 x 128) cost a third of the time to the first token. transformers' generate keeps only
    the last position too (`logits_to_keep`)."""

    config_class = GPT2Config
    base_model_prefix = "transformer"
    hf_architecture = "GPT2LMHeadModel"
    tied_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPT2Config):
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        else:  # a fine-tuned head of its own: loaded from the checkpoint, whose lack of it is an error
            self.tied_keys = {}
        # the causal-mask buffers older checkpoints carry: known, unused
        self.ignored_keys = tuple(
            f"transformer.h.{i}.attn.{b}" for i in range(config.n_layer) for b in ("bias", "masked_bias")
        )

    def empty_cache(self, batch: int) -> torch.Tensor:
        c = self.config
        return torch.zeros(c.n_layer, 2, batch, c.n_head, 0, c.head_dim)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, present = self.transformer(input_ids, attention_mask, position_ids, past_key_values)
        return self.lm_head(hidden[:, -1:]), present

    def init_weight(self, name: str, tensor: torch.Tensor, owner: nn.Module, generator: torch.Generator) -> None:
        """transformers' GPT-2 init: normal(0, initializer_range), zero biases, LayerNorm 1/0,
        and the residual projections (c_proj) scaled by 1 / sqrt(2 * n_layer)."""
        std = self.config.initializer_range
        with torch.no_grad():
            if name.endswith("bias"):
                tensor.zero_()
            elif isinstance(owner, nn.LayerNorm):
                tensor.fill_(1.0)
            else:
                if name.endswith("c_proj.weight"):
                    std = std / math.sqrt(2 * self.config.n_layer)
                tensor.copy_(torch.empty(tensor.shape).normal_(0.0, std, generator=generator))


# --- deployables ----------------------------------------------------------------------------


def _cache(c: GPT2Config) -> Cache:
    return Cache(c.n_layer, c.n_head, c.head_dim)


def _defaults(c: GPT2Config) -> dict:
    return {"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id}


def _decoder_case(hf_model, config: GPT2Config, rng: np.random.Generator) -> tuple[dict, dict]:
    """A prefill (past 0) of two prompts and transformers' logits and cache for them."""
    import torch

    batch, new = 2, 7
    feed = {
        "input_ids": rng.integers(0, config.vocab_size, (batch, new), dtype=np.int64),
        "attention_mask": np.ones((batch, new), np.int64),
        "position_ids": np.broadcast_to(np.arange(new), (batch, new)).copy(),
        "past_key_values": np.zeros((config.n_layer, 2, batch, config.n_head, 0, config.head_dim), np.float32),
    }
    args = {k: torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask", "position_ids")}
    out = hf_model(**args, use_cache=True)
    return feed, {"logits": out.logits[:, -1:], "present_key_values": hf_cache_tensor(out.past_key_values)}


DEPLOYABLES = (
    causal_lm(
        GPT2LMHeadModel,
        cache=_cache,
        positions=lambda c: c.n_positions,
        defaults=_defaults,
        tokenizer="gpt2",
        reference_case=_decoder_case,
        tiny=dict(n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=50256, eos_token_id=50256),
        int8={"logits": INT8_LOGITS, "cache": INT8_CACHE},
    ),
)
