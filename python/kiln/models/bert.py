"""BERT: config, encoder, and the task heads kiln deploys.

Attribute names are the Hugging Face state-dict names (`bert.encoder.layer.0.attention.self.query`,
`classifier`, `qa_outputs`, `cls.predictions.decoder`), so a checkpoint loads by name; the
loading rules that are not a plain name match are declared on each class:

    base_model_prefix  body keys carry "bert." in a head checkpoint and nothing in a base one
    head_keys          what a base checkpoint lacks (random_head=True initialises these)
    tied_keys          parameters that are the same tensor as another (MLM decoder = word embeddings)
    ignored_keys       checkpoint keys kiln knows and deliberately does not load, each with a reason
    checkpoint_renames legacy parameter-name suffixes renamed on load (TF-era LayerNorm gamma/beta)

Every forward takes (input_ids, attention_mask, token_type_ids), int64 [B, T], and returns a
tensor or a fixed NamedTuple: no flags, no training branches, no data-dependent control flow.
Dropout is absent (inference only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..deploy import TaskCheck, argmax_check, cosine_check, pooled_embeddings, qa_span_check, text_encoder, tolerances
from ..errors import InvalidArgumentError
from ..manifest import TensorSpec, Tolerance
from .base import HFConfig, KilnModel
from .layers import activation, additive_padding_mask, check_activation, masked_max, masked_mean

# int8 (kiln build --precision int8): the bar for sentence embeddings, and the measured
# per-element error of L2-normalised embeddings (README "int8 engines")
INT8_MIN_COSINE = 0.99
INT8_EMBEDDINGS = Tolerance(
    3e-2,
    0.0,
    "int8: measured max abs on all-MiniLM-L6-v2 over 120 real sentences: 0.012 (aoti, torchao per-token "
    "int8) and 0.027 (onnx, ONNX Runtime per-tensor uint8 activations); worst cosine 0.9975 / 0.9904",
)


@dataclass
class BertConfig(HFConfig):
    model_type: ClassVar[str] = "bert"
    display_name: ClassVar[str] = "BERT"
    unsupported: ClassVar[tuple[tuple[str, str], ...]] = (
        ("is_decoder", "a decoder: it is a bidirectional encoder only"),
        ("add_cross_attention", "cross-attention"),
    )
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    initializer_range: float = 0.02
    id2label: dict[int, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    position_embedding_type: str = "absolute"
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        check_activation(self.hidden_act)
        if self.position_embedding_type != "absolute":
            raise InvalidArgumentError(
                f"position_embedding_type={self.position_embedding_type!r} is not supported; kiln's "
                "BERT implements only 'absolute' (learned) position embeddings"
            )
        self.check_multiple("hidden_size", "num_attention_heads")
        self.check_labels()

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads


class BertOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # (B, T, H)
    pooler_output: torch.Tensor  # (B, H)


class QAOutput(NamedTuple):
    start_logits: torch.Tensor  # (B, T)
    end_logits: torch.Tensor  # (B, T)


# --- blocks -------------------------------------------------------------------------------


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        # export: positions from arange of the sequence length rather than a slice of a
        # stored position_ids buffer: no buffer to carry, and T stays symbolic in every graph.
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)  # (B, T, H) + (T, H)
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        q = self.query(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = self.key(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        v = self.value(x).view(B, T, self.num_heads, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        # export: SDPA is one aten op for TorchScript and Inductor (fused kernels) and the
        # ONNX exporter decomposes it into MatMul/Softmax, which every ONNX runtime runs.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_bias)  # (B, nh, T, hs)
        return y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)


class BertSelfOutput(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertFFNOutput(nn.Module):
    """HF calls this `BertOutput`; the name is taken here by the model's output tuple."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertFFNOutput(config)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, mask_bias)
        return self.output(self.intermediate(a), a)


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask_bias)
        return x


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # [CLS] token: (B, H)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder.bias = self.bias  # one tensor under two names, as in the HF checkpoint format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))  # (B, T, V)


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


# --- checkpoint tables ----------------------------------------------------------------------

# Keys of BERT's pre-training heads (BertForPreTraining checkpoints such as bert-base-uncased
# carry them). Task models other than fill-mask don't use them: the body is what they reuse.
_PRETRAINING_MLM_KEYS = (
    "cls.predictions.bias",
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
)
_PRETRAINING_NSP_KEYS = ("cls.seq_relationship.weight", "cls.seq_relationship.bias")


def _body_ignored(prefix: str, pooler: bool) -> tuple[str, ...]:
    # transformers < 4.31 saved the (non-learned) position_ids buffer; kiln computes positions
    keys = [f"{prefix}embeddings.position_ids"]
    if not pooler:  # heads that read token states never compute the [CLS] pooler
        keys += [f"{prefix}pooler.dense.weight", f"{prefix}pooler.dense.bias"]
    return tuple(keys)


# TF-converted checkpoints name LayerNorm parameters gamma/beta; transformers renames them
_RENAMES = ((".gamma", ".weight"), (".beta", ".bias"))


class _BertBase(KilnModel):
    """The loading contract shared by every BERT class (see the module docstring)."""

    config_class = BertConfig
    base_model_prefix = "bert"
    checkpoint_renames = _RENAMES
    hf_architecture = "BertModel"

    def init_weight(self, name: str, tensor: torch.Tensor, owner: nn.Module, generator: torch.Generator) -> None:
        init_like_hf(name, tensor, owner, self.config, generator)


# --- models ---------------------------------------------------------------------------------


class BertModel(_BertBase):
    """The encoder. `forward` returns BertOutput(last_hidden_state, pooler_output); heads that
    only need token states call `encode` (and are built with add_pooling_layer=False)."""

    ignored_keys = _body_ignored("", pooler=True) + _PRETRAINING_MLM_KEYS + _PRETRAINING_NSP_KEYS

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        if not add_pooling_layer:
            self.ignored_keys = _body_ignored("", pooler=False) + _PRETRAINING_MLM_KEYS + _PRETRAINING_NSP_KEYS

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        return self.encoder(x, additive_padding_mask(attention_mask, x.dtype))  # (B, T, H)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> BertOutput:
        if self.pooler is None:
            raise InvalidArgumentError(
                "BertModel built with add_pooling_layer=False has no pooler_output; call encode() for the token states"
            )
        hidden = self.encode(input_ids, attention_mask, token_type_ids)
        return BertOutput(hidden, self.pooler(hidden))


class BertForSequenceClassification(_BertBase):
    """logits (B, num_labels) from the pooled [CLS] state."""

    head_keys = ("classifier.weight", "classifier.bias")
    ignored_keys = _body_ignored("bert.", pooler=True) + _PRETRAINING_MLM_KEYS + _PRETRAINING_NSP_KEYS
    hf_architecture = "BertForSequenceClassification"

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        pooled = self.bert(input_ids, attention_mask, token_type_ids).pooler_output  # (B, H)
        return self.classifier(pooled)  # (B, L)


class BertForTokenClassification(_BertBase):
    """logits (B, T, num_labels), one row per token."""

    head_keys = ("classifier.weight", "classifier.bias")
    ignored_keys = _body_ignored("bert.", pooler=False) + _PRETRAINING_MLM_KEYS + _PRETRAINING_NSP_KEYS
    hf_architecture = "BertForTokenClassification"

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.bert.encode(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        return self.classifier(hidden)  # (B, T, L)


class BertForQuestionAnswering(_BertBase):
    """QAOutput(start_logits, end_logits), each (B, T): extractive span scores per token."""

    head_keys = ("qa_outputs.weight", "qa_outputs.bias")
    ignored_keys = _body_ignored("bert.", pooler=False) + _PRETRAINING_MLM_KEYS + _PRETRAINING_NSP_KEYS
    hf_architecture = "BertForQuestionAnswering"

    def __init__(self, config: BertConfig):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        # HF sizes this by config.num_labels, which is 2 (start, end) for every QA checkpoint;
        # a checkpoint with another size fails the shape check with both shapes named.
        self.qa_outputs = nn.Linear(config.hidden_size, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> QAOutput:
        hidden = self.bert.encode(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        logits = self.qa_outputs(hidden)  # (B, T, 2)
        # export: contiguous outputs, so every backend hands back dense (B, T) buffers
        return QAOutput(logits[..., 0].contiguous(), logits[..., 1].contiguous())


class BertForMaskedLM(_BertBase):
    """logits (B, T, vocab_size); the decoder weight is the word-embedding matrix."""

    head_keys = (
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.bias",
    )
    tied_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }
    # the tied names may also be present in a checkpoint (transformers 4.x wrote them): they
    # are duplicates of their sources, which are what is loaded
    ignored_keys = (
        _body_ignored("bert.", pooler=False)
        + _PRETRAINING_NSP_KEYS
        + ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")
    )
    hf_architecture = "BertForMaskedLM"

    def __init__(self, config: BertConfig):
        if not config.tie_word_embeddings:
            raise InvalidArgumentError(
                "tie_word_embeddings=false: kiln's BertForMaskedLM always ties the decoder to the word embeddings"
            )
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.bert.encode(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        return self.cls(hidden)  # (B, T, V)


POOLINGS = ("mean", "cls", "max")


class BertForFeatureExtraction(_BertBase):
    """Sentence embeddings (B, H): token states pooled over the attention mask, optionally
    L2-normalised: what sentence-transformers computes for all-MiniLM-L6-v2 and its kin.

    pooling: "mean" (masked mean), "cls" (the [CLS] state) or "max" (masked max).
    A base checkpoint loads as is; there is no head. Saved back as a BertModel checkpoint.
    """

    ignored_keys = _body_ignored("bert.", pooler=False) + _PRETRAINING_MLM_KEYS + _PRETRAINING_NSP_KEYS
    hf_architecture = "BertModel"

    def __init__(self, config: BertConfig, pooling: str = "mean", normalize: bool = True):
        super().__init__(config)
        if pooling not in POOLINGS:
            raise InvalidArgumentError(f"pooling={pooling!r}: expected one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.bert = BertModel(config, add_pooling_layer=False)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.bert.encode(input_ids, attention_mask, token_type_ids)  # (B, T, H)
        # pooling and normalize are fixed at construction: these branches are not data-dependent
        if self.pooling == "mean":
            emb = masked_mean(hidden, attention_mask)
        elif self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            emb = masked_max(hidden, attention_mask)
        if self.normalize:
            emb = F.normalize(emb, p=2.0, dim=-1)
        return emb  # (B, H)


def init_like_hf(
    name: str, tensor: torch.Tensor, module: nn.Module, config: BertConfig, generator: torch.Generator
) -> None:
    """HF BERT's initialisation of one parameter, drawn from `generator` (in place):
    biases zero, LayerNorm weights one, every other weight normal(0, initializer_range)."""
    with torch.no_grad():
        if name.endswith("bias"):
            tensor.zero_()
        elif isinstance(module, nn.LayerNorm):
            tensor.fill_(1.0)
        else:
            tensor.copy_(
                torch.empty(tensor.shape, dtype=torch.float32).normal_(
                    0.0, config.initializer_range, generator=generator
                )
            )
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                tensor[module.padding_idx].zero_()


# --- deployables ----------------------------------------------------------------------------
# Tiny sizes for the registry-driven tests (the text fixture sets vocab_size to its tokenizer's).
_TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=128,
    type_vocab_size=2,
)

DEPLOYABLES = (
    text_encoder(
        BertForSequenceClassification,
        "text-classification",
        lambda c: (TensorSpec("logits", "float32", ("batch", c.num_labels)),),
        TaskCheck("same label", argmax_check("logits")),
        labels=True,
        tiny=_TINY,
    ),
    text_encoder(
        BertForTokenClassification,
        "token-classification",
        lambda c: (TensorSpec("logits", "float32", ("batch", "sequence", c.num_labels)),),
        TaskCheck("same entity tags", argmax_check("logits")),
        labels=True,
        tiny=_TINY,
    ),
    text_encoder(
        BertForQuestionAnswering,
        "question-answering",
        lambda c: (
            TensorSpec("start_logits", "float32", ("batch", "sequence")),
            TensorSpec("end_logits", "float32", ("batch", "sequence")),
        ),
        TaskCheck("same answer span", qa_span_check),
        tiny=_TINY,
    ),
    text_encoder(
        BertForFeatureExtraction,
        "feature-extraction",
        lambda c: (TensorSpec("embeddings", "float32", ("batch", c.hidden_size)),),
        TaskCheck(
            "embedding cosine >= 0.9999 (int8: >= 0.99)",
            cosine_check("embeddings"),
            {"int8": cosine_check("embeddings", INT8_MIN_COSINE)},
        ),
        tol=tolerances("embeddings", atol=1e-5, int8=INT8_EMBEDDINGS),
        reference=pooled_embeddings,
        options=("pooling", "normalize"),
        tiny=_TINY,
    ),
    text_encoder(
        BertForMaskedLM,
        "fill-mask",
        lambda c: (TensorSpec("logits", "float32", ("batch", "sequence", c.vocab_size)),),
        TaskCheck("same predicted tokens", argmax_check("logits")),
        tol=tolerances("logits", atol=1e-3),
        tiny=_TINY,
    ),
)
