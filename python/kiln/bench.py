"""`kiln bench`: latency and throughput of one engine on every backend, in one run.

Backends: transformers eager (the baseline users know; only when transformers is installed),
kiln eager, the artifacts called directly from Python (TorchScript, AOTInductor), ONNX Runtime,
and the C++ runtime with each of its backends. All at the same thread count, on the same inputs,
taking turns block by block in one process so the machine's noise hits them alike.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import InvalidArgumentError
from .exporters.manifest import find_artifact, read_manifest


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


def _length_dim(manifest: dict) -> str | None:
    return next((d for d in LENGTH_DIMS if d in manifest["dims"]), None)


def _feed(manifest: dict, batch: int, seq: int | None, seed: int = 0) -> dict[str, np.ndarray]:
    from . import registry
    entry = registry.get(manifest["family"], manifest["task"])
    sizes = {name: r["opt"] for name, r in manifest["dims"].items()}
    sizes["batch"] = batch
    length = _length_dim(manifest)
    if length and seq:
        sizes[length] = seq
    feed = entry.make_example(manifest["config"], sizes, seed)
    if "attention_mask" in feed:  # no padding: every token / sample is real work
        feed["attention_mask"][:] = 1
    return feed


def _check_shape(manifest: dict, batch: int, seq: int | None) -> None:
    length = _length_dim(manifest)
    checks = [("batch", batch, "--batch")] + ([(length, seq, "--seq")] if length and seq else [])
    for name, value, flag in checks:
        r = manifest["dims"][name]
        if not r["min"] <= value <= r["max"]:
            raise InvalidArgumentError(f"{flag} {value}: outside the engine's {name} range "
                                       f"[{r['min']}, {r['max']}]")


def _torch_fn(module, names: list[str]) -> Callable:
    import torch

    def run(feed):
        args = [torch.from_numpy(feed[n]) for n in names]
        with torch.inference_mode():
            return module(*args)
    return run


def _transformers_fn(manifest: dict) -> Callable | None:
    """The same computation with transformers (the baseline), or None where it is not installed."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    ckpt = manifest["source"]["checkpoint"]
    task = manifest["task"]
    cls = {"text-classification": "AutoModelForSequenceClassification",
           "token-classification": "AutoModelForTokenClassification",
           "question-answering": "AutoModelForQuestionAnswering",
           "fill-mask": "AutoModelForMaskedLM", "feature-extraction": "AutoModel",
           "image-classification": "AutoModelForImageClassification",
           "automatic-speech-recognition": "AutoModelForCTC",
           "audio-classification": "AutoModelForAudioClassification"}.get(task)
    if cls is None or not Path(ckpt).is_dir():
        return None
    kwargs = {}
    if manifest.get("labels"):
        kwargs["num_labels"] = len(manifest["labels"])
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # its weight-loading bar would break the table
    model = getattr(transformers, cls).from_pretrained(ckpt, **kwargs).eval()

    def run(feed):
        args = {k: torch.from_numpy(v) for k, v in feed.items()}
        with torch.inference_mode():
            out = model(**args)
            if task == "feature-extraction":  # what sentence-transformers adds on top
                mask = args["attention_mask"].unsqueeze(-1).float()
                emb = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(emb, dim=-1)
            return out
    return run


def backends(engine_dir: Path, manifest: dict, threads: int) -> dict[str, Callable[[], Callable]]:
    """name -> factory of a callable(feed). Factories run lazily, so a failure is per backend."""
    import torch
    names = [s["name"] for s in manifest["inputs"]]
    out: dict[str, Callable[[], Callable]] = {}
    out["transformers-eager"] = lambda: _transformers_fn(manifest)

    def kiln_eager():
        from .parity import eager_model
        return _torch_fn(eager_model(manifest), names)
    out["kiln-eager"] = kiln_eager
    if (ts := find_artifact(manifest, "torchscript")):
        out["torchscript-python"] = lambda: _torch_fn(torch.jit.load(str(engine_dir / ts["file"])), names)
    if (pt2 := find_artifact(manifest, "aoti")):
        def aoti_python():
            runner = torch._inductor.aoti_load_package(str(engine_dir / pt2["file"]))
            return lambda feed: runner(*[torch.from_numpy(feed[n]) for n in names])
        out["aoti-python"] = aoti_python
    if (onnx_art := find_artifact(manifest, "onnx")):
        def ort_fn():
            import onnxruntime as ort
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(engine_dir / onnx_art["file"]), opts,
                                        providers=["CPUExecutionProvider"])
            return lambda feed: sess.run(None, feed)
        out["onnxruntime"] = ort_fn
    try:
        from .runtime import Engine, available_backends
        for b in available_backends():
            fmt = {"torchscript": "torchscript", "aoti": "aoti", "tensorrt": "tensorrt"}.get(b)
            if fmt and find_artifact(manifest, fmt):
                out[f"kiln-{b}"] = lambda b=b: Engine(engine_dir, backend=b, num_threads=threads).run
    except ImportError:
        pass
    return out


def _measure_interleaved(fns: dict[str, Callable], feed: dict, warmup: int, iters: int,
                         budget_s: float, blocks: int = 5) -> dict[str, list[float]]:
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


def _load_backends(factories: dict[str, Callable], only: list[str] | None,
                   progress: Callable[[str], None]) -> tuple[dict[str, Callable], dict[str, str]]:
    """Make each backend's callable ({name: factory}, or those named in `only`); one failing to
    load is skipped with the reason and must not sink the others."""
    if only:
        unknown = set(only) - set(factories)
        if unknown:
            raise InvalidArgumentError(f"--backends {sorted(unknown)}: unknown; known: {sorted(factories)}")
        factories = {k: v for k, v in factories.items() if k in only}
    fns, skipped = {}, {}
    for name, make in factories.items():
        progress(f"loading {name}")
        try:
            fn = make()
        except Exception as e:
            skipped[name] = f"{type(e).__name__}: {e}"
            continue
        if fn is None:
            skipped[name] = "transformers is not installed (pip install kiln[test])"
        else:
            fns[name] = fn
    return fns, skipped


def run_bench(engine_dir: str | Path, batches: list[int], seq: int | None, threads: int = 2,
              iters: int = 50, warmup: int = 5, budget_s: float = 8.0, only: list[str] | None = None,
              progress: Callable[[str], None] = lambda m: None) -> dict:
    import torch
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    for b in batches:
        _check_shape(manifest, b, seq)
    length = _length_dim(manifest)
    seq = seq or (manifest["dims"][length]["opt"] if length else None)
    torch.set_num_threads(threads)
    fns, skipped = _load_backends(backends(engine_dir, manifest, threads), only, progress)
    rows = []
    for batch in batches:
        feed = _feed(manifest, batch, seq)
        progress(f"{len(fns)} backends taking turns, batch {batch}" + (f" x {length} {seq}" if seq else ""))
        gc.collect()
        measured = _measure_interleaved(fns, feed, warmup, iters, budget_s * len(fns))
        for name, secs in measured.items():
            times = np.array(secs) * 1e3
            p50 = float(np.percentile(times, 50))
            rows.append(BenchRow(name, batch, seq, p50, float(np.percentile(times, 90)),
                                 float(np.percentile(times, 99)), float(times.mean()),
                                 batch / (p50 / 1e3), len(times)))
    return {"engine": manifest["name"], "task": manifest["task"], "threads": threads,
            "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "torch": torch.__version__},
            "rows": [r.to_json() for r in rows], "skipped": skipped}


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
        cpp = {k: v for k, v in by.items() if k.startswith("kiln-") and k != "kiln-eager"}
        if not cpp:
            continue
        best = min(cpp, key=cpp.get)
        parts = [f"batch {batch}: best C++ backend {best} {cpp[best]:.2f} ms"]
        def verdict(ok: bool) -> str:
            return "met" if ok else "NOT met"
        if "transformers-eager" in by:
            speedup = by["transformers-eager"] / cpp[best]
            parts.append(f"{speedup:.2f}x transformers eager's speed (target >= 1.7x: {verdict(speedup >= 1.7)})")
        if "onnxruntime" in by:
            ratio = by["onnxruntime"] / cpp[best]
            parts.append(f"{ratio:.2f}x ONNX Runtime's speed (target >= 1.0x: {verdict(ratio >= 1.0)})")
        direct = {"kiln-aoti": "aoti-python", "kiln-torchscript": "torchscript-python"}
        for k, py in direct.items():
            if k in by and py in by:
                overhead = 100 * (by[k] / by[py] - 1)
                parts.append(f"{k} overhead vs {py} {overhead:+.1f}% (target <= 5%: {verdict(overhead <= 5)})")
        lines.append("; ".join(parts))
    return lines


_COLUMNS = ("backend", "batch", "length", "p50 ms", "p90 ms", "p99 ms", "samples/s", "iters")


def _cells(r: dict, digits: int = 2) -> list[str]:
    return [r["backend"], str(r["batch"]), str(r["seq"] or "-"), f"{r['p50_ms']:.{digits}f}",
            f"{r['p90_ms']:.{digits}f}", f"{r['p99_ms']:.{digits}f}", f"{r['throughput']:.1f}", str(r["iters"])]


def _print_table(result: dict, columns, cells, lines: list[str], console=None) -> None:
    """A result's rows as a rich table, then what was skipped and the summary lines."""
    from rich.table import Table

    from .term import make_console
    console = console or make_console()
    table = Table(title=f"bench: {result['engine']} ({result['task']}), {result['threads']} threads, "
                        f"{result['machine']['cpu']}")
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


def _generation_prompts(manifest: dict, engine_dir: Path, batch: int, length: int) -> list[list[int]]:
    """`batch` different prompts of exactly `length` tokens, cut from real text."""
    from . import samples
    from .processing.bpe import BPETokenizer
    tok = BPETokenizer.from_dir(engine_dir)
    ids = tok.encode(" ".join([samples.ARTICLE] * (2 + (length * (batch + 1)) // 150)))
    if tok.flavour == "bart":  # keep <s> ... </s> around each cut
        body = ids[1:-1]
        return [[ids[0], *body[i * 7:i * 7 + length - 2], ids[-1]] for i in range(batch)]
    return [ids[i * 7:i * 7 + length] for i in range(batch)]


def _transformers_generate(manifest: dict, threads: int):
    """transformers' generate over the engine's source checkpoint, or None without transformers."""
    try:
        import transformers
    except ImportError:
        return None
    import torch
    ckpt = manifest["source"]["checkpoint"]
    cls = (transformers.AutoModelForSeq2SeqLM if manifest.get("encoder_decoder")
           else transformers.AutoModelForCausalLM)
    model = cls.from_pretrained(ckpt).eval()
    pad = manifest["generation"].get("pad_token_id")
    if pad is None:
        pad = manifest["generation"].get("eos_token_id")
    pad = pad[0] if isinstance(pad, list) else pad

    def run(prompts: list[list[int]], new_tokens: int, beams: int):
        width = max(len(p) for p in prompts)
        left = not manifest.get("encoder_decoder")
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            sl = slice(width - len(p), width) if left else slice(0, len(p))
            ids[i, sl] = torch.tensor(p)
            mask[i, sl] = 1
        with torch.inference_mode():
            t = time.perf_counter()
            model.generate(ids, attention_mask=mask, max_new_tokens=1, min_new_tokens=1, do_sample=False,
                           num_beams=beams, pad_token_id=pad)
            ttft = time.perf_counter() - t
            t = time.perf_counter()
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, num_beams=beams, pad_token_id=pad)
            total = time.perf_counter() - t
        steps = (total - ttft) / max(new_tokens - 1, 1)
        return out, total, ttft * 1e3, steps * 1e3
    return run


def _kiln_generate(engine_dir: Path, backend: str):
    from .runtime import Generator
    gen = Generator(engine_dir, backend=backend)

    def run(prompts: list[list[int]], new_tokens: int, beams: int):
        t = time.perf_counter()
        r = gen.generate(prompts, max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=beams,
                         do_sample=False)
        total = time.perf_counter() - t
        steps = list(r.timings["step_ms"][1:]) or [0.0]
        return r, total, float(r.timings["time_to_first_token_ms"]), float(np.median(steps))
    return run


def run_generation_bench(engine_dir: str | Path, batches: list[int], prompt: int | None = None,
                         new_tokens: int = 64, beams: int | None = None, threads: int = 2,
                         only: list[str] | None = None,
                         progress: Callable[[str], None] = lambda m: None) -> dict:
    """generate() timed on transformers and kiln::Generator on every C++ backend with an
    artifact: one warm-up call (4 tokens) and one measured call each, per batch size."""
    import torch

    from .runtime import available_backends
    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    encoder_decoder = bool(manifest.get("encoder_decoder"))
    prompt = prompt or (512 if encoder_decoder else 32)
    beams = beams or (4 if encoder_decoder else 1)
    torch.set_num_threads(threads)
    decoder = read_manifest(engine_dir / manifest["graphs"]["decoder"])
    have = {a["format"] for a in decoder["artifacts"]}
    factories: dict[str, Callable] = {"transformers-generate": lambda: _transformers_generate(manifest, threads)}
    for b in available_backends():
        if b in have:
            factories[f"kiln-{b}"] = lambda b=b: _kiln_generate(engine_dir, b)
    fns, skipped = _load_backends(factories, only, progress)
    rows = []
    for name, fn in fns.items():
        for batch in batches:
            prompts = _generation_prompts(manifest, engine_dir, batch, prompt)
            progress(f"{name}: batch {batch}, {prompt} + {new_tokens} tokens, {beams} beam(s)")
            gc.collect()
            fn(prompts, 4, beams)  # warm-up: first-call allocations and lazy initialisation
            _, total, ttft, per_token = fn(prompts, new_tokens, beams)
            rows.append(GenerationRow(name, batch, prompt, new_tokens, beams, total,
                                      batch * new_tokens / total, ttft, per_token))
    return {"engine": manifest["name"], "task": manifest["task"], "threads": threads, "kind": "generation",
            "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                        "torch": torch.__version__},
            "rows": [r.to_json() for r in rows], "skipped": skipped}


def generation_summary(result: dict) -> list[str]:
    lines = []
    rows = result["rows"]
    for batch in sorted({r["batch"] for r in rows}):
        by = {r["backend"]: r["tokens_per_s"] for r in rows if r["batch"] == batch}
        cpp = {k: v for k, v in by.items() if k.startswith("kiln-")}
        if not cpp:
            continue
        best = max(cpp, key=cpp.get)
        line = f"batch {batch}: best kiln backend {best} {cpp[best]:.1f} tokens/s"
        if "transformers-generate" in by:
            speedup = cpp[best] / by["transformers-generate"]
            target = ""
            if batch == 1 and result["task"] == "text-generation":  # issue 5's target: GPT-2 at batch 1
                target = " (target >= 2x at batch 1: " + ("met)" if speedup >= 2 else "NOT met)")
            line += f", {speedup:.2f}x transformers generate's {by['transformers-generate']:.1f}{target}"
        lines.append(line)
    return lines


_GEN_COLUMNS = ("backend", "batch", "prompt", "new", "beams", "total s", "tokens/s", "first token ms",
                "per token ms")


def _gen_cells(r: dict) -> list[str]:
    return [r["backend"], str(r["batch"]), str(r["prompt"]), str(r["new_tokens"]), str(r["beams"]),
            f"{r['total_s']:.2f}", f"{r['tokens_per_s']:.1f}", f"{r['ttft_ms']:.0f}", f"{r['per_token_ms']:.1f}"]


def print_generation_bench(result: dict, console=None) -> None:
    _print_table(result, _GEN_COLUMNS, _gen_cells, generation_summary(result), console)


def generation_markdown(result: dict) -> str:
    return _markdown_table(result, _GEN_COLUMNS, _gen_cells, generation_summary(result))
