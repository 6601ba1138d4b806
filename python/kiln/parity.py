"""`kiln parity`: every backend on the same inputs, compared with eager PyTorch fp32.

Built on polygraphy: each backend is a polygraphy runner, `Comparator.run` feeds them the
same inputs and `Comparator.compare_accuracy` with `SimpleCompareFunc` checks every output
against the reference per iteration (an element passes when its absolute difference is within
atol OR its difference relative to the reference is within rtol: polygraphy's "elemwise" check). kiln adds the
cosine similarity per output and the task-level check from the registry (same label, same span,
same tags, embedding cosine), and a report as a table and as JSON.
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import registry
from .errors import BackendUnavailableError, CheckpointError, KilnError
from .exporters.manifest import find_artifact, read_manifest

REFERENCE = "eager"


def _polygraphy():
    from polygraphy.logger import G_LOGGER
    G_LOGGER.module_severity = G_LOGGER.ERROR  # polygraphy narrates every step at INFO
    from polygraphy.backend.base import BaseRunner
    return BaseRunner


def _make_runner(name: str, infer, input_metadata):
    """A polygraphy runner around `infer(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]`."""
    BaseRunner = _polygraphy()

    class CallableRunner(BaseRunner):
        def __init__(self):
            super().__init__(name=name)

        def activate_impl(self):
            pass

        def get_input_metadata_impl(self):
            return input_metadata

        def infer_impl(self, feed_dict):
            t = time.perf_counter()
            out = infer(feed_dict)
            self.inference_time = time.perf_counter() - t
            return OrderedDict((k, np.asarray(v)) for k, v in out.items())

        def deactivate_impl(self):
            pass

    return CallableRunner()


def _input_metadata(manifest: dict):
    from polygraphy.common import TensorMetadata
    meta = TensorMetadata()
    for spec in manifest["inputs"]:
        meta.add(spec["name"], np.dtype(spec["dtype"]),
                 [d if isinstance(d, int) else -1 for d in spec["shape"]])
    return meta


def _torch_infer(module, manifest: dict):
    import torch
    names = [s["name"] for s in manifest["inputs"]]
    out_names = [s["name"] for s in manifest["outputs"]]

    def infer(feed):
        with torch.inference_mode():
            out = module(*[torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names])
        if isinstance(out, torch.Tensor):
            out = (out,)
        return {n: o.numpy() for n, o in zip(out_names, out)}
    return infer


def manifest_entry(manifest: dict) -> registry.TaskEntry:
    """The registry entry of an engine directory (of its graph, for a generation engine's graph)."""
    entry = registry.get(manifest["family"], manifest["task"])
    return entry.graph_entry(manifest["graph"]) if manifest.get("graph") else entry


def eager_model(manifest: dict):
    """The eager kiln model the engine was built from (same checkpoint, same seeded head); for
    one graph of a generation engine, that graph's module around the model."""
    from .checkpoint import checkpoint_hash, load_model
    source = manifest.get("source", {})
    ckpt = Path(source.get("checkpoint", ""))
    if not ckpt.is_dir():
        raise CheckpointError(f"{manifest['name']}: the source checkpoint {str(ckpt)!r} is not on this "
                              "machine; parity needs it as the eager reference")
    if source.get("sha256") and checkpoint_hash(ckpt) != source["sha256"]:
        raise CheckpointError(f"{manifest['name']}: checkpoint {ckpt} changed since the engine was "
                              "built (sha256 differs); rebuild with `kiln build`")
    entry = manifest_entry(manifest)
    overrides = {}
    if manifest.get("labels"):
        overrides["id2label"] = {str(i): label for i, label in enumerate(manifest["labels"])}
    model = load_model(entry.model_cls(), ckpt, random_head=bool(source.get("random_head")),
                       seed=int(source.get("seed", 0)), config_overrides=overrides,
                       **manifest.get("task_options", {}))
    if entry.wrapper:
        from .exporters import graph_module
        return graph_module(entry, model.eval())
    return model.eval()


def onnxruntime_infer(onnx_path: str | Path, manifest: dict, threads: int = 2):
    """An ONNX Runtime (CPU) session as infer(feed) -> {output name: array}."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    out_names = [s["name"] for s in manifest["outputs"]]
    return lambda feed: dict(zip(out_names, sess.run(out_names, feed)))


@dataclass
class Backend:
    name: str
    make: object  # () -> infer callable
    skip: str | None = None
    precision: str = "fp32"  # which tolerance table holds it


def _tensorrt_infer(plan: Path, profiles: list[dict]):
    """A TensorRT plan through polygraphy's TrtRunner (GPU hosts), switched to the first
    optimisation profile that fits each feed (as the C++ runtime chooses)."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from .exporters.tensorrt import choose_profile
    runner = TrtRunner(EngineFromBytes(plan.read_bytes()))
    runner.activate()
    current = [0]

    def infer(feed):
        index = choose_profile(profiles, feed) if len(profiles) > 1 else 0
        if index != current[0]:
            runner.set_profile(index)
            current[0] = index
        return dict(runner.infer(feed))
    return infer


def candidate_backends(engine_dir: Path, manifest: dict) -> list[Backend]:
    """Every backend kiln knows, with the reason where one cannot run here."""
    backends: list[Backend] = []

    backends.append(Backend(REFERENCE, lambda: _torch_infer(eager_model(manifest), manifest)))

    ts = find_artifact(manifest, "torchscript")
    def make_ts():
        import torch
        return _torch_infer(torch.jit.load(str(engine_dir / ts["file"])), manifest)
    backends.append(Backend("torchscript-python", make_ts, None if ts else "no model.ts in the engine"))

    onnx_art = find_artifact(manifest, "onnx")
    backends.append(Backend("onnxruntime", lambda: onnxruntime_infer(engine_dir / onnx_art["file"], manifest),
                            None if onnx_art else "no model.onnx in the engine"))

    try:
        from .runtime import Engine, available_backends
        cpp = available_backends()
        cpp_error = None
    except ImportError as e:  # the extension is not built
        cpp, cpp_error = [], f"kiln._kiln not importable ({e}); run `make setup`"
    fmt_of = {"torchscript": "torchscript", "aoti": "aoti", "tensorrt": "tensorrt"}
    for backend in ("torchscript", "aoti", "tensorrt"):
        skip = None
        if cpp_error:
            skip = cpp_error
        elif backend not in cpp:
            skip = (f"the C++ runtime has no usable {backend} backend on this machine "
                    f"(available: {', '.join(cpp) or 'none'})")
        elif not find_artifact(manifest, fmt_of[backend]):
            skip = f"no {backend} artifact in the engine (kiln build --formats {backend})"

        def make_cpp(backend=backend, precision="auto"):
            engine = Engine(engine_dir, backend=backend, precision=precision)
            return engine.run
        plans = [a for a in manifest["artifacts"] if a["format"] == "tensorrt"] if backend == "tensorrt" else []
        if len(plans) > 1:  # the C++ runtime runs each plan (EngineOptions::precision)
            for a in plans:
                backends.append(Backend(f"kiln-tensorrt-{a['precision']}",
                                        lambda a=a: make_cpp("tensorrt", a["precision"]), skip, a["precision"]))
            continue
        backends.append(Backend(f"kiln-{backend}", make_cpp, skip,
                                plans[0].get("precision", "fp32") if plans else "fp32"))

    # every TensorRT plan (one per precision) through polygraphy in Python as well
    from .exporters.tensorrt import tensorrt_unavailable
    plans = [a for a in manifest["artifacts"] if a["format"] == "tensorrt"]
    why = tensorrt_unavailable() if plans else None
    for a in plans:
        backends.append(Backend(f"tensorrt-{a['precision']}",
                                lambda a=a: _tensorrt_infer(engine_dir / a["file"], a.get("profiles") or [{}]),
                                why, a["precision"]))
    if not plans:
        backends.append(Backend("tensorrt-python", lambda: None,
                                "no TensorRT plan in the engine (kiln build RECIPE --formats tensorrt, "
                                "on a GPU host)"))
    return backends


@dataclass
class BackendResult:
    name: str
    passed: bool = False
    task_match: bool = False
    task_detail: str = ""
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict:
        d = {"pass": self.passed, "task_match": self.task_match, "task_detail": self.task_detail,
             "outputs": self.outputs}
        if self.error:
            d["error"] = self.error
        return d


@dataclass
class ParityReport:
    engine: str
    task: str
    reference: str
    tolerances: dict
    backends: dict[str, BackendResult]
    skipped: dict[str, str]
    iterations: int

    @property
    def passed(self) -> bool:
        return bool(self.backends) and all(b.passed for b in self.backends.values())

    def to_json(self) -> dict:
        return {"pass": self.passed, "engine": self.engine, "task": self.task,
                "reference": self.reference, "iterations": self.iterations,
                "tolerances": self.tolerances,
                "backends": {n: b.to_json() for n, b in self.backends.items()},
                "skipped": self.skipped}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom > 0 else float(np.array_equal(a, b))


def parity_feeds(engine_dir: Path, manifest: dict, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Inputs made from real samples through the engine's own pre-processing, plus random ids.
    A generation graph gets random inputs at the shapes generation uses: a left-padded prefill
    batch (past 0), single-token decode steps and a multi-token step on a cache."""
    if manifest.get("graph"):
        entry = manifest_entry(manifest)
        dims = manifest["dims"]
        shapes = [{"batch": 2, "new": 12, "past": 0, "source": 24},
                  {"batch": 1, "new": 1, "past": 40, "source": 17},
                  {"batch": 3, "new": 1, "past": 7, "source": 9},
                  {"batch": 2, "new": 5, "past": 16, "source": 30}]
        feeds = []
        for i, sizes in enumerate(shapes):
            sizes = {k: min(max(v, dims[k]["min"]), dims[k]["max"]) for k, v in sizes.items() if k in dims}
            feeds.append(entry.make_example(manifest["config"], {**{k: 1 for k in dims}, **sizes}, seed + i))
        return feeds
    from .pipelines import pipeline
    pipe = pipeline(engine_dir, load_engine=False)
    feeds = [pipe.preprocess(sample)[0] for sample in pipe.parity_samples()]
    feeds.append(pipe.random_feed(seed=seed))
    return feeds


def run_parity(engine_dir: str | Path, backends: list[str] | None = None,
               extra_backends: list[Backend] | None = None) -> ParityReport:
    """Every backend (or those named in `backends`, plus `extra_backends`) against eager."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    entry = manifest_entry(manifest)
    all_tolerances = manifest.get("tolerances") or {
        p: {o: {"atol": t.atol, "rtol": t.rtol, "why": t.why} for o, t in outs.items()}
        for p, outs in entry.tolerances.items()}
    feeds = parity_feeds(engine_dir, manifest)
    meta = _input_metadata(manifest)

    skipped: dict[str, str] = {}
    runners = []
    precision_of: dict[str, str] = {}
    errors: dict[str, str] = {}
    candidates = candidate_backends(engine_dir, manifest) + list(extra_backends or [])
    for b in candidates:
        if backends and b.name not in backends and b.name != REFERENCE:
            continue
        if b.skip:
            skipped[b.name] = b.skip
            continue
        if b.precision not in all_tolerances:
            errors[b.name] = (f"no {b.precision} tolerances in the manifest or the registry for "
                              f"{manifest['family']}/{manifest['task']}")
            continue
        try:
            runners.append(_make_runner(b.name, b.make(), meta))
            precision_of[b.name] = b.precision
        except KilnError as e:
            if b.name == REFERENCE:
                raise
            errors[b.name] = f"{type(e).__name__}: {e}"
    if backends:
        unknown = set(backends) - {b.name for b in candidates}
        if unknown:
            raise BackendUnavailableError(f"--backends {sorted(unknown)}: unknown; known: "
                                          f"{[b.name for b in candidates]}")

    results = Comparator.run(runners, data_loader=feeds)
    # every backend against the reference (polygraphy compares neighbours by default), with the
    # tolerance table of its precision; the reference goes second because polygraphy takes
    # relative differences against the second
    accuracy = {}
    for precision in sorted(set(precision_of[r.name] for r in runners[1:])):
        table = all_tolerances[precision]
        compare = SimpleCompareFunc(atol={o: t["atol"] for o, t in table.items()},
                                    rtol={o: t["rtol"] for o, t in table.items()}, check_shapes=True)
        group = [i for i, r in enumerate(runners) if i > 0 and precision_of[r.name] == precision]
        accuracy.update(Comparator.compare_accuracy(
            results, compare_func=compare, comparisons=[(i, 0) for i in group])[0])

    ref_name = runners[0].name
    ref_iters = dict(results)[ref_name]
    report = {}
    for runner in runners[1:]:
        test_iters = dict(results)[runner.name]
        res = BackendResult(runner.name)
        per_iter = accuracy[(runner.name, ref_name)]
        outputs: dict[str, dict[str, float]] = {}
        passed = True
        for it, compared in enumerate(per_iter):
            for out, r in compared.items():
                tol = all_tolerances[precision_of[runner.name]][out]
                o = outputs.setdefault(out, {"max_abs": 0.0, "max_rel": 0.0, "cosine": 1.0,
                                             "atol": tol["atol"], "rtol": tol["rtol"],
                                             "precision": precision_of[runner.name], "pass": True})
                o["max_abs"] = max(o["max_abs"], r.max_absdiff)
                o["max_rel"] = max(o["max_rel"], r.max_reldiff)
                o["cosine"] = min(o["cosine"], _cosine(ref_iters[it][out], test_iters[it][out]))
                o["pass"] = o["pass"] and bool(r)
                passed = passed and bool(r)
        task_ok, details = True, []
        for it, feed in enumerate(feeds):
            ok, detail = entry.task_check.check(dict(ref_iters[it]), dict(test_iters[it]), feed)
            task_ok &= ok
            details.append(detail)
        res.outputs, res.task_match = outputs, task_ok
        res.task_detail = f"{entry.task_check.name}: " + "; ".join(
            f"batch {i}: {d}" for i, d in enumerate(details))
        res.passed = passed and task_ok
        report[runner.name] = res
    for name, err in errors.items():
        report[name] = BackendResult(name, error=err, task_detail="failed to load")
    return ParityReport(manifest["name"], manifest["task"], REFERENCE, all_tolerances, report, skipped,
                        len(feeds))


def print_report(report: ParityReport, console=None) -> None:
    from rich.table import Table

    from .term import make_console
    console = console or make_console()
    table = Table(title=f"parity: {report.engine} ({report.task}) vs {report.reference} fp32, "
                        f"{report.iterations} input batches")
    for col in ("backend", "output", "max abs", "max rel", "cosine", "atol / rtol", "tensor", "task"):
        table.add_column(col)
    for name, b in report.backends.items():
        if b.error:
            table.add_row(name, "-", "-", "-", "-", "-", "[red]ERROR[/]", b.error)
            continue
        for i, (out, o) in enumerate(b.outputs.items()):
            table.add_row(name if i == 0 else "", out, f"{o['max_abs']:.2e}", f"{o['max_rel']:.2e}",
                          f"{o['cosine']:.7f}", f"{o['atol']:.0e} / {o['rtol']:.0e}",
                          "[green]ok[/]" if o["pass"] else "[red]FAIL[/]",
                          ("[green]same[/]" if b.task_match else "[red]DIFFERENT[/]") if i == 0 else "")
    console.print(table)
    details = {name: b.task_detail for name, b in report.backends.items() if not b.error}
    if len(set(details.values())) == 1:  # the usual case: say it once
        console.print(f"  every backend: {next(iter(details.values()))}", style="dim")
    else:
        for name, detail in details.items():
            console.print(f"  {name}: {detail}", style="dim")
    for name, why in report.skipped.items():
        console.print(f"  skipped {name}: {why}", style="yellow")
    console.print("[bold green]PASS[/]" if report.passed else "[bold red]FAIL[/]")


def write_json(report: ParityReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_json(), indent=2) + "\n")


# --- generation engines: every graph, then the generated tokens ----------------------------------

@dataclass
class TokenCase:
    name: str
    prompts: list[list[int]]
    options: dict
    sampled: bool = False  # kiln's own seeded stream: compared across kiln backends only


@dataclass
class GenerationParityReport:
    engine: str
    task: str
    graphs: dict[str, ParityReport]
    # case -> backend -> (same as the reference?, detail)
    tokens: dict[str, dict[str, tuple[bool, str]]]
    skipped: dict[str, str]

    @property
    def passed(self) -> bool:
        return (all(r.passed for r in self.graphs.values())
                and all(ok for case in self.tokens.values() for ok, _ in case.values()))

    def to_json(self) -> dict:
        return {"pass": self.passed, "engine": self.engine, "task": self.task,
                "graphs": {g: r.to_json() for g, r in self.graphs.items()},
                "tokens": {c: {b: {"same": ok, "detail": d} for b, (ok, d) in rows.items()}
                           for c, rows in self.tokens.items()},
                "skipped": self.skipped}


def _token_cases(engine_dir: Path, manifest: dict) -> list[TokenCase]:
    """Real prompts (GPT-2) or sources (BART), cut to what the engine's ranges allow."""
    from . import samples
    from .processing.bpe import BPETokenizer
    tok = BPETokenizer.from_dir(engine_dir)
    dims = read_manifest(engine_dir / manifest["graphs"]["decoder"])["dims"]
    longest = dims["total"]["max"]
    if manifest.get("encoder_decoder"):
        limit = dims["source"]["max"]
        prompts = [tok.encode(samples.ARTICLE), tok.encode(samples.TRANSLATION_SOURCES[0])]
        prompts = [p if len(p) <= limit else p[:limit - 1] + p[-1:] for p in prompts]  # keep </s>
        new = min(64, longest - 1)
        return [TokenCase("greedy", prompts, {"num_beams": 1, "max_new_tokens": new}),
                TokenCase("beam search (engine defaults)", prompts[:1], {"max_new_tokens": new}),
                TokenCase("sampling, seed 0", prompts, {"num_beams": 1, "do_sample": True, "seed": 0,
                                                       "top_k": 50, "top_p": 0.9, "max_new_tokens": 32},
                          sampled=True)]
    prompts = [tok.encode(samples.PROMPTS[0]), tok.encode(samples.PROMPTS[1])]  # two lengths: left padding
    new = min(64, longest - max(len(p) for p in prompts))
    return [TokenCase(f"greedy, {new} tokens", prompts, {"max_new_tokens": new, "min_new_tokens": new}),
            TokenCase("beam search, 4 beams", prompts[:1], {"num_beams": 4, "max_new_tokens": min(32, new)}),
            TokenCase("sampling, seed 0", prompts, {"do_sample": True, "seed": 0, "top_k": 50, "top_p": 0.9,
                                                   "temperature": 0.8, "max_new_tokens": min(32, new)},
                      sampled=True)]


def function_generator(engine_dir: Path, manifest: dict, backend: str = REFERENCE):
    """kiln::Generator over the graphs run in Python: eager PyTorch (the token-level
    reference) or ONNX Runtime (which has no C++ backend)."""
    import torch

    from .generate import Generator

    def as_fn(graph_dir: Path, sub: dict):
        if backend == "onnxruntime":
            return onnxruntime_infer(graph_dir / find_artifact(sub, "onnx")["file"], sub)
        module = eager_model(sub)
        names = [s["name"] for s in sub["inputs"]]
        outs = [s["name"] for s in sub["outputs"]]

        def run(feed: dict) -> dict:
            with torch.inference_mode():
                out = module(*[torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names])
            return {n: o.numpy() for n, o in zip(outs, out)}
        return run
    dirs = {g: engine_dir / d for g, d in manifest["graphs"].items()}
    subs = {g: read_manifest(d) for g, d in dirs.items()}
    cache = manifest["cache"]
    return Generator.from_functions(
        as_fn(dirs["decoder"], subs["decoder"]),
        as_fn(dirs["encoder"], subs["encoder"]) if "encoder" in subs else None,
        layers=cache["layers"], heads=cache["heads"], head_dim=cache["head_dim"],
        vocab_size=manifest["vocab_size"], max_positions=manifest["max_positions"],
        encoder_decoder=bool(manifest.get("encoder_decoder")),
        max_batch=subs["decoder"]["dims"]["batch"]["max"], generation=manifest["generation"],
        name=f"{manifest['name']} ({backend})")


def transformers_generate(manifest: dict):
    """transformers' generate over the engine's source checkpoint as (prompts, options) -> new
    tokens per row (eos included, padding cut), or None where transformers is not installed."""
    try:
        import transformers
    except ImportError:
        return None
    import torch
    encoder_decoder = bool(manifest.get("encoder_decoder"))
    cls = (transformers.AutoModelForSeq2SeqLM if encoder_decoder else transformers.AutoModelForCausalLM)
    model = cls.from_pretrained(manifest["source"]["checkpoint"]).eval()
    settings = {k: v for k, v in manifest["generation"].items() if v is not None}
    eos = settings.get("eos_token_id")
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    pad = settings.get("pad_token_id", min(eos_ids) if eos_ids else 0)

    def run(prompts: list[list[int]], options: dict) -> list[list[int]]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            sl = slice(0, len(p)) if encoder_decoder else slice(width - len(p), width)
            ids[i, sl], mask[i, sl] = torch.tensor(p), 1
        kwargs = {**settings, "pad_token_id": pad, "do_sample": False, **options}
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, **kwargs)
        rows = []
        for row in out[:, 1 if encoder_decoder else width:].tolist():
            end = next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))
            rows.append(row[:end])
        return rows
    return run


def _first_difference(ref: list[list[int]], test: list[list[int]]) -> str:
    if ref == test:
        return f"same ({sum(len(r) for r in ref)} tokens in {len(ref)} row(s))"
    for row, (r, t) in enumerate(zip(ref, test)):
        if r != t:
            at = next((i for i, (a, b) in enumerate(zip(r, t)) if a != b), min(len(r), len(t)))
            return f"row {row} differs at token {at} (of {len(r)} / {len(t)})"
    return f"{len(ref)} vs {len(test)} rows"


def run_generation_parity(engine_dir: str | Path, backends: list[str] | None = None,
                          progress=lambda m: None) -> GenerationParityReport:
    """Parity of every graph (tensors, as run_parity), then the generated tokens: kiln's C++
    loop over each C++ backend and over ONNX Runtime, and transformers' generate, against the
    loop over the eager graphs."""
    from .generate import Generator
    from .runtime import available_backends
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    graphs = {}
    for graph, sub in manifest["graphs"].items():
        progress(f"graph {graph}: every backend")
        graphs[graph] = run_parity(engine_dir / sub, backends)
    decoder = read_manifest(engine_dir / manifest["graphs"]["decoder"])
    formats = {a["format"] for a in decoder["artifacts"]}
    runners: dict[str, object] = {}
    skipped: dict[str, str] = {}
    for b in ("torchscript", "aoti", "tensorrt"):
        name = f"kiln-{b}"
        if backends and name not in backends:
            continue
        if b not in available_backends():
            skipped[name] = f"the C++ runtime has no usable {b} backend on this machine"
        elif b not in formats:
            skipped[name] = f"no {b} artifact in the engine"
        else:
            gen = Generator(engine_dir, backend=b)
            runners[name] = lambda prompts, options, gen=gen: gen.generate(prompts, **options).sequences
    if not backends or "onnxruntime" in backends:
        if "onnx" in formats:
            gen = function_generator(engine_dir, manifest, "onnxruntime")
            runners["onnxruntime"] = lambda prompts, options, gen=gen: gen.generate(prompts, **options).sequences
        else:
            skipped["onnxruntime"] = "no onnx artifact in the engine"
    hf = None if backends and "transformers-generate" not in backends else transformers_generate(manifest)
    if hf is None and not backends:
        skipped["transformers-generate"] = "transformers is not installed (pip install kiln[test])"
    reference = function_generator(engine_dir, manifest)
    tokens: dict[str, dict[str, tuple[bool, str]]] = {}
    for case in _token_cases(engine_dir, manifest):
        progress(f"tokens: {case.name}")
        ref = reference.generate(case.prompts, **case.options).sequences
        rows: dict[str, tuple[bool, str]] = {}
        for name, run in runners.items():
            test = run(case.prompts, case.options)
            rows[name] = (test == ref, _first_difference(ref, test))
        if hf is not None and not case.sampled:
            test = hf(case.prompts, case.options)
            rows["transformers-generate"] = (test == ref, _first_difference(ref, test))
        tokens[case.name] = rows
    return GenerationParityReport(manifest["name"], manifest["task"], graphs, tokens, skipped)


def print_generation_report(report: GenerationParityReport, console=None) -> None:
    from rich.table import Table

    from .term import make_console
    console = console or make_console()
    for graph, r in report.graphs.items():
        console.rule(f"graph: {graph}")
        print_report(r, console)
    console.rule("generated tokens")
    table = Table(title=f"tokens: {report.engine} ({report.task}), kiln::Generator over each backend vs "
                        "the same loop over eager PyTorch")
    for col in ("case", "backend", "tokens"):
        table.add_column(col)
    for case, rows in report.tokens.items():
        for i, (name, (ok, detail)) in enumerate(rows.items()):
            table.add_row(case if i == 0 else "", name, f"[green]{detail}[/]" if ok else f"[red]{detail}[/]")
    console.print(table)
    for name, why in report.skipped.items():
        console.print(f"  skipped {name}: {why}", style="yellow")
    console.print("[bold green]PASS[/]" if report.passed else "[bold red]FAIL[/]")
