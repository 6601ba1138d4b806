"""(family, task) -> everything tests, exporters and the CLI need to know about a deployable.

One entry per (family, task): the head class, input and output specs with symbolic dims,
default shape ranges, example inputs, parity tolerances per precision and output, and the
task-level check. A new family is one model file plus entries here.
"""
from __future__ import annotations

import dataclasses
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
        # min 0 only where a dim may be empty: a KV cache's past length at prefill
        if not (0 <= self.min <= self.opt <= self.max) or self.max < 1:
            raise InvalidArgumentError(
                f"dim range min={self.min} opt={self.opt} max={self.max}: expected 0 <= min <= opt <= max, max >= 1")

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
    # Deployables of several graphs (generation: a decoder, and an encoder for BART): one entry
    # per graph, each exported to a subdirectory of the engine directory. A graph entry names
    # its `graph` and the `wrapper` class ("module:Class") that turns the loaded model into
    # that graph's module; it shares the parent's model_class and checkpoint.
    graphs: tuple["TaskEntry", ...] = ()
    # dims the graph itself determines from others (a decoder's total = past + new): exported
    # as Dim.AUTO so torch.export derives them instead of checking an independent range
    derived_dims: tuple[str, ...] = ()
    graph: str = ""
    wrapper: str = ""
    # generation deployables: config -> {"cache": {layers, heads, head_dim}, "vocab_size",
    # "max_positions", "encoder_decoder", "generation": defaults from the config}
    generation: Callable[[Any], dict] | None = None

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

    def wrapper_cls(self):
        return _resolve(self.wrapper)

    def graph_entry(self, name: str) -> "TaskEntry":
        for g in self.graphs:
            if g.graph == name:
                return g
        raise InvalidArgumentError(f"{self.family}/{self.task}: no graph {name!r}; "
                                   f"graphs: {[g.graph for g in self.graphs]}")

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


# --- text generation: GPT-2, BART ----------------------------------------------------------------
# One KV-cache tensor per graph input/output, (layers, 2 [keys, values], batch, heads, seq,
# head_dim): one tensor to feed back, and one gather along axis 2 reorders every layer's cache
# for beam search. One decoder graph serves prefill (past = 0, a zero-size cache) and decode
# (new = 1): the weights ship once per format, and torch.export, ONNX Runtime and TensorRT all
# take empty dims. attention_mask covers past + new ("total"); torch.export derives
# total = past + new from the graph itself. The generation loop is C++ (kiln::Generator).

def _cache_spec(name: str, layers: int, heads: int, head_dim: int, seq: str) -> TensorSpec:
    return TensorSpec(name, "float32", (layers, 2, "batch", heads, seq, head_dim))


def _left_padded_mask(batch: int, total: int) -> np.ndarray:
    mask = np.ones((batch, total), np.int64)
    if batch > 1:
        mask[-1, :total // 3] = 0  # a left-padded row, so masking is in every trace and check
    return mask


def _gpt2_cache(c) -> tuple[int, int, int]:
    return c.n_layer, c.n_head, c.n_embd // c.n_head


def _gpt2_decoder_inputs(c) -> tuple[TensorSpec, ...]:
    return (TensorSpec("input_ids", "int64", ("batch", "new")),
            TensorSpec("attention_mask", "int64", ("batch", "total")),
            TensorSpec("position_ids", "int64", ("batch", "new")),
            _cache_spec("past_key_values", *_gpt2_cache(c), "past"))


def _decoder_outputs(cache: Callable) -> Callable:
    return lambda c: (TensorSpec("logits", "float32", ("batch", "new", c.vocab_size)),
                      _cache_spec("present_key_values", *cache(c), "total"))


def _random_cache(rng: np.random.Generator, layers: int, batch: int, heads: int, seq: int,
                  head_dim: int) -> np.ndarray:
    return rng.standard_normal((layers, 2, batch, heads, seq, head_dim)).astype(np.float32)


def _gpt2_decoder_example(config: dict, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    batch, new, past = sizes["batch"], sizes["new"], sizes["past"]
    mask = _left_padded_mask(batch, past + new)
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)[:, past:]
    heads = config["n_head"]
    return {"input_ids": rng.integers(0, config["vocab_size"], (batch, new), dtype=np.int64),
            "attention_mask": mask, "position_ids": positions.astype(np.int64),
            "past_key_values": _random_cache(rng, config["n_layer"], batch, heads, past,
                                             config["n_embd"] // heads)}


def _next_token_check(margin: float = 1e-3) -> Callable:
    """The greedy next token at every real new position equals the reference's (near-ties skipped)."""
    def check(ref: dict, test: dict, inputs: dict) -> tuple[bool, str]:
        r, t = ref["logits"], test["logits"]
        real = inputs["attention_mask"][:, -r.shape[1]:].astype(bool)
        top2 = np.sort(r, axis=-1)[..., -2:]
        decisive = ((top2[..., 1] - top2[..., 0]) > margin) & real
        mismatched = int(((r.argmax(-1) != t.argmax(-1)) & decisive).sum())
        return mismatched == 0, (f"{int(decisive.sum())} decisive next tokens, {mismatched} differ"
                                 f" ({int((real & ~decisive).sum())} near-ties skipped)")
    return check


_GEN_FP32_WHY = ("fp32 reordering of attention / LayerNorm / vocabulary-projection reductions "
                 "between eager, TorchScript, Inductor and ORT; logits sum over the hidden size")
_CACHE_FP32_WHY = "keys and values are single projections of LayerNorm outputs: fp32 rounding only"


def _gen_tolerances(*caches: str) -> dict[str, dict[str, Tolerance]]:
    tol = _fp32("logits", atol=1e-3, rtol=1e-3)
    tol["fp32"]["logits"] = Tolerance(1e-3, 1e-3, _GEN_FP32_WHY)
    for name, t in _fp32(*caches, atol=1e-4, rtol=1e-3).items():
        tol[name].update(t)
    for name in caches:
        tol["fp32"][name] = Tolerance(1e-4, 1e-3, _CACHE_FP32_WHY)
    return tol


def _gpt2_generation(c) -> dict:
    layers, heads, head_dim = _gpt2_cache(c)
    return {"cache": {"layers": layers, "heads": heads, "head_dim": head_dim},
            "vocab_size": c.vocab_size, "max_positions": c.n_positions, "encoder_decoder": False,
            "generation": {"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
                           "pad_token_id": c.pad_token_id}}


_GPT2 = "kiln.models.gpt2"
# export: past min 0 is the prefill; new max = total max so a whole prompt prefills at once
_GPT2_DIMS = {"batch": DimRange(1, 1, 8), "new": DimRange(1, 1, 1024), "past": DimRange(0, 64, 1023),
              "total": DimRange(1, 96, 1024)}
_GPT2_DECODER = TaskEntry(
    "gpt2", "text-generation", f"{_GPT2}:GPT2LMHeadModel", f"{_GPT2}:GPT2Config",
    _gpt2_decoder_inputs, _decoder_outputs(_gpt2_cache), _GPT2_DIMS,
    _gen_tolerances("present_key_values"), TaskCheck("same next token", _next_token_check()),
    dim_limits=lambda c: {"total": c.n_positions}, example_inputs=_gpt2_decoder_example,
    derived_dims=("total",), graph="decoder", wrapper=f"{_GPT2}:GPT2DecoderGraph")
register(dataclasses.replace(_GPT2_DECODER, graph="", wrapper="", derived_dims=(), graphs=(_GPT2_DECODER,),
                             generation=_gpt2_generation))


def _bart_cache(c) -> tuple[int, int, int]:
    return c.decoder_layers, c.decoder_attention_heads, c.d_model // c.decoder_attention_heads


def _bart_encoder_example(config: dict, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    batch, source = sizes["batch"], sizes["source"]
    mask = np.ones((batch, source), np.int64)
    if batch > 1:
        mask[-1, source * 2 // 3:] = 0  # a padded row (the encoder pads on the right)
    return {"input_ids": rng.integers(0, config["vocab_size"], (batch, source), dtype=np.int64),
            "attention_mask": mask}


def _bart_decoder_inputs(c) -> tuple[TensorSpec, ...]:
    return (TensorSpec("input_ids", "int64", ("batch", "new")),
            TensorSpec("attention_mask", "int64", ("batch", "total")),
            TensorSpec("position_ids", "int64", ("batch", "new")),
            TensorSpec("encoder_attention_mask", "int64", ("batch", "source")),
            _cache_spec("past_key_values", *_bart_cache(c), "past"),
            _cache_spec("cross_key_values", *_bart_cache(c), "source"))


def _bart_decoder_example(config: dict, sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    batch, new, past, source = sizes["batch"], sizes["new"], sizes["past"], sizes["source"]
    layers, heads = config["decoder_layers"], config["decoder_attention_heads"]
    head_dim = config["d_model"] // heads
    enc = _bart_encoder_example(config, sizes, rng)
    return {"input_ids": rng.integers(0, config["vocab_size"], (batch, new), dtype=np.int64),
            "attention_mask": np.ones((batch, past + new), np.int64),  # the decoder never pads
            "position_ids": np.broadcast_to(np.arange(past, past + new), (batch, new)).copy(),
            "encoder_attention_mask": enc["attention_mask"],
            "past_key_values": _random_cache(rng, layers, batch, heads, past, head_dim),
            "cross_key_values": _random_cache(rng, layers, batch, heads, source, head_dim)}


def _bart_generation(c) -> dict:
    layers, heads, head_dim = _bart_cache(c)
    keys = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
            "forced_bos_token_id", "forced_eos_token_id")
    return {"cache": {"layers": layers, "heads": heads, "head_dim": head_dim},
            "vocab_size": c.vocab_size, "max_positions": c.max_position_embeddings,
            "encoder_decoder": True,
            "generation": {k: getattr(c, k) for k in keys if getattr(c, k, None) is not None}}


_BART = "kiln.models.bart"
# export: source min 2 (<s> </s>); batch max 16 = 4 inputs x 4 beams
_BART_DIMS = {"batch": DimRange(1, 1, 16), "source": DimRange(2, 512, 1024), "new": DimRange(1, 1, 1024),
              "past": DimRange(0, 64, 1023), "total": DimRange(1, 65, 1024)}


def _bart_entries(task: str) -> TaskEntry:
    common = dict(dim_limits=lambda c: {"total": c.max_position_embeddings,
                                        "source": c.max_position_embeddings})
    encoder = TaskEntry(
        "bart", task, f"{_BART}:BartForConditionalGeneration", f"{_BART}:BartConfig",
        (TensorSpec("input_ids", "int64", ("batch", "source")),
         TensorSpec("attention_mask", "int64", ("batch", "source"))),
        lambda c: (_cache_spec("cross_key_values", *_bart_cache(c), "source"),),
        {k: _BART_DIMS[k] for k in ("batch", "source")}, _gen_tolerances("cross_key_values"),
        TaskCheck("cross-attention key/value cosine >= 0.9999", _cosine_check("cross_key_values")),
        example_inputs=_bart_encoder_example, graph="encoder", wrapper=f"{_BART}:BartEncoderGraph", **common)
    decoder = dataclasses.replace(
        encoder, inputs=_bart_decoder_inputs, outputs=_decoder_outputs(_bart_cache), dims=_BART_DIMS,
        tolerances=_gen_tolerances("present_key_values"), task_check=TaskCheck("same next token", _next_token_check()),
        example_inputs=_bart_decoder_example, derived_dims=("total",), graph="decoder",
        wrapper=f"{_BART}:BartDecoderGraph")
    return dataclasses.replace(decoder, graph="", wrapper="", derived_dims=(), graphs=(encoder, decoder),
                               generation=_bart_generation)


register(_bart_entries("summarization"))
register(_bart_entries("translation"))


def get(family: str, task: str) -> TaskEntry:
    try:
        return REGISTRY[(family, task)]
    except KeyError:
        known = ", ".join(f"{f}/{t}" for f, t in sorted(REGISTRY))
        raise InvalidArgumentError(
            f"no registry entry for family={family!r} task={task!r}; known: {known}") from None

