"""The serving verbs of the `kiln` command: triton-repo, serve, bench-serve (kiln.cli adds them)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import InvalidArgumentError


def _options(args: argparse.Namespace):
    from .repository import RepoOptions

    for flag, value, low in (("--instances", args.instances, 1), ("--threads", args.threads, 0)):
        if value < low:
            raise InvalidArgumentError(f"{flag} {value}: expected >= {low}")
    if args.max_queue_delay_us < 0:
        raise InvalidArgumentError(f"--max-queue-delay-us {args.max_queue_delay_us}: expected >= 0")
    return RepoOptions(
        backend=args.backend,
        precision=args.precision,
        num_threads=args.threads,
        instances=args.instances,
        batching=args.batching,
        max_queue_delay_us=args.max_queue_delay_us,
    )


def _model_flags(s: argparse.ArgumentParser) -> None:
    g = s.add_argument_group("the Python-backend models (kiln's runtime inside Triton)")
    g.add_argument(
        "--backend",
        default="auto",
        help="kiln backend the models run: auto (the best usable on this machine: tensorrt, aoti, torchscript), "
        "or one of them (tensorrt: for a GPU server; its instances are KIND_GPU)",
    )
    g.add_argument("--precision", default="auto", help="which TensorRT plan: auto, fp32, fp16, bf16")
    g.add_argument("--threads", type=int, default=0, help="intra-op threads per model instance (0: leave as is)")
    g.add_argument("--instances", type=int, default=1, help="instances (processes) of each engine model (default 1)")
    g.add_argument(
        "--batching",
        default="auto",
        choices=("auto", "exact", "pad"),
        help="requests of different lengths in one execution: exact (one Engine.run per shape; each "
        "request's outputs bit for bit its own Engine.run's), pad (padded into one Engine.run, outputs sliced "
        "back; fewer runs, last-bit differences), auto (pad for TensorRT, else exact)",
    )
    g.add_argument(
        "--max-queue-delay-us",
        type=int,
        default=2000,
        help="how long Triton's dynamic batcher waits to fill a batch (default 2000 µs)",
    )


def cmd_triton_repo(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from ..term import make_console
    from .config import schema_available
    from .repository import ALL_KINDS, write_repository

    options = _options(args)
    kinds = tuple(k for part in args.models for k in part.split(",")) if args.models else ALL_KINDS
    options.kinds = kinds
    options.copy_engines = args.copy_engines
    options.onnx_tensorrt = args.onnx_tensorrt
    written = write_repository(args.engines, args.output, options)
    console = make_console()
    checked = "checked against Triton's schema" if schema_available() else "NOT schema-checked (no tritonclient)"
    console.print(f"[green]wrote[/] {len(written)} models into {escape(str(args.output))} (configs {checked}):")
    for w in written:
        where = "runs here (python backend)" if w.runs_here else "NVIDIA's Triton container"
        notes = f" — {escape('; '.join(w.notes))}" if w.notes else ""
        console.print(f"  {escape(w.name):<44} {w.kind:<9} {where}{notes}")
    if args.json:
        data = [{"name": w.name, "kind": w.kind, "path": str(w.path), "runs_here": w.runs_here} for w in written]
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    if not 1 <= args.port <= 65533:
        raise InvalidArgumentError(f"--port {args.port}: expected 1..65533 (gRPC takes port + 1, metrics port + 2)")
    options = _options(args)
    return serve(args.engines, host=args.host, port=args.port, options=options, say=lambda m: print(m, flush=True))


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from ..term import make_console
    from .load import markdown, print_result, run_bench_serve

    try:
        clients = [int(c) for c in args.clients.split(",")]
    except ValueError:
        raise InvalidArgumentError(
            f"--clients {args.clients!r}: expected comma-separated counts, e.g. 1,8,32"
        ) from None
    if args.seconds <= 0:
        raise InvalidArgumentError(f"--seconds {args.seconds}: expected > 0")
    console = make_console()
    with console.status("bench-serve") as status:

        def progress(message: str) -> None:
            status.update(f"bench-serve: {message}")
            console.log(message)

        result = run_bench_serve(
            args.engine,
            clients,
            seconds=args.seconds,
            batch=args.batch,
            seq=args.seq,
            protocol=args.protocol,
            options=_options(args),
            progress=progress,
        )
    print_result(result, console)
    if args.markdown:
        print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.json}")
    return 0 if all(level["errors"] == 0 for level in result["levels"]) else 1


def add_parsers(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "triton-repo",
        help="engine directories -> a Triton model repository",
        description="Write a Triton Inference Server model repository: per engine, <name> (Python backend: "
        "kiln's C++ runtime, tensors in and out, dynamic and ragged batching), <name>-text (text, image or "
        "WAV bytes in, the task's answer as JSON out), and for NVIDIA's Triton container <name>-onnx "
        "(onnxruntime), <name>-ts (pytorch_libtorch) and <name>-trt-sm<cc>-<precision> (one per TensorRT "
        "plan). A generation engine (GPT-2, BART) becomes one decoupled model streaming a response per "
        "token. Every config.pbtxt is checked against Triton's schema.",
    )
    s.add_argument("engines", nargs="+", metavar="ENGINE_DIR", help="engine directories (engines/<name>)")
    s.add_argument("--output", "-o", required=True, help="the repository directory to write")
    s.add_argument(
        "--models",
        nargs="+",
        help="which models, comma-separated: engine,text,generate (Python backend) and onnx,ts,trt (NVIDIA's "
        "container); default all",
    )
    s.add_argument(
        "--copy-engines",
        action="store_true",
        help="copy (hard-link) each engine into the repository (<name>/engine): a self-contained repository "
        "to mount in a container or upload for KServe",
    )
    s.add_argument(
        "--onnx-tensorrt",
        choices=("fp32", "fp16"),
        help="<name>-onnx: run through ONNX Runtime's TensorRT execution provider at this precision",
    )
    s.add_argument("--json", help="write the list of models as JSON to this file")
    _model_flags(s)
    s.set_defaults(fn=cmd_triton_repo)

    s = sub.add_parser(
        "serve",
        help="serve engines with the bundled Triton server (127.0.0.1)",
        description="Write the engines' Python-backend models into a temporary repository and run the Triton "
        "Inference Server bundled in nvidia-pytriton on it: HTTP on --port, gRPC on port + 1, metrics on port "
        "+ 2 (KServe V2 / Open Inference Protocol). Ctrl-C stops it.",
    )
    s.add_argument("engines", nargs="+", metavar="ENGINE_DIR", help="engine directories")
    s.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000; gRPC 8001, metrics 8002)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    _model_flags(s)
    s.set_defaults(fn=cmd_serve)

    s = sub.add_parser(
        "bench-serve",
        help="the engine on a real Triton server under concurrent load, against Engine.run in-process",
        description="Start the bundled Triton server with the engine, send it the same request from N client "
        "threads for --seconds per client count (loopback only), and report latency percentiles, requests/s, "
        "the mean batch the server ran and errors, beside Engine.run in-process on a batch of that size.",
    )
    s.add_argument("engine", help="engine directory")
    s.add_argument("--clients", default="1,8,32", help="comma-separated concurrent clients (default 1,8,32)")
    s.add_argument("--seconds", type=float, default=20.0, help="seconds of load per client count (default 20)")
    s.add_argument("--batch", type=int, default=1, help="rows per request (default 1)")
    s.add_argument("--seq", type=int, help="tokens (text) or samples (audio) per row (default: the engine's opt)")
    s.add_argument("--protocol", default="grpc", choices=("grpc", "http"), help="client protocol (default grpc)")
    s.add_argument("--json", help="write the results as JSON to this file")
    s.add_argument("--markdown", action="store_true", help="also print a Markdown table (for the README)")
    _model_flags(s)
    s.set_defaults(fn=cmd_bench_serve)
