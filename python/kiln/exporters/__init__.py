"""`kiln build`: a recipe and a checkpoint -> engines/<name>/ with manifest and artifacts.

The directory is written under a temporary name beside its destination and renamed when
complete, so a failed build never leaves a directory that looks valid.
"""
from __future__ import annotations

import datetime as _dt
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import __version__
from ..errors import InvalidArgumentError, KilnError
from ..paths import resolve_checkpoint
from ..recipe import FORMATS, Recipe
from .manifest import ARTIFACT_FILES, FORMAT_VERSION, artifact_entry, write_manifest

ENGINES_DIR = Path("engines")
PROCESSING_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "vocab.txt", "preprocessor_config.json", "vocab.json", "merges.txt",
                    "generation_config.json")


@dataclass
class BuildResult:
    path: Path
    manifest: dict
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def load_recipe_model(recipe: Recipe, checkpoint: str | Path | None = None):
    """The eager kiln model a recipe describes, its checkpoint dir and which weights are random."""
    from ..checkpoint import load_model

    entry = recipe.entry
    ref = checkpoint or recipe.checkpoint
    if checkpoint is None and recipe.path is not None and (recipe.path.parent / recipe.checkpoint).is_dir():
        ref = recipe.path.parent / recipe.checkpoint  # a config committed beside the recipe
    ckpt = resolve_checkpoint(ref)
    random_weights = bool(getattr(recipe, "random_weights", False)) and checkpoint is None
    if random_weights:  # a config-only directory: every weight initialised from the seed
        from ..checkpoint import random_checkpoint
        ckpt = random_checkpoint(entry.model_cls(), ckpt, seed=recipe.seed)
    overrides = {}
    if recipe.labels and entry.has_labels and checkpoint is None:
        # the recipe's labels name its own random head; a checkpoint given with --checkpoint
        # brings its labels in its config.json (id2label)
        overrides["id2label"] = {str(i): label for i, label in enumerate(recipe.labels)}
    model = load_model(entry.model_cls(), ckpt, random_head=recipe.random_head, seed=recipe.seed,
                       config_overrides=overrides, **recipe.task_options)
    model.random_weights = random_weights
    model.eval()
    return model, ckpt


class FlatOutputs(torch.nn.Module):
    """The model with its outputs as a plain tuple, in the registry's output order.

    export: NamedTuple outputs would need pytree registration for AOTInductor packaging and
    come back as tuples from TorchScript anyway; every artifact gets the same flat signature.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(*args)
        return (out,) if isinstance(out, torch.Tensor) else tuple(out)


def dynamic_shapes(recipe: Recipe, config=None, entry=None) -> tuple[dict, ...]:
    """torch.export dynamic shapes for the recipe's symbolic dims, one per positional input in
    registry order (one Dim object per name, so inputs sharing a dim are tied together),
    nested once for FlatOutputs.forward(*args). `entry`: a graph of the recipe's entry."""
    entry = entry or recipe.entry
    dims = {name: torch.export.Dim.AUTO if name in entry.derived_dims else torch.export.Dim(name, min=r.min, max=r.max)
            for name, r in recipe.dims.items()}
    return (tuple({axis: dims[d] for axis, d in enumerate(spec.shape) if isinstance(d, str)}
                  for spec in entry.input_specs(config)),)


def example_inputs(recipe: Recipe, config, batch: int = 2, seed: int = 0, entry=None) -> dict[str, torch.Tensor]:
    """Valid random inputs inside the recipe's ranges, for tracing and export: batch 2 and
    every other dim at min(max(min, 16), max) (torch.export specialises example dims of 1)."""
    sizes = {name: min(max(r.min, 16), r.max) for name, r in recipe.dims.items()}
    if "batch" in sizes:
        sizes["batch"] = min(max(batch, recipe.dims["batch"].min), recipe.dims["batch"].max)
    feed = (entry or recipe.entry).make_example(config.to_dict(), sizes, seed)
    return {name: torch.from_numpy(value) for name, value in feed.items()}


def graph_module(entry, model: torch.nn.Module) -> torch.nn.Module:
    """The module exported for one registry entry: the model itself, or its graph wrapper."""
    return FlatOutputs(entry.wrapper_cls()(model) if entry.wrapper else model).eval()


def _check_dims_against_model(recipe: Recipe, config) -> None:
    for name, limit in recipe.entry.dim_limits(config).items():
        if recipe.dims[name].max > limit:
            raise InvalidArgumentError(
                f"recipe {recipe.name}: dim {name!r} max {recipe.dims[name].max} exceeds the "
                f"model's limit {limit}; lower [dims] {name}.max in {recipe.path}")


def _export_graph(entry, module: torch.nn.Module, recipe: Recipe, config, out: Path, formats: list[str],
                  precisions: list[str], version_compatible: bool, previous: Path | None,
                  progress: Callable[[str], None]) -> tuple[list[dict], dict[str, str], dict[str, float]]:
    """Every requested format of one graph into `out`: (artifact entries, skipped, seconds)."""
    example = example_inputs(recipe, config, entry=entry)
    input_specs = entry.input_specs(config)
    args = tuple(example[s.name] for s in input_specs)
    input_names = [s.name for s in input_specs]
    output_names = [s.name for s in entry.outputs(config)]
    shapes = dynamic_shapes(recipe, config, entry)
    label = f"{entry.graph} " if entry.graph else ""
    artifacts: list[dict] = []
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
            export_torchscript(module, args, out / file)
            artifacts.append(artifact_entry(out, fmt, file, precision="fp32", device="cpu", versions=versions))
        elif fmt == "onnx":
            import onnx

            from .onnx import OPSET, export_onnx
            export_onnx(module, args, out / file, input_names, output_names, shapes)
            artifacts.append(artifact_entry(out, fmt, file, precision="fp32", opset=OPSET,
                                            versions={**versions, "onnx": onnx.__version__}))
        elif fmt == "aoti":
            from .aoti import export_aoti
            export_aoti(module, args, out / file, shapes)
            artifacts.append(artifact_entry(out, fmt, file, precision="fp32", device="cpu", versions=versions))
        elif fmt == "tensorrt":
            from .tensorrt import build_tensorrt
            used = {d for spec in input_specs for d in spec.shape if isinstance(d, str)}
            dims = {n: r.to_json() for n, r in recipe.dims.items() if n in used}
            plans, why = build_tensorrt(out, ARTIFACT_FILES["onnx"], [s.to_json() for s in input_specs], dims,
                                        precisions, version_compatible, previous, progress)
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


def _copy_processing(recipe: Recipe, ckpt: Path, out: Path) -> dict:
    """Tokenizer / preprocessor files from the checkpoint (else the recipe's named BPE vocabulary)."""
    processing: dict = {}
    sources = [ckpt]
    if recipe.tokenizer:
        from ..paths import cache_dir
        named = cache_dir() / "tokenizers" / recipe.tokenizer
        if not (named / "tokenizer.json").is_file():
            raise InvalidArgumentError(f"recipe {recipe.name}: tokenizer {recipe.tokenizer!r} is not in "
                                       f"{named.parent}; run `make setup` to fetch it")
        if not any((ckpt / f).is_file() for f in ("tokenizer.json", "vocab.json")):
            sources.append(named)  # the checkpoint brings no vocabulary of its own
    for name in PROCESSING_FILES:
        src = next((d / name for d in sources if (d / name).is_file()), None)
        if src is not None:
            shutil.copy2(src, out / name)
            processing.setdefault("files", []).append(name)
    if "tokenizer.json" in processing.get("files", []) or "vocab.txt" in processing.get("files", []):
        processing["tokenizer"] = "tokenizer.json" if (out / "tokenizer.json").is_file() else "vocab.txt"
    return processing


def _generation_config(recipe: Recipe, model, ckpt: Path) -> dict:
    """The generation defaults: the config's special tokens, the checkpoint's
    generation_config.json, then the recipe's [generation] table."""
    import json

    info = recipe.entry.generation(model.config)
    settings = dict(info["generation"])
    file = ckpt / "generation_config.json"
    if file.is_file():
        settings.update({k: v for k, v in json.loads(file.read_text()).items()
                         if not k.startswith("_") and k != "transformers_version"})
    settings.update(recipe.generation)
    return settings


def build(recipe: Recipe, *, checkpoint: str | Path | None = None, output: str | Path | None = None,
          formats: list[str] | None = None, precisions: list[str] | None = None,
          version_compatible: bool = False,
          progress: Callable[[str], None] = lambda msg: None) -> BuildResult:
    """Export the recipe's model to every format into engines/<name>/.

    A generation deployable (entry.graphs) gets one subdirectory per graph (decoder, and
    encoder for BART), each an ordinary engine directory, and a top-level manifest of kind
    "generation" with the cache layout, the generation defaults and the tokenizer."""
    from ..checkpoint import checkpoint_hash

    formats = list(formats or recipe.formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InvalidArgumentError(f"--formats {unknown}: expected some of {list(FORMATS)}")
    precisions = list(precisions or ["fp32"])
    from .tensorrt import PRECISIONS
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise InvalidArgumentError(f"--precision {bad}: expected some of {list(PRECISIONS)}")
    if "tensorrt" in formats and "onnx" not in formats:
        formats.append("onnx")  # TensorRT engines are built from the ONNX graph
    entry = recipe.entry
    output = Path(output) if output else ENGINES_DIR / recipe.name
    t0 = time.perf_counter()
    progress(f"loading {entry.family}/{entry.task} from {checkpoint or recipe.checkpoint}")
    model, ckpt = load_recipe_model(recipe, checkpoint)
    config = model.config
    _check_dims_against_model(recipe, config)
    random_keys = sorted(getattr(model, "random_keys", []))
    seconds = {"load": time.perf_counter() - t0}

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        common = {
            "format_version": FORMAT_VERSION,
            "name": recipe.name,
            "description": recipe.description,
            "family": entry.family,
            "task": entry.task,
            "config": config.to_dict(),
            "task_options": dict(recipe.task_options),
            "weights": ("random" if getattr(model, "random_weights", False)
                        else "random-head" if random_keys else "real"),
            "random_keys": random_keys,
            # what parity needs to rebuild the eager reference: the same checkpoint and seeded head
            "source": {"checkpoint": str(ckpt.resolve()), "sha256": checkpoint_hash(ckpt),
                       "recipe": str(recipe.path) if recipe.path else None,
                       "random_head": recipe.random_head, "seed": recipe.seed},
            "kiln_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        skipped: dict[str, str] = {}
        graphs = entry.graphs or (entry,)
        for g in graphs:
            out = tmp / g.graph if g.graph else tmp
            previous = (output / g.graph if g.graph else output) if output.exists() else None
            artifacts, why, secs = _export_graph(g, graph_module(g, model), recipe, config, out, formats,
                                                 precisions, version_compatible, previous, progress)
            skipped.update(why)
            for fmt, sec in secs.items():
                seconds[f"{g.graph}:{fmt}" if g.graph else fmt] = sec
            used = {d for spec in (*g.input_specs(config), *g.outputs(config)) for d in spec.shape
                    if isinstance(d, str)}
            labels = None
            if g.has_labels:
                labels = [config.id2label[i] for i in range(len(config.id2label))]
            manifest = {
                **common,
                **({"name": f"{recipe.name}/{g.graph}", "graph": g.graph} if g.graph else {}),
                "dims": {name: r.to_json() for name, r in recipe.dims.items() if name in used},
                "inputs": [s.to_json() for s in g.input_specs(config)],
                "outputs": [s.to_json() for s in g.outputs(config)],
                "artifacts": artifacts,
                "labels": labels,
                "processing": {} if g.graph else _copy_processing(recipe, ckpt, out),
                "tolerances": {p: {o: {"atol": t.atol, "rtol": t.rtol, "why": t.why} for o, t in outs.items()}
                               for p, outs in (g.tolerances if g.graph else recipe.tolerances).items()},
            }
            if not g.graph and "sequence" in recipe.dims:
                manifest["processing"]["max_length"] = recipe.dims["sequence"].max
            write_manifest(out, manifest)
        if entry.graphs:
            info = entry.generation(config)
            manifest = {
                **common,
                "kind": "generation",
                "graphs": {g.graph: g.graph for g in entry.graphs},
                "dims": {name: r.to_json() for name, r in recipe.dims.items()},
                "cache": info["cache"],
                "vocab_size": info["vocab_size"],
                "max_positions": info["max_positions"],
                "encoder_decoder": info["encoder_decoder"],
                "generation": _generation_config(recipe, model, ckpt),
                "processing": _copy_processing(recipe, ckpt, tmp),
            }
            write_manifest(tmp, manifest)
        tmp.chmod(0o755)  # mkdtemp makes it private; an engine dir is meant to be shared
        _replace_dir(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    seconds["total"] = time.perf_counter() - t0
    return BuildResult(output, manifest, seconds, skipped)


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
