"""`kiln bench`: latency and throughput of one engine on every backend, in one run.

Backends: every runner of kiln.backends (transformers, the baseline users know; kiln eager; the
artifacts called from Python; ONNX Runtime; the C++ runtime on each backend and TensorRT plan),
each one that cannot run here listed with the reason. All at the same thread count, on the same
inputs, taking turns block by block in one process so the machine's noise hits them alike.
Generation engines: the whole generate() call, transformers' and kiln::Generator's.
"""

from __future__ import annotations

import dataclasses
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

from . import footprint, roofline
from .backends import REFERENCE, Runner, eager_model, open_all, runners, select, torch_infer
from .errors import InvalidArgumentError
from .manifest import GenerationManifest, Manifest, read_graph_manifest, read_manifest
from .roofline import Work


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
    gflops: float = 0.0  # the eager model's FLOPs per call / p50
    gemm_share: float = 0.0  # the FLOPs' time at this machine's GEMM speed on the model's shapes / p50
    bandwidth_share: float = 0.0  # the least bytes a call reads / p50 / this machine's streaming read

    def to_json(self) -> dict:
        return self.__dict__.copy()


LENGTH_DIMS = ("sequence", "samples")  # what --seq sets: tokens for text, samples for audio


def _length_dim(manifest: Manifest) -> str | None:
    return next((d for d in LENGTH_DIMS if d in manifest.dims), None)


def _feed(manifest: Manifest, batch: int, seq: int | None, seed: int = 0, **dims: int) -> dict[str, np.ndarray]:
    """Inputs at the dims' opt sizes, with `batch`, the length `seq` and any other `dims` set."""
    from . import registry

    d = registry.get(manifest.family, manifest.task)
    sizes = {name: r.opt for name, r in manifest.dims.items()}
    sizes["batch"] = batch
    length = _length_dim(manifest)
    if length and seq:
        sizes[length] = seq
    sizes.update(dims)
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
    beside_load: bool = False,
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
    module = eager_model(manifest)  # the roofline's reference, also the "eager" row when benchmarked
    eager = torch_infer(module, manifest)
    all_runners = [
        dataclasses.replace(r, open=lambda: eager) if r.name == REFERENCE else r
        for r in runners(manifest, threads, attention)
    ]
    fns, skipped = _load(all_runners, only, progress)
    rows, limits = [], []
    for batch in batches:
        feed = _feed(manifest, batch, seq)
        shape = f"batch {batch}" + (f" x {length} {seq}" if seq else "")
        progress(f"{shape}: the machine's limits on the model's own GEMM shapes and weights' size")
        work = Work.of(functools.partial(eager, feed))
        before = _machine_limits(work, threads)
        progress(f"{len(fns)} backends taking turns, {shape}")
        gc.collect()
        measured = _measure_interleaved(fns, feed, warmup, iters, budget_s * len(fns))
        limit = _best_limits(before, _machine_limits(work, threads))
        limits.append({"batch": batch, "seq": seq, **_work_json(work), **limit})
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
                    work.flops / (p50 / 1e3) / 1e9,
                    limit["gemm_seconds"] / (p50 / 1e3),
                    work.bytes_read / (p50 / 1e3) / 1e9 / limit["bandwidth"]["read_GBps"],
                )
            )
    weights = footprint.weight_bytes(module)
    extra = {}
    cpp = [r for r in rows if r.batch == batches[0] and r.backend in ("kiln-aoti", "kiln-torchscript")]
    if beside_load and cpp:
        best = min(cpp, key=lambda r: r.p50_ms).backend
        progress(f"{best}: alone, then beside a competing kiln-run busy on the same engine")
        extra["beside_load"] = measure_beside_load(
            Path(engine_dir), best.removeprefix("kiln-"), threads, batches[0], seq
        )
    return {
        **extra,
        "engine": manifest.name,
        "task": manifest.task,
        "threads": threads,
        "machine": machine(),
        "limits": limits,
        "weight_bytes": weights,
        "footprint": _footprints(Path(engine_dir), list(fns), threads, batches[0], seq, weights, progress),
        "kernels": _aoti_kernels(manifest),
        "transformers_attention": attention or "default",
        "rows": [r.to_json() for r in rows],
        "skipped": skipped,
    }


def measure_beside_load(engine_dir: Path, backend: str, threads: int, batch: int, seq: int | None) -> dict:
    """The C++ runtime's latency alone, then beside another process (kiln-run on the same engine,
    same threads) busy without pause. Two processes with `threads` threads each on `threads`
    cores: fair sharing doubles the latency; more than that is the thread pools' spinning."""
    import subprocess
    import sys

    from .runtime import Engine

    manifest = read_graph_manifest(engine_dir)
    feed = _feed(manifest, batch, seq)
    run = Engine(engine_dir, backend=backend, num_threads=threads).run

    def timed() -> list[float]:
        return _measure_interleaved({"x": run}, feed, warmup=3, iters=40, budget_s=10.0)["x"]

    alone = timed()
    tool = Path(sys.executable).parent / "kiln-run"
    args = [str(tool), str(engine_dir), "--backend", backend, "--threads", str(threads), "--iters", "100000000"]
    args += ["--warmup", "0", "--batch", str(batch)] + (["--seq", str(seq)] if seq else [])
    rival = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.0)  # the rival opens its engine and gets busy
        beside = timed()
    finally:
        rival.kill()
        rival.wait()
    a, b = float(np.median(alone)) * 1e3, float(np.median(beside)) * 1e3
    return {
        "backend": f"kiln-{backend}",
        "batch": batch,
        "alone_p50_ms": a,
        "beside_p50_ms": b,
        "beside_p90_ms": float(np.percentile(beside, 90)) * 1e3,
        "slowdown": b / a,
        "fair_slowdown": 2.0,
        "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }


CHOICE_BACKENDS = ("aoti", "torchscript")  # the C++ runtime's CPU backends


def choose_backend(engine_dir: str | Path, threads: int = 0, budget_s: float = 1.0) -> dict | None:
    """Time the C++ runtime's CPU backends on this engine at its opt dims (a generation
    decoder's opt is a decode step, new = 1), taking turns; the record `kiln build` writes as
    the manifest's backend_choice, which "auto" follows on a CPU of the same model. None when
    fewer than two CPU backends can run it here."""
    from .backends import cpp_backends

    manifest = read_graph_manifest(engine_dir)
    usable, _ = cpp_backends()
    names = [b for b in CHOICE_BACKENDS if b in usable and manifest.artifact(b)]
    if len(names) < 2:
        return None
    ms, shape = time_engines({b: (Path(engine_dir), b) for b in names}, manifest, threads, budget_s)
    return {
        "backend": min(ms, key=lambda b: ms[b]),
        "cpu": roofline.cpu_info()["cpu"],
        "measured_ms": ms,
        "shape": shape,
    }


def time_engines(
    engines: dict[str, tuple[Path, str]], manifest: Manifest, threads: int = 0, budget_s: float = 1.0, iters: int = 10
) -> tuple[dict[str, float], dict[str, int]]:
    """Median ms of each (engine dir, backend) through the C++ runtime on the same inputs, at
    `manifest`'s opt dims (a generation decoder's opt is a decode step, new = 1), taking turns;
    and the shape timed (dim -> size)."""
    from .runtime import Engine

    batch = manifest.dims["batch"].opt if "batch" in manifest.dims else 1
    feed = _feed(manifest, batch, None)
    fns = {name: Engine(path, backend=b, num_threads=threads).run for name, (path, b) in engines.items()}
    times = _measure_interleaved(fns, feed, warmup=1, iters=iters, budget_s=budget_s * len(fns))
    ms = {name: round(float(np.median(v)) * 1e3, 3) for name, v in times.items()}
    shape = {
        name: int(np.shape(feed[s.name])[i])
        for s in manifest.inputs
        for i, name in enumerate(s.shape)
        if isinstance(name, str) and s.name in feed
    }
    return ms, shape


def _footprints(
    engine_dir: Path,
    names: list[str],
    threads: int,
    batch: int,
    seq: int | None,
    weights: int,
    progress: Callable[[str], None],
) -> dict[str, dict]:
    """Cold start and peak memory of each C++ backend benchmarked, in fresh processes: a Python
    Engine and kiln-run, each beside its base and the weights' bytes."""
    out = {}
    for name in names:
        backend, _, precision = name.removeprefix("kiln-").partition("-")  # kiln-aoti-int8: aoti, int8
        if not name.startswith("kiln-") or backend == "tensorrt":
            continue
        progress(f"{name}: cold start and peak memory, in fresh processes")
        measured = footprint.measure(str(engine_dir), backend, threads, batch, seq, precision or "auto")
        for m in measured.values():
            if "error" not in m:
                m["over_base_per_weight"] = (m["peak_MB"] - m["base_MB"]) * 2**20 / max(weights, 1)
        out[name] = measured
    return out


def _machine_limits(work: Work, threads: int) -> dict:
    rates = roofline.gemm_rate(work.top_shapes(), threads)
    return {
        "gemm_GFLOPs": rates,
        "gemm_seconds": roofline.gemm_seconds(work, rates),
        "bandwidth": roofline.bandwidth(work.bytes_read, threads),
    }


def _best_limits(a: dict, b: dict) -> dict:
    """The machine's limit is the best it did in this run: measured before and after the model,
    so a burst of noise during one probe does not lower it."""

    def best(x: dict, y: dict) -> dict:
        return {k: max(x[k], y[k]) for k in x}

    out = {
        "gemm_GFLOPs": best(a["gemm_GFLOPs"], b["gemm_GFLOPs"]),
        "gemm_seconds": min(a["gemm_seconds"], b["gemm_seconds"]),
        "bandwidth": best(a["bandwidth"], b["bandwidth"]),
    }
    if "vocab_projection" in a:
        va, vb = a["vocab_projection"], b["vocab_projection"]
        out["vocab_projection"] = {"shape": va["shape"], "GBps": best(va["GBps"], vb["GBps"])}
    return out


def _work_json(work: Work) -> dict:
    return {
        "flops": work.flops,
        "matmul_flops": {f"{m}x{k}x{n}": f for (m, k, n), f in work.matmul_flops.items()},
        "bytes_read": work.bytes_read,
    }


def _aoti_kernels(manifest: Manifest) -> dict[str, int]:
    art = manifest.artifact("aoti")
    return roofline.artifact_kernels(manifest.artifact_path(art)) if art else {}


def machine() -> dict:
    """What a figure means only beside: the CPU and its flags, the BLAS / oneDNN, the software,
    the load on the machine while it ran."""
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        **roofline.cpu_info(),
        "load_average": [round(x, 2) for x in load],
        "thread_wait": {k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OMP_NUM_THREADS")},
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def summary(result: dict) -> list[str]:
    """The ratios the README promises, per batch size."""
    lines = []
    rows = result["rows"]
    for batch in sorted({r["batch"] for r in rows}):
        by = {r["backend"]: r["p50_ms"] for r in rows if r["batch"] == batch}
        # fp32 against fp32: the int8 runners get their own line
        cpp = {k: v for k, v in by.items() if k.startswith("kiln-") and not k.endswith("-int8")}
        int8 = [
            f"{k} {by[k.removesuffix('-int8')] / v:.2f}x {k.removesuffix('-int8')}'s speed"
            for k, v in by.items()
            if k.endswith("-int8") and k.removesuffix("-int8") in by
        ]
        if int8:
            lines.append(f"batch {batch} int8: " + "; ".join(int8))
        if not cpp:
            continue
        best = min(cpp, key=lambda k: cpp[k])
        share = next(r["gemm_share"] for r in rows if r["batch"] == batch and r["backend"] == best)
        parts = [
            f"batch {batch}: best fp32 C++ backend {best} {cpp[best]:.2f} ms, "
            f"{100 * share:.0f}% of the fp32 GEMM roofline"
        ]
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
    return lines + machine_lines(result)


def machine_lines(result: dict) -> list[str]:
    """The machine and its limits measured in the run: what every figure above is a share of."""
    m = result["machine"]
    load = m.get("load_average", ["?"])[0]
    lines = [
        f"machine: {m['cpu']}, {m['cores']} cores, {' '.join(m.get('isa', [])) or 'no ISA flags read'}; "
        f"torch kernels {m.get('torch_cpu_capability', '?')}, BLAS {m.get('blas', '?')}, {m.get('onednn', '?')}; "
        f"load average {load} at the start"
    ]
    for lim in result.get("limits", []):
        rates = ", ".join(f"{k} {v:.0f}" for k, v in lim["gemm_GFLOPs"].items())
        where = f"batch {lim['batch']}" + (f" x {lim['seq']}" if lim.get("seq") else "")
        if "step" in lim:
            where = f"{lim['step']} at batch {lim['batch']}"
        bw = lim["bandwidth"]
        pages = " on huge pages" if bw.get("huge_pages") else ""
        lines.append(
            f"limits measured in this run, {where}: GEMM GFLOP/s on the model's shapes (MxKxN) {rates}; "
            f"streaming read {bw['read_GBps']:.1f} GB/s (sum {bw['sum_GBps']:.1f}, GEMV {bw['gemv_GBps']:.1f}) "
            f"over {bw['bytes'] / 1e6:.0f} MB{pages}; the call: {lim['flops'] / 1e9:.2f} GFLOP, reads >= "
            f"{lim['bytes_read'] / 1e6:.0f} MB"
            + (
                f"; a decode step reads >= {lim['decode_step']['bytes_read'] / 1e6:.0f} MB"
                if "decode_step" in lim
                else ""
            )
        )
        if "vocab_projection" in lim:
            v = lim["vocab_projection"]
            kernels = ", ".join(f"{k} {g:.1f}" for k, g in v["GBps"].items())
            lines.append(
                f"the decode step's vocabulary projection ({'x'.join(map(str, v['shape']))}) through each linear "
                f"kernel, GB/s of weight read: {kernels}"
            )
    for name, by in result.get("footprint", {}).items():
        parts = []
        for who, m in by.items():
            if "error" in m:
                parts.append(f"{who}: {m['error'].splitlines()[-1] if m['error'] else 'failed'}")
                continue
            parts.append(
                f"{who} peak {m['peak_MB']:.0f} MB = base {m['base_MB']:.0f} + "
                f"{m['over_base_per_weight']:.2f}x the weights, cold start {m['cold_start_s']:.2f} s"
            )
        lines.append(
            f"{name} in a fresh process ({result['weight_bytes'] / 2**20:.0f} MB of weights): " + "; ".join(parts)
        )
    if "beside_load" in result:
        b = result["beside_load"]
        lines.append(
            f"beside a competing kiln-run on the same cores: {b['backend']} p50 {b['alone_p50_ms']:.1f} -> "
            f"{b['beside_p50_ms']:.1f} ms ({b['slowdown']:.2f}x; sharing the CPU fairly is {b['fair_slowdown']:.0f}x), "
            f"p90 {b['beside_p90_ms']:.1f} ms; GOMP_SPINCOUNT={b['GOMP_SPINCOUNT']}"
        )
    if result.get("kernels"):
        calls = ", ".join(f"{k} x{v}" for k, v in result["kernels"].items())
        lines.append(f"the AOTInductor package's extern kernels: {calls}")
    return lines


_COLUMNS = ("backend", "batch", "length", "p50 ms", "p90 ms", "p99 ms", "samples/s", "GFLOP/s", "% GEMM", "iters")


def _cells(r: dict, digits: int = 2) -> list[str]:
    return [
        r["backend"],
        str(r["batch"]),
        str(r["seq"] or "-"),
        f"{r['p50_ms']:.{digits}f}",
        f"{r['p90_ms']:.{digits}f}",
        f"{r['p99_ms']:.{digits}f}",
        f"{r['throughput']:.1f}",
        f"{r.get('gflops', 0):.1f}",
        f"{100 * r.get('gemm_share', 0):.0f}",
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
    per_token_ms: float  # median decode step after the first token (of the run where it is least)
    decode_GBps: float = 0.0  # the least bytes a decode step reads (weights, cache) / per_token_ms
    bandwidth_share: float = 0.0  # decode_GBps / this machine's streaming read, measured in the run
    prefill_share: float = 0.0  # the prefill's (encoder's) FLOPs at this machine's GEMM speed / ttft

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
    runs: int = 3,
) -> dict:
    """generate() timed on transformers and kiln::Generator on every C++ backend with an
    artifact: one warm-up call (4 tokens) each, then `runs` measured calls each, taking turns,
    per batch size. A row is the run whose median decode step is least, as the machine's limits
    are the best of repeated reads: on a shared machine a run can lose a share of the memory
    bandwidth to a neighbour, and the median of one run does not undo that."""
    import torch

    from .backends import CPP_BACKENDS, cpp_backends

    if not isinstance(runs, int) or runs < 1:
        raise InvalidArgumentError(f"runs (--runs) is {runs!r}; expected an integer >= 1")
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
    progress("the machine's limits: GEMM on the prefill's shapes, a streaming read the size of a decode step")
    decoder = manifest.graph("decoder")
    decoder_module = eager_model(decoder)
    graphs = {"decoder": torch_infer(decoder_module, decoder)}
    if manifest.encoder_decoder:
        encoder = manifest.graph("encoder")
        graphs["encoder"] = torch_infer(eager_model(encoder), encoder)
    works = {b: _generation_work(manifest, graphs, b, prompt, new_tokens, beams) for b in batches}
    weights = footprint.weight_bytes(decoder_module)
    before = {b: _generation_limits(*works[b], threads) for b in batches}
    prompts = {b: _generation_prompts(engine_dir, b, prompt) for b in batches}
    for name, fn in fns.items():
        for batch in batches:
            progress(f"{name}: batch {batch}, warm-up")
            fn(prompts[batch], 4, beams)  # first-call allocations and lazy initialisation
    best: dict[tuple[str, int], GenerationRow] = {}
    for run in range(runs):
        for name, fn in fns.items():
            for batch in batches:
                what = f"{prompt} + {new_tokens} tokens, {beams} beam(s)"
                progress(f"{name}: batch {batch}, {what}, run {run + 1}/{runs}")
                gc.collect()
                total, ttft, per_token = fn(prompts[batch], new_tokens, beams)
                row = GenerationRow(
                    name, batch, prompt, new_tokens, beams, total, batch * new_tokens / total, ttft, per_token
                )
                if (name, batch) not in best or per_token < best[name, batch].per_token_ms:
                    best[name, batch] = row
    rows = list(best.values())
    limits = {b: _best_limits(before[b], _generation_limits(*works[b], threads)) for b in batches}
    for r in rows:
        prefill, step = works[r.batch]
        lim = limits[r.batch]
        r.decode_GBps = step.bytes_read / (r.per_token_ms / 1e3) / 1e9
        r.bandwidth_share = r.decode_GBps / lim["bandwidth"]["read_GBps"]
        r.prefill_share = lim["gemm_seconds"] / (r.ttft_ms / 1e3)
    return {
        "engine": manifest.name,
        "task": manifest.task,
        "threads": threads,
        "runs": runs,
        "kind": "generation",
        "machine": machine(),
        "limits": [
            {
                "batch": b,
                "step": "prefill",
                **_work_json(works[b][0]),
                **limits[b],
                "decode_step": _work_json(works[b][1]),
            }
            for b in batches
        ],
        "kernels": _aoti_kernels(decoder),
        "weight_bytes": weights,
        "footprint": _footprints(
            engine_dir / manifest.graphs["decoder"], list(fns), threads, 1, None, weights, progress
        ),
        "rows": [r.to_json() for r in rows],
        "skipped": skipped,
    }


def _generation_work(
    manifest: GenerationManifest, graphs: dict[str, Callable], batch: int, prompt: int, new_tokens: int, beams: int
) -> tuple[Work, Work]:
    """What the eager graphs (`graphs`: name -> infer) do in the prefill (the encoder, for an
    encoder-decoder) and in one decode step halfway through the generation (batch x beams rows,
    new = 1)."""
    decoder = manifest.graph("decoder")
    step_past = new_tokens // 2 + (0 if manifest.encoder_decoder else prompt)
    sizes = {"source": prompt} if manifest.encoder_decoder else {}
    step_feed = _feed(decoder, batch * beams, None, new=1, past=step_past, total=step_past + 1, **sizes)
    if manifest.encoder_decoder:
        prefill, prefill_feed = graphs["encoder"], _feed(manifest.graph("encoder"), batch, None, source=prompt)
    else:
        prefill, prefill_feed = graphs["decoder"], _feed(decoder, batch, None, new=prompt, past=0, total=prompt)
    dec = graphs["decoder"]
    return Work.of(lambda: prefill(prefill_feed)), Work.of(lambda: dec(step_feed))


def _generation_limits(prefill: Work, step: Work, threads: int) -> dict:
    rates = roofline.gemm_rate(prefill.top_shapes(), threads)
    out = {
        "gemm_GFLOPs": rates,
        "gemm_seconds": roofline.gemm_seconds(prefill, rates),
        "bandwidth": roofline.bandwidth(step.bytes_read, threads),
    }
    if step.matmul_flops:  # the step's widest projection (the vocabulary's) through each kernel
        m, k, n = max(step.matmul_flops, key=lambda s: s[1] * s[2])
        out["vocab_projection"] = {"shape": [m, k, n], "GBps": roofline.linear_kernels(m, k, n, threads)}
    return out


def generation_summary(result: dict) -> list[str]:
    lines = []
    rows = result["rows"]
    for batch in sorted({r["batch"] for r in rows}):
        by = {r["backend"]: r["tokens_per_s"] for r in rows if r["batch"] == batch}
        cpp = {k: v for k, v in by.items() if k.startswith("kiln-")}
        if not cpp:
            continue
        best = max(cpp, key=lambda k: cpp[k])
        row = next(r for r in rows if r["batch"] == batch and r["backend"] == best)
        line = (
            f"batch {batch}: best kiln backend {best} {cpp[best]:.1f} tokens/s, decode step at "
            f"{100 * row.get('bandwidth_share', 0):.0f}% of the streaming bandwidth, prefill at "
            f"{100 * row.get('prefill_share', 0):.0f}% of the GEMM roofline"
        )
        if "transformers-generate" in by:
            speedup = cpp[best] / by["transformers-generate"]
            line += f", {speedup:.2f}x transformers generate's {by['transformers-generate']:.1f}"
        lines.append(line)
    return lines + machine_lines(result)


_GEN_COLUMNS = (
    "backend",
    "batch",
    "prompt",
    "new",
    "beams",
    "total s",
    "tokens/s",
    "first token ms",
    "per token ms",
    "step GB/s",
    "% BW",
    "prefill % GEMM",
)


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
        f"{r.get('decode_GBps', 0):.1f}",
        f"{100 * r.get('bandwidth_share', 0):.0f}",
        f"{100 * r.get('prefill_share', 0):.0f}",
    ]


def print_generation_bench(result: dict, console=None) -> None:
    _print_table(result, _GEN_COLUMNS, _gen_cells, generation_summary(result), console)


def generation_markdown(result: dict) -> str:
    return _markdown_table(result, _GEN_COLUMNS, _gen_cells, generation_summary(result))
