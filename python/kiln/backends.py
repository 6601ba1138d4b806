"""Every way kiln can run one graph of an engine, in one list (parity, bench and the CLI use it).

    runners(manifest) -> [Runner(name, kind, precision, open, unavailable), ...]

    eager               the kiln model in PyTorch, rebuilt from the engine's source checkpoint:
                        the reference every other runner is compared with
    transformers        the same checkpoint in transformers: the baseline users know (bench only;
                        a seeded random head is kiln's own, so it is not a parity reference)
    torchscript-python  model.ts through torch.jit.load
    aoti-python         model.pt2 through torch._inductor.aoti_load_package
    onnxruntime         model.onnx in ONNX Runtime (CPU; the only way kiln runs ONNX)
    kiln-torchscript    the C++ runtime (kiln._kiln) on each of its backends; one
    kiln-aoti           kiln-tensorrt-<precision> per TensorRT plan
    *-int8              aoti-python-int8, onnxruntime-int8, kiln-aoti-int8: the int8 artifacts
                        of an engine built with --precision int8 (held to its int8 table)
    tensorrt-python-<p> each TensorRT plan through polygraphy's TrtRunner (GPU hosts)

`open()` returns infer(feed: {input: ndarray}) -> {output: ndarray}. A runner that cannot run
here carries the reason in `unavailable` and is reported as skipped, never silently dropped.
Artifacts are opened only after the runtime's checks (inside the engine, size, sha256).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, CheckpointError, KilnError
from .manifest import Artifact, Manifest

Infer = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

REFERENCE = "eager"
BASELINE = "transformers"
# the C++ runtime's backends, in the order "auto" prefers them where each can run
CPP_BACKENDS = ("tensorrt", "aoti", "torchscript")


@dataclass
class Runner:
    name: str
    kind: str  # reference | baseline | python | cpp | gpu
    open: Callable[[], Any]  # -> Infer (a graph's runners), or what the caller runs (generation bench)
    unavailable: str | None = None  # why it cannot run here
    precision: str = "fp32"  # which tolerance table holds it


# --- the reference: the kiln model the engine was built from -------------------------------------


def eager_model(manifest: Manifest) -> Any:
    """The eager kiln module of one graph, rebuilt from the engine's source checkpoint (same
    checkpoint, same seeded head): the reference of parity."""
    from . import registry
    from .checkpoint import checkpoint_hash, load_model
    from .exporters import graph_module

    ckpt = Path(manifest.source.checkpoint)
    if not manifest.source.checkpoint or not ckpt.is_dir():
        raise CheckpointError(
            f"{manifest.name}: the source checkpoint {str(ckpt)!r} is not on this machine; parity needs it as "
            "the eager reference"
        )
    if manifest.source.sha256 and checkpoint_hash(ckpt) != manifest.source.sha256:
        raise CheckpointError(
            f"{manifest.name}: checkpoint {ckpt} changed since the engine was built (sha256 differs); "
            "rebuild with `kiln build`"
        )
    d = registry.get(manifest.family, manifest.task)
    overrides = {}
    if manifest.labels:
        overrides["id2label"] = {str(i): label for i, label in enumerate(manifest.labels)}
    model = load_model(
        d.model,
        ckpt,
        random_head=manifest.source.random_head,
        seed=manifest.source.seed,
        config_overrides=overrides,
        **manifest.task_options,
    )
    return graph_module(d.graph(manifest.graph), model)


def torch_infer(module: Any, manifest: Manifest) -> Infer:
    """A torch module taking the inputs positionally, as infer(feed)."""
    import torch

    names, outs = manifest.input_names, manifest.output_names

    def infer(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = module(*[torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names])
        if isinstance(out, torch.Tensor):
            out = (out,)
        return {n: o.numpy() for n, o in zip(outs, out)}

    return infer


def transformers_infer(manifest: Manifest, attention: str | None = None) -> Infer:
    """The engine's source checkpoint in transformers, computing the graph's outputs; `attention`:
    its attn_implementation ("eager", "sdpa"; None: transformers' default for the model)."""
    import torch
    import transformers

    from . import registry

    d = registry.get(manifest.family, manifest.task)
    graph = d.graph(manifest.graph)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # its weight-loading bar would break tables
    kwargs: dict[str, Any] = {"num_labels": len(manifest.labels)} if manifest.labels else {}
    if attention is not None:
        kwargs["attn_implementation"] = attention
    model = getattr(transformers, d.reference_class).from_pretrained(manifest.source.checkpoint, **kwargs).eval()
    reference = graph.reference
    assert reference is not None

    def infer(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = reference(model, {k: torch.from_numpy(v) for k, v in feed.items()}, manifest.task_options)
        return {k: v.numpy() for k, v in out.items()}

    return infer


def onnxruntime_infer(onnx_path: str | Path, manifest: Manifest, threads: int | None = None) -> Infer:
    """An ONNX Runtime (CPU) session as infer(feed)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = manifest.output_names
    return lambda feed: dict(zip(names, sess.run(names, feed)))


def tensorrt_infer(plan: Path, profiles: list[dict]) -> Infer:
    """A TensorRT plan through polygraphy's TrtRunner, switched to the first optimisation profile
    that fits each feed (as the C++ runtime chooses)."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from .gpu import choose_profile

    runner = TrtRunner(EngineFromBytes(plan.read_bytes()))
    runner.activate()
    current = [0]

    def infer(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index = choose_profile(profiles, feed) if len(profiles) > 1 else 0
        if index != current[0]:
            runner.set_profile(index)
            current[0] = index
        return dict(runner.infer(feed))

    return infer


def cpp_backends() -> tuple[list[str], str | None]:
    """(the C++ runtime's backends usable here, why none when the extension is missing)."""
    try:
        from .runtime import available_backends

        return available_backends(), None
    except ImportError as e:  # the extension is not built
        return [], f"kiln._kiln is not importable ({e}); run `make setup`"


def auto_backend(manifest: Manifest, usable: list[str]) -> str | None:
    """The backend the C++ runtime's "auto" opens for this graph (engine.cpp choose_backend): a
    TensorRT plan first, then the CPU backend `kiln build` measured fastest when this CPU is the
    one it was measured on (manifest.backend_choice), else the fixed order; None if none can."""
    from .roofline import cpu_model_name

    formats = {a.format for a in manifest.artifacts}
    have = [b for b in CPP_BACKENDS if b in usable and b in formats]
    if not have:
        return None
    choice = manifest.backend_choice or {}
    if have[0] != "tensorrt" and choice.get("backend") in have and choice.get("cpu") == cpu_model_name():
        return str(choice["backend"])
    return have[0]


# --- the list ---------------------------------------------------------------------------------


def runners(manifest: Manifest, threads: int | None = None, attention: str | None = None) -> list[Runner]:
    """Every runner kiln knows for this graph, the reference first; `threads` sets every
    runner's intra-op threads (None leaves each at its default); `attention` the transformers
    baseline's attn_implementation (None: its default)."""
    from . import registry

    def missing(fmt: str, precision: str = "fp32") -> str | None:
        if manifest.artifact(fmt, precision) is None:
            more = "" if precision == "fp32" else f" --precision {precision}"
            return f"no {precision} {fmt} artifact in the engine (kiln build RECIPE --formats {fmt}{more})"
        return None

    def checked(fmt: str, precision: str = "fp32") -> Path:
        art = manifest.artifact(fmt, precision)
        assert art is not None
        return manifest.artifact_path(art)

    out = [Runner(REFERENCE, "reference", lambda: torch_infer(eager_model(manifest), manifest))]

    graph = registry.get(manifest.family, manifest.task).graph(manifest.graph)
    why_hf = None
    try:
        import transformers  # noqa: F401
    except ImportError:
        why_hf = "transformers is not installed (pip install kiln[test])"
    if graph.reference is None:
        why_hf = f"transformers has no call that computes the {manifest.graph} graph alone"
    out.append(Runner(BASELINE, "baseline", lambda: transformers_infer(manifest, attention), why_hf))

    def torchscript() -> Infer:
        import torch

        return torch_infer(torch.jit.load(str(checked("torchscript"))), manifest)

    def aoti(precision: str = "fp32") -> Callable[[], Infer]:
        def make() -> Infer:
            import torch

            runner = torch._inductor.aoti_load_package(str(checked("aoti", precision)))
            return torch_infer(runner, manifest)

        return make

    def onnx(precision: str = "fp32") -> Callable[[], Infer]:
        return lambda: onnxruntime_infer(checked("onnx", precision), manifest, threads)

    out.append(Runner("torchscript-python", "python", torchscript, missing("torchscript")))
    out.append(Runner("aoti-python", "python", aoti(), missing("aoti")))
    out.append(Runner("onnxruntime", "python", onnx(), missing("onnx")))
    # int8 artifacts (kiln build --precision int8): listed where the engine has them
    if manifest.artifact("aoti", "int8"):
        out.append(Runner("aoti-python-int8", "python", aoti("int8"), None, "int8"))
    if manifest.artifact("onnx", "int8"):
        out.append(Runner("onnxruntime-int8", "python", onnx("int8"), None, "int8"))

    cpp, cpp_error = cpp_backends()
    plans = manifest.artifacts_of("tensorrt")
    for backend in CPP_BACKENDS:
        why = cpp_error or (
            None
            if backend in cpp
            else f"the C++ runtime has no usable {backend} backend on this machine (usable: {', '.join(cpp) or 'none'})"
        )
        if backend != "tensorrt" or not plans:
            fp32_why = why or missing(backend)
            out.append(Runner(f"kiln-{backend}", "cpp", _cpp_opener(manifest, backend, "fp32", threads), fp32_why))
            if backend != "tensorrt" and manifest.artifact(backend, "int8"):
                out.append(
                    Runner(f"kiln-{backend}-int8", "cpp", _cpp_opener(manifest, backend, "int8", threads), why, "int8")
                )
            continue
        for art in plans:  # the C++ runtime runs each plan (EngineOptions::precision)
            out.append(
                Runner(
                    f"kiln-tensorrt-{art.precision}",
                    "cpp",
                    _cpp_opener(manifest, "tensorrt", art.precision, threads),
                    why,
                    art.precision,
                )
            )

    from .gpu import tensorrt_unavailable

    for art in plans:
        out.append(
            Runner(
                f"tensorrt-python-{art.precision}",
                "gpu",
                _trt_opener(manifest, art),
                tensorrt_unavailable(),
                art.precision,
            )
        )
    if not plans:
        why = "no TensorRT plan in the engine (kiln build RECIPE --formats tensorrt, on a GPU host)"
        out.append(Runner("tensorrt-python", "gpu", _never(why), why))
    return out


def _never(why: str) -> Callable[[], Infer]:
    """The opener of a runner that cannot run here (never called: `unavailable` says why)."""

    def make() -> Infer:
        raise BackendUnavailableError(why)

    return make


def _trt_opener(manifest: Manifest, art: Artifact) -> Callable[[], Infer]:
    return lambda: tensorrt_infer(manifest.artifact_path(art), art.profiles or [{}])


def _cpp_opener(manifest: Manifest, backend: str, precision: str, threads: int | None) -> Callable[[], Infer]:
    def make() -> Infer:
        from .runtime import Engine

        return Engine(manifest.dir, backend=backend, precision=precision, num_threads=threads or 0).run

    return make


def select(all_runners: list[Runner], only: list[str] | None) -> list[Runner]:
    """The runners named in `only` (all when None); an unknown name is an error listing the known."""
    if not only:
        return all_runners
    from .errors import InvalidArgumentError

    names = [r.name for r in all_runners]
    unknown = sorted(set(only) - set(names))
    if unknown:
        raise InvalidArgumentError(f"--backends {unknown}: unknown; known here: {', '.join(names)}")
    return [r for r in all_runners if r.name in only or r.kind == "reference"]


def open_all(
    selected: list[Runner], progress: Callable[[str], None] = lambda m: None
) -> tuple[dict[str, Infer], dict[str, str], dict[str, str]]:
    """Open each available runner: ({name: infer}, {name: why skipped}, {name: error while loading}).
    One failing to load is reported and must not sink the others; the reference's failure raises."""
    opened: dict[str, Infer] = {}
    skipped: dict[str, str] = {}
    errors: dict[str, str] = {}
    for r in selected:
        if r.unavailable:
            skipped[r.name] = r.unavailable
            continue
        progress(f"loading {r.name}")
        try:
            opened[r.name] = r.open()
        except KilnError as e:
            if r.kind == "reference":
                raise
            errors[r.name] = f"{type(e).__name__}: {e}"
        except Exception as e:  # a backend's own loader (torch, onnxruntime) failing on this artifact
            if r.kind == "reference":
                raise
            errors[r.name] = f"{type(e).__name__}: {e}"
    return opened, skipped, errors
