"""`kiln build`: a recipe and a checkpoint -> engines/<name>/ with manifest and artifacts.

A deployable of one graph becomes an engine directory; a generation deployable becomes a
directory of graph subdirectories (each an engine directory) under a generation manifest. The
directory is written under a temporary name beside its destination and renamed when complete,
so a failed build never leaves a directory that looks valid.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..deploy import Deployable, Graph
from ..errors import InvalidArgumentError, KilnError
from ..manifest import (
    ARTIFACT_FILES,
    AnyManifest,
    Artifact,
    DimRange,
    GenerationManifest,
    Manifest,
    Source,
    sha256_file,
)
from ..paths import resolve_checkpoint
from ..recipe import FORMATS, Recipe
from .layout import (
    LINEAR_KERNELS,
    TIMED_GFLOP,
    TIMED_WEIGHT_MB,
    decode_rows,
    decoder_in_out,
    one_row_linears,
    one_row_reduction,
    pack_rows,
    prepack_linears,
)

ENGINES_DIR = Path("engines")
PROCESSING_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "preprocessor_config.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
)
Progress = Callable[[str], None]


@dataclass
class BuildResult:
    path: Path
    manifest: AnyManifest
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    clamped: dict[str, str] = field(default_factory=dict)  # dim -> what was lowered to the model's limit


def load_recipe_model(recipe: Recipe, checkpoint: str | Path | None = None) -> tuple[Any, Path]:
    """The eager kiln model a recipe describes and its checkpoint dir; `model.random_weights`
    says whether every weight was drawn from the seed."""
    from ..checkpoint import load_model, random_checkpoint

    d = recipe.deployable
    ref: str | Path = checkpoint or recipe.checkpoint
    if checkpoint is None and recipe.path is not None and (recipe.path.parent / recipe.checkpoint).is_dir():
        ref = recipe.path.parent / recipe.checkpoint  # a config committed beside the recipe
    ckpt = resolve_checkpoint(ref)
    random_weights = recipe.random_weights and checkpoint is None
    if random_weights:  # a config-only directory: every weight initialised from the seed
        ckpt = random_checkpoint(d.model, ckpt, seed=recipe.seed)
    overrides = {}
    if recipe.labels and d.labels and checkpoint is None:
        # the recipe's labels name its own random head; a checkpoint given with --checkpoint
        # brings its labels in its config.json (id2label)
        overrides["id2label"] = {str(i): label for i, label in enumerate(recipe.labels)}
    model = load_model(
        d.model,
        ckpt,
        random_head=recipe.random_head,
        seed=recipe.seed,
        config_overrides=overrides,
        **recipe.task_options,
    )
    model.random_weights = random_weights
    model.eval()
    return model, ckpt


class FlatOutputs(torch.nn.Module):
    """One graph of a model: the model method it exports, outputs as a plain tuple.

    export: NamedTuple outputs would need pytree registration for AOTInductor packaging and
    come back as tuples from TorchScript anyway; every artifact gets the same flat signature.
    """

    def __init__(self, model: torch.nn.Module, method: str = "forward"):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = getattr(self.model, self.method)(*args)
        return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def graph_module(graph: Graph, model: torch.nn.Module) -> torch.nn.Module:
    """The module exported for one graph of a deployable."""
    return FlatOutputs(model, graph.method).eval()


def dynamic_shapes(graph: Graph, config: Any, dims: dict[str, DimRange]) -> tuple[tuple[dict[int, Any], ...]]:
    """torch.export dynamic shapes for the graph's symbolic dims, one per positional input (one
    Dim object per name, so inputs sharing a dim are tied together), nested once for
    FlatOutputs.forward(*args). A derived dim (total = past + new) is Dim.AUTO: torch.export
    derives it from the graph instead of checking an independent range. A dim of multiples
    (GLPN's H and W) is `multiple * Dim(min / multiple, max / multiple)`, so the graph may rely
    on it (every stride-2 stage halves it exactly); a dim whose range is one size is static."""

    def dim(name: str, r: DimRange) -> Any:
        if r.sum:
            return torch.export.Dim.AUTO
        if r.multiple > 1:
            return r.multiple * torch.export.Dim(
                f"{name}_{r.multiple}", min=r.min // r.multiple, max=r.max // r.multiple
            )
        return torch.export.Dim(name, min=r.min, max=r.max)

    objs = {name: dim(name, r) for name, r in dims.items() if r.sum or r.min != r.max}
    return (
        tuple(
            {axis: objs[d] for axis, d in enumerate(spec.shape) if isinstance(d, str) and d in objs}
            for spec in graph.input_specs(config)
        ),
    )


def example_sizes(dims: dict[str, DimRange], batch: int = 2) -> dict[str, int]:
    """Export sizes inside the ranges: batch 2 (an example batch of 1 would specialise the dim)
    and every other dim at min(max(min, 16), max), rounded up to its multiple; a derived dim is
    the sum of its terms."""
    sizes = {name: min(-(-max(r.min, 16) // r.multiple) * r.multiple, r.max) for name, r in dims.items() if not r.sum}
    if "batch" in dims:
        sizes["batch"] = min(max(batch, dims["batch"].min), dims["batch"].max)
    for name, r in dims.items():
        if r.sum:
            sizes[name] = sum(sizes[t] for t in r.sum)
    return sizes


def clamp_dims(d: Deployable, dims: dict[str, DimRange], config: Any) -> tuple[dict[str, DimRange], dict[str, str]]:
    """The dims with each max lowered to the model's own limit (positions, ...), and what changed."""
    out, clamped = dict(dims), {}
    for name, limit in d.limits(config).items():
        if name in out and out[name].max > limit:
            clamped[name] = f"{name} max {out[name].max} -> {limit} (the checkpoint's limit)"
            out[name] = out[name].clamp(limit)
    return out, clamped


MKL_CANDIDATE = ".mkl-candidate"  # an encoder's AOTI package on MKL's GEMM, until it is timed


def _mkl_candidate(
    graph: Graph,
    module: torch.nn.Module,
    config: Any,
    dims: dict[str, DimRange],
    export: tuple[tuple[torch.Tensor, ...], tuple],
    package: Path,
    mode: str,
    kernels: dict[str, Any],
    progress: Progress,
) -> dict[str, Any]:
    """An encoder's AOTI package is compiled on oneDNN's prepacked linears at `package`; here the
    same graph on MKL's GEMM goes to MKL_CANDIDATE beside it, for _keep_faster_linears to time
    both (`mode`: kiln build --linear-kernels; layout.prepack_linears' doc). Returns the manifest's
    linear_kernels record, which says why where nothing is timed."""
    from .aoti import export_aoti

    if mode == "fixed":
        return {**kernels, "why": f"{kernels['why']}; not timed against MKL (--linear-kernels fixed)"}
    if mode == "auto":
        why = _too_small_to_time(graph, module, config, dims)
        if why:
            return {**kernels, "why": f"{kernels['why']}; {why}"}
    label = f"{graph.name} " if graph.name != "model" else ""
    progress(f"  {label}aoti: compiling it on MKL's GEMM too, to time both on this CPU")
    args, shapes = export
    (package.parent / MKL_CANDIDATE).mkdir(exist_ok=True)
    export_aoti(module, args, package.parent / MKL_CANDIDATE / package.name, shapes, prepack=False)
    return kernels


def _too_small_to_time(graph: Graph, module: torch.nn.Module, config: Any, dims: dict[str, DimRange]) -> str | None:
    """Why `--linear-kernels auto` leaves this graph untimed (layout.TIMED_WEIGHT_MB, TIMED_GFLOP),
    or None."""
    from ..roofline import Work

    weight_mb = sum(t.numel() * t.element_size() for t in module.parameters()) / 1e6
    if weight_mb < TIMED_WEIGHT_MB:
        return f"not timed against MKL: {weight_mb:.3g} MB of weights, under {TIMED_WEIGHT_MB}"
    example = graph.make_example(config, {name: r.opt for name, r in dims.items()})  # as bench's feeds
    feed = tuple(torch.from_numpy(example[s.name]) for s in graph.input_specs(config))
    # FlopCounterMode's module tracker hooks every module input that requires grad (DETR's query
    # embeddings), which fails without autograd: count over the weights frozen
    trainable = [t for t in module.parameters() if t.requires_grad]
    try:
        for t in trainable:
            t.requires_grad_(False)
        gflop = Work.of(lambda: module(*feed)).flops / 1e9
    except Exception as e:  # the count only decides whether to time: the build goes on without it
        return f"not timed against MKL: its FLOPs could not be counted ({type(e).__name__}: {e})"
    finally:
        for t in trainable:
            t.requires_grad_(True)
    if gflop < TIMED_GFLOP:
        return f"not timed against MKL: {gflop:.3g} GFLOP at the opt dims, under {TIMED_GFLOP}"
    return None


def _keep_faster_linears(manifest: Manifest, out: Path, progress: Progress) -> None:
    """Time the encoder's AOTI package (oneDNN prepacked) against its MKL_CANDIDATE through kiln's
    C++ runtime, at the opt dims, taking turns; keep the faster (MKL only where it is 3 % faster or
    more) and record both times. Timed through the runtime users run: torch's own loader ran the
    prepacked MiniLM package 26-51 % slower than kiln's runtime does (AMD EPYC, Zen 3), and would
    choose MKL where the runtime finds them equal."""
    from ..backends import cpp_backends
    from ..bench import time_engines
    from ..roofline import cpu_model_name

    candidate = out / MKL_CANDIDATE
    art = manifest.artifact("aoti", "fp32")
    if not candidate.is_dir() or art is None:
        return
    try:
        kernels = dict(art.extra["linear_kernels"])
        kept_art = art
        if "aoti" not in cpp_backends()[0]:
            kernels["why"] += "; not timed against MKL: kiln's C++ runtime cannot run aoti here"
        else:
            label = f"{manifest.graph} " if manifest.graph != "model" else ""
            progress(f"timing {label}aoti's linears on this CPU: oneDNN prepacked against MKL's GEMM")
            mkl_art = Artifact.of(candidate, "aoti", art.file, device="cpu", versions=art.versions)
            mkl = copy.copy(manifest)
            mkl.artifacts = [mkl_art]
            mkl.write(candidate)
            pair = {"onednn_prepacked": (out, "aoti"), "mkl": (candidate, "aoti")}
            ms, shape = time_engines(pair, manifest, budget_s=2.0, iters=20)
            prepacked = not ms["mkl"] < 0.97 * ms["onednn_prepacked"]
            if not prepacked:
                (candidate / art.file).replace(out / art.file)
                kept_art = mkl_art  # its sha256 and size, taken once
            cpu = cpu_model_name()
            times = f"oneDNN prepacked {ms['onednn_prepacked']:.2f} ms, MKL {ms['mkl']:.2f} ms"
            at = " x ".join(f"{n} {v}" for n, v in shape.items())
            kept = "oneDNN prepacked" if prepacked else "MKL's GEMM"
            progress(f"  {label}aoti linears -> {kept} ({times} at {at}, {cpu})")
            why = f"{kept}: the faster on {cpu} at the opt dims, through kiln's runtime ({times}; MKL if 3 % faster)"
            kernels = {"prepacked": prepacked, "why": why, "measured_ms": ms, "cpu": cpu, "shape": shape}
        extra = {**art.extra, "linear_kernels": kernels}
        manifest.artifacts[manifest.artifacts.index(art)] = replace(kept_art, extra=extra)
        manifest.write(out)
    finally:
        shutil.rmtree(candidate, ignore_errors=True)


def _export_graph(
    graph: Graph,
    module: torch.nn.Module,
    config: Any,
    dims: dict[str, DimRange],
    out: Path,
    formats: list[str],
    precisions: list[str],
    version_compatible: bool,
    previous: Path | None,
    progress: Progress,
    linear_kernels: str = "auto",
) -> tuple[list[Artifact], dict[str, str], dict[str, float]]:
    """Every requested format of one graph into `out`: (artifacts, skipped, seconds)."""
    example = graph.make_example(config, example_sizes(dims))
    input_specs = graph.input_specs(config)
    args = tuple(torch.from_numpy(example[s.name]) for s in input_specs)
    input_names = [s.name for s in input_specs]
    output_names = [s.name for s in graph.output_specs(config)]
    shapes = dynamic_shapes(graph, config, dims)
    graph_dims = {n: r for n, r in dims.items() if n in set(graph.used_dims(config))}  # a decoder's has "past"
    label = f"{graph.name} " if graph.name != "model" else ""
    artifacts: list[Artifact] = []
    skipped: dict[str, str] = {}
    seconds: dict[str, float] = {}
    versions = {"torch": torch.__version__}
    out.mkdir(parents=True, exist_ok=True)
    for fmt in [f for f in FORMATS if f in formats]:
        progress(f"exporting {label}{fmt} ({ARTIFACT_FILES.get(fmt, 'model.<gpu>.<precision>.plan')})")
        t = time.perf_counter()
        file = ARTIFACT_FILES.get(fmt, "")
        if fmt == "torchscript":
            from .torchscript import export_torchscript

            with decoder_in_out(module, graph_dims) as (cpu_module, layout):
                export_torchscript(cpu_module, args, out / file)
            artifacts.append(Artifact.of(out, fmt, file, device="cpu", versions=versions, **layout))
        elif fmt == "onnx":
            import onnx

            from .onnx import OPSET, export_onnx

            export_onnx(module, args, out / file, input_names, output_names, shapes)
            extra: dict[str, Any] = {}
            data = out / f"{file}.data"
            if data.is_file():  # weights over 1.5 GiB: beside the graph (protobuf's 2 GB limit)
                extra["external_data"] = {"file": data.name, "bytes": data.stat().st_size, "sha256": sha256_file(data)}
            artifacts.append(
                Artifact.of(out, fmt, file, opset=OPSET, versions={**versions, "onnx": onnx.__version__}, **extra)
            )
        elif fmt == "aoti":
            from .aoti import export_aoti

            prepack, reason = prepack_linears(graph_dims)
            rows = pack_rows(graph_dims) if prepack else None
            reduce = one_row_reduction(graph_dims)
            linears = one_row_linears(module) if reduce else decoder_in_out(module, graph_dims)
            with linears as (cpu_module, layout):
                export_aoti(cpu_module, args, out / file, shapes, prepack=prepack, pack_rows=rows)
                kernels: dict[str, Any] = {"prepacked": prepack, "why": reason}
                if rows is not None:
                    kernels["packed_for_rows"] = rows
                if reduce:
                    kernels["one_row_reduction"] = True
                if prepack and decode_rows(graph_dims) is None:  # an encoder: MKL or oneDNN, by its time here
                    kernels = _mkl_candidate(
                        graph, cpu_module, config, dims, (args, shapes), out / file, linear_kernels, kernels, progress
                    )
            artifacts.append(
                Artifact.of(out, fmt, file, device="cpu", versions=versions, **layout, linear_kernels=kernels)
            )
        elif fmt == "tensorrt":
            from .tensorrt import build_tensorrt

            used = set(graph.used_dims(config))
            plans, why = build_tensorrt(
                out,
                ARTIFACT_FILES["onnx"],
                list(input_specs),
                {n: r for n, r in dims.items() if n in used},
                [p for p in precisions if p != "int8"] or ["fp32"],  # int8 is a CPU precision
                version_compatible,
                previous,
                progress,
            )
            if why:
                skipped[fmt] = why
                progress(f"  tensorrt: skipped: {why}")
                continue
            artifacts += plans
            seconds[fmt] = time.perf_counter() - t
            continue
        seconds[fmt] = time.perf_counter() - t
        progress(f"  {label}{fmt}: {seconds[fmt]:.1f} s, {(out / file).stat().st_size / 1e6:.1f} MB")
    return artifacts, skipped, seconds


INT8_FILES = {"aoti": "model.int8.pt2", "onnx": "model.int8.onnx"}


def _check_int8(d: Deployable, formats: list[str]) -> None:
    """int8 is built where it is measured: every graph has an int8 tolerance table, and a format
    with int8 artifacts (aoti, onnx) is asked for."""
    unmeasured = [g.name for g in d.graphs if "int8" not in g.tolerances]
    if unmeasured:
        raise InvalidArgumentError(
            f"--precision int8: {d.name} has no measured int8 tolerance table (graph {', '.join(unmeasured)}), so "
            "its int8 artifacts could not be checked; int8 is built for the deployables whose tolerances carry an "
            "int8 entry: "
            + ", ".join(sorted(x.name for x in _registry_all() if all("int8" in g.tolerances for g in x.graphs)))
        )
    if not set(formats) & set(INT8_FILES):
        raise InvalidArgumentError(
            f"--precision int8 with --formats {formats}: int8 artifacts are aoti and onnx; add one of them"
        )


def _registry_all() -> list[Deployable]:
    from .. import registry

    return list(registry.deployables().values())


def _export_int8(
    graph: Graph,
    module: torch.nn.Module,
    manifest: Manifest,
    config: Any,
    dims: dict[str, DimRange],
    out: Path,
    formats: list[str],
    progress: Progress,
) -> list[Artifact]:
    """The int8 artifacts of one graph beside its fp32 ones (see exporters/quantize.py): the
    layers kept fp32 measured on the parity feeds, then AOTInductor (torchao) and ONNX (ONNX
    Runtime) files, each recorded with its quantisation recipe."""
    from ..parity import parity_feeds
    from . import quantize as Q

    example = graph.make_example(config, example_sizes(dims))
    input_names = [s.name for s in graph.input_specs(config)]
    args = tuple(torch.from_numpy(example[n]) for n in input_names)
    shapes = dynamic_shapes(graph, config, dims)
    linear = Q.as_linears(module)
    feeds = parity_feeds(manifest)
    sensitivity, excluded, cos = Q.choose_exclusions(linear, feeds, input_names, progress)
    layers = Q.linear_layers(linear)
    worst = sorted(sensitivity, key=lambda n: sensitivity[n], reverse=True)
    recipe: dict[str, Any] = {
        "scheme": Q.AOTI_SCHEME,
        "how": Q.SCHEMES[Q.AOTI_SCHEME],
        "layers": len(layers),
        "quantized": len(layers) - len(excluded),
        "excluded": {n: round(sensitivity[n], 6) for n in excluded},
        "selection": (
            f"each linear layer quantised alone on {len(feeds)} parity feeds (sensitivity = 1 - worst output "
            f"cosine with fp32); the most sensitive kept fp32 until the worst cosine >= {Q.TARGET_COSINE} or "
            f"{Q.MAX_EXCLUDED_SHARE:.1%} of the layers are fp32"
        ),
        "most_sensitive": {n: round(sensitivity[n], 6) for n in worst[:5]},
        "measured_cosine": round(cos, 6),
    }
    progress(f"  int8: {recipe['quantized']}/{len(layers)} layers int8, fp32: {excluded or 'none'}, cosine {cos:.5f}")
    versions = {"torch": torch.__version__}
    artifacts = []
    if "aoti" in formats:
        import torchao

        from .aoti import export_aoti

        t = time.perf_counter()
        file = INT8_FILES["aoti"]
        export_aoti(Q.quantized(linear, exclude=excluded), args, out / file, shapes)
        artifacts.append(
            Artifact.of(
                out,
                "aoti",
                file,
                precision="int8",
                device="cpu",
                versions={**versions, "torchao": torchao.__version__},
                quantization=recipe,
            )
        )
        progress(f"  aoti int8: {time.perf_counter() - t:.1f} s, {(out / file).stat().st_size / 1e6:.1f} MB")
        slow = Q.slow_int8_cpu()
        if slow:
            progress(f"  note: {slow}")
    if "onnx" in formats and (out / ARTIFACT_FILES["onnx"]).is_file() and not (out / "model.onnx.data").exists():
        import onnx
        import onnxruntime

        from .onnx import OPSET

        t = time.perf_counter()
        file = INT8_FILES["onnx"]
        info = Q.quantize_onnx(out / ARTIFACT_FILES["onnx"], out / file, excluded)
        onnx_recipe = {
            "scheme": "onnxruntime-dynamic",
            "how": Q.SCHEMES["onnxruntime-dynamic"],
            "layers": info["matmuls"],
            "quantized": info["quantized"],
            "excluded": info["excluded"],
            "selection": recipe["selection"] + " (measured on the torchao scheme; the same layers excluded here)",
        }
        artifacts.append(
            Artifact.of(
                out,
                "onnx",
                file,
                precision="int8",
                opset=OPSET,
                versions={**versions, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
                quantization=onnx_recipe,
            )
        )
        progress(f"  onnx int8: {time.perf_counter() - t:.1f} s, {(out / file).stat().st_size / 1e6:.1f} MB")
    return artifacts


def _check_processor_dims(recipe: Recipe, ckpt: Path, dims: dict[str, DimRange]) -> None:
    """An engine must take what its own pre-processing makes: where the checkpoint's
    preprocessor_config.json fixes dims (a SegFormer's image size), the engine's dims are those."""
    from ..recipe import processor_dims

    fixed = processor_dims(recipe.deployable, ckpt) or {}
    wrong = {n: r for n, r in fixed.items() if n in dims and (dims[n].min, dims[n].max) != (r.min, r.max)}
    if wrong:
        have = ", ".join(f"{n} {dims[n].min}..{dims[n].max}" for n in wrong)
        want = " ".join(f"{n}={r.min}:{r.opt}:{r.max}" for n, r in wrong.items())
        raise InvalidArgumentError(
            f"{recipe.name}: the checkpoint's preprocessor_config.json makes images of {want.replace(' ', ', ')} but "
            f"the engine's dims are {have}; build with --dims {want}"
        )


def _copy_processing(d: Deployable, recipe: Recipe, ckpt: Path, out: Path, model: Any) -> dict:
    """Tokenizer / preprocessor files from the checkpoint; a SentencePiece model it ships alone
    (T5, mBART) converted into tokenizer.json; where it has no tokenizer, the recipe's `tokenizer`
    (or, for random weights, the family's vocabulary): a directory made by `make setup` in
    $KILN_CACHE/tokenizers, or a fetched checkpoint's ($KILN_CACHE/checkpoints)."""
    from ..processing.sentencepiece import SENTENCEPIECE_FILES, convert_sentencepiece, sentencepiece_file

    processing: dict[str, Any] = {}
    sources = [ckpt]
    written: list[str] = []
    has_tokenizer = any((ckpt / f).is_file() for f in ("tokenizer.json", "vocab.json", "vocab.txt"))
    if not has_tokenizer and sentencepiece_file(ckpt) is not None:
        written = convert_sentencepiece(ckpt, out)
        has_tokenizer = True
    named = recipe.tokenizer or (d.generation.tokenizer if d.generation and model.random_weights else None)
    if not has_tokenizer and d.generation is not None and not named:
        raise InvalidArgumentError(
            f"{ckpt}: no tokenizer; expected tokenizer.json, vocab.json + merges.txt, or a SentencePiece model "
            f"({', '.join(SENTENCEPIECE_FILES)}) beside the weights, or a `tokenizer` in the recipe"
        )
    if named and not has_tokenizer:
        from ..paths import cache_dir

        found = next(
            (
                c / named
                for c in (cache_dir() / "tokenizers", cache_dir() / "checkpoints")
                if (c / named / "tokenizer.json").is_file()
            ),
            None,
        )
        if found is None:
            raise InvalidArgumentError(
                f"{recipe.name}: the checkpoint has no tokenizer and {named!r} is neither in "
                f"{cache_dir() / 'tokenizers'} nor in {cache_dir() / 'checkpoints'}; run `make setup` to fetch it"
            )
        sources.append(found)  # the checkpoint brings no vocabulary of its own
    for name in PROCESSING_FILES:
        src = next((s / name for s in sources if (s / name).is_file()), None)
        if src is not None and name not in written:
            shutil.copy2(src, out / name)
        if src is not None or name in written:
            processing.setdefault("files", []).append(name)
    files = processing.get("files", [])
    if "tokenizer.json" in files or "vocab.txt" in files:
        processing["tokenizer"] = "tokenizer.json" if "tokenizer.json" in files else "vocab.txt"
    if d.generation is not None:
        from ..processing.languages import language_info

        prefix = d.generation.task_settings(model.config, d.task).get("prefix")
        if prefix:
            processing["prefix"] = str(prefix)
        languages = language_info(out)  # mBART's language codes, where the tokenizer has them
        if languages:
            processing["languages"] = languages
    return processing


def _generation_settings(d: Deployable, recipe: Recipe, config: Any, ckpt: Path, processing: dict) -> dict:
    """The generation defaults: the config's special tokens, what it says for the task (T5's
    task_specific_params), the checkpoint's generation_config.json, then the recipe's [generation] table."""
    assert d.generation is not None
    settings = dict(d.generation.defaults(config))
    settings.update({k: v for k, v in d.generation.task_settings(config, d.task).items() if k != "prefix"})
    file = ckpt / "generation_config.json"
    if file.is_file():
        settings.update(
            {
                k: v
                for k, v in json.loads(file.read_text()).items()
                if not k.startswith("_") and k != "transformers_version"
            }
        )
    settings.update(recipe.generation)
    languages = processing.get("languages")
    if languages and languages["target"] and languages["position"] == "prefix":
        # mBART-50: the tokenizer's target language is forced first, unless a setting says otherwise
        if settings.get("forced_bos_token_id") is None:
            settings["forced_bos_token_id"] = languages["codes"][languages["target"]]
    return settings


def _check_precisions(formats: list[str], precisions: list[str]) -> None:
    from ..gpu import PRECISIONS

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InvalidArgumentError(f"--formats {unknown}: expected some of {list(FORMATS)}")
    known = [*PRECISIONS, "int8"]  # fp16 / bf16: TensorRT plans; int8: CPU artifacts beside the fp32 ones
    bad = [p for p in precisions if p not in known]
    if bad:
        raise InvalidArgumentError(f"--precision {bad}: expected some of {known}")


def build(
    recipe: Recipe,
    *,
    checkpoint: str | Path | None = None,
    output: str | Path | None = None,
    formats: list[str] | None = None,
    precisions: list[str] | None = None,
    version_compatible: bool = False,
    linear_kernels: str = "auto",
    progress: Progress = lambda msg: None,
) -> BuildResult:
    """Export the recipe's deployable to every format into engines/<name>/ (or `output`).
    `linear_kernels`: how an encoder's AOTI linears are chosen (layout.LINEAR_KERNELS)."""
    from ..checkpoint import checkpoint_hash

    formats = list(formats or recipe.formats)
    precisions = list(precisions or ["fp32"])
    if linear_kernels not in LINEAR_KERNELS:
        choices = ", ".join(LINEAR_KERNELS)
        raise InvalidArgumentError(f"linear_kernels {linear_kernels!r}: expected one of {choices} (--linear-kernels)")
    _check_precisions(formats, precisions)
    if "tensorrt" in formats and "onnx" not in formats:
        formats.append("onnx")  # TensorRT engines are built from the ONNX graph
    d = recipe.deployable
    if "int8" in precisions:
        _check_int8(d, formats)
    output = Path(output) if output else ENGINES_DIR / recipe.name
    t0 = time.perf_counter()
    progress(f"loading {d.name} from {checkpoint or recipe.checkpoint}")
    model, ckpt = load_recipe_model(recipe, checkpoint)
    config = model.config
    dims, clamped = clamp_dims(d, recipe.dims, config)
    for line in clamped.values():
        progress(f"dims: {line}")
    _check_processor_dims(recipe, ckpt, dims)
    random_keys = sorted(getattr(model, "random_keys", []))
    seconds = {"load": time.perf_counter() - t0}
    common: dict[str, Any] = dict(
        name=recipe.name,
        family=d.family,
        task=d.task,
        config=config.to_dict(),
        description=recipe.description,
        task_options=dict(recipe.task_options),
        weights="random" if model.random_weights else "random-head" if random_keys else "real",
        random_keys=random_keys,
        source=Source(
            str(ckpt.resolve()),
            checkpoint_hash(ckpt),
            str(recipe.path) if recipe.path else None,
            recipe.random_head,
            recipe.seed,
        ),
        kiln_version=__version__,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )

    output.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(output)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        skipped: dict[str, str] = {}
        generation = d.generation is not None
        # first: a checkpoint without a usable tokenizer fails before minutes of export
        shared_processing = _copy_processing(d, recipe, ckpt, tmp, model)
        manifest: AnyManifest
        for g in d.graphs:
            out = tmp / g.name if generation else tmp
            previous = (output / g.name if generation else output) if output.exists() else None
            artifacts, why, secs = _export_graph(
                g,
                graph_module(g, model),
                config,
                dims,
                out,
                formats,
                precisions,
                version_compatible,
                previous,
                progress,
                linear_kernels,
            )
            skipped.update(why)
            seconds.update({f"{g.name}:{fmt}" if generation else fmt: s for fmt, s in secs.items()})
            outputs = list(g.output_specs(config))
            processing = {} if generation else dict(shared_processing)
            if "sequence" in dims and not generation:
                processing["max_length"] = dims["sequence"].max
            used = g.used_dims(config)
            manifest = Manifest(
                **{**common, "name": f"{recipe.name}/{g.name}" if generation else recipe.name},
                dims={n: dims[n] for n in used if n in dims},
                processing=processing,
                inputs=list(g.input_specs(config)),
                outputs=outputs,
                artifacts=artifacts,
                labels=[config.id2label[i] for i in range(len(config.id2label))] if d.labels else None,
                tolerances=recipe.graph_tolerances(g.tolerances, [s.name for s in outputs]),
                graph=g.name,
            )
            manifest.write(out)
            if "int8" in precisions:
                manifest.path = out  # the parity feeds come through the engine's own pre-processing
                t = time.perf_counter()
                manifest.artifacts += _export_int8(
                    g, graph_module(g, model), manifest, config, dims, out, formats, progress
                )
                seconds[f"{g.name}:int8" if generation else "int8"] = time.perf_counter() - t
                manifest.write(out)
            _keep_faster_linears(manifest, out, progress)
            _record_backend_choice(manifest, out, progress)
        if d.generation is not None:
            gen = d.generation
            manifest = GenerationManifest(
                **common,
                dims=dims,
                processing=shared_processing,
                graphs={g.name: g.name for g in d.graphs},
                cache=gen.cache(config),
                vocab_size=gen.vocab_size(config),
                max_positions=gen.max_positions(config),
                encoder_decoder=gen.encoder_decoder,
                generation=_generation_settings(d, recipe, config, ckpt, shared_processing),
            )
            manifest.write(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; an engine dir is meant to be shared
        _replace_dir(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest.path = output
    seconds["total"] = time.perf_counter() - t0
    return BuildResult(output, manifest, seconds, skipped, clamped)


def _record_backend_choice(manifest: Manifest, out: Path, progress: Progress) -> None:
    """Measure the C++ runtime's CPU backends on this machine and record the fastest in the
    manifest (the runtime's "auto" follows it on a CPU of this model; elsewhere it keeps its
    fixed order). An engine the runtime cannot open here keeps no record."""
    from ..bench import choose_backend

    if not (manifest.artifact("aoti") and manifest.artifact("torchscript")):
        return
    label = f"{manifest.graph} " if manifest.graph != "model" else ""
    progress(f"timing {label}aoti and torchscript on this CPU (the backend 'auto' runs)")
    choice = choose_backend(out)
    if choice is None:
        return
    times = ", ".join(f"{b} {ms:.2f} ms" for b, ms in choice["measured_ms"].items())
    progress(f"  {label}auto -> {choice['backend']} on {choice['cpu']} ({times})")
    manifest.backend_choice = choice
    manifest.write(out)


def _sweep_leftovers(output: Path) -> None:
    """Remove what an interrupted build of the same engine left beside it: temporary build
    directories, and an old build set aside during a rename (restored when the engine is missing)."""
    for tmp in output.parent.glob(f".{output.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    olds = sorted(output.parent.glob(f".{output.name}.old-*"))
    if olds and not output.exists():
        olds.pop().rename(output)  # killed between the two renames: the old engine is still valid
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def _replace_dir(src: Path, dest: Path) -> None:
    """Move a complete build into place; an older build at dest is removed only afterwards."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{int(time.time() * 1000)}")
        dest.rename(old)
    try:
        src.rename(dest)
    except OSError as e:
        if old is not None:
            old.rename(dest)
        raise KilnError(f"could not move the finished build to {dest}: {e}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
