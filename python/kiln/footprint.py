"""Cold start and peak memory of an engine, each measured in a fresh process (`kiln bench`).

    python -m kiln.footprint ENGINE_DIR BACKEND THREADS BATCH SEQ PRECISION   -> one JSON line

A Python `Engine`: the process imports kiln and makes its inputs, then reads its resident
memory (the base: interpreter, libtorch, kiln), opens the engine, runs it once (the cold start:
open to first result), runs it again, and reports its peak resident memory. `kiln-run`, the
C++ program: its peak resident memory over open + one run, beside the peak of `kiln-run --help`
(the binary and its libraries, no engine: its base), and the open and first-run times it prints.
Both are compared with the bytes of the weights (each distinct parameter or buffer once).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def python_engine(
    engine_dir: str, backend: str, threads: int, batch: int, seq: int | None, precision: str = "auto"
) -> dict:
    """In this process (call it in a fresh one): base, cold start, peak of a Python Engine."""
    from .bench import _feed
    from .manifest import read_graph_manifest
    from .runtime import Engine

    feed = _feed(read_graph_manifest(engine_dir), batch, seq)
    base = _status_mb("VmRSS")
    t = time.perf_counter()
    engine = Engine(engine_dir, backend=backend, num_threads=threads, precision=precision)
    opened = time.perf_counter()
    engine.run(feed)
    first = time.perf_counter()
    engine.run(feed)
    return {
        "base_MB": base,
        "peak_MB": max(_status_mb("VmHWM"), base),
        "open_s": opened - t,
        "first_run_s": first - opened,
        "cold_start_s": first - t,
    }


def _peak_of(cmd: list[str]) -> tuple[float, str]:
    """Peak resident MB of a child process, run by a small wrapper: getrusage's maximum over
    children is the largest child's, and Linux carries ru_maxrss across fork + exec, so the
    child must be forked from a small process (the wrapper), not from the bench."""
    code = (
        "import resource, subprocess, sys, json\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, p.returncode,"
        " p.stdout + p.stderr]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
    peak, rc, text = json.loads(out.stdout)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}): {text[-500:]}")
    return float(peak), text


def kiln_run(
    binary: str, engine_dir: str, backend: str, threads: int, batch: int, seq: int | None, precision: str = "auto"
) -> dict:
    """kiln-run's base, peak and cold start (open + the first run, as it prints them)."""
    base, _ = _peak_of([binary, "--help"])
    args = [binary, engine_dir, "--backend", backend, "--threads", str(threads), "--iters", "1", "--warmup", "0"]
    args += ["--batch", str(batch), "--precision", precision] + (["--seq", str(seq)] if seq else [])
    peak, text = _peak_of(args)
    opened = re.search(r"opened in ([0-9.]+) ms", text)
    run = re.search(r"p50 ([0-9.]+) ms", text)
    open_s = float(opened.group(1)) / 1e3 if opened else float("nan")
    run_s = float(run.group(1)) / 1e3 if run else float("nan")
    return {"base_MB": base, "peak_MB": peak, "open_s": open_s, "first_run_s": run_s, "cold_start_s": open_s + run_s}


def measure(engine_dir: str, backend: str, threads: int, batch: int, seq: int | None, precision: str = "auto") -> dict:
    """Both, each in a fresh process: {"python": {...}, "kiln-run": {...}} (an entry that failed
    carries "error")."""
    out: dict[str, dict] = {}
    cmd = [sys.executable, "-m", "kiln.footprint", engine_dir, backend, str(threads), str(batch), str(seq or 0)]
    cmd.append(precision)
    p = subprocess.run(cmd, capture_output=True, text=True)
    try:
        out["python"] = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        out["python"] = {"error": (p.stderr or p.stdout)[-500:]}
    binary = Path(sys.executable).parent / "kiln-run"  # installed beside the interpreter by make setup
    if not binary.is_file():
        out["kiln-run"] = {"error": "kiln-run is not built (make cpp)"}
    else:
        try:
            out["kiln-run"] = kiln_run(str(binary), engine_dir, backend, threads, batch, seq, precision)
        except (RuntimeError, subprocess.CalledProcessError) as e:
            out["kiln-run"] = {"error": str(e)[-500:]}
    return out


def weight_bytes(module) -> int:
    """The bytes of a module's weights: each distinct parameter or buffer storage once (tied
    embeddings count once)."""
    seen: dict[int, int] = {}
    for t in [*module.parameters(), *module.buffers()]:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


if __name__ == "__main__":
    engine, backend, threads, batch, seq, precision = sys.argv[1:7]
    # VmHWM, not getrusage: Linux keeps ru_maxrss across fork + exec, so a child of a large
    # process (the bench) would report its parent's peak
    print(json.dumps(python_engine(engine, backend, int(threads), int(batch), int(seq) or None, precision)))
