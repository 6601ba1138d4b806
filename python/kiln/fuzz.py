"""kiln's fuzzer: randomized hostile calls through every entry point a user reaches, each in a
worker process, so a crash is counted (with the seed that reproduces it) instead of ending the run.

    python -m kiln.fuzz --calls 5000 --seed 0 --engines build/fuzz-py/engines --json build/fuzz-py/report.json
    python -m kiln.fuzz --replay 1234 --engines build/fuzz-py/engines      # one call, in this process

Entry points: `Engine.run` (shapes, dtypes, values, names, layouts), `Generator.generate`
(prompts and options), the task pipelines (texts, image and WAV bytes, arrays) and `kiln run`
(argv), on a tiny engine of every family and every C++ backend usable here. Every call's input
is derived from its own seed alone. Outcomes:

    correct   returned (the input was valid, or kiln made sense of it)
    named     refused with a kiln error (a KilnError subclass; argparse's usage exit for argv)
    unnamed   any other exception: a bug (every failure must be a named kiln error)
    crash     the worker process died (a signal, an abort): a bug
    hang      no answer within the timeout: a bug

The engines come from kiln.testing (tiny transformers checkpoints, built once into --engines).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import resource
import select
import struct
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OUTCOMES = ("correct", "named", "unnamed", "crash", "hang")
KINDS = ("engine", "generate", "pipeline", "cli")
WORKER_MEMORY = 12 << 30  # bytes of address space a worker may map: runaway allocations fail, not the machine


@dataclass
class Call:
    seed: int
    kind: str
    engine: str  # a directory under the engines root
    backend: str

    def to_json(self) -> dict:
        return self.__dict__.copy()


@dataclass
class Report:
    calls: int = 0
    counts: dict[str, Counter] = field(default_factory=lambda: {k: Counter() for k in KINDS})
    failures: list[dict] = field(default_factory=list)  # unnamed, crash, hang: with the seed
    seconds: float = 0.0

    def add(self, call: Call, outcome: str, detail: str = "") -> None:
        self.calls += 1
        self.counts[call.kind][outcome] += 1
        if outcome in ("unnamed", "crash", "hang"):
            self.failures.append({**call.to_json(), "outcome": outcome, "detail": detail[-2000:]})

    def totals(self) -> dict[str, int]:
        total: Counter = Counter()
        for c in self.counts.values():
            total.update(c)
        return {o: total[o] for o in OUTCOMES}

    @property
    def passed(self) -> bool:
        t = self.totals()
        return t["unnamed"] == t["crash"] == t["hang"] == 0

    def to_json(self) -> dict:
        return {
            "pass": self.passed,
            "calls": self.calls,
            "seconds": round(self.seconds, 1),
            "totals": self.totals(),
            "by_kind": {k: {o: c[o] for o in OUTCOMES} for k, c in self.counts.items()},
            "failures": self.failures,
        }


# --- hostile inputs, each from its call's seed ------------------------------------------------------


def _pick(rng: np.random.Generator, items: list | tuple) -> Any:
    """One of `items` (which may mix types, unlike rng.choice's array)."""
    return items[int(rng.integers(0, len(items)))]


def _feed_for(manifest: Any, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A valid feed at random sizes inside the manifest's ranges (the deployable's own example)."""
    from . import registry

    d = registry.get(manifest.family, manifest.task)
    graph = d.graph(manifest.graph)
    config = d.config_class.from_dict(manifest.config)
    sizes: dict[str, int] = {}
    for name, r in manifest.dims.items():
        if not r.sum:
            hi = min(r.max, max(r.opt, r.min) * 2, 64 if name not in ("samples",) else r.min + 4000)
            sizes[name] = int(rng.integers(r.min, max(r.min, hi) + 1))
            sizes[name] = max(r.min, sizes[name] // r.multiple * r.multiple)  # a dim of multiples (GLPN's H, W)
    for name, r in manifest.dims.items():
        if r.sum:
            total = sum(sizes[t] for t in r.sum)
            if total > r.max:  # keep past + new inside total's range
                sizes[r.sum[0]] = max(0, r.max - sum(sizes[t] for t in r.sum[1:]))
            sizes[name] = sum(sizes[t] for t in r.sum)
    return graph.make_example(config, sizes, int(rng.integers(1 << 31)))


def _mutate_feed(feed: dict[str, Any], manifest: Any, rng: np.random.Generator) -> tuple[dict[str, Any], str]:
    """Zero to three hostile changes to a valid feed; returns (feed, what was done)."""
    feed = dict(feed)
    done = []
    for _ in range(int(rng.integers(0, 4))):
        if not feed:
            break
        name = str(rng.choice(sorted(feed)))
        x = feed[name]
        op = int(rng.integers(0, 17))
        if op == 0 and isinstance(x, np.ndarray) and x.size and x.dtype.kind in "iub":  # a value out of range
            x = x.copy()
            idx = tuple(int(rng.integers(0, s)) for s in x.shape)
            x[idx] = _pick(rng, [-1, -(2**62), 2**31, 2**62, 10**6, 2]) if x.dtype.kind == "i" else 1
        elif op == 1 and isinstance(x, np.ndarray) and x.dtype != object:  # another dtype
            x = x.astype(_pick(rng, ["float64", "float32", "float16", "int32", "int16", "uint8", "bool", "int64"]))
        elif op == 2 and isinstance(x, np.ndarray):  # another rank
            x = x[None] if rng.random() < 0.5 or x.ndim == 0 else x.reshape(-1)
        elif op == 3 and isinstance(x, np.ndarray) and x.ndim:  # a dim outside its range
            axis = int(rng.integers(0, x.ndim))
            size = int(_pick(rng, [0, 1, 3, 4097, 2**12]))
            shape = list(x.shape)
            shape[axis] = size
            x = np.resize(x, shape) if np.prod(shape) < 2**24 else np.zeros((1,) * x.ndim, x.dtype)
        elif op == 4:  # a missing input
            del feed[name]
            done.append(f"drop {name}")
            continue
        elif op == 5:  # an extra or misnamed input
            feed[name + ("s" if rng.random() < 0.5 else "_")] = x
            if rng.random() < 0.5:
                del feed[name]
            done.append(f"rename {name}")
            continue
        elif op == 6 and isinstance(x, np.ndarray) and x.dtype.kind == "f" and x.size:  # NaN / Inf
            x = x.copy()
            x.flat[int(rng.integers(0, x.size))] = _pick(rng, [np.nan, np.inf, -np.inf, 1e38])
        elif op == 7 and isinstance(x, np.ndarray) and x.ndim >= 2:  # a non-contiguous view
            x = np.asfortranarray(x) if rng.random() < 0.5 else x.swapaxes(0, 1).copy().swapaxes(0, 1)
        elif op == 8 and isinstance(x, np.ndarray):  # read-only
            x = x.copy()
            x.flags.writeable = False
        elif op == 9:  # not an array at all
            x = _pick(rng, [None, "text", 3, 2.5, [1, 2, 3], {"a": 1}, b"bytes"])
        elif op == 10 and isinstance(x, np.ndarray) and x.ndim and x.shape[0] > 1:  # batch disagrees
            x = x[:-1]
        elif op == 11 and isinstance(x, np.ndarray):  # a big-endian array
            x = x.astype(x.dtype.newbyteorder(">"))
        elif op == 12 and isinstance(x, np.ndarray) and x.ndim:  # a total that is not past + new
            x = np.concatenate([x, x[..., :1]], axis=-1) if x.shape[-1] else x
        elif op == 13 and isinstance(x, np.ndarray) and x.dtype.kind in "biuf" and x.dtype.isnative:  # as torch
            import torch

            x = torch.from_numpy(np.ascontiguousarray(x))
        elif op == 14 and isinstance(x, np.ndarray):  # a 0-d array
            x = np.asarray(x.reshape(-1)[0] if x.size else 0, x.dtype)
        elif op == 15 and isinstance(x, np.ndarray) and x.size:  # an object array
            x = x.astype(object)
        else:  # unchanged this round
            continue
        feed[name] = x
        done.append(f"op{op} {name}")
    return feed, ", ".join(done) or "valid"


_TEXTS = [
    "",
    "   ",
    "hello",
    "a [MASK] word",
    "\udcff broken surrogate",
    "é" * 3000,
    "word " * 600,
    "🙂" * 50,
    "\x00\x01\x02",
    "Angela Merkel met Emmanuel Macron in Berlin.",
    "\n\t\r",
]


def _hostile_text(rng: np.random.Generator) -> Any:
    r = rng.random()
    if r < 0.7:
        return str(rng.choice(_TEXTS))
    return _pick(rng, [None, 3, 2.5, b"bytes", ["nested"], {"a": 1}])


def _hostile_image(rng: np.random.Generator, tmp: Path) -> Any:
    from PIL import Image

    r = int(rng.integers(0, 9))
    if r == 0:
        return rng.integers(0, 256, (int(rng.integers(1, 40)), int(rng.integers(1, 40)), 3), dtype=np.uint8)
    if r == 1:
        return np.zeros((0, 5, 3), np.uint8)
    if r == 2:
        return rng.random((8, 8, 3))  # float64: wrong dtype
    if r == 3:
        return bytes(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(buf, format="PNG")
    png = buf.getvalue()
    if r == 4:
        return png[: int(rng.integers(8, len(png)))]  # truncated
    if r == 5:  # a header declaring a huge image (a decompression bomb's shape)
        head = bytearray(png)
        struct.pack_into(">II", head, 16, 100_000, 100_000)
        return bytes(head)
    if r == 6:
        return str(tmp / "missing.png")
    if r == 7:
        return str(tmp)  # a directory
    return png


def _wav(rate: int, bits: int, frames: int, channels: int = 1, tag: int = 1) -> bytes:
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * max(align, 1)) & 0xFFFFFFFF, align, bits)
    body = bytes(frames * max(align, 1))
    return (
        b"RIFF"
        + struct.pack("<I", (36 + len(body)) & 0xFFFFFFFF)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"data"
        + struct.pack("<I", len(body))
        + body
    )


def _hostile_audio(rng: np.random.Generator, tmp: Path) -> Any:
    r = int(rng.integers(0, 8))
    if r == 0:
        return rng.standard_normal(int(rng.integers(0, 20000))).astype(np.float32)
    if r == 1:
        x = rng.standard_normal(16000).astype(np.float32)
        x[int(rng.integers(0, 16000))] = np.nan
        return x
    if r == 2:
        return rng.standard_normal((2, 8000)).astype(np.float64)
    path = tmp / f"a{int(rng.integers(1 << 30))}.wav"
    if r == 3:
        path.write_bytes(
            _wav(
                int(_pick(rng, [0, 1, 8000, 16000, 4294967295, 999999])),
                int(_pick(rng, [0, 8, 12, 16, 24, 32])),
                int(rng.integers(0, 20000)),
            )
        )
    elif r == 4:
        path.write_bytes(_wav(16000, 16, 16000)[: int(rng.integers(0, 60))])
    elif r == 5:
        path.write_bytes(bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8)))
    elif r == 6:
        path.write_bytes(_wav(8000, 16, 8000 * 40))  # 40 s: longer than any engine takes
    else:
        path.write_bytes(_wav(16000, 16, int(rng.integers(100, 20000)), channels=int(rng.integers(1, 4))))
    return str(path)


def _generation_options(rng: np.random.Generator) -> dict[str, Any]:
    choices: dict[str, list] = {
        "max_new_tokens": [0, 1, 5, -3, 2**40, 2**63 - 1, 1.5, None],
        "min_new_tokens": [0, 3, -1, 2**62],
        "num_beams": [1, 2, 4, 0, -1, 2**62, 100],
        "num_return_sequences": [1, 2, 5, 0, 2**62],
        "do_sample": [True, False],
        "temperature": [1.0, 0.0, -1.0, float("nan"), float("inf"), 1e-30],
        "top_k": [0, 1, 50, -1, 2**62],
        "top_p": [1.0, 0.5, 0.0, 1.5, float("nan")],
        "seed": [0, 1, 2**64 - 1, -1],
        "repetition_penalty": [1.0, 1.3, 0.0, -2.0, float("nan")],
        "no_repeat_ngram_size": [0, 2, -1, 2**62],
        "length_penalty": [1.0, 2.0, float("inf")],
        "early_stopping": [True, False, "never", "sometimes"],
        "eos_token_id": [[], [0], [2**62], -5],
    }
    keys = rng.choice(sorted(choices), size=int(rng.integers(0, 5)), replace=False)
    out = {str(k): choices[str(k)][int(rng.integers(0, len(choices[str(k)])))] for k in keys}
    if rng.random() < 0.05:
        out["bogus_option"] = 1
    return out


def _hostile_prompts(rng: np.random.Generator, vocab: int) -> Any:
    r = int(rng.integers(0, 10))
    if r < 5:
        return [rng.integers(0, vocab, int(rng.integers(1, 20))).tolist() for _ in range(int(rng.integers(1, 4)))]
    return [
        [[]],
        [[vocab]],
        [[-1, 5]],
        [[2**63, 1]],
        [[1.5, 2]],
        [[True, 3]],
        [list(range(5000))],
        [[1, 2]] * 500,
        "a string",
        [],
    ][r - 5 + int(rng.integers(0, 5))]


# --- one call ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _stdin(replacement: Any) -> Any:
    saved = sys.stdin
    sys.stdin = replacement
    try:
        yield
    finally:
        sys.stdin = saved


class Worker:
    """Runs calls in this process, keeping engines open between calls."""

    def __init__(self, root: Path, tmp: Path):
        self.root = root
        self.tmp = tmp
        self.cache: dict[tuple[str, str, str], Any] = {}

    def _get(self, what: str, engine: str, backend: str) -> Any:
        key = (what, engine, backend)
        if key not in self.cache:
            from .pipelines import pipeline
            from .runtime import Engine, Generator

            path = self.root / engine
            self.cache[key] = {
                "engine": lambda: Engine(path, backend=backend),
                "generator": lambda: Generator(path, backend=backend),
                "pipeline": lambda: pipeline(path, backend=backend),
            }[what]()
        return self.cache[key]

    def run(self, call: Call) -> tuple[str, str]:
        """(outcome, detail) of one call."""
        from .errors import KilnError

        rng = np.random.default_rng(call.seed)
        try:
            stdin = io.StringIO("\n".join(_pick(rng, _TEXTS) for _ in range(int(rng.integers(0, 3)))))
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()) as err,
                _stdin(stdin),
            ):  # `kiln run` reads inputs from a piped stdin: hostile text, not the worker's calls
                detail = self._call(call, rng)
            if detail.startswith("exit "):  # a CLI exit code: argparse's and kiln's usage/failure codes
                code = int(detail.split()[1])
                if code == 0:
                    return "correct", detail
                if "Traceback" in err.getvalue():
                    return "unnamed", err.getvalue()
                return "named", detail
            return "correct", detail
        except KilnError as e:
            return "named", f"{type(e).__name__}: {e}"[:300]
        except Exception as e:  # anything else is a bug: a failure must be a named kiln error
            return "unnamed", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"

    def _call(self, call: Call, rng: np.random.Generator) -> str:
        from . import registry
        from .manifest import GenerationManifest, read_manifest

        path = self.root / call.engine
        manifest = read_manifest(path)
        if call.kind == "engine":
            if isinstance(manifest, GenerationManifest):
                graph = manifest.graph(str(rng.choice(sorted(manifest.graphs))))
            else:
                graph = manifest
            engine = self._get("engine", str(graph.dir.relative_to(self.root)), call.backend)
            feed, what = _mutate_feed(_feed_for(graph, rng), graph, rng)
            engine.run(feed)
            return what
        if call.kind == "generate":
            assert isinstance(manifest, GenerationManifest)
            gen = self._get("generator", call.engine, call.backend)
            prompts = _hostile_prompts(rng, manifest.vocab_size)
            options = _generation_options(rng)
            on_tokens = None
            if rng.random() < 0.2:
                answer = _pick(rng, [True, False, None, 1, "yes"])
                on_tokens = lambda tokens: answer  # noqa: E731
            gen.generate(prompts, on_tokens=on_tokens, **options)
            return "generated"
        if call.kind == "pipeline":
            pipe = self._get("pipeline", call.engine, call.backend)
            if manifest.task == "question-answering":
                n = int(rng.integers(0, 3))
                pipe(
                    [_hostile_text(rng) for _ in range(n)], [_hostile_text(rng) for _ in range(int(rng.integers(0, 3)))]
                )
            elif registry.get(manifest.family, manifest.task).modality == "image":
                pipe([_hostile_image(rng, self.tmp) for _ in range(int(rng.integers(1, 3)))])
            elif manifest.task in ("automatic-speech-recognition", "audio-classification"):
                pipe([_hostile_audio(rng, self.tmp) for _ in range(int(rng.integers(1, 3)))])
            elif isinstance(manifest, GenerationManifest):
                languages = {
                    k: _pick(rng, ["en_XX", "fr_XX", "xx_YY", "", None, 7, "en_XX\x00"])
                    for k in ("src_lang", "tgt_lang")
                    if rng.random() < 0.2
                }
                pipe(
                    _hostile_text(rng),
                    max_new_tokens=int(rng.integers(1, 6)),
                    **languages,
                    **{k: v for k, v in _generation_options(rng).items() if k != "max_new_tokens"},
                )
            else:
                pipe([_hostile_text(rng) for _ in range(int(rng.integers(1, 4)))])
            return "answered"
        return self._cli(call, rng, path)

    def _cli(self, call: Call, rng: np.random.Generator, path: Path) -> str:
        from .cli import main

        options = [
            ["--top-k", str(_pick(rng, [-1, 0, 1, 3, 10**9]))],
            ["--threads", str(_pick(rng, [-1, 0, 1, 10**6]))],
            ["--backend", str(_pick(rng, ["auto", "aoti", "torchscript", "tensorrt", "bogus", ""]))],
            ["--precision", str(_pick(rng, ["auto", "fp32", "fp16", "int8", ""]))],
            ["--max-new-tokens", str(_pick(rng, [-5, 0, 3, 2**70]))],
            ["--num-beams", str(_pick(rng, [0, 2, -3]))],
            ["--question", str(rng.choice(_TEXTS))],
            ["--json"],
            ["--do-sample", "--seed", str(_pick(rng, [0, -1, 2**65]))],
            ["--temperature", str(_pick(rng, ["nan", "0", "-1", "0.7"]))],
            ["--src-lang", str(_pick(rng, ["en_XX", "de_DE", "xx_YY", ""]))],
            ["--tgt-lang", str(_pick(rng, ["fr_XX", "zz", ""]))],
        ]
        argv: list[str] = []
        for i in rng.choice(len(options), size=int(rng.integers(0, 4)), replace=False):
            argv += options[int(i)]
        verb = str(_pick(rng, ["run", "run", "run", "inspect", "parity", "bench", "check-trt", "build", "nonsense"]))
        target = str(_pick(rng, [str(path), str(path) + "-missing", str(self.tmp)]))
        if verb == "run":
            texts = [str(rng.choice(_TEXTS)) for _ in range(int(rng.integers(0, 3)))]
            args = ["run", target, *texts, *argv]
        elif verb in ("parity", "bench", "check-trt"):
            args = [verb, target + "-missing" if rng.random() < 0.7 else str(self.tmp), *argv[:2]]
        elif verb == "build":
            args = [
                "build",
                str(_pick(rng, ["no-such-recipe", "", str(self.tmp)])),
                "--dims",
                str(_pick(rng, ["sequence=1:2", "batch=9:1:2", "x=1:1:1", "=:", "sequence=2:2:2"])),
            ]
        else:
            args = [verb, *argv]
        try:
            code = main(args)
        except SystemExit as e:  # argparse's own usage errors (exit 2) and --help (exit 0)
            code = int(e.code) if isinstance(e.code, int) else 2
        return f"exit {code} {' '.join(args)[:200]}"


# --- the parent: workers in subprocesses, timeouts, the report ---------------------------------------


def plan(root: Path, calls: int, seed: int, backends: list[str]) -> list[Call]:
    """The calls of a run: kinds and engines spread evenly, each with its own seed."""
    from .manifest import GenerationManifest, read_manifest

    engines = sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file())
    if not engines:
        from .errors import InvalidArgumentError

        raise InvalidArgumentError(f"{root}: no engines to fuzz; build them first (python -m kiln.fuzz --build)")
    generation = {e for e in engines if isinstance(read_manifest(root / e), GenerationManifest)}
    rnd = random.Random(seed)
    out = []
    for i in range(calls):
        kind = KINDS[i % len(KINDS)]
        pool = sorted(generation) if kind == "generate" else engines
        out.append(Call(rnd.getrandbits(48), kind, rnd.choice(pool), rnd.choice(backends)))
    return out


class _Proc:
    """One worker process; at most one call in flight."""

    def __init__(self, root: Path, tmp: Path):
        self.p = subprocess.Popen(
            [sys.executable, "-m", "kiln.fuzz", "--worker", "--engines", str(root), "--tmp", str(tmp)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.p.stdout is not None
        self.out = self.p.stdout
        self.call: Call | None = None
        self.deadline = 0.0

    def send(self, call: Call, timeout: float) -> bool:
        assert self.p.stdin is not None
        self.call, self.deadline = call, time.monotonic() + timeout
        try:
            self.p.stdin.write(json.dumps(call.to_json()) + "\n")
            self.p.stdin.flush()
            return True
        except BrokenPipeError:
            return False

    def answer(self) -> tuple[str, str]:
        """The reply to the call in flight (the worker's stdout is readable)."""
        assert self.p.stdout is not None
        line = self.p.stdout.readline()
        if not line:
            code = self.p.wait()
            return "crash", f"worker died with {'signal ' + str(-code) if code < 0 else 'exit ' + str(code)}"
        reply = json.loads(line)
        return reply["outcome"], reply["detail"]

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def run(
    root: Path,
    calls: int,
    seed: int,
    backends: list[str] | None = None,
    workers: int = 2,
    timeout: float = 120.0,
    progress: Callable[[str], None] = lambda m: None,
) -> Report:
    """`calls` hostile calls over the engines under `root`, in `workers` worker processes."""
    import tempfile

    from .backends import cpp_backends

    usable, why = cpp_backends()
    backends = backends or [b for b in ("torchscript", "aoti") if b in usable]
    if not backends:
        from .errors import BackendUnavailableError

        raise BackendUnavailableError(f"no C++ backend to fuzz: {why or usable}")
    pending = list(reversed(plan(root, calls, seed, backends)))
    report = Report()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kiln-fuzz-") as tmp:
        procs = [_Proc(root, Path(tmp)) for _ in range(workers)]
        try:
            while pending or any(p.call for p in procs):
                for i, p in enumerate(procs):  # every idle worker takes the next call
                    if p.call is None and pending:
                        call = pending.pop()
                        if not p.send(call, timeout):
                            report.add(call, "crash", "worker gone before the call")
                            procs[i] = _Proc(root, Path(tmp))
                busy = [p for p in procs if p.call is not None]
                if not busy:
                    continue
                wait = max(0.0, min(p.deadline for p in busy) - time.monotonic())
                ready, _, _ = select.select([p.out for p in busy], [], [], wait)
                for i, p in enumerate(procs):
                    if p.call is None:
                        continue
                    if p.out in ready:
                        outcome, detail = p.answer()
                    elif time.monotonic() >= p.deadline:
                        outcome, detail = "hang", f"no answer in {timeout:.0f} s"
                        p.kill()
                    else:
                        continue
                    report.add(p.call, outcome, detail)
                    p.call = None
                    if p.p.poll() is not None:  # crashed or killed: a fresh worker
                        procs[i] = _Proc(root, Path(tmp))
                    if report.calls % 100 == 0:
                        progress(f"{report.calls}/{calls} calls: {report.totals()}")
        finally:
            for p in procs:
                p.kill()
    report.seconds = time.perf_counter() - t0
    return report


def _worker_main(root: Path, tmp: Path) -> int:
    """Answers calls from stdin, one JSON line each, until stdin closes."""
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    worker = Worker(root, tmp)
    out = sys.stdout
    for line in sys.stdin:
        call = Call(**json.loads(line))
        outcome, detail = worker.run(call)
        out.write(json.dumps({"outcome": outcome, "detail": detail}) + "\n")
        out.flush()
    return 0


def build_engines(root: Path, progress: Callable[[str], None] = print) -> None:
    """A tiny engine of every registered deployable (kiln.testing) under root."""
    from . import registry
    from .testing import tiny_engine

    for d in registry.deployables().values():
        name = f"{d.family}-{d.task}"
        if (root / "engines" / name / "manifest.json").is_file():
            continue
        progress(f"building {name}")
        tiny_engine(d, root, name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m kiln.fuzz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--engines", type=Path, default=Path("build/fuzz-py/engines"), help="the engines to fuzz")
    p.add_argument("--build", action="store_true", help="first build a tiny engine of every deployable there")
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds one call may take")
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--replay", help="run one call (the JSON a failure prints) in this process")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tmp", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker_main(args.engines, args.tmp)
    if args.build:
        build_engines(args.engines.parent)
    if args.replay:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="kiln-fuzz-") as tmp:
            outcome, detail = Worker(args.engines, Path(tmp)).run(Call(**json.loads(args.replay)))
        print(outcome, detail)
        return 0
    report = run(
        args.engines,
        args.calls,
        args.seed,
        workers=args.workers,
        timeout=args.timeout,
        progress=lambda m: print(m, flush=True),
    )
    data = report.to_json()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    print(json.dumps({k: data[k] for k in ("calls", "seconds", "totals", "by_kind")}, indent=2))
    for f in report.failures[:20]:
        call = json.dumps({k: f[k] for k in ("seed", "kind", "engine", "backend")})
        first = f["detail"].splitlines()[0] if f["detail"] else ""
        print(f"{f['outcome']}: {first}\n  replay: python -m kiln.fuzz --engines {args.engines} --replay '{call}'")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
