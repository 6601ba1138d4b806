"""`kiln bench-serve`: the engine behind a real Triton server, under load, against Engine.run in-process.

For each client count: that many client threads (each its own gRPC or HTTP client, loopback only)
send the same request (batch x length, as `kiln bench` makes it) back to back for `seconds`;
latency percentiles, requests/s, rows/s, errors, and the mean batch the server ran (rows per
model execution, from Triton's metrics). Then, right after each load (the server idle),
Engine.run in this process on a batch of that size (same backend, same threads): the server's rows/s over
in-process rows/s is what serving costs.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ..manifest import read_graph_manifest
from .repository import RepoOptions, write_repository
from .server import TritonServer

GOAL = 0.8  # server throughput at the most clients >= 0.8 x in-process batched Engine.run


def _client(protocol: str, url: str, feed: dict[str, np.ndarray], outputs: list[str]) -> Callable[[str], Any]:
    """A function sending one request (its own client: tritonclient.http may not be shared by threads)."""
    from ..serving.config import TRITON_DTYPES

    if protocol == "grpc":
        import tritonclient.grpc as tc
    elif protocol == "http":
        import tritonclient.http as tc  # type: ignore[no-redef]
    else:
        raise InvalidArgumentError(f"--protocol {protocol!r}: expected grpc or http")
    client = tc.InferenceServerClient(url)
    inputs = []
    for name, arr in feed.items():
        x = tc.InferInput(name, list(arr.shape), TRITON_DTYPES[str(arr.dtype)].removeprefix("TYPE_"))
        x.set_data_from_numpy(arr)
        inputs.append(x)
    wanted = [tc.InferRequestedOutput(n) for n in outputs]

    def send(model: str) -> Any:
        return client.infer(model, inputs, outputs=wanted)

    return send


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan")}
    ms = np.asarray(latencies) * 1e3
    return {f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 90, 99)}


def _load_level(
    server: TritonServer, model: str, protocol: str, clients: int, seconds: float, feed: dict, outputs: list[str]
) -> dict:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    senders = [_client(protocol, url, feed, outputs) for _ in range(clients)]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def work(i: int) -> None:
        send = senders[i]
        start.wait()
        while time.perf_counter() < deadline[0]:
            t = time.perf_counter()
            try:
                send(model)
                latencies[i].append(time.perf_counter() - t)
            except Exception as e:  # counted, and the first few shown
                errors[i].append(str(e))

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    before = server.metrics().get(model, {})
    t0 = time.perf_counter()
    deadline[0] = t0 + seconds
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    after = server.metrics().get(model, {})
    rows = int(next(iter(feed.values())).shape[0])
    done = sum(len(x) for x in latencies)
    executions = after.get("nv_inference_exec_count", 0) - before.get("nv_inference_exec_count", 0)
    inferences = after.get("nv_inference_count", 0) - before.get("nv_inference_count", 0)
    all_errors = [e for x in errors for e in x]
    return {
        "clients": clients,
        "requests": done,
        "errors": len(all_errors),
        "error_examples": sorted(set(all_errors))[:3],
        **_percentiles([t for x in latencies for t in x]),
        "requests_per_s": done / elapsed,
        "rows_per_s": done * rows / elapsed,
        "executions": int(executions),
        "mean_batch": inferences / executions if executions else float("nan"),
        "seconds": elapsed,
    }


class InProcess:
    """Engine.run in this process on batches of the request's rows (the same backend and threads)."""

    def __init__(self, engine_dir: str | Path, backend: str, threads: int, feed: dict):
        from ..runtime import Engine

        self.engine = Engine(engine_dir, backend=backend, num_threads=threads)
        self.feed = feed

    def measure(self, batch: int, seconds: float) -> dict:
        rows = next(iter(self.feed.values())).shape[0]
        reps = -(-batch // rows)
        batched = {k: np.ascontiguousarray(np.concatenate([v] * reps)[:batch]) for k, v in self.feed.items()}
        for _ in range(2):
            self.engine.run(batched)
        times: list[float] = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds or len(times) < 3:
            t = time.perf_counter()
            self.engine.run(batched)
            times.append(time.perf_counter() - t)
        return {
            "batch": batch,
            "runs": len(times),
            "rows_per_s": len(times) * batch / sum(times),
            **_percentiles(times),
        }


def run_bench_serve(
    engine_dir: str | Path,
    clients: list[int],
    seconds: float = 20.0,
    batch: int = 1,
    seq: int | None = None,
    protocol: str = "grpc",
    options: RepoOptions | None = None,
    progress: Callable[[str], None] = lambda m: None,
) -> dict:
    from ..bench import _check_shape, _feed, _length_dim, machine

    manifest = read_graph_manifest(engine_dir)
    _check_shape(manifest, batch, seq)
    length = _length_dim(manifest)
    seq = seq if seq is not None else (manifest.dims[length].opt if length else None)
    feed = _feed(manifest, batch, seq)
    opts = dataclasses.replace(options or RepoOptions(), kinds=("engine",))
    load_before = os.getloadavg()[0]
    if any(c < 1 for c in clients):
        raise InvalidArgumentError(f"--clients {clients}: expected counts >= 1")
    with tempfile.TemporaryDirectory(prefix="kiln-bench-serve-") as tmp:
        written = write_repository([engine_dir], Path(tmp) / "models", opts)
        model = written[0]
        backend = next(line.split()[1].rstrip(",") for line in model.notes if line.startswith("backend"))
        progress(f"starting Triton with {model.name} ({backend})")
        levels = []
        with TritonServer(Path(tmp) / "models", models=[model.name]) as server:
            check = _client(protocol, server.grpc_url if protocol == "grpc" else server.http_url, feed, [])
            for _ in range(3):  # warm-up: first runs allocate
                check(model.name)
            baseline = InProcess(engine_dir, backend, opts.num_threads, feed)
            for c in clients:
                progress(f"{c} clients for {seconds:g} s")
                level = _load_level(server, model.name, protocol, c, seconds, feed, manifest.output_names)
                # right after the load, with the server idle: the same machine state for both
                b = max(1, round(level["mean_batch"])) if level["executions"] else batch
                b = min(b, manifest.dims["batch"].max)
                progress(f"Engine.run in-process, batch {b}")
                level["in_process"] = baseline.measure(b, max(3.0, seconds / 4))
                level["ratio"] = level["rows_per_s"] / level["in_process"]["rows_per_s"]
                levels.append(level)
    return {
        "engine": str(engine_dir),
        "model": model.name,
        "backend": backend,
        "protocol": protocol,
        "batch": batch,
        "seq": seq,
        "seconds": seconds,
        "instances": opts.instances,
        "threads": opts.num_threads,
        "max_queue_delay_us": opts.max_queue_delay_us,
        "machine": machine(),
        # other work on the machine skews both sides: the 1-minute load average before and after
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "levels": levels,
    }


COLUMNS = (
    "clients",
    "requests",
    "errors",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "req/s",
    "mean batch",
    "in-process rows/s (batch)",
    "server / in-process",
)


def _cells(level: dict) -> list[str]:
    base = level["in_process"]
    return [
        str(level["clients"]),
        str(level["requests"]),
        str(level["errors"]),
        f"{level['p50_ms']:.1f}",
        f"{level['p90_ms']:.1f}",
        f"{level['p99_ms']:.1f}",
        f"{level['requests_per_s']:.1f}",
        f"{level['mean_batch']:.2f}",
        f"{base['rows_per_s']:.1f} ({base['batch']})",
        f"{level['ratio']:.2f}",
    ]


def summary(result: dict) -> list[str]:
    last = result["levels"][-1]
    errors = sum(level["errors"] for level in result["levels"])
    met = last["ratio"] >= GOAL and errors == 0
    return [
        f"{last['clients']} clients: the server's throughput is {last['ratio']:.2f} x Engine.run in-process on a batch "
        f"of {last['in_process']['batch']} (goal >= {GOAL}: {'met' if met else 'NOT met'}); errors {errors}"
    ]


def markdown(result: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(level)) + " |" for level in result["levels"]]
    return "\n".join(lines)


def print_result(result: dict, console: Any) -> None:
    from rich.table import Table

    m = result["machine"]
    table = Table(
        title=f"{result['model']} on Triton ({result['backend']}, {result['protocol']}, batch {result['batch']} x "
        f"{result['seq']}) · {m.get('cpu', '?')}, {m.get('cores', '?')} cores, load average "
        f"{result['load_average'][0]} before, {result['load_average'][1]} after"
    )
    for col in COLUMNS:
        table.add_column(col)
    for level in result["levels"]:
        table.add_row(*_cells(level))
    console.print(table)
    for level in result["levels"]:
        for e in level["error_examples"]:
            console.print(f"[red]error ({level['clients']} clients):[/] {e}")
    for line in summary(result):
        console.print(line)
