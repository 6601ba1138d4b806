"""DistilBERT: config, encoder, and the task heads the seed material's guides fine-tune
(text classification, token classification, question answering).

Attribute names are the Hugging Face state-dict names (`distilbert.embeddings.word_embeddings`,
`distilbert.transformer.layer.0.attention.q_lin`, `pre_classifier`, `classifier`, `qa_outputs`),
so a checkpoint loads by name; the rules that are not a plain name match are declared on each
class (see kiln/models/bert.py for what each attribute means).

DistilBERT is BERT without token types and pooler: 6 post-LN layers whose position embeddings
are learned, or fixed sinusoids when `sinusoidal_pos_embds` is set (stored in the checkpoint
either way, so both load alike; a random checkpoint computes the sinusoids as transformers does).
Every forward takes (input_ids, attention_mask), int64 [B, T].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..deploy import TaskCheck, argmax_check, qa_span_check, text_encoder
from ..manifest import TensorSpec
from .base import HFConfig, KilnModel
from .layers import activation, additive_padding_mask, check_activation, merge_heads, split_heads


@dataclass
class DistilBertConfig(HFConfig):
    model_type: ClassVar[str] = "distilbert"
    display_name: ClassVar[str] = "DistilBERT"
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False
    n_layers: int = 6
    n_heads: int = 12
    dim: int = 768
    hidden_dim: int = 3072
    activation: str = "gelu"
    initializer_range: float = 0.02
    pad_token_id: int = 0
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})

    def __post_init__(self) -> None:
        check_activation(self.activation, "activation")
        self.check_multiple("dim", "n_heads")
        self.check_labels()


class QAOutput(NamedTuple):
    start_logits: torch.Tensor  # (B, T)
    end_logits: torch.Tensor  # (B, T)


class Embeddings(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.dim, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.dim)
        self.LayerNorm = nn.LayerNorm(config.dim, eps=1e-12)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # export: positions from arange of the sequence length: T stays symbolic in every graph
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))  # (B, T, C)


class MultiHeadSelfAttention(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.q_lin = nn.Linear(config.dim, config.dim)
        self.k_lin = nn.Linear(config.dim, config.dim)
        self.v_lin = nn.Linear(config.dim, config.dim)
        self.out_lin = nn.Linear(config.dim, config.dim)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        q = split_heads(self.q_lin(x), self.n_heads)  # (B, nh, T, hs)
        k = split_heads(self.k_lin(x), self.n_heads)
        v = split_heads(self.v_lin(x), self.n_heads)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bias)  # scaled by 1/sqrt(hs)
        return self.out_lin(merge_heads(y))  # (B, T, C)


class FFN(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.lin1 = nn.Linear(config.dim, config.hidden_dim)
        self.lin2 = nn.Linear(config.hidden_dim, config.dim)
        self.act = activation(config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(self.act(self.lin1(x)))


class TransformerBlock(nn.Module):
    """Post-LN: x = LN(x + attn(x)), then LN(x + ffn(x))."""

    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.attention = MultiHeadSelfAttention(config)
        self.sa_layer_norm = nn.LayerNorm(config.dim, eps=1e-12)
        self.ffn = FFN(config)
        self.output_layer_norm = nn.LayerNorm(config.dim, eps=1e-12)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.sa_layer_norm(self.attention(x, mask_bias) + x)
        return self.output_layer_norm(self.ffn(x) + x)


class Transformer(nn.Module):
    def __init__(self, config: DistilBertConfig):
        super().__init__()
        self.layer = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


# Keys of the masked-LM head that pre-trained checkpoints (distilbert-base-uncased is a
# DistilBertForMaskedLM) carry: the task heads reuse the body only.
_MLM_KEYS = (
    "vocab_transform.weight",
    "vocab_transform.bias",
    "vocab_layer_norm.weight",
    "vocab_layer_norm.bias",
    "vocab_projector.weight",
    "vocab_projector.bias",
)


def _ignored(prefix: str) -> tuple[str, ...]:
    # transformers < 4.31 saved the (non-learned) position_ids buffer; kiln computes positions
    return (f"{prefix}embeddings.position_ids", *_MLM_KEYS)


def sinusoids(n_pos: int, dim: int) -> torch.Tensor:
    """transformers' fixed position table: sin on even columns, cos on odd, angle pos / 10000^(2(j//2)/dim)."""
    angle = np.arange(n_pos)[:, None] / np.power(10000, 2 * (np.arange(dim) // 2) / dim)[None, :]
    table = np.where(np.arange(dim) % 2 == 0, np.sin(angle), np.cos(angle))
    return torch.from_numpy(table).float()


class _DistilBertBase(KilnModel):
    config_class = DistilBertConfig
    base_model_prefix = "distilbert"
    hf_architecture = "DistilBertModel"
    ignored_keys = _ignored("distilbert.")

    def init_weight(self, name: str, tensor: torch.Tensor, owner: nn.Module, generator: torch.Generator) -> None:
        """transformers' DistilBERT init: normal(0, initializer_range) weights and embeddings (the
        padding row zero), zero biases, LayerNorm 1/0, sinusoidal positions when configured."""
        c = self.config
        with torch.no_grad():
            if name.endswith("position_embeddings.weight") and c.sinusoidal_pos_embds:
                tensor.copy_(sinusoids(c.max_position_embeddings, c.dim))
            elif name.endswith("bias"):
                tensor.zero_()
            elif isinstance(owner, nn.LayerNorm):
                tensor.fill_(1.0)
            else:
                tensor.copy_(torch.empty(tensor.shape).normal_(0.0, c.initializer_range, generator=generator))
                if isinstance(owner, nn.Embedding) and owner.padding_idx is not None:
                    tensor[owner.padding_idx].zero_()


class DistilBertModel(_DistilBertBase):
    """Embeddings and the encoder: last_hidden_state (B, T, C)."""

    ignored_keys = _ignored("")

    def __init__(self, config: DistilBertConfig):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.transformer = Transformer(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(input_ids)  # (B, T, C)
        return self.transformer(x, additive_padding_mask(attention_mask, x.dtype))


class DistilBertForSequenceClassification(_DistilBertBase):
    """logits (B, num_labels) from the first token's state through pre_classifier and ReLU."""

    head_keys = ("pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias")
    hf_architecture = "DistilBertForSequenceClassification"

    def __init__(self, config: DistilBertConfig):
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        first = self.distilbert(input_ids, attention_mask)[:, 0]  # (B, C)
        return self.classifier(F.relu(self.pre_classifier(first)))  # (B, L)


class DistilBertForTokenClassification(_DistilBertBase):
    """logits (B, T, num_labels), one row per token."""

    head_keys = ("classifier.weight", "classifier.bias")
    hf_architecture = "DistilBertForTokenClassification"

    def __init__(self, config: DistilBertConfig):
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.classifier = nn.Linear(config.dim, config.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.distilbert(input_ids, attention_mask))  # (B, T, L)


class DistilBertForQuestionAnswering(_DistilBertBase):
    """QAOutput(start_logits, end_logits), each (B, T): extractive span scores per token."""

    head_keys = ("qa_outputs.weight", "qa_outputs.bias")
    hf_architecture = "DistilBertForQuestionAnswering"

    def __init__(self, config: DistilBertConfig):
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        # transformers sizes this by num_labels and requires 2 (start, end); a checkpoint with
        # another size fails the shape check with both shapes named
        self.qa_outputs = nn.Linear(config.dim, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> QAOutput:
        logits = self.qa_outputs(self.distilbert(input_ids, attention_mask))  # (B, T, 2)
        # export: contiguous outputs, so every backend hands back dense (B, T) buffers
        return QAOutput(logits[..., 0].contiguous(), logits[..., 1].contiguous())


# --- deployables ----------------------------------------------------------------------------
# Tiny sizes for the registry-driven tests (the text fixture sets vocab_size to its tokenizer's).
_TINY = dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=128)

DEPLOYABLES = (
    text_encoder(
        DistilBertForSequenceClassification,
        "text-classification",
        lambda c: (TensorSpec("logits", "float32", ("batch", c.num_labels)),),
        TaskCheck("same label", argmax_check("logits")),
        token_types=False,
        labels=True,
        tiny=_TINY,
    ),
    text_encoder(
        DistilBertForTokenClassification,
        "token-classification",
        lambda c: (TensorSpec("logits", "float32", ("batch", "sequence", c.num_labels)),),
        TaskCheck("same entity tags", argmax_check("logits")),
        token_types=False,
        labels=True,
        tiny=_TINY,
    ),
    text_encoder(
        DistilBertForQuestionAnswering,
        "question-answering",
        lambda c: (
            TensorSpec("start_logits", "float32", ("batch", "sequence")),
            TensorSpec("end_logits", "float32", ("batch", "sequence")),
        ),
        TaskCheck("same answer span", qa_span_check),
        token_types=False,
        tiny=_TINY,
    ),
)
