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
    # fixed specs, or config -> specs where a shape comes from the config (an image size)
    inputs: tuple[TensorSpec, ...] | Callable[[Any], tuple[TensorSpec, ...]]
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

    def input_specs(self, config: Any = None) -> tuple[TensorSpec, ...]:
        """The input specs; `config` (the family's config object) is needed where they depend on it."""
        if callable(self.inputs):
            if config is None:
                raise InvalidArgumentError(f"{self.family}/{self.task}: input shapes depend on the "
                                           "model config; pass it to input_specs(config)")
            return tuple(self.inputs(config))
        return self.inputs

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


# TensorRT's reduced precisions (no TensorRT here to measure them: these follow the formats'
# resolution and are for the GPU suite to confirm). An element passes within atol OR rtol.
_FP16_WHY = ("fp16 keeps 11 significant bits (relative step 4.9e-4); six layers of matmuls and "
             "LayerNorms accumulate about 10 steps on logits of magnitude ~1-10")
_BF16_WHY = ("bf16 keeps 8 significant bits (relative step 3.9e-3), 8x coarser than fp16; the same "
             "accumulation gives about 10 steps")


def _fp32(*outputs: str, atol: float = 1e-4, rtol: float = 1e-3) -> dict[str, dict[str, Tolerance]]:
    """fp32 tolerances as given; fp16 and bf16 (TensorRT plans) scaled from them."""
    return {"fp32": {o: Tolerance(atol, rtol, _FP32_WHY) for o in outputs},
            "fp16": {o: Tolerance(max(atol * 100, 5e-3), 5e-3, _FP16_WHY) for o in outputs},
            "bf16": {o: Tolerance(max(atol * 800, 4e-2), 4e-2, _BF16_WHY) for o in outputs}}


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


# --- vision: ViT, ConvNeXT -------------------------------------------------------------------

def _image_hw(config: dict) -> tuple[int, int]:
    size = config["image_size"]
    return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))


def _image_example(config: dict, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    h, w = _image_hw(config)
    # normalised pixels span about [-2.2, 2.7] (ImageNet mean/std) or [-1, 1] (0.5/0.5)
    pixels = rng.uniform(-1.5, 1.5, (sizes["batch"], config.get("num_channels", 3), h, w))
    return {"pixel_values": pixels.astype(np.float32)}


def _image_inputs(config) -> tuple[TensorSpec, ...]:
    h, w = config.image_hw
    return (TensorSpec("pixel_values", "float32", ("batch", config.num_channels, h, w)),)


_IMAGE_DIMS = {"batch": DimRange(1, 1, 32)}
_IMAGE_FP32_WHY = ("fp32 reordering of the conv / attention / LayerNorm reductions between eager, "
                   "TorchScript, Inductor and ORT kernels; measured max abs on tiny random ViT and "
                   "ConvNeXT engines is ~1e-6")


def _image_classification(family: str, model_class: str, config_class: str) -> TaskEntry:
    return TaskEntry(
        family, "image-classification", model_class, config_class, _image_inputs,
        lambda c: (TensorSpec("logits", "float32", ("batch", c.num_labels)),),
        _IMAGE_DIMS, {"fp32": {"logits": Tolerance(1e-4, 1e-3, _IMAGE_FP32_WHY)}},
        TaskCheck("same top-1 label", _argmax_check("logits")),
        has_labels=True, example_inputs=_image_example)


register(_image_classification("vit", "kiln.models.vit:ViTForImageClassification",
                               "kiln.models.vit:ViTConfig"))
register(_image_classification("convnext", "kiln.models.convnext:ConvNextForImageClassification",
                               "kiln.models.convnext:ConvNextConfig"))


# --- Wav2Vec2 (audio) ---------------------------------------------------------------------------
# input_values: the waveform at the model's rate (16 kHz), normalised by the processor;
# attention_mask: 1 on real samples (all ones for "base" models, whose feature extractor
# returns no mask). Logits are per encoder frame; "frames" is derived from "samples" by the
# conv stack (20 ms hop: 16000 -> 49, 480000 -> 1499) and appears only in outputs, which the
# C++ runtime accepts (it binds output dims it knows and leaves the others free).

def _audio_example(config: dict, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    batch, samples = sizes["batch"], sizes["samples"]
    values = rng.standard_normal((batch, samples)).astype(np.float32)  # ~unit variance, as normalised audio
    mask = np.ones((batch, samples), np.int64)
    if batch > 1:  # a padded row, so the frame mask is in every trace and check
        mask[-1, samples * 3 // 4:] = 0
        values[-1, samples * 3 // 4:] = 0.0
    return {"input_values": values, "attention_mask": mask}


_AUDIO_INPUTS = (
    TensorSpec("input_values", "float32", ("batch", "samples")),
    TensorSpec("attention_mask", "int64", ("batch", "samples")),
)
# export: 1 s .. 30 s at 16 kHz. torch.export itself accepts samples down to 720 (two frames
# of the standard 7-conv encoder; one frame would specialise the dim); shorter audio is
# padded up to min by the pipeline, with the attention mask marking the padding.
_AUDIO_DIMS = {"batch": DimRange(1, 1, 8), "samples": DimRange(16000, 80000, 480000)}
_AUDIO_FP32_WHY = ("fp32 reordering of the conv-stack / GroupNorm-over-time / attention reductions "
                   "between eager, TorchScript, Inductor and ORT kernels")


def _ctc_runs(ids: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC paths with repeats collapsed, per row: the transcript as token ids, blank
    included (vocabulary-free; equal runs give equal text for any vocab and blank id)."""
    out = []
    for row in ids:
        keep = np.ones(row.shape, bool)
        keep[1:] = row[1:] != row[:-1]
        out.append(tuple(row[keep].tolist()))
    return out


def _ctc_transcript_check(margin: float = 1e-3) -> Callable:
    def check(ref: dict, test: dict, inputs: dict) -> tuple[bool, str]:
        r, t = ref["logits"], test["logits"]
        ra, ta = r.argmax(-1), t.argmax(-1)
        top2 = np.sort(r, axis=-1)[..., -2:]
        tie = (top2[..., 1] - top2[..., 0]) <= margin
        rr, tr = _ctc_runs(ra), _ctc_runs(ta)
        bad = 0
        for b in range(r.shape[0]):
            # a differing transcript counts unless every frame behind it is a near-tie
            if rr[b] != tr[b] and ((ra[b] != ta[b]) & ~tie[b]).any():
                bad += 1
        return bad == 0, (f"{r.shape[0]} transcripts, {bad} differ "
                          f"({int(tie.sum())} near-tie frames not held)")
    return check


def _audio_fp32(atol: float, rtol: float, why: str) -> dict[str, dict[str, Tolerance]]:
    tol = _fp32("logits", atol=atol, rtol=rtol)
    tol["fp32"] = {"logits": Tolerance(atol, rtol, why)}
    return tol


_W2V2_CONFIG = "kiln.models.wav2vec2:Wav2Vec2Config"

register(TaskEntry(
    "wav2vec2", "automatic-speech-recognition", "kiln.models.wav2vec2:Wav2Vec2ForCTC", _W2V2_CONFIG,
    _AUDIO_INPUTS,
    lambda c: (TensorSpec("logits", "float32", ("batch", "frames", c.vocab_size)),),
    _AUDIO_DIMS, _audio_fp32(1e-4, 1e-3, _AUDIO_FP32_WHY), TaskCheck("same transcript", _ctc_transcript_check()),
    example_inputs=_audio_example))
register(TaskEntry(
    "wav2vec2", "audio-classification", "kiln.models.wav2vec2:Wav2Vec2ForSequenceClassification",
    _W2V2_CONFIG, _AUDIO_INPUTS,
    lambda c: (TensorSpec("logits", "float32", ("batch", c.num_labels)),),
    _AUDIO_DIMS, _audio_fp32(1e-4, 1e-3, _AUDIO_FP32_WHY), TaskCheck("same top-1 label", _argmax_check("logits")),
    has_labels=True, example_inputs=_audio_example))


def get(family: str, task: str) -> TaskEntry:
    try:
        return REGISTRY[(family, task)]
    except KeyError:
        known = ", ".join(f"{f}/{t}" for f, t in sorted(REGISTRY))
        raise InvalidArgumentError(
            f"no registry entry for family={family!r} task={task!r}; known: {known}") from None

