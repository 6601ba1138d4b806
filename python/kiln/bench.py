"""`kiln bench`: latency and throughput of one engine on every backend, in one run.

Backends: every runner of kiln.backends (transformers, the baseline users know; kiln eager; the
artifacts called from Python; ONNX Runtime; the C++ runtime on each backend and TensorRT plan),
each one that cannot run here listed with the reason. All at the same thread count, on the same
inputs, taking turns block by block in one process so the machine's noise hits them alike.
Generation engines: the whole generate() call, transformers' and kiln::Generator's.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import Runner, open_all, runners, select
from .errors import InvalidArgumentError
from .manifest import GenerationManifest, Manifest, read_graph_manifest, read_manifest


@dataclass
class BenchRow:
    backend: str
    batch: int
    seq: int | None  # tokens (text) or samples (audio); None for fixed-size images
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # samples / s at the median latency
    iters: int

    def to_json(self) -> dict:
        return self.__dict__.copy()


LENGTH_DIMS = ("sequence", "samples")  # what --seq sets: tokens for text, samples for audio


def _length_dim(manifest: Manifest) -> str | None:
    return next((d for d in LENGTH_DIMS if d in manifest.dims), None)


def _feed(manifest: Manifest, batch: int, seq: int | None, seed: int = 0) -> dict[str, np.ndarray]:
    from . import registry

    d = registry.get(manifest.family, manifest.task)
    sizes = {name: r.opt for name, r in manifest.dims.items()}
    sizes["batch"] = batch
    length = _length_dim(manifest)
    if length and seq:
        sizes[length] = seq
    feed = d.graph(manifest.graph).make_example(d.config_class.from_dict(manifest.config), sizes, seed)
    if "attention_mask" in feed:  # no padding: every token / sample is real work
        feed["attention_mask"][:] = 1
    return feed


def _check_shape(manifest: Manifest, batch: int, seq: int | None) -> None:
    length = _length_dim(manifest)
    checks = [("batch", batch, "--batch")] + ([(length, seq, "--seq")] if length and seq else [])
    for name, value, flag in checks:
        r = manifest.dims[name]
        if not r.min <= value <= r.max:
            raise InvalidArgumentError(f"{flag} {value}: outside the engine's {name} range [{r.min}, {r.max}]")


def _measure_interleaved(
    fns: dict[str, Callable], feed: dict, warmup: int, iters: int, budget_s: float, blocks: int = 5
) -> dict[str, list[float]]:
    """Each backend timed in `blocks` blocks of iters/blocks calls, the backends taking turns
    block by block: the machine's noise (a shared 2-core box) lands on every backend alike
    instead of on whichever ran during a burst. Turns are blocks, not single calls, because
    ONNX Runtime's and OpenMP's worker threads spin for a while after a call and would tax
    whichever backend runs next; the first call of each block absorbs that and is not timed."""
    for fn in fns.values():
        for _ in range(warmup):
            fn(feed)
    times: dict[str, list[float]] = {name: [] for name in fns}
    per_block = max(1, -(-iters // blocks))
    deadline = time.perf_counter() + budget_s
    for _ in range(blocks):
        for name, fn in fns.items():
            fn(feed)
            for _ in range(per_block):
                t = time.perf_counter()
                fn(feed)
                times[name].append(time.perf_counter() - t)
        if time.perf_counter() > deadline and all(len(v) >= 5 for v in times.values()):
            break
    return times


def _load(
    all_runners: list[Runner], only: list[str] | None, progress: Callable[[str], None]
) -> tuple[dict[str, Callable], dict[str, str]]:
    """Open the selected runners; one that cannot run here or fails to load is skipped with its
    reason (the report lists every one) and must not sink the others."""
    opened, skipped, errors = open_all(select(all_runners, only), progress)
    return opened, {**skipped, **errors}


def run_bench(
    engine_dir: str | Path,
    batches: list[int],
    seq: int | None,
    threads: int = 2,
    iters: int = 50,
    warmup: int = 5,
    budget_s: float = 8.0,
    only: list[str] | None = None,
    progress: Callable[[str], None] = lambda m: None,
    attention: str | None = None,
) -> dict:
    """`attention`: the transformers baseline's attn_implementation (None: its default), named in
    the report."""
    import torch

    manifest = read_graph_manifest(engine_dir)
    for b in batches:
        _check_shape(manifest, b, seq)
    length = _length_dim(manifest)
    seq = seq or (manifest.dims[length].opt if length else None)
    torch.set_num_threads(threads)
    fns, skipped = _load(runners(manifest, threads, attention), only, progress)
    rows = []
    for batch in batches:
        feed = _feed(manifest, batch, seq)
        progress(f"{len(fns)} backends taking turns, batch {batch}" + (f" x {length} {seq}" if seq else ""))
        gc.collect()
        measured = _measure_interleaved(fns, feed, warmup, iters, budget_s * len(fns))
        for name, secs in measured.items():
            times = np.array(secs) * 1e3
            p50 = float(np.percentile(times, 50))
            rows.append(
                BenchRow(
                    name,
                    batch,
                    seq,
                    p50,
                    float(np.percentile(times, 90)),
                    float(np.percentile(times, 99)),
                    float(times.mean()),
                    batch / (p50 / 1e3),
                    len(times),
                )
            )
    return {
        "engine": manifest.name,
        "task": manifest.task,
        "threads": threads,
        "machine": machine(),
        "transformers_attention": attention or "default",
        "rows": [r.to_json() for r in rows],
        "skipped": skipped,
    }


def machine() -> dict:
    """What a figure means only beside: the CPU, its cores, the software."""
    import torch

    return {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def summary(result: dict) -> list[str]:
    """The ratios the README promises, per batch size."""
    lines = []
    rows = result["rows"]
    for batch in sorted({r["batch"] for r in rows}):
        by = {r["backend"]: r["p50_ms"] for r in rows if r["batch"] == batch}
        cpp = {k: v for k, v in by.items() if k.startswith("kiln-")}
        if not cpp:
            continue
        best = min(cpp, key=lambda k: cpp[k])
        parts = [f"batch {batch}: best C++ backend {best} {cpp[best]:.2f} ms"]
        if "transformers" in by:
            attention = result.get("transformers_attention", "default")
            parts.append(
                f"{by['transformers'] / cpp[best]:.2f}x transformers eager's speed "
                f"(attn_implementation: {attention if attention != 'default' else 'its default'})"
            )
        if "onnxruntime" in by:
            parts.append(f"{by['onnxruntime'] / cpp[best]:.2f}x ONNX Runtime's speed")
        direct = {"kiln-aoti": "aoti-python", "kiln-torchscript": "torchscript-python"}
        for k, py in direct.items():
            if k in by and py in by:
                overhead = 100 * (by[k] / by[py] - 1)
                verdict = "met" if overhead <= 5 else "NOT met"
                parts.append(f"{k} overhead vs {py} {overhead:+.1f}% (the runtime's promise <= 5%: {verdict})")
        lines.append("; ".join(parts))
    return lines


_COLUMNS = ("backend", "batch", "length", "p50 ms", "p90 ms", "p99 ms", "samples/s", "iters")


def _cells(r: dict, digits: int = 2) -> list[str]:
    return [
        r["backend"],
        str(r["batch"]),
        str(r["seq"] or "-"),
        f"{r['p50_ms']:.{digits}f}",
        f"{r['p90_ms']:.{digits}f}",
        f"{r['p99_ms']:.{digits}f}",
        f"{r['throughput']:.1f}",
        str(r["iters"]),
    ]


def _print_table(result: dict, columns, cells, lines: list[str], console=None) -> None:
    """A result's rows as a rich table, then what was skipped and the summary lines."""
    from rich.table import Table

    from .term import make_console

    console = console or make_console()
    table = Table(
        title=f"bench: {result['engine']} ({result['task']}), {result['threads']} threads, {result['machine']['cpu']}"
    )
    for col in columns:
        table.add_column(col, justify="right" if col != "backend" else "left")
    for r in result["rows"]:
        table.add_row(*cells(r))
    console.print(table)
    for name, why in result["skipped"].items():
        console.print(f"  skipped {name}: {why}", style="yellow")
    for line in lines:
        console.print(line)


def _markdown_table(result: dict, columns, cells, lines: list[str]) -> str:
    """The rows as a Markdown table plus the summary lines (what the README shows)."""
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cells(r)) + " |" for r in result["rows"]]
    return "\n".join(out) + "\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"


def print_bench(result: dict, console=None) -> None:
    _print_table(result, _COLUMNS, _cells, summary(result), console)


def markdown(result: dict) -> str:
    return _markdown_table(result, _COLUMNS[:-1], lambda r: _cells(r, 1)[:-1], summary(result))


def write_json(result: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


# --- generation engines (GPT-2, BART): the whole generate() call, one run per backend --------


@dataclass
class GenerationRow:
    backend: str
    batch: int
    prompt: int  # prompt tokens (GPT-2) or source tokens (BART) per row
    new_tokens: int  # generated per row
    beams: int
    total_s: float
    tokens_per_s: float  # generated tokens (all rows) / total
    ttft_ms: float  # time to first token: encoder + prefill + first step
    per_token_ms: float  # median decode step after the first token

    def to_json(self) -> dict:
        return self.__dict__.copy()


def _generation_prompts(engine_dir: Path, batch: int, length: int) -> list[list[int]]:
    """`batch` different prompts of exactly `length` tokens, cut from real text."""
    from . import samples
    from .processing.bpe import BPETokenizer

    tok = BPETokenizer.from_dir(engine_dir)
    body = tok.encode(" ".join([samples.ARTICLE] * (2 + (length * (batch + 1)) // 150)), add_special_tokens=False)
    lead, trail = tok.special_ends()  # kept around each cut (BART's <s> ... </s>, T5's ... </s>)
    n = length - len(lead) - len(trail)
    return [[*lead, *body[i * 7 : i * 7 + n], *trail] for i in range(batch)]


Generate = Callable[[list[list[int]], int, int], tuple[float, float, float]]  # -> total s, ttft ms, per token ms


def _transformers_generate(manifest: GenerationManifest) -> Generate | None:
    """transformers' generate (the engine's generation defaults, greedy), timed: the first token
    from a one-token call, the rest from the whole call."""
    from .parity import transformers_generate

    hf = transformers_generate(manifest)
    if hf is None:
        return None

    def run(prompts: list[list[int]], new_tokens: int, beams: int) -> tuple[float, float, float]:
        t = time.perf_counter()
        hf(prompts, {"max_new_tokens": 1, "min_new_tokens": 1, "num_beams": beams})
        ttft = time.perf_counter() - t
        t = time.perf_counter()
        hf(prompts, {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "num_beams": beams})
        total = time.perf_counter() - t
        return total, ttft * 1e3, (total - ttft) / max(new_tokens - 1, 1) * 1e3

    return run


def _kiln_generate(engine_dir: Path, backend: str, threads: int) -> Generate:
    from .runtime import Generator

    gen = Generator(engine_dir, backend=backend, num_threads=threads)

    def run(prompts: list[list[int]], new_tokens: int, beams: int) -> tuple[float, float, float]:
        t = time.perf_counter()
        r = gen.generate(
            prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=beams, do_sample=False
        )
        total = time.perf_counter() - t
        steps = list(r.timings["step_ms"][1:]) or [0.0]
        return total, float(r.timings["time_to_first_token_ms"]), float(np.median(steps))

    return run


def run_generation_bench(
    engine_dir: str | Path,
    batches: list[int],
    prompt: int | None = None,
    new_tokens: int = 64,
    beams: int | None = None,
    threads: int = 2,
    only: list[str] | None = None,
    progress: Callable[[str], None] = lambda m: None,
) -> dict:
    """generate() timed on transformers and kiln::Generator on every C++ backend with an
    artifact: one warm-up call (4 tokens) and one measured call each, per batch size."""
    import torch

    from .backends import CPP_BACKENDS, cpp_backends

    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    if not isinstance(manifest, GenerationManifest):
        raise InvalidArgumentError(f"{engine_dir}: not a generation engine")
    prompt = prompt or (512 if manifest.encoder_decoder else 32)
    beams = beams or (4 if manifest.encoder_decoder else 1)
    torch.set_num_threads(threads)
    have = {a.format for a in manifest.graph("decoder").artifacts}
    cpp, cpp_error = cpp_backends()
    hf_why = None
    try:
        import transformers  # noqa: F401
    except ImportError:
        hf_why = "transformers is not installed (pip install kiln[test])"
    candidates = [Runner("transformers-generate", "baseline", lambda: _transformers_generate(manifest), hf_why)]
    for b in CPP_BACKENDS:
        why = cpp_error or (None if b in cpp else f"the C++ runtime has no usable {b} backend on this machine")
        why = why or (None if b in have else f"no {b} artifact in the engine")
        candidates.append(Runner(f"kiln-{b}", "cpp", functools.partial(_kiln_generate, engine_dir, b, threads), why))
    fns, skipped = _load(candidates, only, progress)
    rows = []
    for name, fn in fns.items():
        for batch in batches:
            prompts = _generation_prompts(engine_dir, batch, prompt)
            progress(f"{name}: batch {batch}, {prompt} + {new_tokens} tokens, {beams} beam(s)")
            gc.collect()
            fn(prompts, 4, beams)  # warm-up: first-call allocations and lazy initialisation
            total, ttft, per_token = fn(prompts, new_tokens, beams)
            rows.append(
                GenerationRow(
                    name, batch, prompt, new_tokens, beams, total, batch * new_tokens / total, ttft, per_token
                )
            )
    return {
        "engine": manifest.name,
        "task": manifest.task,
        "threads": threads,
        "kind": "generation",
        "machine": machine(),
        "rows": [r.to_json() for r in rows],
        "skipped": skipped,
    }


def generation_summary(result: dict) -> list[str]:
    lines = []
    rows = result["rows"]
    for batch in sorted({r["batch"] for r in rows}):
        by = {r["backend"]: r["tokens_per_s"] for r in rows if r["batch"] == batch}
        cpp = {k: v for k, v in by.items() if k.startswith("kiln-")}
        if not cpp:
            continue
        best = max(cpp, key=lambda k: cpp[k])
        line = f"batch {batch}: best kiln backend {best} {cpp[best]:.1f} tokens/s"
        if "transformers-generate" in by:
            speedup = cpp[best] / by["transformers-generate"]
            line += f", {speedup:.2f}x transformers generate's {by['transformers-generate']:.1f}"
        lines.append(line)
    return lines


_GEN_COLUMNS = ("backend", "batch", "prompt", "new", "beams", "total s", "tokens/s", "first token ms", "per token ms")


def _gen_cells(r: dict) -> list[str]:
    return [
        r["backend"],
        str(r["batch"]),
        str(r["prompt"]),
        str(r["new_tokens"]),
        str(r["beams"]),
        f"{r['total_s']:.2f}",
        f"{r['tokens_per_s']:.1f}",
        f"{r['ttft_ms']:.0f}",
        f"{r['per_token_ms']:.1f}",
    ]


def print_generation_bench(result: dict, console=None) -> None:
    _print_table(result, _GEN_COLUMNS, _gen_cells, generation_summary(result), console)


def generation_markdown(result: dict) -> str:
    return _markdown_table(result, _GEN_COLUMNS, _gen_cells, generation_summary(result))
