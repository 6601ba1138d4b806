"""(family, task) -> everything tests, exporters and the CLI need to know about a deployable.

One entry per (family, task): the head class, input and output specs with symbolic dims,
default shape ranges, example inputs, parity tolerances per precision and output, and the
task-level check. A new family is one model file plus entries here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import InvalidArgumentError

DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool", "uint8")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[str | int, ...]  # str: a symbolic dim named in `dims`; int: fixed

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, d: dict) -> "TensorSpec":
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


@dataclass(frozen=True)
class DimRange:
    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not (1 <= self.min <= self.opt <= self.max):
            raise InvalidArgumentError(
                f"dim range min={self.min} opt={self.opt} max={self.max}: expected 1 <= min <= opt <= max")

    def to_json(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class Tolerance:
    """|test - ref| <= atol + rtol * |ref|, elementwise (numpy.allclose semantics)."""
    atol: float
    rtol: float
    why: str = ""


@dataclass(frozen=True)
class TaskCheck:
    """The answer-level comparison of a test backend against eager fp32."""
    name: str
    check: Callable[[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]], tuple[bool, str]]


@dataclass(frozen=True)
class TaskEntry:
    family: str
    task: str
    model_class: str  # "module:Class", imported lazily so the registry imports no torch
    config_class: str  # "module:Class" with from_dict(hf_config_dict)
    inputs: tuple[TensorSpec, ...]
    outputs: Callable[[Any], tuple[TensorSpec, ...]]  # config -> output specs
    dims: dict[str, DimRange]
    tolerances: dict[str, dict[str, Tolerance]]  # precision -> output name -> tolerance
    task_check: TaskCheck
    model_options: tuple[str, ...] = ()  # recipe [task_options] passed to the model constructor
    has_labels: bool = False
    dim_limits: Callable[[Any], dict[str, int]] = field(default=lambda config: {})
    # (config dict, {dim name: size}, numpy Generator) -> valid random inputs of those sizes;
    # used to trace and export, by parity (beside real samples) and by the benchmark
    example_inputs: Callable[[dict, dict[str, int], np.random.Generator], dict[str, np.ndarray]] = \
        field(default=None)

    def make_example(self, config: dict, sizes: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        return self.example_inputs(config, sizes, np.random.default_rng(seed))

    @property
    def key(self) -> tuple[str, str]:
        return (self.family, self.task)

    def model_cls(self):
        return _resolve(self.model_class)

    def config_cls(self):
        return _resolve(self.config_class)


def _resolve(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


# --- task-level checks --------------------------------------------------------------------
# A test backend is held to the reference's answer wherever the reference is decisive: where
# the top-2 margin of the reference is smaller than the numeric tolerance, either answer is
# right and the position is not counted (it is reported).

def _argmax_check(output: str, margin: float = 1e-3) -> Callable:
    def check(ref: dict, test: dict, inputs: dict) -> tuple[bool, str]:
        r, t = ref[output], test[output]
        ra, ta = r.argmax(-1), t.argmax(-1)
        top2 = np.sort(r, axis=-1)[..., -2:]
        decisive = (top2[..., 1] - top2[..., 0]) > margin
        if r.ndim == 3 and "attention_mask" in inputs:  # token level: only real tokens count
            decisive &= inputs["attention_mask"].astype(bool)
        mismatched = int(((ra != ta) & decisive).sum())
        return mismatched == 0, (f"{int(decisive.sum())} decisive positions, {mismatched} differ"
                                 f" ({int((~decisive).sum())} near-ties skipped)")
    return check


def _qa_span_check(ref: dict, test: dict, inputs: dict) -> tuple[bool, str]:
    from .processing.text import best_span_indices
    mask = inputs["attention_mask"]
    bad = 0
    for b in range(mask.shape[0]):
        rs = best_span_indices(ref["start_logits"][b], ref["end_logits"][b], mask[b])
        ts = best_span_indices(test["start_logits"][b], test["end_logits"][b], mask[b])
        bad += rs != ts
    return bad == 0, f"{mask.shape[0]} spans, {bad} differ"


def _cosine_check(output: str, minimum: float = 0.9999) -> Callable:
    def check(ref: dict, test: dict, inputs: dict) -> tuple[bool, str]:
        r, t = ref[output].astype(np.float64), test[output].astype(np.float64)
        cos = (r * t).sum(-1) / (np.linalg.norm(r, axis=-1) * np.linalg.norm(t, axis=-1) + 1e-12)
        worst = float(cos.min())
        return worst >= minimum, f"min cosine {worst:.6f} (>= {minimum})"
    return check


# --- BERT ------------------------------------------------------------------------------------

def _text_example(config: dict, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    batch, seq = sizes["batch"], sizes["sequence"]
    ids = rng.integers(0, config["vocab_size"], (batch, seq), dtype=np.int64)
    mask = np.ones((batch, seq), np.int64)
    if batch > 1:
        mask[-1, max(2, seq * 3 // 4):] = 0  # a padded row, so masking is in every trace and check
    types = np.zeros((batch, seq), np.int64)
    types[:, seq // 2:] = min(1, config.get("type_vocab_size", 1) - 1)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


_TEXT_INPUTS = (
    TensorSpec("input_ids", "int64", ("batch", "sequence")),
    TensorSpec("attention_mask", "int64", ("batch", "sequence")),
    TensorSpec("token_type_ids", "int64", ("batch", "sequence")),
)
# export: sequence min is 2 ([CLS] [SEP] is the shortest tokenised text); a min of 1 lets
# torch.export specialise the dim.
_TEXT_DIMS = {"batch": DimRange(1, 1, 32), "sequence": DimRange(2, 128, 512)}
_FP32_WHY = ("fp32 reordering of reductions between eager, TorchScript, Inductor and ORT "
             "kernels; measured max abs on MiniLM is ~1e-6")


def _fp32(*outputs: str, atol: float = 1e-4, rtol: float = 1e-3) -> dict[str, dict[str, Tolerance]]:
    return {"fp32": {o: Tolerance(atol, rtol, _FP32_WHY) for o in outputs}}


_BERT_CONFIG = "kiln.models.bert:BertConfig"


def _bert_limits(config) -> dict[str, int]:
    return {"sequence": config.max_position_embeddings}


REGISTRY: dict[tuple[str, str], TaskEntry] = {}


def register(entry: TaskEntry) -> TaskEntry:
    REGISTRY[entry.key] = entry
    return entry


register(TaskEntry(
    "bert", "text-classification", "kiln.models.bert:BertForSequenceClassification", _BERT_CONFIG,
    _TEXT_INPUTS,
    lambda c: (TensorSpec("logits", "float32", ("batch", c.num_labels)),),
    _TEXT_DIMS, _fp32("logits"), TaskCheck("same label", _argmax_check("logits")),
    has_labels=True, dim_limits=_bert_limits, example_inputs=_text_example))
register(TaskEntry(
    "bert", "token-classification", "kiln.models.bert:BertForTokenClassification", _BERT_CONFIG,
    _TEXT_INPUTS,
    lambda c: (TensorSpec("logits", "float32", ("batch", "sequence", c.num_labels)),),
    _TEXT_DIMS, _fp32("logits"), TaskCheck("same entity tags", _argmax_check("logits")),
    has_labels=True, dim_limits=_bert_limits, example_inputs=_text_example))
register(TaskEntry(
    "bert", "question-answering", "kiln.models.bert:BertForQuestionAnswering", _BERT_CONFIG,
    _TEXT_INPUTS,
    lambda c: (TensorSpec("start_logits", "float32", ("batch", "sequence")),
               TensorSpec("end_logits", "float32", ("batch", "sequence"))),
    _TEXT_DIMS, _fp32("start_logits", "end_logits"), TaskCheck("same answer span", _qa_span_check),
    dim_limits=_bert_limits, example_inputs=_text_example))
register(TaskEntry(
    "bert", "feature-extraction", "kiln.models.bert:BertForFeatureExtraction", _BERT_CONFIG,
    _TEXT_INPUTS,
    lambda c: (TensorSpec("embeddings", "float32", ("batch", c.hidden_size)),),
    _TEXT_DIMS, _fp32("embeddings", atol=1e-5), TaskCheck("embedding cosine >= 0.9999",
                                                          _cosine_check("embeddings")),
    model_options=("pooling", "normalize"), dim_limits=_bert_limits, example_inputs=_text_example))
register(TaskEntry(
    "bert", "fill-mask", "kiln.models.bert:BertForMaskedLM", _BERT_CONFIG,
    _TEXT_INPUTS,
    lambda c: (TensorSpec("logits", "float32", ("batch", "sequence", c.vocab_size)),),
    _TEXT_DIMS, _fp32("logits", atol=1e-3), TaskCheck("same predicted tokens", _argmax_check("logits")),
    dim_limits=_bert_limits, example_inputs=_text_example))


def get(family: str, task: str) -> TaskEntry:
    try:
        return REGISTRY[(family, task)]
    except KeyError:
        known = ", ".join(f"{f}/{t}" for f, t in sorted(REGISTRY))
        raise InvalidArgumentError(
            f"no registry entry for family={family!r} task={task!r}; known: {known}") from None

