"""What the Python-backend model does with the requests Triton hands it, without Triton.

Triton's dynamic batcher gives `execute` several requests at once; with `allow_ragged_batch` on
the sequence inputs their lengths may differ. Two ways to run them (`batching` in the model's
config parameters):

    exact  each request's outputs are bit for bit what Engine.run gives it alone. Where the
           engine is batch-invariant on this machine, requests whose inputs have the same shape
           (batch aside) are concatenated along the batch, one Engine.run per distinct shape; on
           the others each request is its own Engine.run. Invariance is measured when the model
           loads (`batch_invariant`), on the backends that can have it (BATCH_INVARIANT):
           AOTInductor's oneDNN kernels give a row the same bits at any batch size on an Intel
           Xeon (tiny BERT and ViT, the real MiniLM), but not on an AMD EPYC (Zen 3, AVX2 only),
           where they block by the batch. TorchScript's MKL GEMMs change a row's last bits with
           the batch (measured on an Intel Xeon: tiny ViT up to 4.8e-7, MiniLM 3.3e-7).
    pad    every request padded to the longest (attention mask 0 on the padding) and run as one
           Engine.run; outputs with a padded dim are sliced back to each request's own size.
           Fewer, larger runs (what a GPU wants), but padding changes the order of fp32
           reductions (attention, pooling): outputs differ from the unpadded run in the last
           bits (measured max abs 9e-8 on BERT), within the manifest's fp32 tolerance.

Padding is exact only where the engine ignores masked positions: `pad` is allowed when every
ragged dim is covered by an `attention_mask` input and every output dim is fixed, the batch or
a dim the inputs bind (`pad_refusal` says why not otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ErrorCode, InputShapeError, InvalidArgumentError, KilnError
from ..manifest import Manifest

BATCHING = ("exact", "pad")
BATCH_INVARIANT = ("aoti",)  # backends whose rows may not depend on the batch (measured at load)
INVARIANCE_BATCHES = (2, 3, 8)  # batch sizes the load-time check runs a row in
Feed = dict[str, np.ndarray]


def batch_invariant(engine: Any, manifest: Manifest) -> tuple[bool, str]:
    """Measured on this machine: does the engine give a row the bits it gets alone when it runs
    in a batch? Each of the parity harness's feeds (real samples through the pre-processing, of
    their own lengths, and random ones) has its first row run alone and repeated to each of
    INVARIANCE_BATCHES (within the engine's batch range); every row must come back the same.
    (answer, what differed). A kernel may block a matmul by its row count (batch x length), so
    one shape proves little: on an AMD EPYC a tiny BERT kept its bits at lengths 2, 5, 33 and 40
    and lost them at 9 and 17."""
    from ..parity import parity_feeds

    if engine.backend not in BATCH_INVARIANT:
        return False, f"{engine.backend}: its kernels change a row's bits with the batch"
    top = manifest.dims["batch"].max if "batch" in manifest.dims else 1
    sizes = [b for b in INVARIANCE_BATCHES if b <= top]
    if not sizes:
        return False, "the engine runs one row at a time"
    try:
        feeds = parity_feeds(manifest)
    except KilnError as e:  # an engine kiln cannot make inputs for: each request runs alone
        return False, f"no inputs to check with: {e}"
    for feed in feeds:
        row = {n: a[:1] for n, a in feed.items()}
        alone = engine.run(row)
        for size in sizes:
            together = engine.run({n: np.repeat(a, size, axis=0) for n, a in row.items()})
            for name, got in together.items():
                want = np.repeat(alone[name], size, axis=0)
                if not np.array_equal(got, want):
                    worst = (
                        float(np.abs(got.astype(np.float64) - want).max()) if got.shape == want.shape else float("nan")
                    )
                    shape = {n: a.shape[1:] for n, a in row.items()}
                    return (
                        False,
                        f"{name} at batch {size} (a row {shape}): differs from its run alone by up to {worst:.2g}",
                    )
    return True, f"{len(feeds)} feeds, each row the same bits at batch {', '.join(map(str, sizes))}"


def batched(manifest: Manifest) -> bool:
    """Every input and output has the batch as its first dim: Triton may batch the engine."""
    return "batch" in manifest.dims and all(
        s.shape and s.shape[0] == "batch" for s in [*manifest.inputs, *manifest.outputs]
    )


def ragged_dims(manifest: Manifest) -> list[str]:
    """The symbolic dims of the inputs other than the batch: where requests may differ."""
    dims: list[str] = []
    for s in manifest.inputs:
        for d in s.shape[1:]:
            if isinstance(d, str) and d not in dims:
                dims.append(d)
    return dims


def pad_refusal(manifest: Manifest) -> str | None:
    """Why this engine's requests cannot be padded together exactly, or None when they can."""
    ragged = ragged_dims(manifest)
    if not ragged:
        return None  # nothing to pad: every request of a batch has the same shape
    mask = next((s for s in manifest.inputs if s.name == "attention_mask"), None)
    if mask is None:
        return f"it has no attention_mask input to mark the padding of {', '.join(ragged)}"
    uncovered = [d for d in ragged if d not in mask.shape]
    if uncovered:
        return f"attention_mask does not cover the dim(s) {', '.join(uncovered)}"
    bound = {"batch", *ragged}
    for s in manifest.outputs:
        free = [d for d in s.shape if isinstance(d, str) and d not in bound]
        if free:
            return (
                f"output {s.name} has the dim(s) {', '.join(free)}, which the model derives from the inputs: "
                "a padded request's own size of them is unknown"
            )
    return None


def resolve_batching(manifest: Manifest, batching: str, backend: str) -> str:
    """'exact' or 'pad' for this engine. 'auto': pad for TensorRT plans (a GPU wants few large
    runs, and its kernels are not batch-invariant anyway), exact on the CPU backends."""
    if batching == "auto":
        return "pad" if backend == "tensorrt" and pad_refusal(manifest) is None else "exact"
    if batching not in BATCHING:
        raise InvalidArgumentError(f"batching {batching!r}: expected auto, {' or '.join(BATCHING)}")
    if batching == "pad":
        why = pad_refusal(manifest)
        if why:
            raise InvalidArgumentError(f"{manifest.name}: batching 'pad' is not exact for this engine: {why}")
    return batching


def dim_sizes(manifest: Manifest, feed: Mapping[str, np.ndarray]) -> dict[str, int]:
    """The size each symbolic dim has in one request's inputs."""
    sizes: dict[str, int] = {}
    for s in manifest.inputs:
        arr = feed[s.name]
        for axis, d in enumerate(s.shape):
            if isinstance(d, str) and axis < arr.ndim:
                sizes.setdefault(d, int(arr.shape[axis]))
    return sizes


@dataclass
class Run:
    """One Engine.run: which requests (by index), the batched feed, each request's rows and dim sizes."""

    requests: list[int]
    feed: Feed
    rows: list[int]
    sizes: list[dict[str, int]]


class Batcher:
    """Plans the Engine.run calls for a list of (validated) request feeds and splits the outputs."""

    def __init__(
        self, manifest: Manifest, batching: str = "exact", backend: str | None = None, invariant: bool | None = None
    ):
        """backend: the one the engine runs; in 'exact' mode it decides whether requests of one
        shape may share an Engine.run (BATCH_INVARIANT) or each runs alone (also when unknown).
        invariant: what `batch_invariant` measured for the engine on this machine (None: not
        measured, the backend decides)."""
        if batching not in BATCHING:
            raise InvalidArgumentError(f"batching {batching!r}: expected {' or '.join(BATCHING)}")
        self.manifest = manifest
        self.batching = batching
        self.concatenate = backend in BATCH_INVARIANT and invariant is not False
        self.input_names = manifest.input_names

    def plan(self, feeds: Mapping[int, Feed]) -> Iterator[Run]:
        """The runs for the requests {index: feed}, in order of first appearance."""
        if not feeds:
            return
        if self.batching == "pad":
            yield _pad_run(self, feeds, list(feeds))
            return
        groups: dict[tuple, list[int]] = {}
        for i, feed in feeds.items():
            key = tuple((n, feed[n].dtype.str, feed[n].shape[1:]) for n in self.input_names)
            groups.setdefault(key if self.concatenate else (i,), []).append(i)
        for idx in groups.values():
            group = [feeds[i] for i in idx]
            feed = group[0] if len(group) == 1 else {n: np.concatenate([f[n] for f in group]) for n in self.input_names}
            yield Run(
                idx, feed, [len(f[self.input_names[0]]) for f in group], [dim_sizes(self.manifest, f) for f in group]
            )

    def split(self, run: Run, outputs: Mapping[str, np.ndarray]) -> list[Feed]:
        """Each request's outputs: its rows, and (pad) each padded dim sliced to its own size."""
        out: list[Feed] = []
        start = 0
        for rows, sizes in zip(run.rows, run.sizes):
            mine: Feed = {}
            for spec in self.manifest.outputs:
                arr = outputs[spec.name][start : start + rows]
                if self.batching == "pad":
                    index = tuple(
                        slice(0, sizes[d]) if isinstance(d, str) and d in sizes and axis > 0 else slice(None)
                        for axis, d in enumerate(spec.shape)
                    )
                    arr = arr[index]
                mine[spec.name] = np.ascontiguousarray(arr)
            out.append(mine)
            start += rows
        return out


def _pad_run(batcher: Batcher, feeds: Mapping[int, Feed], idx: list[int]) -> Run:
    m = batcher.manifest
    group = [feeds[i] for i in idx]
    sizes = [dim_sizes(m, f) for f in group]
    ragged = ragged_dims(m)
    longest = {d: max(s[d] for s in sizes) for d in ragged}
    rows = [len(f[batcher.input_names[0]]) for f in group]
    total = sum(rows)
    feed: Feed = {}
    for spec in m.inputs:
        first = group[0][spec.name]
        shape = [total] + [
            longest[d] if isinstance(d, str) and d in longest else first.shape[a]
            for a, d in enumerate(spec.shape)
            if a > 0
        ]
        # zeros: padding tokens (id 0, type 0) the mask (0) hides from attention and pooling
        batch = np.zeros(shape, dtype=first.dtype)
        start = 0
        for f, r in zip(group, rows):
            arr = f[spec.name]
            batch[(slice(start, start + r), *(slice(0, n) for n in arr.shape[1:]))] = arr
            start += r
        feed[spec.name] = batch
    return Run(idx, feed, rows, sizes)


def check_batch(manifest: Manifest, feed: Mapping[str, np.ndarray]) -> None:
    """A request's batch within the engine's range (Triton checks it too, without naming an input)."""
    if "batch" not in manifest.dims:
        return
    r = manifest.dims["batch"]
    for s in manifest.inputs:
        n = feed[s.name].shape[0] if feed[s.name].ndim else 0
        if not r.min <= n <= r.max:
            raise InputShapeError(
                f"engine '{manifest.name}': input {s.name} has batch {n}, expected {r.min}..{r.max} (dims.batch)"
            )


def error_text(e: BaseException) -> str:
    """What a client sees for a failed request: kiln's code and message, as `kiln run` prints them."""
    if isinstance(e, KilnError):
        return f"kiln error [{e.code.name}]: {e}"
    return f"kiln error [RUNTIME]: {type(e).__name__}: {e}"


def code_in(text: str) -> ErrorCode:
    """The code an error_text names (RUNTIME when it names none)."""
    import re

    m = re.match(r"kiln error \[([A-Z_]+)\]", text)
    return ErrorCode[m.group(1)] if m and m.group(1) in ErrorCode.__members__ else ErrorCode.RUNTIME


def is_client_error(e: BaseException) -> bool:
    """A mistake in the request (Triton's INVALID_ARG, HTTP 400), rather than the server's."""
    return isinstance(e, KilnError) and e.code in (
        ErrorCode.INVALID_ARGUMENT,
        ErrorCode.INPUT_NAME,
        ErrorCode.INPUT_DTYPE,
        ErrorCode.INPUT_SHAPE,
        ErrorCode.INPUT_VALUE,
    )


# --- the text models: one JSON answer per input ----------------------------------------------


def answer_items(answers: object) -> list:
    """A pipeline's answers as one JSON-ready item per input (embeddings: one list per row)."""
    if isinstance(answers, np.ndarray):
        return answers.tolist()
    return [a.tolist() if isinstance(a, np.ndarray) else a for a in answers]  # type: ignore[attr-defined]


# --- generation options from request parameters ----------------------------------------------

# `kiln run`'s generation options and their types (pipelines.generation_options)
GENERATION_PARAMETERS: dict[str, type] = {
    "max_new_tokens": int,
    "min_new_tokens": int,
    "num_beams": int,
    "do_sample": bool,
    "seed": int,
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "repetition_penalty": float,
    "no_repeat_ngram_size": int,
    "length_penalty": float,
    "num_return_sequences": int,
}


def generation_options(parameters: Mapping[str, object]) -> dict:
    """Generator.generate's options from a request's parameters, checked as `kiln run` checks its
    flags: an unknown name or a value of the wrong type is an InvalidArgumentError naming it;
    ranges (num_beams >= 1, top_p in (0, 1], ...) are then the Generator's to check. Floats may
    come as numbers or strings (a protocol without double parameters); sampling's seed is 0
    unless given, as in `kiln run`."""
    options: dict[str, object] = {}
    for name, value in parameters.items():
        kind = GENERATION_PARAMETERS.get(name)
        if kind is None:
            raise InvalidArgumentError(
                f"unknown generation parameter {name!r}; the parameters are {', '.join(GENERATION_PARAMETERS)}"
            )
        options[name] = _convert(name, value, kind)
    if options.get("do_sample"):
        options.setdefault("seed", 0)
    return options


def _convert(name: str, value: object, kind: type) -> object:
    bad = InvalidArgumentError(f"generation parameter {name}={value!r}: expected {kind.__name__}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise bad
    if isinstance(value, bool):
        raise bad
    if kind is int:
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise bad from None
    raise bad


def prompt_ids(values: Sequence[int] | np.ndarray) -> list[int]:
    """A request's input_ids tensor (one prompt) as a list of ints."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InputShapeError(f"input_ids: one prompt per request, shape [tokens]; got shape {list(arr.shape)}")
    return [int(v) for v in arr]
