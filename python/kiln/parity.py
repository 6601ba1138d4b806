"""`kiln parity`: every backend on the same inputs, compared with eager PyTorch fp32.

Built on polygraphy: each backend of kiln.backends is a polygraphy runner, `Comparator.run`
feeds them the same inputs and `Comparator.compare_accuracy` with `SimpleCompareFunc` checks
every output against the reference per iteration (an element passes when its absolute
difference is within atol OR its difference relative to the reference is within rtol:
polygraphy's "elemwise" check), with the tolerance table of the backend's precision. kiln adds
the cosine similarity per output and the deployable's task-level check (same label, same span,
same tags, embedding cosine, same next token), and a report as a table and as JSON.

Graphs with a hard switch inside (Mask2Former's masked attention, `Graph.pinned_reference`): a
switch whose value lies within fp32 rounding of its threshold goes one way in eager and the other
in a compiled order, and the layers after it then compute something else, legitimately. Where a
candidate misses the reference on a batch, parity reruns the eager model with every switch decided
as the candidate decided it (the graph outputs the values its switches read) and judges the batch
against that: all outputs within the same table, the switch values among them (so a switch the
candidate decided otherwise was within atol of its threshold in the reference), and the task
check. The report keeps the deviation from the plain reference beside it.

Generation engines: every graph as above, then the generated tokens of kiln's C++ loop over
each backend (and transformers' generate) against the same loop over the eager graphs.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import registry
from .backends import REFERENCE, Infer, Runner, eager_model, open_all, runners, select
from .errors import InvalidArgumentError
from .manifest import GenerationManifest, Manifest, read_graph_manifest, read_manifest
from .metrics import cosine

Feed = dict[str, np.ndarray]


def _polygraphy_runner(name: str, infer: Infer, manifest: Manifest) -> Any:
    """A polygraphy runner around infer(feed)."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR  # polygraphy narrates every step at INFO
    meta = TensorMetadata()
    for spec in manifest.inputs:
        meta.add(spec.name, np.dtype(spec.dtype), [d if isinstance(d, int) else -1 for d in spec.shape])

    class CallableRunner(BaseRunner):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(name=name)

        def activate_impl(self) -> None:
            pass

        def get_input_metadata_impl(self) -> Any:
            return meta

        def infer_impl(self, feed_dict: Feed) -> OrderedDict:
            t = time.perf_counter()
            out = infer(feed_dict)
            self.inference_time = time.perf_counter() - t
            return OrderedDict((k, np.asarray(v)) for k, v in out.items())

        def deactivate_impl(self) -> None:
            pass

    return CallableRunner()


@dataclass
class BackendResult:
    name: str
    passed: bool = False
    task_match: bool = False
    task_detail: str = ""
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict:
        d: dict[str, Any] = {
            "pass": self.passed,
            "task_match": self.task_match,
            "task_detail": self.task_detail,
            "outputs": self.outputs,
        }
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
        return {
            "pass": self.passed,
            "engine": self.engine,
            "task": self.task,
            "reference": self.reference,
            "iterations": self.iterations,
            "tolerances": self.tolerances,
            "backends": {n: b.to_json() for n, b in self.backends.items()},
            "skipped": self.skipped,
        }


# shapes a generation graph is fed: a left-padded prefill batch (past 0), single-token decode
# steps and a multi-token step on a cache
GENERATION_SHAPES = [
    {"batch": 2, "new": 12, "past": 0, "source": 24},
    {"batch": 1, "new": 1, "past": 40, "source": 17},
    {"batch": 3, "new": 1, "past": 7, "source": 9},
    {"batch": 2, "new": 5, "past": 16, "source": 30},
]


def parity_feeds(manifest: Manifest, seed: int = 0) -> list[Feed]:
    """Inputs made from real samples through the engine's own pre-processing, plus random
    inputs at the opt sizes (batch 3 where allowed). A generation graph gets random inputs at
    the shapes generation uses."""
    d = registry.get(manifest.family, manifest.task)
    graph = d.graph(manifest.graph)
    config = d.config_class.from_dict(manifest.config)
    dims = manifest.dims

    def fit(sizes: dict[str, int]) -> dict[str, int]:
        out = {k: min(max(v, dims[k].min), dims[k].max) for k, v in sizes.items() if k in dims}
        for name, r in dims.items():
            if r.sum:
                out[name] = sum(out[t] for t in r.sum)
        return out

    if d.generation is not None:
        return [
            graph.make_example(config, fit({**{k: 1 for k in dims}, **s}), seed + i)
            for i, s in enumerate(GENERATION_SHAPES)
        ]
    from .pipelines import pipeline

    pipe = pipeline(manifest.dir, load_engine=False)
    feeds = [pipe.preprocess(sample)[0] for sample in pipe.parity_samples()]
    sizes = fit({**{n: r.opt for n, r in dims.items()}, "batch": 3})
    feeds.append(graph.make_example(config, sizes, seed))
    return feeds


def _compare(ref: np.ndarray, got: np.ndarray, tol: Any) -> tuple[bool, float]:
    """(polygraphy's elemwise rule: |got - ref| <= atol, or <= rtol * |ref|, at every element;
    the max abs difference). Different shapes fail, with an infinite difference."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref.shape != got.shape:
        return False, float("inf")
    d = np.abs(got - ref)
    return bool(np.all((d <= tol.atol) | (d <= tol.rtol * np.abs(ref)))), float(d.max()) if d.size else 0.0


def run_parity(
    engine_dir: str | Path, backends: list[str] | None = None, extra: list[Runner] | None = None
) -> ParityReport:
    """Every backend (or those named in `backends`, plus `extra` runners) against eager."""
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    manifest = read_graph_manifest(engine_dir)
    graph = registry.get(manifest.family, manifest.task).graph(manifest.graph)
    tolerances = manifest.tolerances or graph.tolerances
    feeds = parity_feeds(manifest)
    candidates = [r for r in runners(manifest) if r.kind != "baseline"] + list(extra or [])
    selected = select(candidates, backends)
    precision = {r.name: r.precision for r in selected}
    opened, skipped, errors = open_all(selected)
    for name in list(opened):
        if precision[name] not in tolerances:
            errors[name] = f"no {precision[name]} tolerances for {manifest.family}/{manifest.task} {manifest.graph}"
            del opened[name]
    poly = [_polygraphy_runner(name, infer, manifest) for name, infer in opened.items()]
    results = Comparator.run(poly, data_loader=feeds)
    # every backend against the reference (polygraphy compares neighbours by default), with the
    # tolerance table of its precision; the reference goes second because polygraphy takes
    # relative differences against the second
    accuracy: dict = {}
    for p in sorted({precision[r.name] for r in poly[1:]}):
        table = tolerances[p]
        compare = SimpleCompareFunc(
            atol={o: t.atol for o, t in table.items()}, rtol={o: t.rtol for o, t in table.items()}, check_shapes=True
        )
        group = [i for i, r in enumerate(poly) if i > 0 and precision[r.name] == p]
        accuracy.update(
            Comparator.compare_accuracy(results, compare_func=compare, comparisons=[(i, 0) for i in group])[0]
        )
    iters = dict(results)
    ref_iters = iters[REFERENCE]
    report: dict[str, BackendResult] = {}
    pinned_model: Any = None
    for runner in poly[1:]:
        res = BackendResult(runner.name)
        table = tolerances[precision[runner.name]]
        check = graph.check.check_for(precision[runner.name])
        passed, details = True, []
        res.task_match = True
        for it, compared in enumerate(accuracy[(runner.name, REFERENCE)]):
            ref, got = dict(ref_iters[it]), dict(iters[runner.name][it])
            ok = {}
            for out, r in compared.items():
                tol = table[out]
                o = res.outputs.setdefault(
                    out,
                    {
                        "max_abs": 0.0,
                        "max_rel": 0.0,
                        "cosine": 1.0,
                        "atol": tol.atol,
                        "rtol": tol.rtol,
                        "precision": precision[runner.name],
                        "pass": True,
                    },
                )
                o["max_abs"] = max(o["max_abs"], float(r.max_absdiff))
                o["max_rel"] = max(o["max_rel"], float(r.max_reldiff))
                o["cosine"] = min(o["cosine"], cosine(ref[out], got[out]))
                ok[out] = bool(r)
            task_ok, detail = check(ref, got, feeds[it])
            if not (all(ok.values()) and task_ok) and graph.pinned_reference is not None:
                # a hard switch inside the graph (Mask2Former's masked attention) decided otherwise
                # at a value within fp32 rounding of its threshold sends the later layers another
                # way: judge this batch against the reference on the candidate's own switches
                if pinned_model is None:
                    pinned_model = eager_model(manifest).model
                pinned, note = graph.pinned_reference(pinned_model, feeds[it], got)
                judged = {out: _compare(pinned[out], got[out], table[out]) for out in compared}
                ok = {out: good for out, (good, _) in judged.items()}
                worst = {out: w for out, (_, w) in judged.items()}
                task_ok, pinned_detail = check(pinned, got, feeds[it])
                for out, w in worst.items():
                    o = res.outputs[out]
                    o["pinned_max_abs"] = max(o.get("pinned_max_abs", 0.0), w)
                detail = (
                    f"judged on its own switches ({note}; max abs there "
                    + ", ".join(f"{out} {w:.2e}" for out, w in worst.items())
                    + f"; against eager unpinned: {detail}): {pinned_detail}"
                )
            for out, good in ok.items():
                res.outputs[out]["pass"] = res.outputs[out]["pass"] and good
            passed = passed and all(ok.values())
            res.task_match &= task_ok
            details.append(detail)
        res.task_detail = f"{graph.check.name}: " + "; ".join(f"batch {i}: {d}" for i, d in enumerate(details))
        res.passed = passed and res.task_match
        report[runner.name] = res
    for name, err in errors.items():
        report[name] = BackendResult(name, error=err, task_detail="failed to load")
    tol_json = {p: {o: t.to_json() for o, t in outs.items()} for p, outs in tolerances.items()}
    return ParityReport(manifest.name, manifest.task, REFERENCE, tol_json, report, skipped, len(feeds))


def print_report(report: ParityReport, console: Any = None) -> None:
    from rich.table import Table

    from .term import make_console

    console = console or make_console()
    table = Table(
        title=f"parity: {report.engine} ({report.task}) vs {report.reference} fp32, {report.iterations} input batches"
    )
    # a batch judged on the candidate's own switches (Graph.pinned_reference) shows the deviation there
    pinned = any("pinned_max_abs" in o for b in report.backends.values() for o in b.outputs.values())
    columns = ("backend", "output", "max abs", "max rel", "cosine", "atol / rtol")
    for col in (*columns, *(("max abs on its switches",) if pinned else ()), "tensor", "task"):
        table.add_column(col)
    for name, b in report.backends.items():
        if b.error:
            table.add_row(name, "-", "-", "-", "-", "-", "[red]ERROR[/]", b.error)
            continue
        for i, (out, o) in enumerate(b.outputs.items()):
            table.add_row(
                name if i == 0 else "",
                out,
                f"{o['max_abs']:.2e}",
                f"{o['max_rel']:.2e}",
                f"{o['cosine']:.7f}",
                f"{o['atol']:.0e} / {o['rtol']:.0e}",
                *((f"{o['pinned_max_abs']:.2e}" if "pinned_max_abs" in o else "-",) if pinned else ()),
                "[green]ok[/]" if o["pass"] else "[red]FAIL[/]",
                ("[green]same[/]" if b.task_match else "[red]DIFFERENT[/]") if i == 0 else "",
            )
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


def write_json(report: ParityReport | GenerationParityReport, path: str | Path) -> None:
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
    tokens: dict[str, dict[str, tuple[bool, str]]]  # case -> backend -> (same as the reference?, detail)
    skipped: dict[str, str]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.graphs.values()) and all(
            ok for case in self.tokens.values() for ok, _ in case.values()
        )

    def to_json(self) -> dict:
        return {
            "pass": self.passed,
            "engine": self.engine,
            "task": self.task,
            "graphs": {g: r.to_json() for g, r in self.graphs.items()},
            "tokens": {
                c: {b: {"same": ok, "detail": d} for b, (ok, d) in rows.items()} for c, rows in self.tokens.items()
            },
            "skipped": self.skipped,
        }


def _token_cases(manifest: GenerationManifest) -> list[TokenCase]:
    """Real prompts (decoder-only) or sources (encoder-decoder), cut to what the engine's ranges allow."""
    from . import samples
    from .pipelines import TextGenerationPipeline

    pipe = TextGenerationPipeline(manifest.dir, load_engine=False)  # the user's inputs: prefix, language code
    dims = manifest.graph("decoder").dims
    longest = dims["total"].max
    if manifest.encoder_decoder:
        limit = dims["source"].max
        prompts, _ = pipe.preprocess([samples.ARTICLE, samples.TRANSLATION_SOURCES[0]])
        prompts = [p if len(p) <= limit else p[: limit - 1] + p[-1:] for p in prompts]  # keep </s>
        new = min(64, longest - 1)
        cases = [
            TokenCase("greedy", prompts, {"num_beams": 1, "max_new_tokens": new}),
            TokenCase("beam search, 4 beams", prompts[:1], {"num_beams": 4, "max_new_tokens": new}),
            TokenCase("beam search (engine defaults)", prompts[:1], {"max_new_tokens": new}),
            TokenCase(
                "sampling, seed 0",
                prompts,
                {"num_beams": 1, "do_sample": True, "seed": 0, "top_k": 50, "top_p": 0.9, "max_new_tokens": 32},
                sampled=True,
            ),
        ]
        languages = pipe.languages
        if languages and languages["position"] == "prefix":  # mBART-50: another target language forced
            code = next(
                c for c in ("de_DE", *languages["codes"]) if c in languages["codes"] and c != languages["target"]
            )
            options = {"num_beams": 1, "max_new_tokens": new, **pipe.language_options(code)}
            cases.insert(1, TokenCase(f"greedy, {code} forced first", prompts, options))
        return cases
    prompts, _ = pipe.preprocess([samples.PROMPTS[0], samples.PROMPTS[1]])  # two lengths: left padding
    new = min(64, longest - max(len(p) for p in prompts))
    return [
        TokenCase(f"greedy, {new} tokens", prompts, {"max_new_tokens": new, "min_new_tokens": new}),
        TokenCase("beam search, 4 beams", prompts[:1], {"num_beams": 4, "max_new_tokens": min(32, new)}),
        TokenCase(
            "sampling, seed 0",
            prompts,
            {
                "do_sample": True,
                "seed": 0,
                "top_k": 50,
                "top_p": 0.9,
                "temperature": 0.8,
                "max_new_tokens": min(32, new),
            },
            sampled=True,
        ),
    ]


def function_generator(manifest: GenerationManifest, runner: str = REFERENCE) -> Any:
    """kiln::Generator over the graphs run in Python by one runner of kiln.backends: eager
    PyTorch (the token-level reference) or ONNX Runtime (which has no C++ backend)."""
    from .generate import Generator

    def graph_fn(graph: str) -> Infer:
        sub = manifest.graph(graph)
        found = next(r for r in runners(sub) if r.name == runner)
        if found.unavailable:
            raise InvalidArgumentError(f"{sub.name}: {runner}: {found.unavailable}")
        return found.open()

    cache = manifest.cache
    decoder = manifest.graph("decoder")
    return Generator.from_functions(
        graph_fn("decoder"),
        graph_fn("encoder") if manifest.encoder_decoder else None,
        layers=cache.layers,
        heads=cache.heads,
        head_dim=cache.head_dim,
        vocab_size=manifest.vocab_size,
        max_positions=manifest.max_positions,
        encoder_decoder=manifest.encoder_decoder,
        max_batch=decoder.dims["batch"].max,
        generation=manifest.generation,
        name=f"{manifest.name} ({runner})",
    )


def transformers_generate(manifest: GenerationManifest) -> Callable[[list[list[int]], dict], list[list[int]]] | None:
    """transformers' generate over the engine's source checkpoint as (prompts, options) -> new
    tokens per row (eos included, padding cut), or None where transformers is not installed."""
    try:
        import transformers
    except ImportError:
        return None
    import torch

    encoder_decoder = manifest.encoder_decoder
    d = registry.get(manifest.family, manifest.task)
    transformers.logging.set_verbosity_error()
    model = getattr(transformers, d.reference_class).from_pretrained(manifest.source.checkpoint).eval()
    settings = {k: v for k, v in manifest.generation.items() if v is not None}
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
        for row in out[:, 1 if encoder_decoder else width :].tolist():
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


def _sequences(gen: Any) -> Callable[[list[list[int]], dict], list[list[int]]]:
    return lambda prompts, options: gen.generate(prompts, **options).sequences


def run_generation_parity(
    engine_dir: str | Path, backends: list[str] | None = None, progress: Callable[[str], None] = lambda m: None
) -> GenerationParityReport:
    """Parity of every graph (tensors, as run_parity), then the generated tokens: kiln's C++
    loop over each C++ backend and over ONNX Runtime, and transformers' generate, against the
    loop over the eager graphs."""
    from .backends import cpp_backends
    from .generate import Generator

    manifest = read_manifest(engine_dir)
    if not isinstance(manifest, GenerationManifest):
        raise InvalidArgumentError(f"{engine_dir}: not a generation engine; use run_parity")
    graphs = {}
    for graph in manifest.graphs:
        progress(f"graph {graph}: every backend")
        graphs[graph] = run_parity(manifest.graph_dir(graph), backends)
    decoder = manifest.graph("decoder")
    formats = {a.format for a in decoder.artifacts}
    cpp, cpp_error = cpp_backends()
    generate: dict[str, Callable[[list[list[int]], dict], list[list[int]]]] = {}
    skipped: dict[str, str] = {}
    for b in ("torchscript", "aoti", "tensorrt"):
        name = f"kiln-{b}"
        if backends and name not in backends:
            continue
        if b not in cpp:
            skipped[name] = cpp_error or f"the C++ runtime has no usable {b} backend on this machine"
        elif b not in formats:
            skipped[name] = f"no {b} artifact in the engine"
        else:
            generate[name] = _sequences(Generator(engine_dir, backend=b))
    if not backends or "onnxruntime" in backends:
        if "onnx" in formats:
            generate["onnxruntime"] = _sequences(function_generator(manifest, "onnxruntime"))
        else:
            skipped["onnxruntime"] = "no onnx artifact in the engine"
    hf = None if backends and "transformers-generate" not in backends else transformers_generate(manifest)
    if hf is None and not backends:
        skipped["transformers-generate"] = "transformers is not installed (pip install kiln[test])"
    reference = function_generator(manifest)
    tokens: dict[str, dict[str, tuple[bool, str]]] = {}
    for case in _token_cases(manifest):
        progress(f"tokens: {case.name}")
        ref = reference.generate(case.prompts, **case.options).sequences
        rows: dict[str, tuple[bool, str]] = {}
        for name, run in generate.items():
            test = run(case.prompts, case.options)
            rows[name] = (test == ref, _first_difference(ref, test))
        if hf is not None and not case.sampled:
            test = hf(case.prompts, case.options)
            rows["transformers-generate"] = (test == ref, _first_difference(ref, test))
        tokens[case.name] = rows
    return GenerationParityReport(manifest.name, manifest.task, graphs, tokens, skipped)


def print_generation_report(report: GenerationParityReport, console: Any = None) -> None:
    from rich.table import Table

    from .term import make_console

    console = console or make_console()
    for graph, r in report.graphs.items():
        console.rule(f"graph: {graph}")
        print_report(r, console)
    console.rule("generated tokens")
    table = Table(
        title=f"tokens: {report.engine} ({report.task}), kiln::Generator over each backend vs "
        "the same loop over eager PyTorch"
    )
    for col in ("case", "backend", "tokens"):
        table.add_column(col)
    for case, rows in report.tokens.items():
        for i, (name, (ok, detail)) in enumerate(rows.items()):
            table.add_row(case if i == 0 else "", name, f"[green]{detail}[/]" if ok else f"[red]{detail}[/]")
    console.print(table)
    for name, why in report.skipped.items():
        console.print(f"  skipped {name}: {why}", style="yellow")
    console.print("[bold green]PASS[/]" if report.passed else "[bold red]FAIL[/]")
