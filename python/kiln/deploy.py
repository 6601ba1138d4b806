"""How a family declares what it deploys: graphs, dims, tolerances, checks, references.

Each model file (kiln/models/<family>.py) ends with `DEPLOYABLES = (...)`, built with the
modality bases below (`text_encoder`, `image_classification`, `object_detection`,
`audio_model`, `causal_lm`, `seq2seq`), which carry what a modality shares; `kiln.registry` only collects them.

    Deployable  one task of one family: its kiln model class (whose `config_class` and
                `hf_architecture` name the config and the transformers reference class), its
                dims with ranges, the model's limits on them, and one or more named graphs
    Graph       what one exported graph takes and returns (specs from the config object),
                valid example inputs, tolerances per precision with their reasons, the
                task-level check, and how transformers computes the same outputs (tests, bench)

Nothing here imports torch: a reference function receives the transformers model and tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidArgumentError
from .manifest import Cache, DimRange, TensorSpec, Tolerance, Tolerances, ValueRange
from .metrics import cosine_rows

if TYPE_CHECKING:
    from .models.base import HFConfig, KilnModel

Feed = dict[str, np.ndarray]
Check = Callable[[Feed, Feed, Feed], tuple[bool, str]]  # (reference, test, inputs) -> (ok, detail)


@dataclass(frozen=True)
class TaskCheck:
    """The answer-level comparison of a backend against eager fp32 (same label, span, tokens).
    `by_precision`: the check a reduced-precision backend (a TensorRT fp16 / bf16 plan) is held
    to, where its thresholds differ from fp32's (`check`)."""

    name: str
    check: Check
    by_precision: Mapping[str, Check] = field(default_factory=dict)

    def check_for(self, precision: str) -> Check:
        return self.by_precision.get(precision, self.check)


@dataclass(frozen=True)
class Graph:
    """One exported graph of a deployable."""

    inputs: Callable[[Any], Sequence[TensorSpec]]  # config -> input specs, in graph order
    outputs: Callable[[Any], Sequence[TensorSpec]]  # config -> output specs, in graph order
    # (config, {dim: size}, rng) -> valid random inputs of those sizes: traced, exported, fed
    # by parity (beside real samples) and by the benchmark
    example: Callable[[Any, Mapping[str, int], np.random.Generator], Feed]
    tolerances: Tolerances
    check: TaskCheck
    name: str = "model"
    method: str = "forward"  # the model method this graph exports
    # transformers' outputs for a feed (tests, bench): (hf_model, {name: torch tensor}, task
    # options) -> {output name: tensor}; None where no transformers call computes this graph
    reference: Callable[[Any, dict, Mapping[str, Any]], dict] | None = None
    # sizes (beside the defaults) at which `reference` applies to the graph's own example
    reference_sizes: Mapping[str, int] = field(default_factory=dict)
    # where the graph's own example cannot feed transformers (a decoder fed precomputed
    # cross-attention keys): (hf_model, config, rng) -> (feed, expected outputs)
    reference_case: Callable[[Any, Any, np.random.Generator], tuple[Feed, dict]] | None = None
    # graphs with hard switches inside (Mask2Former's masked attention): (eager model, feed, a
    # candidate's outputs) -> (the eager outputs with every switch decided as the candidate decided
    # it, a note saying how many it decided otherwise). Parity judges a candidate that misses the
    # reference on a batch against these instead: every output within its tolerance (the switches'
    # own logits among them, so that each switch decided otherwise was within atol of its
    # threshold in the reference) and the task check
    pinned_reference: Callable[[Any, Feed, Feed], tuple[Feed, str]] | None = None

    def input_specs(self, config: Any) -> tuple[TensorSpec, ...]:
        return tuple(self.inputs(config))

    def output_specs(self, config: Any) -> tuple[TensorSpec, ...]:
        return tuple(self.outputs(config))

    def make_example(self, config: Any, sizes: Mapping[str, int], seed: int = 0) -> Feed:
        return self.example(config, sizes, np.random.default_rng(seed))

    def used_dims(self, config: Any) -> list[str]:
        """The dims its specs name, in order of first use."""
        seen: dict[str, None] = {}
        for spec in (*self.input_specs(config), *self.output_specs(config)):
            for d in spec.symbols:
                seen.setdefault(d, None)
        return list(seen)


@dataclass(frozen=True)
class Generation:
    """What a generation deployable adds: the cache and the loop's settings."""

    cache: Callable[[Any], Cache]
    vocab_size: Callable[[Any], int]
    max_positions: Callable[[Any], int]
    encoder_decoder: bool
    defaults: Callable[[Any], dict]  # generation settings the config carries (special tokens)
    # the vocabulary `make setup` lays out in $KILN_CACHE/tokenizers/<name>: random weights use it
    # where the checkpoint has no tokenizer (real weights must bring their own)
    tokenizer: str
    # (config, task) -> what the checkpoint says for the task (T5's task_specific_params): "prefix",
    # the text put before every input ("summarize: "), and generation settings (num_beams, ...)
    task_settings: Callable[[Any, str], dict] = lambda config, task: {}


@dataclass(frozen=True)
class Deployable:
    """One task of one family, deployable as an engine directory."""

    model: type[KilnModel]  # the kiln model class (models/<family>.py)
    task: str
    modality: str  # text | image | audio | generation: pre-processing and test assets
    dims: Mapping[str, DimRange]
    graphs: tuple[Graph, ...]
    limits: Callable[[Any], dict[str, int]] = lambda config: {}  # dim -> the model's own maximum
    options: tuple[str, ...] = ()  # recipe [task_options] passed to the model constructor
    labels: bool = False  # the config's id2label are the answer's labels
    generation: Generation | None = None
    tiny: Mapping[str, Any] = field(default_factory=dict)  # a tiny config (config.json keys) for tests
    # the preprocessor_config.json of a tiny checkpoint (tests; default: the modality's)
    tiny_preprocessor: Mapping[str, Any] | None = None
    # dims a checkpoint's preprocessor_config.json fixes (a SegFormer's image size): the defaults
    # of `kiln build --checkpoint DIR`, and what a build checks the engine's dims against
    processor_dims: Callable[[Mapping[str, Any]], dict[str, DimRange]] | None = None
    # checkpoint keys (regular expressions over the saved names) that `kiln.testing.sharpen`
    # multiplies by `sharpen_factor` in a made checkpoint: random weights answer every query alike
    # (near 1 / (labels + 1) for every class), and a query-based detector or segmenter then keeps
    # nothing at its thresholds; sharpened, some queries are confident and some are not
    sharpen: tuple[str, ...] = ()
    sharpen_factor: float = 10.0

    def __post_init__(self) -> None:
        names = [g.name for g in self.graphs]
        if not self.graphs or len(set(names)) != len(names):
            raise InvalidArgumentError(f"{self.key}: graphs {names}: expected one or more, uniquely named")
        if self.generation is None and len(self.graphs) != 1:
            raise InvalidArgumentError(f"{self.key}: an engine has one graph; several need a generation loop")

    @property
    def family(self) -> str:
        return self.model.config_class.model_type

    @property
    def config_class(self) -> type[HFConfig]:
        return self.model.config_class

    @property
    def reference_class(self) -> str:
        """The transformers class a checkpoint of this deployable is (and its reference)."""
        return self.model.hf_architecture

    @property
    def key(self) -> tuple[str, str]:
        return (self.model.config_class.model_type, self.task)

    @property
    def kind(self) -> str:
        """ "engine" (one graph, kiln::Engine) or "generation" (graphs under kiln::Generator)."""
        return "engine" if self.generation is None else "generation"

    @property
    def name(self) -> str:
        return f"{self.family}/{self.task}"

    def graph(self, name: str) -> Graph:
        for g in self.graphs:
            if g.name == name:
                return g
        raise InvalidArgumentError(f"{self.name}: no graph {name!r}; graphs: {[g.name for g in self.graphs]}")


# --- task-level checks --------------------------------------------------------------------
# A backend is held to the reference's answer wherever the reference is decisive: where its
# top-2 margin is below `margin`, either answer is right and the position is reported, not held.


def argmax_check(output: str, margin: float = 1e-3) -> Check:
    def check(ref: Feed, test: Feed, inputs: Feed) -> tuple[bool, str]:
        r, t = ref[output], test[output]
        top2 = np.sort(r, axis=-1)[..., -2:]
        decisive = (top2[..., 1] - top2[..., 0]) > margin
        if r.ndim == 3 and "attention_mask" in inputs:  # token level: only real tokens count
            decisive &= inputs["attention_mask"].astype(bool)
        mismatched = int(((r.argmax(-1) != t.argmax(-1)) & decisive).sum())
        ties = int((~decisive).sum())
        return (
            mismatched == 0,
            f"{int(decisive.sum())} decisive positions, {mismatched} differ ({ties} near-ties skipped)",
        )

    return check


def qa_span_check(ref: Feed, test: Feed, inputs: Feed) -> tuple[bool, str]:
    from .processing.text import best_span_indices

    mask = inputs["attention_mask"]
    bad = 0
    for b in range(mask.shape[0]):
        rs = best_span_indices(ref["start_logits"][b], ref["end_logits"][b], mask[b])
        ts = best_span_indices(test["start_logits"][b], test["end_logits"][b], mask[b])
        bad += rs != ts
    return bad == 0, f"{mask.shape[0]} spans, {bad} differ"


def cosine_check(output: str, minimum: float = 0.9999) -> Check:
    def check(ref: Feed, test: Feed, inputs: Feed) -> tuple[bool, str]:
        worst = float(cosine_rows(ref[output], test[output]).min())
        return worst >= minimum, f"min cosine {worst:.6f} (>= {minimum})"

    return check


def ctc_runs(ids: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC paths with repeats collapsed, per row: the transcript as token ids, blank
    included (vocabulary-free; equal runs give equal text for any vocab and blank id)."""
    out = []
    for row in ids:
        keep = np.ones(row.shape, bool)
        keep[1:] = row[1:] != row[:-1]
        out.append(tuple(row[keep].tolist()))
    return out


def ctc_transcript_check(margin: float = 1e-3) -> Check:
    def check(ref: Feed, test: Feed, inputs: Feed) -> tuple[bool, str]:
        r, t = ref["logits"], test["logits"]
        ra, ta = r.argmax(-1), t.argmax(-1)
        top2 = np.sort(r, axis=-1)[..., -2:]
        tie = (top2[..., 1] - top2[..., 0]) <= margin
        rr, tr = ctc_runs(ra), ctc_runs(ta)
        # a differing transcript counts unless every frame behind it is a near-tie
        bad = sum(1 for b in range(r.shape[0]) if rr[b] != tr[b] and ((ra[b] != ta[b]) & ~tie[b]).any())
        return bad == 0, f"{r.shape[0]} transcripts, {bad} differ ({int(tie.sum())} near-tie frames not held)"

    return check


def next_token_check(margin: float = 1e-3) -> Check:
    """The greedy next token at every real new position equals the reference's."""

    def check(ref: Feed, test: Feed, inputs: Feed) -> tuple[bool, str]:
        r, t = ref["logits"], test["logits"]
        real = inputs["attention_mask"][:, -r.shape[1] :].astype(bool)
        top2 = np.sort(r, axis=-1)[..., -2:]
        decisive = ((top2[..., 1] - top2[..., 0]) > margin) & real
        mismatched = int(((r.argmax(-1) != t.argmax(-1)) & decisive).sum())
        return mismatched == 0, (
            f"{int(decisive.sum())} decisive next tokens, {mismatched} differ"
            f" ({int((real & ~decisive).sum())} near-ties skipped)"
        )

    return check


def int8_next_token_check(logits: Tolerance) -> Check:
    """int8 decoders: wherever the reference's top-1 leads its top-2 by more than twice the int8
    logits bound (so an error inside the table cannot flip it), the int8 greedy token is the
    same. Beside it, the top-1 agreement over every real position: with random weights most
    positions are near-ties at int8's resolution, so that share is reported, not held."""
    same = next_token_check(margin=2 * logits.atol)

    def check(ref: Feed, test: Feed, inputs: Feed) -> tuple[bool, str]:
        ok, detail = same(ref, test, inputs)
        r, t = ref["logits"], test["logits"]
        real = inputs["attention_mask"][:, -r.shape[1] :].astype(bool)
        share = float(((r.argmax(-1) == t.argmax(-1)) & real).sum()) / max(int(real.sum()), 1)
        return ok, f"{detail}; top-1 agreement {share:.4f} over {int(real.sum())} positions"

    return check


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def box_iou_cxcywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (cx, cy, w, h) paired elementwise over the leading dims -> [...]. Scaling x and
    y by the image's size multiplies every area alike, so the IoU of relative boxes is the IoU in
    pixels."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    lo = np.maximum(a[..., :2] - a[..., 2:] / 2, b[..., :2] - b[..., 2:] / 2)
    hi = np.minimum(a[..., :2] + a[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2)
    inter = np.clip(hi - lo, 0, None).prod(-1)
    union = a[..., 2:].prod(-1) + b[..., 2:].prod(-1) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 1.0)


def detection_check(threshold: float = 0.5, margin: float = 1e-3, min_iou: float = 0.99) -> Check:
    """DETR-style answers compared per query slot (the queries are the same slots on every
    backend, so no matching is needed): where the reference is decisive, the same keep / drop
    decision at `threshold` (its score at least margin/10 from it: scores are probabilities, the
    margin is in logit units) and the same label (its top-2 margin over the real classes above
    `margin`); every box with IoU >= `min_iou` against the reference's. Near-ties are counted and
    reported, not held."""

    def check(ref: Feed, test: Feed, inputs: Feed) -> tuple[bool, str]:
        rl, tl = ref["logits"].astype(np.float64), test["logits"].astype(np.float64)
        rp, tp = _softmax(rl)[..., :-1], _softmax(tl)[..., :-1]  # the last class is "no object"
        rs, ts = rp.max(-1), tp.max(-1)
        keep_decisive = np.abs(rs - threshold) >= margin / 10
        keep_differs = int((((rs > threshold) != (ts > threshold)) & keep_decisive).sum())
        top2 = np.sort(rl[..., :-1], axis=-1)[..., -2:]
        label_decisive = (top2[..., 1] - top2[..., 0]) > margin
        label_differs = int(((rp.argmax(-1) != tp.argmax(-1)) & label_decisive).sum())
        iou = box_iou_cxcywh(ref["pred_boxes"], test["pred_boxes"])
        worst = float(iou.min()) if iou.size else 1.0
        ok = keep_differs == 0 and label_differs == 0 and worst >= min_iou
        return ok, (
            f"{rs.size} queries, {int((rs > threshold).sum())} kept at {threshold}: "
            f"{int(keep_decisive.sum())} decisive keep/drop, {keep_differs} differ; "
            f"{int(label_decisive.sum())} decisive labels, {label_differs} differ; min box IoU {worst:.5f} "
            f"(>= {min_iou}); near-ties not held: {int((~keep_decisive).sum())} scores, "
            f"{int((~label_decisive).sum())} labels (margin {margin:g})"
        )

    return check


# --- tolerances -----------------------------------------------------------------------------

FP32_WHY = (
    "fp32 reordering of reductions between eager, TorchScript, Inductor and ORT kernels; "
    "measured max abs on MiniLM is ~1e-6"
)
# TensorRT's reduced precisions (no TensorRT here to measure them: these follow the formats'
# resolution and are for the GPU suite to confirm). An element passes within atol OR rtol.
FP16_WHY = (
    "fp16 keeps 11 significant bits (relative step 4.9e-4); six layers of matmuls and LayerNorms "
    "accumulate about 10 steps on logits of magnitude ~1-10"
)
BF16_WHY = (
    "bf16 keeps 8 significant bits (relative step 3.9e-3), 8x coarser than fp16; the same accumulation "
    "gives about 10 steps"
)


def tolerances(
    *outputs: str, atol: float = 1e-4, rtol: float = 1e-3, why: str = FP32_WHY, int8: Tolerance | None = None
) -> Tolerances:
    """fp32 tolerances as given (with the reason); fp16 and bf16 (TensorRT plans) scaled from them;
    int8 (CPU artifacts of `kiln build --precision int8`) only where given: a measured table,
    never one derived from the format (a deployable without one cannot be built in int8)."""
    table = {
        "fp32": {o: Tolerance(atol, rtol, why) for o in outputs},
        "fp16": {o: Tolerance(max(atol * 100, 5e-3), 5e-3, FP16_WHY) for o in outputs},
        "bf16": {o: Tolerance(max(atol * 800, 4e-2), 4e-2, BF16_WHY) for o in outputs},
    }
    if int8 is not None:
        table["int8"] = {o: int8 for o in outputs}
    return table


def merge(*tables: Tolerances) -> Tolerances:
    out: Tolerances = {}
    for table in tables:
        for precision, outs in table.items():
            out.setdefault(precision, {}).update(outs)
    return out


# --- references: transformers' outputs for a feed ----------------------------------------------


def outputs_by_name(hf_model: Any, feed: dict, options: Mapping[str, Any]) -> dict:
    """The transformers model called on the feed; its output fields named like kiln's outputs."""
    out = hf_model(**feed)
    return {name: getattr(out, name) for name in ("logits", "start_logits", "end_logits") if hasattr(out, name)}


def pooled_embeddings(hf_model: Any, feed: dict, options: Mapping[str, Any]) -> dict:
    """Sentence embeddings as sentence-transformers computes them over a transformers encoder:
    the token states pooled over the attention mask ("mean", "cls" or "max"), L2-normalised."""
    import torch

    hidden = hf_model(**feed).last_hidden_state  # (B, T, H)
    mask = feed["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    pooling = options.get("pooling", "mean")
    if pooling == "cls":
        emb = hidden[:, 0]
    elif pooling == "max":
        emb = hidden.masked_fill(mask == 0, -1e9).amax(1)
    else:
        emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if options.get("normalize", True):
        emb = torch.nn.functional.normalize(emb, dim=-1)
    return {"embeddings": emb}


def hf_cache_tensor(cache: Any) -> Any:
    """A transformers cache (DynamicCache: layers of keys / values (B, H, T, D)) as kiln's
    one cache tensor (layers, 2, B, H, T, D)."""
    import torch

    return torch.stack([torch.stack([layer.keys, layer.values]) for layer in cache.layers])


# --- text encoders (BERT, DistilBERT, ...) ----------------------------------------------------

# export: sequence min is 2 ([CLS] [SEP] is the shortest tokenised text); a min of 1 lets
# torch.export specialise the dim
TEXT_DIMS = {"batch": DimRange(1, 1, 32), "sequence": DimRange(2, 128, 512)}


def text_encoder(
    model: type[KilnModel],
    task: str,
    outputs: Callable[[Any], Sequence[TensorSpec]],
    check: TaskCheck,
    *,
    tol: Tolerances | None = None,
    token_types: bool = True,
    reference: Callable[[Any, dict, Mapping[str, Any]], dict] = outputs_by_name,
    options: tuple[str, ...] = (),
    labels: bool = False,
    tiny: Mapping[str, Any],
) -> Deployable:
    """A text encoder's task: input_ids, attention_mask (and token_type_ids) over (batch, sequence).

    Reads config.vocab_size, config.max_position_embeddings and (token_types) config.type_vocab_size.
    """

    def inputs(c: Any) -> tuple[TensorSpec, ...]:
        specs = [
            TensorSpec("input_ids", "int64", ("batch", "sequence"), ValueRange(0, c.vocab_size - 1)),
            TensorSpec("attention_mask", "int64", ("batch", "sequence"), ValueRange(0, 1)),
        ]
        if token_types:
            specs.append(
                TensorSpec("token_type_ids", "int64", ("batch", "sequence"), ValueRange(0, c.type_vocab_size - 1))
            )
        return tuple(specs)

    def example(c: Any, sizes: Mapping[str, int], rng: np.random.Generator) -> Feed:
        batch, seq = sizes["batch"], sizes["sequence"]
        mask = np.ones((batch, seq), np.int64)
        if batch > 1:
            mask[-1, max(2, seq * 3 // 4) :] = 0  # a padded row, so masking is in every trace and check
        feed = {"input_ids": rng.integers(0, c.vocab_size, (batch, seq), dtype=np.int64), "attention_mask": mask}
        if token_types:
            types = np.zeros((batch, seq), np.int64)
            types[:, seq // 2 :] = min(1, c.type_vocab_size - 1)
            feed["token_type_ids"] = types
        return feed

    # output names do not depend on the config: the defaults name them
    tol = tol or tolerances(*(s.name for s in outputs(model.config_class())))
    graph = Graph(inputs, outputs, example, tol, check, reference=reference)
    return Deployable(
        model,
        task,
        "text",
        dict(TEXT_DIMS),
        (graph,),
        limits=lambda c: {"sequence": c.max_position_embeddings},
        options=options,
        labels=labels,
        tiny=tiny,
    )


# --- images -------------------------------------------------------------------------------------

IMAGE_DIMS = {"batch": DimRange(1, 1, 32)}
IMAGE_FP32_WHY = (
    "fp32 reordering of the conv / attention / LayerNorm reductions between eager, TorchScript, Inductor "
    "and ORT kernels; measured max abs on tiny random ViT and ConvNeXT engines is ~1e-6"
)


def image_classification(model: type[KilnModel], *, tiny: Mapping[str, Any]) -> Deployable:
    """pixel_values (batch, channels, H, W) at the config's fixed image size -> logits.

    Reads config.image_hw and config.num_channels.
    """

    def inputs(c: Any) -> tuple[TensorSpec, ...]:
        h, w = c.image_hw
        return (TensorSpec("pixel_values", "float32", ("batch", c.num_channels, h, w)),)

    def example(c: Any, sizes: Mapping[str, int], rng: np.random.Generator) -> Feed:
        h, w = c.image_hw
        # normalised pixels span about [-2.2, 2.7] (ImageNet mean/std) or [-1, 1] (0.5/0.5)
        pixels = rng.uniform(-1.5, 1.5, (sizes["batch"], c.num_channels, h, w))
        return {"pixel_values": pixels.astype(np.float32)}

    graph = Graph(
        inputs,
        lambda c: (TensorSpec("logits", "float32", ("batch", c.num_labels)),),
        example,
        tolerances("logits", why=IMAGE_FP32_WHY),
        TaskCheck("same top-1 label", argmax_check("logits")),
        reference=outputs_by_name,
    )
    return Deployable(model, "image-classification", "image", dict(IMAGE_DIMS), (graph,), labels=True, tiny=tiny)


# --- object detection (DETR) ---------------------------------------------------------------------
# pixel_values and pixel_mask (1 on the image, 0 on the padding the processor adds to reach the
# batch's largest image) over (batch, height, width): a padded batch is computed as each image
# alone would be, up to the zero border the backbone sees. H, W: the processor's range (shortest
# edge 800, longest 1333); 320 is the smallest a shortest edge gets before the pipeline pads it
# up (aspect ratios beyond 1333:320). logits (batch, queries, labels + 1 "no object") and
# pred_boxes (batch, queries, 4): (cx, cy, w, h) relative to the image's valid region.

DETECTION_DIMS = {"batch": DimRange(1, 1, 8), "height": DimRange(320, 800, 1333), "width": DimRange(320, 1066, 1333)}
DETECTION_FP32_WHY = (
    "fp32 reordering of the ResNet convolutions, attention and LayerNorm reductions between eager, TorchScript, "
    "Inductor and ORT kernels; a box coordinate of 1e-4 is 0.13 px at 1333"
)
DETECTION_FP16_WHY = (
    "fp16 keeps 11 significant bits (relative step 4.9e-4); ResNet-50's 53 convolutions and 12 "
    "transformer layers accumulate tens of steps on logits of magnitude ~1-10; boxes: sigmoids in [0, 1], "
    "2e-3 is 2.7 px at 1333 (not yet measured on a GPU: for the GPU suite to confirm)"
)
DETECTION_BF16_WHY = (
    "bf16 keeps 8 significant bits (relative step 3.9e-3), 8x coarser than fp16, over the same depth; "
    "boxes: 1.5e-2 is 20 px at 1333 (not yet measured on a GPU: for the GPU suite to confirm)"
)
DETECTION_TOLERANCES: Tolerances = {
    "fp32": {
        "logits": Tolerance(1e-4, 1e-3, DETECTION_FP32_WHY),
        "pred_boxes": Tolerance(1e-4, 1e-3, DETECTION_FP32_WHY),
    },
    "fp16": {
        "logits": Tolerance(5e-2, 1e-2, DETECTION_FP16_WHY),
        "pred_boxes": Tolerance(2e-3, 1e-2, DETECTION_FP16_WHY),
    },
    "bf16": {
        "logits": Tolerance(2e-1, 4e-2, DETECTION_BF16_WHY),
        "pred_boxes": Tolerance(1.5e-2, 4e-2, DETECTION_BF16_WHY),
    },
}
# the task check's margin (logit units; scores: / 10) and box IoU floor per precision, with why:
# the margin is the logits' tolerance, so a query the reference decides by more than the
# precision's error must be decided alike; IoU 0.95 is 2-3 px on a 100 px box at 1333
DETECTION_MARGINS = {
    "fp32": (1e-3, 0.99, "fp32 logits agree to ~1e-5: 1e-3 leaves two orders of magnitude"),
    "fp16": (5e-2, 0.95, "the fp16 logits tolerance; boxes within 2e-3 of 1333 px keep IoU >= 0.95 down to ~100 px"),
    "bf16": (2e-1, 0.95, "the bf16 logits tolerance; boxes as fp16 (box error above IoU 0.95 shows as a failure)"),
}


def detection_outputs(hf_model: Any, feed: dict, options: Mapping[str, Any]) -> dict:
    """transformers' DETR-style detector on the feed: logits and pred_boxes."""
    out = hf_model(pixel_values=feed["pixel_values"], pixel_mask=feed["pixel_mask"])
    return {"logits": out.logits, "pred_boxes": out.pred_boxes}


def object_detection(
    model: type[KilnModel],
    *,
    tiny: Mapping[str, Any],
    tiny_preprocessor: Mapping[str, Any],
    sharpen: tuple[str, ...] = (),
    sharpen_factor: float = 10.0,
) -> Deployable:
    """pixel_values [B, C, H, W] and pixel_mask int64 [B, H, W] over dynamic H, W ->
    logits [B, Q, L + 1] and pred_boxes [B, Q, 4] (cx, cy, w, h).

    Reads config.num_channels, config.num_queries and config.num_labels.
    """

    def inputs(c: Any) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec("pixel_values", "float32", ("batch", c.num_channels, "height", "width")),
            TensorSpec("pixel_mask", "int64", ("batch", "height", "width"), ValueRange(0, 1)),
        )

    def outputs(c: Any) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec("logits", "float32", ("batch", c.num_queries, c.num_labels + 1)),
            TensorSpec("pred_boxes", "float32", ("batch", c.num_queries, 4)),
        )

    def example(c: Any, sizes: Mapping[str, int], rng: np.random.Generator) -> Feed:
        batch, h, w = sizes["batch"], sizes["height"], sizes["width"]
        # normalised pixels (ImageNet mean/std) span about [-2.1, 2.6]
        pixels = rng.uniform(-2.0, 2.5, (batch, c.num_channels, h, w)).astype(np.float32)
        mask = np.ones((batch, h, w), np.int64)
        if batch > 1:  # a smaller image padded to the batch's size, as the processor pads it
            vh, vw = max(1, h * 3 // 4), max(1, w * 2 // 3)
            mask[-1] = 0
            mask[-1, :vh, :vw] = 1
            pixels[-1] *= mask[-1]
        return {"pixel_values": pixels, "pixel_mask": mask}

    margins = {p: detection_check(0.5, m, iou) for p, (m, iou, _) in DETECTION_MARGINS.items()}
    check = TaskCheck("same detections per query", margins["fp32"], margins)
    graph = Graph(inputs, outputs, example, DETECTION_TOLERANCES, check, reference=detection_outputs)
    return Deployable(
        model,
        "object-detection",
        "image",
        dict(DETECTION_DIMS),
        (graph,),
        labels=True,
        tiny=tiny,
        tiny_preprocessor=tiny_preprocessor,
        sharpen=sharpen,
        sharpen_factor=sharpen_factor,
    )


# --- audio --------------------------------------------------------------------------------------
# input_values: the waveform at the model's rate (16 kHz), normalised by the processor;
# attention_mask: 1 on real samples. Outputs per encoder frame carry a dim ("frames") derived
# from "samples" by the model, which appears only in outputs: the C++ runtime leaves it free.

# export: 1 s .. 30 s at 16 kHz. torch.export accepts samples down to 720 (two frames of the
# standard 7-conv encoder; one frame would specialise the dim); shorter audio is padded up to
# min by the pipeline, with the attention mask marking the padding.
AUDIO_DIMS = {"batch": DimRange(1, 1, 8), "samples": DimRange(16000, 80000, 480000)}
AUDIO_FP32_WHY = (
    "fp32 reordering of the conv-stack / GroupNorm-over-time / attention reductions between eager, "
    "TorchScript, Inductor and ORT kernels"
)


def audio_model(
    model: type[KilnModel],
    task: str,
    outputs: Callable[[Any], Sequence[TensorSpec]],
    check: TaskCheck,
    *,
    labels: bool = False,
    tiny: Mapping[str, Any],
) -> Deployable:
    def example(c: Any, sizes: Mapping[str, int], rng: np.random.Generator) -> Feed:
        batch, samples = sizes["batch"], sizes["samples"]
        values = rng.standard_normal((batch, samples)).astype(np.float32)  # ~unit variance, as normalised audio
        mask = np.ones((batch, samples), np.int64)
        if batch > 1:  # a padded row, so the frame mask is in every trace and check
            mask[-1, samples * 3 // 4 :] = 0
            values[-1, samples * 3 // 4 :] = 0.0
        return {"input_values": values, "attention_mask": mask}

    inputs = (
        TensorSpec("input_values", "float32", ("batch", "samples")),
        TensorSpec("attention_mask", "int64", ("batch", "samples"), ValueRange(0, 1)),
    )
    graph = Graph(
        lambda c: inputs,
        outputs,
        example,
        tolerances("logits", why=AUDIO_FP32_WHY),
        check,
        reference=outputs_by_name,
    )
    return Deployable(model, task, "audio", dict(AUDIO_DIMS), (graph,), labels=labels, tiny=tiny)


# --- text generation (decoder-only, encoder-decoder) --------------------------------------------
# One KV-cache tensor per graph input/output, (layers, 2 [keys, values], batch, heads, seq,
# head_dim): one tensor to feed back, and one gather along axis 2 reorders every layer's cache
# for beam search. One decoder graph serves prefill (past = 0, a zero-size cache) and decode
# (new = 1): the weights ship once per format, and torch.export, ONNX Runtime and TensorRT all
# take empty dims. attention_mask covers past + new ("total"): a dim derived by the graph
# (torch.export: Dim.AUTO) and checked by the runtime. The generation loop is C++ (kiln::Generator).

GEN_FP32_WHY = (
    "fp32 reordering of attention / LayerNorm / vocabulary-projection reductions between eager, "
    "TorchScript, Inductor and ORT; logits sum over the hidden size"
)
CACHE_FP32_WHY = "keys and values are single projections of LayerNorm outputs: fp32 rounding only"


def generation_tolerances(*caches: str, int8: Mapping[str, Tolerance] | None = None) -> Tolerances:
    """int8: the measured table of a decoder built with --precision int8 ({"logits": ..., "cache": ...})."""
    return merge(
        tolerances("logits", atol=1e-3, rtol=1e-3, why=GEN_FP32_WHY, int8=(int8 or {}).get("logits")),
        tolerances(*caches, atol=1e-4, rtol=1e-3, why=CACHE_FP32_WHY, int8=(int8 or {}).get("cache")),
    )


def cache_spec(name: str, cache: Cache, seq: str) -> TensorSpec:
    return TensorSpec(name, "float32", (cache.layers, 2, "batch", cache.heads, seq, cache.head_dim))


def random_cache(rng: np.random.Generator, cache: Cache, batch: int, seq: int) -> np.ndarray:
    shape = (cache.layers, 2, batch, cache.heads, seq, cache.head_dim)
    return rng.standard_normal(shape).astype(np.float32)


def left_padded_mask(batch: int, total: int) -> np.ndarray:
    mask = np.ones((batch, total), np.int64)
    if batch > 1:
        mask[-1, : total // 3] = 0  # a left-padded row, so masking is in every trace and check
    return mask


def decoder_outputs(
    cache: Callable[[Any], Cache], positions: str | int = "new"
) -> Callable[[Any], tuple[TensorSpec, ...]]:
    """A decoder graph's outputs. `positions`: how many new positions have logits; a causal LM's
    prefill is the whole prompt, so it returns the last position's only (1), which is all that
    generation reads; an encoder-decoder's decoder starts from one start token and returns every
    new position's ("new")."""
    return lambda c: (
        TensorSpec("logits", "float32", ("batch", positions, c.vocab_size)),
        cache_spec("present_key_values", cache(c), "total"),
    )


def cache_dims(batch: int) -> dict[str, DimRange]:
    # export: past min 0 is the prefill; new max = total max so a whole prompt prefills at once
    return {
        "batch": DimRange(1, 1, batch),
        "new": DimRange(1, 1, 1024),
        "past": DimRange(0, 64, 1023),
        "total": DimRange(1, 65, 1024, sum=("past", "new")),  # opt = past opt + new opt
    }


def positions_limits(positions: int) -> dict[str, int]:
    """A decoder's dims under a model with `positions` positions (past + new <= positions)."""
    return {"total": positions, "new": positions, "past": positions - 1}


def causal_lm(
    model: type[KilnModel],
    *,
    cache: Callable[[Any], Cache],
    positions: Callable[[Any], int],
    defaults: Callable[[Any], dict],
    tokenizer: str,
    reference_case: Callable[[Any, Any, np.random.Generator], tuple[Feed, dict]],
    tiny: Mapping[str, Any],
    int8: Mapping[str, Tolerance] | None = None,
) -> Deployable:
    """A decoder-only language model: one decoder graph (input_ids, attention_mask (batch,
    past + new), position_ids, past_key_values) -> (logits (batch, 1, vocab): the last new
    position's, present_key_values). int8: the measured int8 table ({"logits", "cache"}) where
    int8 decoders are built."""

    def inputs(c: Any) -> tuple[TensorSpec, ...]:
        n = positions(c)
        return (
            TensorSpec("input_ids", "int64", ("batch", "new"), ValueRange(0, c.vocab_size - 1)),
            TensorSpec("attention_mask", "int64", ("batch", "total"), ValueRange(0, 1)),
            TensorSpec("position_ids", "int64", ("batch", "new"), ValueRange(0, n - 1)),
            cache_spec("past_key_values", cache(c), "past"),
        )

    def example(c: Any, sizes: Mapping[str, int], rng: np.random.Generator) -> Feed:
        batch, new, past = sizes["batch"], sizes["new"], sizes["past"]
        mask = left_padded_mask(batch, past + new)
        positions_ = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)[:, past:]
        return {
            "input_ids": rng.integers(0, c.vocab_size, (batch, new), dtype=np.int64),
            "attention_mask": mask,
            "position_ids": positions_.astype(np.int64),
            "past_key_values": random_cache(rng, cache(c), batch, past),
        }

    decoder = Graph(
        inputs,
        decoder_outputs(cache, positions=1),
        example,
        generation_tolerances("present_key_values", int8=int8),
        TaskCheck(
            "same next token" + (" (int8: where fp32 leads by > 2x the int8 logits bound)" if int8 else ""),
            next_token_check(),
            {"int8": int8_next_token_check(int8["logits"])} if int8 else {},
        ),
        name="decoder",
        reference_case=reference_case,
    )
    generation = Generation(
        cache,
        lambda c: c.vocab_size,
        positions,
        encoder_decoder=False,
        defaults=defaults,
        tokenizer=tokenizer,
    )
    return Deployable(
        model,
        "text-generation",
        "generation",
        cache_dims(batch=8),
        (decoder,),
        limits=lambda c: positions_limits(positions(c)),
        generation=generation,
        tiny=tiny,
    )


def seq2seq(
    model: type[KilnModel],
    task: str,
    *,
    cache: Callable[[Any], Cache],
    positions: Callable[[Any], int],
    defaults: Callable[[Any], dict],
    tokenizer: str,
    task_settings: Callable[[Any, str], dict] = lambda config, task: {},
    encoder_case: Callable[[Any, Any, np.random.Generator], tuple[Feed, dict]],
    decoder_case: Callable[[Any, Any, np.random.Generator], tuple[Feed, dict]],
    tiny: Mapping[str, Any],
) -> Deployable:
    """An encoder-decoder: the encoder graph (input_ids, attention_mask (batch, source)) ->
    cross_key_values, projected once per input through every decoder layer; the decoder graph as
    a causal LM's plus encoder_attention_mask and cross_key_values. The model exposes
    `encode` and `decode` methods, the graphs' forwards."""

    def enc_example(c: Any, sizes: Mapping[str, int], rng: np.random.Generator) -> Feed:
        batch, source = sizes["batch"], sizes["source"]
        mask = np.ones((batch, source), np.int64)
        if batch > 1:
            mask[-1, source * 2 // 3 :] = 0  # a padded row (the encoder pads on the right)
        return {"input_ids": rng.integers(0, c.vocab_size, (batch, source), dtype=np.int64), "attention_mask": mask}

    def dec_inputs(c: Any) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec("input_ids", "int64", ("batch", "new"), ValueRange(0, c.vocab_size - 1)),
            TensorSpec("attention_mask", "int64", ("batch", "total"), ValueRange(0, 1)),
            TensorSpec("position_ids", "int64", ("batch", "new"), ValueRange(0, positions(c) - 1)),
            TensorSpec("encoder_attention_mask", "int64", ("batch", "source"), ValueRange(0, 1)),
            cache_spec("past_key_values", cache(c), "past"),
            cache_spec("cross_key_values", cache(c), "source"),
        )

    def dec_example(c: Any, sizes: Mapping[str, int], rng: np.random.Generator) -> Feed:
        batch, new, past, source = sizes["batch"], sizes["new"], sizes["past"], sizes["source"]
        enc = enc_example(c, sizes, rng)
        return {
            "input_ids": rng.integers(0, c.vocab_size, (batch, new), dtype=np.int64),
            "attention_mask": np.ones((batch, past + new), np.int64),  # the decoder never pads
            "position_ids": np.broadcast_to(np.arange(past, past + new), (batch, new)).copy(),
            "encoder_attention_mask": enc["attention_mask"],
            "past_key_values": random_cache(rng, cache(c), batch, past),
            "cross_key_values": random_cache(rng, cache(c), batch, source),
        }

    encoder = Graph(
        lambda c: (
            TensorSpec("input_ids", "int64", ("batch", "source"), ValueRange(0, c.vocab_size - 1)),
            TensorSpec("attention_mask", "int64", ("batch", "source"), ValueRange(0, 1)),
        ),
        lambda c: (cache_spec("cross_key_values", cache(c), "source"),),
        enc_example,
        generation_tolerances("cross_key_values"),
        TaskCheck("cross-attention key/value cosine >= 0.9999", cosine_check("cross_key_values")),
        name="encoder",
        method="encode",
        reference_case=encoder_case,
    )
    decoder = Graph(
        dec_inputs,
        decoder_outputs(cache),
        dec_example,
        generation_tolerances("present_key_values"),
        TaskCheck("same next token", next_token_check()),
        name="decoder",
        method="decode",
        reference_case=decoder_case,
    )
    # export: source min 2 (<s> </s>); batch max 16 = 4 inputs x 4 beams
    dims = {**cache_dims(batch=16), "source": DimRange(2, 512, 1024)}
    generation = Generation(
        cache,
        lambda c: c.vocab_size,
        positions,
        encoder_decoder=True,
        defaults=defaults,
        tokenizer=tokenizer,
        task_settings=task_settings,
    )
    return Deployable(
        model,
        task,
        "generation",
        dims,
        (encoder, decoder),
        limits=lambda c: {**positions_limits(positions(c)), "source": positions(c)},
        generation=generation,
        tiny=tiny,
    )


# --- dense vision: semantic segmentation (SegFormer) and depth estimation (GLPN) -----------------
# Task checks hold a backend to the reference where the reference is decisive and count the rest:
# a pixel whose top-2 logit margin is below the precision's epsilon is a near-tie (either label
# is right); a depth pixel whose 0-255 value lies within epsilon of a truncation boundary may
# round either way. Thresholds per precision, with the reasons (fp16 / bf16 are TensorRT plans,
# not measurable on kiln's CPU machines: the GPU suite confirms them).

# precision -> (margin epsilon in logit units, mIoU floor over all pixels)
SEGMENTATION_THRESHOLDS: dict[str, tuple[float, float]] = {
    "fp32": (1e-3, 0.999),  # fp32 reorderings move logits by ~1e-6: a flip needs a margin below that
    "fp16": (5e-2, 0.99),  # 11-bit mantissa over ~20 layers: logits of magnitude ~10 move by ~1e-2
    "bf16": (2e-1, 0.99),  # 8-bit mantissa: 8x coarser than fp16
}
# precision -> (AbsRel bound, 0-255 levels allowed, share of decisive pixels within them, epsilon in levels)
DEPTH_THRESHOLDS: dict[str, tuple[float, int, float, float]] = {
    "fp32": (1e-4, 1, 0.999, 1e-3),  # fp32 rounding moves depth by ~1e-6 relative
    # fp16's relative step 4.9e-4, accumulated over the MiT stages and the decoder: ~5e-3 of the
    # depth, i.e. under one level of a 0-255 image spanning a few metres
    "fp16": (5e-3, 1, 0.99, 5e-2),
    "bf16": (2e-2, 3, 0.99, 2e-1),  # 8x fp16's step: ~2e-2 of the depth, up to ~3 levels
}


def _top2_margin(logits: np.ndarray, axis: int) -> np.ndarray:
    top2 = np.partition(logits, -2, axis=axis)
    return np.take(top2, -1, axis=axis) - np.take(top2, -2, axis=axis)


def mean_iou(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean over the labels present in either map of |ref = c and test = c| / |ref = c or test = c|."""
    labels = np.union1d(np.unique(ref), np.unique(test))
    ious = [np.logical_and(ref == c, test == c).sum() / np.logical_or(ref == c, test == c).sum() for c in labels]
    return float(np.mean(ious)) if ious else 1.0


def segmentation_check(margin: float = 1e-3, min_miou: float = 0.999, output: str = "logits") -> Check:
    """Logits (B, L, h, w) on the model's grid: every pixel where the reference's top-2 margin
    exceeds `margin` has the reference's label, and the mIoU of the label maps over every pixel
    is at least `min_miou`. The answer (kiln.processing.segmentation) upsamples these logits
    bilinearly before the argmax: a convex combination of grid values, so grid logits within
    the tolerance give the same upsampled labels wherever the reference is decisive."""

    def check(ref: Feed, test: Feed, inputs: Feed) -> tuple[bool, str]:
        r, t = ref[output], test[output]
        decisive = _top2_margin(r, 1) > margin
        rl, tl = r.argmax(1), t.argmax(1)
        differ = int(((rl != tl) & decisive).sum())
        miou = mean_iou(rl, tl)
        return differ == 0 and miou >= min_miou, (
            f"{int(decisive.sum())} decisive pixels, {differ} differ ({int((~decisive).sum())} near-ties "
            f"skipped, {int((rl != tl).sum())} of all pixels differ); mIoU {miou:.6f} (>= {min_miou})"
        )

    return check


def depth_image(depth: np.ndarray) -> np.ndarray:
    """The 0-255 picture transformers' depth-estimation pipeline makes of one depth map:
    (d - min) / (max - min) * 255 in float32, truncated to uint8. A constant map gives zeros
    (transformers divides by zero there)."""
    d = np.asarray(depth, dtype=np.float32)
    lo, hi = d.min(), d.max()
    if not hi > lo:
        return np.zeros(d.shape, np.uint8)
    return (((d - lo) / (hi - lo)) * np.float32(255)).astype(np.uint8)


def depth_check(
    max_abs_rel: float = 1e-4,
    levels: int = 1,
    min_share: float = 0.999,
    eps: float = 1e-3,
    output: str = "predicted_depth",
) -> Check:
    """Depth (B, H, W): the mean relative error mean(|test - ref| / ref) at most `max_abs_rel`,
    and each image's 0-255 picture within `levels` of the reference's on at least `min_share` of
    the decisive pixels; a pixel whose reference value is within `eps` of a truncation boundary
    is a near-tie, counted and not held."""

    def check(ref: Feed, test: Feed, inputs: Feed) -> tuple[bool, str]:
        r = ref[output].astype(np.float64)
        t = test[output].astype(np.float64)
        abs_rel = float(np.mean(np.abs(t - r) / np.maximum(np.abs(r), 1e-12)))
        held = within = equal = ties = 0
        for rb, tb in zip(ref[output], test[output]):
            rd, td = rb.astype(np.float32), tb.astype(np.float32)
            span = rd.max() - rd.min()
            scaled = (rd - rd.min()) / span * np.float32(255) if span > 0 else np.zeros_like(rd)
            frac = scaled - np.floor(scaled)
            decisive = (frac > eps) & (frac < 1 - eps)
            diff = np.abs(depth_image(td).astype(np.int32) - depth_image(rd).astype(np.int32))[decisive]
            held += int(decisive.sum())
            ties += int((~decisive).sum())
            within += int((diff <= levels).sum())
            equal += int((diff == 0).sum())
        share = within / max(held, 1)
        return abs_rel <= max_abs_rel and share >= min_share, (
            f"AbsRel {abs_rel:.1e} (<= {max_abs_rel:.0e}), 0-255 image within {levels} level on {share:.4%} "
            f"(>= {min_share:.1%}) and equal on {equal / max(held, 1):.4%} of {held} pixels ({ties} near-ties not held)"
        )

    return check


DENSE_FP32_WHY = (
    "fp32 reordering of the MiT attention / Mix-FFN / conv reductions and the bilinear resizes between "
    "eager, TorchScript, Inductor and ORT kernels"
)


def _image_example(low: float, high: float) -> Callable[[Any, Mapping[str, int], np.random.Generator], Feed]:
    def example(c: Any, sizes: Mapping[str, int], rng: np.random.Generator) -> Feed:
        shape = (sizes["batch"], c.num_channels, sizes["height"], sizes["width"])
        return {"pixel_values": rng.uniform(low, high, shape).astype(np.float32)}

    return example


def _fixed_size_dims(preprocessor: Mapping[str, Any]) -> dict[str, DimRange]:
    """The height and width a resize-to-size processor makes every image (SegFormer's 512 x 512)."""
    from .processing.image import ImageProcessor

    h, w = ImageProcessor.from_dict(dict(preprocessor)).output_size
    return {"height": DimRange(h, h, h), "width": DimRange(w, w, w)}


def semantic_segmentation(
    model: type[KilnModel], *, tiny: Mapping[str, Any], tiny_preprocessor: Mapping[str, Any]
) -> Deployable:
    """pixel_values (batch, channels, height, width) at the size the checkpoint's processor
    resizes to (static: one height and one width per engine) -> logits (batch, num_labels,
    height / 4, width / 4). Reads config.num_channels and config.num_labels."""

    def inputs(c: Any) -> tuple[TensorSpec, ...]:
        return (TensorSpec("pixel_values", "float32", ("batch", c.num_channels, "height", "width")),)

    tol = tolerances("logits", why=DENSE_FP32_WHY)
    margin, miou = SEGMENTATION_THRESHOLDS["fp32"]
    graph = Graph(
        inputs,
        lambda c: (TensorSpec("logits", "float32", ("batch", c.num_labels, "height/4", "width/4")),),
        _image_example(-2.0, 2.5),  # ImageNet-normalised pixels span about [-2.1, 2.6]
        tol,
        TaskCheck(
            "same labels on decisive pixels, mIoU",
            segmentation_check(margin, miou),
            {p: segmentation_check(*t) for p, t in SEGMENTATION_THRESHOLDS.items() if p != "fp32"},
        ),
        reference=outputs_by_name,
    )
    # B 1/1/8; H and W: one size (the processor's), static in every artifact
    dims = {"batch": DimRange(1, 1, 8), "height": DimRange(512, 512, 512), "width": DimRange(512, 512, 512)}
    return Deployable(
        model,
        "semantic-segmentation",
        "image",
        dims,
        (graph,),
        labels=True,
        tiny=tiny,
        tiny_preprocessor=tiny_preprocessor,
        processor_dims=_fixed_size_dims,
    )


def predicted_depth(hf_model: Any, feed: dict, options: Mapping[str, Any]) -> dict:
    return {"predicted_depth": hf_model(**feed).predicted_depth}


def depth_estimation(
    model: type[KilnModel], *, tiny: Mapping[str, Any], tiny_preprocessor: Mapping[str, Any]
) -> Deployable:
    """pixel_values (batch, channels, height, width), height and width in multiples of 32 (the
    encoder's total stride: the decoder doubles the coarsest map back up stage by stage), values
    in [0, 1] -> predicted_depth (batch, height, width). Reads config.num_channels."""

    def inputs(c: Any) -> tuple[TensorSpec, ...]:
        return (TensorSpec("pixel_values", "float32", ("batch", c.num_channels, "height", "width")),)

    absrel, levels, share, eps = DEPTH_THRESHOLDS["fp32"]
    # depth = sigmoid * max_depth (metres, 10 for NYU, 80 for KITTI): an absolute bound in metres
    # plus a relative one
    tol: Tolerances = {
        "fp32": {"predicted_depth": Tolerance(1e-3, 1e-4, DENSE_FP32_WHY + "; 1 mm on depths of metres")},
        "fp16": {"predicted_depth": Tolerance(5e-2, 5e-3, FP16_WHY + "; 5e-3 x max_depth 10")},
        "bf16": {"predicted_depth": Tolerance(2e-1, 2e-2, BF16_WHY + "; 2e-2 x max_depth 10")},
    }
    graph = Graph(
        inputs,
        lambda c: (TensorSpec("predicted_depth", "float32", ("batch", "height", "width")),),
        _image_example(0.0, 1.0),  # rescaled pixels, no mean / std
        tol,
        TaskCheck(
            "depth AbsRel, the 0-255 depth image",
            depth_check(absrel, levels, share, eps),
            {p: depth_check(*t) for p, t in DEPTH_THRESHOLDS.items() if p != "fp32"},
        ),
        reference=predicted_depth,
    )
    # export: min 64 keeps every stage at least 2x2 (the last is H / 32): a 1x1 stage would let
    # torch.export specialise the dim. TensorRT profile: 64 / 480x640 / 1024x1344.
    dims = {
        "batch": DimRange(1, 1, 4),
        "height": DimRange(64, 480, 1024, multiple=32),
        "width": DimRange(64, 640, 1344, multiple=32),
    }
    return Deployable(
        model,
        "depth-estimation",
        "image",
        dims,
        (graph,),
        tiny=tiny,
        tiny_preprocessor=tiny_preprocessor,
    )


# --- universal segmentation (Mask2Former): semantic, instance and panoptic from one graph ---------
# One graph: pixel_values (batch, 3, height, width) at a static size -> class_queries_logits (batch,
# queries, labels + 1 "no object") and masks_queries_logits (batch, queries, height/4, width/4).
# The engine's subtask (task option) picks the default post-processing; the task check holds every
# backend to the reference on all three answers at once.

# precision -> (margin epsilon in logit units, mIoU / mask IoU floor, panoptic segment IoU floor,
# panoptic pixel agreement floor)
UNIVERSAL_THRESHOLDS: dict[str, tuple[float, float, float, float]] = {
    "fp32": (1e-3, 0.999, 0.98, 0.999),  # fp32 reorderings move logits by ~1e-6
    # fp16: the masked attention's hard switch (sigmoid(mask) < 0.5, i.e. logit < 0) flips at
    # positions whose logit is within fp16's error of 0, and a flip changes what the next decoder
    # layer attends to: tensor-level misses are expected; answers are held where decisive
    "fp16": (5e-2, 0.95, 0.9, 0.99),
    "bf16": (2e-1, 0.95, 0.9, 0.99),  # 8x fp16's step, the same propagation
}
UNIVERSAL_FP32_WHY = (
    "fp32 reordering of the Swin / deformable-attention / decoder reductions and the bilinear resizes between "
    "eager, TorchScript, Inductor and ORT kernels; a mask logit that lands on the masked attention's switch "
    "(sigmoid < 0.5) within that error would flip one attended position"
)
UNIVERSAL_FP16_WHY = (
    FP16_WHY + "; the masked attention's hard switch (mask logit < 0) flips where a logit is within fp16's error "
    "of 0 and the flip propagates through the decoder layers: judged by the answers (task check), not these"
)
UNIVERSAL_CLASS_FP32_WHY = (
    UNIVERSAL_FP32_WHY + "; the class logits come out of 9 masked-attention decoder layers that amplify those "
    "differences (measured at Swin-tiny size with random weights: ONNX Runtime 3.1e-4, AOTInductor 5.2e-5, "
    "masks 7.4e-5)"
)
UNIVERSAL_MASK_FP32_WHY = (
    UNIVERSAL_FP32_WHY + "; near 0 a mask logit is the difference of large terms, so its error follows the "
    "logits' scale, not its own value (rtol does not cover it): measured at Swin-tiny size on the sharpened "
    "checkpoint of `python -m kiln.testing` (mask head x15), on the candidates' own switches, up to 4.5e-4 "
    "(ONNX Runtime; AOTInductor 3.0e-4) on the masks and 6.4e-4 on the resized switch logits"
)
UNIVERSAL_SWITCH_WHY = (
    "; these are the earlier layers' mask logits, resized to the level each layer attends to: the values its "
    "switch reads. Where a candidate decides a switch otherwise than the reference, parity reruns the reference "
    "on the candidate's switches and holds every output to this table there: the switch's own logits then lie "
    "on either side of 0, so the reference's was within atol of the threshold"
)
UNIVERSAL_TOLERANCES: Tolerances = {
    "fp32": {
        "class_queries_logits": Tolerance(1e-3, 1e-3, UNIVERSAL_CLASS_FP32_WHY),
        "masks_queries_logits": Tolerance(1e-3, 1e-3, UNIVERSAL_MASK_FP32_WHY),
        "attention_mask_logits": Tolerance(1e-3, 1e-3, UNIVERSAL_MASK_FP32_WHY + UNIVERSAL_SWITCH_WHY),
    },
    "fp16": {
        "class_queries_logits": Tolerance(5e-2, 1e-2, UNIVERSAL_FP16_WHY),
        "masks_queries_logits": Tolerance(5e-2, 1e-2, UNIVERSAL_FP16_WHY),
        "attention_mask_logits": Tolerance(5e-2, 1e-2, UNIVERSAL_FP16_WHY + UNIVERSAL_SWITCH_WHY),
    },
    "bf16": {
        "class_queries_logits": Tolerance(2e-1, 4e-2, BF16_WHY + "; the masked attention's switch as for fp16"),
        "masks_queries_logits": Tolerance(2e-1, 4e-2, BF16_WHY + "; the masked attention's switch as for fp16"),
        "attention_mask_logits": Tolerance(
            2e-1, 4e-2, BF16_WHY + "; the masked attention's switch as for fp16" + UNIVERSAL_SWITCH_WHY
        ),
    },
}


def _semantic_grid(cls: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(B, L, h, w) semantic scores on the model's grid: softmax over classes (no "no object")
    times sigmoid(mask), summed over the queries."""
    p = _softmax(cls.astype(np.float64))[..., :-1]
    return np.einsum("bqc,bqhw->bchw", p, 1 / (1 + np.exp(-masks.astype(np.float64))))


def universal_segmentation_check(
    margin: float = 1e-3,
    min_iou: float = 0.999,
    min_segment_iou: float = 0.98,
    min_agreement: float = 0.999,
    threshold: float = 0.5,
) -> Check:
    """Mask2Former's three answers against the reference's, where the reference is decisive:
    - semantic: the label of every pixel of the model's grid whose top-2 score margin exceeds
      margin / 10 (scores are probabilities), and the mIoU over all pixels >= min_iou;
    - instance (per query slot): the same keep decision at `threshold` where the query's class
      probability is margin / 10 away from it, the same label where the top-2 class logits
      differ by more than margin, and each kept query's binary mask (logit > 0) with IoU >= min_iou
      over the pixels whose reference logit is beyond margin;
    - panoptic: transformers' post-processing at `threshold` on both: the same segments (label,
      fused) in order, each with IoU >= min_segment_iou, and the segment maps agreeing on >=
      min_agreement of the pixels, for each image whose kept queries are all decisive."""

    def check(ref: Feed, test: Feed, inputs: Feed) -> tuple[bool, str]:
        from .processing.mask2former import post_process_panoptic_segmentation

        rc, tc = ref["class_queries_logits"], test["class_queries_logits"]
        rm, tm = ref["masks_queries_logits"], test["masks_queries_logits"]
        # semantic
        rs, ts = _semantic_grid(rc, rm), _semantic_grid(tc, tm)
        decisive = _top2_margin(rs, 1) > margin / 10
        rl, tl = rs.argmax(1), ts.argmax(1)
        sem_differ = int(((rl != tl) & decisive).sum())
        miou = mean_iou(rl, tl)
        # instance, per query slot
        rp, tp = _softmax(rc.astype(np.float64))[..., :-1], _softmax(tc.astype(np.float64))[..., :-1]
        rsc, tsc = rp.max(-1), tp.max(-1)
        keep_decisive = np.abs(rsc - threshold) >= margin / 10
        keep_differs = int((((rsc > threshold) != (tsc > threshold)) & keep_decisive).sum())
        label_decisive = _top2_margin(rc[..., :-1], -1) > margin
        label_differs = int(((rp.argmax(-1) != tp.argmax(-1)) & label_decisive).sum())
        kept = (rsc > threshold) & keep_decisive
        held = np.abs(rm) > margin
        worst = 1.0
        for b, q in zip(*np.nonzero(kept)):
            r, t, h = rm[b, q] > 0, tm[b, q] > 0, held[b, q]
            union = ((r | t) & h).sum()
            if union:
                worst = min(worst, float(((r & t) & h).sum() / union))
        # panoptic
        pr = post_process_panoptic_segmentation(rc, rm, threshold)
        pt = post_process_panoptic_segmentation(tc, tm, threshold)
        pan_bad, pan_ties, agreement, seg_worst = 0, 0, 1.0, 1.0
        pan_decisive = (np.abs(_softmax(rc.astype(np.float64)).max(-1) - threshold) >= margin / 10).all(-1)
        for b, (a, t) in enumerate(zip(pr, pt)):
            if not pan_decisive[b]:
                pan_ties += 1
                continue
            same = [(s["label_id"], s["was_fused"]) for s in a["segments_info"]] == [
                (s["label_id"], s["was_fused"]) for s in t["segments_info"]
            ]
            agree = float((a["segmentation"] == t["segmentation"]).mean())
            agreement = min(agreement, agree)
            for sa, st in zip(a["segments_info"], t["segments_info"]):
                ma, mt = a["segmentation"] == sa["id"], t["segmentation"] == st["id"]
                seg_worst = min(seg_worst, float((ma & mt).sum() / max((ma | mt).sum(), 1)))
            pan_bad += not same or agree < min_agreement
        ok = (
            sem_differ == 0
            and miou >= min_iou
            and keep_differs == 0
            and label_differs == 0
            and worst >= min_iou
            and pan_bad == 0
            and seg_worst >= min_segment_iou
        )
        segments = sum(len(a["segments_info"]) for a in pr)
        return ok, (
            f"semantic: {int(decisive.sum())} decisive pixels, {sem_differ} differ, mIoU {miou:.6f} (>= {min_iou}); "
            f"instance: {int(kept.sum())} of {rsc.size} queries kept at {threshold}, {keep_differs} decisive "
            f"keep/drop and {label_differs} decisive labels differ, min mask IoU {worst:.5f}; panoptic: {segments} "
            f"segments in {len(pr)} images, {pan_bad} differ, min segment IoU {seg_worst:.5f} (>= {min_segment_iou}), "
            f"pixel agreement {agreement:.5f} (>= {min_agreement}); near-ties not held: "
            f"{int((~decisive).sum())} pixels, {int((~keep_decisive).sum())} scores, {int((~label_decisive).sum())} "
            f"labels, {pan_ties} panoptic images (margin {margin:g})"
        )

    return check


def universal_outputs(hf_model: Any, feed: dict, options: Mapping[str, Any]) -> dict:
    """transformers' outputs, and its switch logits: each decoder layer's `attention_mask` before
    the `sigmoid < 0.5`, the previous prediction resized to the layer's level."""
    import torch
    import torch.nn.functional as F

    out = hf_model(pixel_values=feed["pixel_values"], output_hidden_states=True, output_auxiliary_logits=True)
    sizes = [tuple(h.shape[-2:]) for h in out.pixel_decoder_hidden_states]  # the levels, in order
    # the predictions before the last: the first one and one per decoder layer but the last
    predictions = [aux["masks_queries_logits"] for aux in out.auxiliary_logits]
    switches = [
        F.interpolate(m, size=sizes[i % len(sizes)], mode="bilinear", align_corners=False).flatten(2)
        for i, m in enumerate(predictions)
    ]
    return {
        "class_queries_logits": out.class_queries_logits,
        "masks_queries_logits": out.masks_queries_logits,
        "attention_mask_logits": torch.cat(switches, -1),
    }


def universal_pinned_reference(model: Any, feed: Feed, candidate: Feed) -> tuple[Feed, str]:
    """The eager outputs on the candidate's switches (`forward_pinned`), and how many of them the
    candidate decided otherwise than the reference does on that same path."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(feed["pixel_values"]))
    theirs = torch.from_numpy(np.ascontiguousarray(candidate["attention_mask_logits"]))
    with torch.no_grad():
        out = model.forward_pinned(x, theirs)
    pinned = {k: v.numpy() for k, v in out._asdict().items()}
    block = model.blocked_positions
    flipped = int((block(out.attention_mask_logits) != block(theirs)).sum())
    return pinned, f"{flipped} of {theirs.numel()} switches decided otherwise"


def universal_segmentation(
    model: type[KilnModel],
    *,
    tiny: Mapping[str, Any],
    tiny_preprocessor: Mapping[str, Any],
    sharpen: tuple[str, ...] = (),
    sharpen_factor: float = 10.0,
) -> Deployable:
    """pixel_values (batch, channels, height, width) at one static size -> class_queries_logits
    (batch, num_queries, num_labels + 1) and masks_queries_logits (batch, num_queries, height/4,
    width/4). Task options: subtask (panoptic, instance or semantic: the default answer) and
    deformable_attention (gather or grid_sample). Reads config.num_queries and config.num_labels."""

    def inputs(c: Any) -> tuple[TensorSpec, ...]:
        return (TensorSpec("pixel_values", "float32", ("batch", 3, "height", "width")),)

    def outputs(c: Any) -> tuple[TensorSpec, ...]:
        return (
            TensorSpec("class_queries_logits", "float32", ("batch", c.num_queries, c.num_labels + 1)),
            TensorSpec("masks_queries_logits", "float32", ("batch", c.num_queries, "height/4", "width/4")),
            TensorSpec("attention_mask_logits", "float32", ("batch", c.num_queries, "switches")),
        )

    checks = {p: universal_segmentation_check(*t) for p, t in UNIVERSAL_THRESHOLDS.items()}
    graph = Graph(
        inputs,
        outputs,
        _image_example(-2.0, 2.5),
        UNIVERSAL_TOLERANCES,
        TaskCheck("same semantic labels, instances and panoptic segments", checks["fp32"], checks),
        reference=universal_outputs,
        pinned_reference=universal_pinned_reference,
    )
    # B 1/1/4; H and W: one size (384 x 384 for the real recipes), static in every artifact
    dims = {"batch": DimRange(1, 1, 4), "height": DimRange(384, 384, 384), "width": DimRange(384, 384, 384)}
    return Deployable(
        model,
        "image-segmentation",
        "image",
        dims,
        (graph,),
        options=("subtask", "deformable_attention"),
        labels=True,
        tiny=tiny,
        tiny_preprocessor=tiny_preprocessor,
        processor_dims=_fixed_size_dims,
        sharpen=sharpen,
        sharpen_factor=sharpen_factor,
    )
