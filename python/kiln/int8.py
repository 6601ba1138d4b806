"""`kiln int8 ENGINE`: what an engine's int8 artifacts cost in accuracy and gain in speed, measured
in one run on this machine, through the C++ runtime (and ONNX Runtime where the engine has ONNX).

Sentence embeddings (feature-extraction): every sentence of kiln.samples.SENTENCE_PAIRS embedded
alone in fp32 and int8: the cosine of each int8 embedding with its fp32 one, and the Spearman
correlation of the pairs' similarities (is the ranking kept). Decoders (text-generation): the
top-1 agreement of next-token logits over real text (kiln.samples sentences, teacher-forced: one
decode step per token), and the greedy decoding speed in tokens/s. Speed: fp32 and int8 in
blocks of calls taking turns (as `kiln bench` times), medians, `threads` threads.
The report names the CPU (model, the ISA flags that decide int8 speed) and the load average,
since the machine may be shared.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .bench import _measure_interleaved, machine
from .errors import InvalidArgumentError
from .manifest import GenerationManifest, Manifest, read_manifest


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for v in np.unique(x):  # ties share their mean rank
            tie = x == v
            if tie.sum() > 1:
                r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    return float(np.corrcoef(ra, rb)[0, 1])


def _timed(runs: dict[str, Callable[[dict], Any]], feed: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds of each run on `feed`, timed as `kiln bench` times backends: blocks of
    calls taking turns (alternating single calls would make each call find the caches holding
    the other engine's weights, which penalises the larger fp32 weights)."""
    times = _measure_interleaved(runs, feed, warmup=2, iters=repeats, budget_s=float("inf"))
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def _pairs(manifest: Manifest) -> tuple[list[str], list[tuple[int, int]]]:
    from .samples import SENTENCE_PAIRS

    sentences = [s for pair in SENTENCE_PAIRS for s in pair]
    return sentences, [(2 * i, 2 * i + 1) for i in range(len(SENTENCE_PAIRS))]


def measure_embeddings(manifest: Manifest, backend: str, threads: int, repeats: int) -> dict[str, Any]:
    from .backends import onnxruntime_infer
    from .pipelines import pipeline
    from .runtime import Engine

    pipe = pipeline(manifest.dir, load_engine=False)
    sentences, pairs = _pairs(manifest)
    feeds = [pipe.preprocess([s])[0] for s in sentences]
    runs: dict[str, Callable[[dict], dict]] = {
        f"kiln-{backend}": Engine(manifest.dir, backend=backend, precision="fp32", num_threads=threads).run,
        f"kiln-{backend}-int8": Engine(manifest.dir, backend=backend, precision="int8", num_threads=threads).run,
    }
    onnx32, onnx8 = manifest.artifact("onnx", "fp32"), manifest.artifact("onnx", "int8")
    if onnx32 and onnx8:
        runs["onnxruntime"] = onnxruntime_infer(manifest.artifact_path(onnx32), manifest, threads)
        runs["onnxruntime-int8"] = onnxruntime_infer(manifest.artifact_path(onnx8), manifest, threads)
    out: dict[str, Any] = {"sentences": len(sentences), "pairs": len(pairs), "accuracy": {}, "speed": {}}
    emb = {name: np.concatenate([run(f)["embeddings"] for f in feeds]) for name, run in runs.items()}
    for name in [n for n in runs if n.endswith("-int8")]:
        ref, test = emb[name.removesuffix("-int8")], emb[name]
        cos = (ref * test).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(test, axis=-1))
        sim_ref = np.array([ref[a] @ ref[b] / np.linalg.norm(ref[a]) / np.linalg.norm(ref[b]) for a, b in pairs])
        sim_test = np.array([test[a] @ test[b] / np.linalg.norm(test[a]) / np.linalg.norm(test[b]) for a, b in pairs])
        out["accuracy"][name] = {
            "min_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()),
            "spearman": spearman(sim_ref, sim_test),
            "max_abs": float(np.abs(ref - test).max()),
        }
    d = manifest.dims
    rng = np.random.default_rng(0)
    from . import registry

    graph = registry.get(manifest.family, manifest.task).graph(manifest.graph)
    config = registry.get(manifest.family, manifest.task).config_class.from_dict(manifest.config)
    for batch in (1, 8):
        if not (d["batch"].allows(batch) and d["sequence"].allows(128)):
            continue
        feed = graph.example(config, {"batch": batch, "sequence": 128}, rng)
        ms = _timed(runs, feed, repeats)
        out["speed"][f"{batch}x128"] = {
            "ms": ms,
            "speedup": {n: ms[n.removesuffix("-int8")] / ms[n] for n in runs if n.endswith("-int8")},
        }
    return out


def _teacher_forced(engine: Any, ids: np.ndarray, cache: Any) -> np.ndarray:
    """(n, vocab): the next-token logits after each of the n tokens of `ids` (1, n), fed one at a
    time with the cache the engine returned for the ones before."""
    past = np.zeros((cache.layers, 2, 1, cache.heads, 0, cache.head_dim), np.float32)
    rows = []
    for t in range(ids.shape[1]):
        out = engine.run(
            {
                "input_ids": ids[:, t : t + 1],
                "attention_mask": np.ones((1, t + 1), np.int64),
                "position_ids": np.array([[t]], np.int64),
                "past_key_values": past,
            }
        )
        rows.append(out["logits"][0, -1])
        past = out["present_key_values"]
    return np.stack(rows)


def measure_decoder(manifest: GenerationManifest, backend: str, threads: int, repeats: int) -> dict[str, Any]:
    from .pipelines import pipeline
    from .runtime import Engine, Generator
    from .samples import SENTENCES

    pipe: Any = pipeline(manifest.dir, load_engine=False)  # a TextGenerationPipeline: its BPE tokenizer
    cache = manifest.cache
    decoder = manifest.graph_dir("decoder")
    engines = {p: Engine(decoder, backend=backend, precision=p, num_threads=threads) for p in ("fp32", "int8")}
    gaps: list[np.ndarray] = []
    missed: list[np.ndarray] = []
    for text in SENTENCES:
        ids = np.array([pipe.tokenizer.encode(text)], dtype=np.int64)
        # Teacher-forced, one decode step per position over each precision's own cache: the
        # decoder returns the last new position's logits only, and decode steps are what int8
        # is built to speed up.
        logits = {p: _teacher_forced(e, ids, cache) for p, e in engines.items()}
        agree = logits["fp32"].argmax(-1) == logits["int8"].argmax(-1)
        top2 = np.sort(logits["fp32"], -1)[:, -2:]
        gaps.append(top2[:, 1] - top2[:, 0])  # how decisive fp32's own choice was
        missed.append(~agree)
    gens = {p: Generator(manifest.dir, backend=backend, precision=p, num_threads=threads) for p in ("fp32", "int8")}
    prompt = [pipe.tokenizer.encode(SENTENCES[0])]
    steps = 48
    step_ms: dict[str, list[float]] = {p: [] for p in gens}
    for _ in range(max(repeats // 5, 2)):
        for p, g in gens.items():
            r = g.generate(prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False)
            step_ms[p].append(float(np.median(r.timings["step_ms"])))  # per-step times of this run
    ms = {p: float(np.median(v)) for p, v in step_ms.items()}
    gap, miss = np.concatenate(gaps), np.concatenate(missed)
    return {
        "top1_agreement": float(1 - miss.mean()),
        # random weights give near-flat logits: the misses' fp32 top-1 - top-2 gap beside all gaps
        "fp32_top1_gap_median": {
            "all": float(np.median(gap)),
            "misses": float(np.median(gap[miss])) if miss.any() else None,
        },
        "positions": len(miss),
        "texts": len(SENTENCES),
        "decode": {
            "step_ms": ms,
            "tokens_per_s": {p: 1e3 / v for p, v in ms.items()},
            "speedup": ms["fp32"] / ms["int8"],
            "new_tokens": steps,
        },
    }


def measure(engine_dir: str | Path, backend: str = "aoti", threads: int = 2, repeats: int = 20) -> dict[str, Any]:
    m = read_manifest(engine_dir)
    graphs = [m.graph(g) for g in m.graphs] if isinstance(m, GenerationManifest) else [m]
    if not any(g.artifact(backend, "int8") for g in graphs):
        raise InvalidArgumentError(
            f"{engine_dir}: no int8 {backend} artifact; build it with `kiln build RECIPE --precision int8`"
        )
    report: dict[str, Any] = {"engine": m.name, "backend": backend, "threads": threads, "machine": machine()}
    if isinstance(m, GenerationManifest):
        report["decoder"] = measure_decoder(m, backend, threads, repeats)
    elif m.task == "feature-extraction":
        report["embeddings"] = measure_embeddings(m, backend, threads, repeats)
    else:
        raise InvalidArgumentError(
            f"{engine_dir}: a {m.task} engine; `kiln int8` measures feature-extraction and text-generation engines "
            "(use `kiln parity` for the others)"
        )
    report["load_average_after"] = machine()["load_average"]
    return report
