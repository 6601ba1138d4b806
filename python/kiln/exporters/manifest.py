"""manifest.json: the contract between the exporters and the runtime (engines/README.md)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import ManifestError

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
REQUIRED = ("format_version", "name", "family", "task", "config", "dims", "inputs", "outputs",
            "artifacts")
# a generation engine's top level: its graphs are subdirectories with ordinary manifests
REQUIRED_GENERATION = ("format_version", "name", "family", "task", "config", "graphs", "cache",
                       "vocab_size", "max_positions", "generation")
ARTIFACT_FILES = {"torchscript": "model.ts", "onnx": "model.onnx", "aoti": "model.pt2"}  # tensorrt: one plan per GPU and precision


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(engine_dir: str | Path) -> dict:
    """The validated manifest of an engine directory; ManifestError says what is wrong."""
    path = Path(engine_dir) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{engine_dir}: no {MANIFEST}; expected an engine directory written by "
                            "`kiln build` (engines/<name>/manifest.json)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e}); rebuild the engine with `kiln build`") from None
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object at the top level")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(f"{path}: format_version {version!r}, this kiln reads {FORMAT_VERSION}; "
                            "rebuild the engine with this kiln's `kiln build`")
    required = REQUIRED_GENERATION if manifest.get("kind") == "generation" else REQUIRED
    missing = [k for k in required if k not in manifest]
    if missing:
        raise ManifestError(f"{path}: missing field(s) {', '.join(missing)}; rebuild the engine")
    return manifest


def write_manifest(engine_dir: str | Path, manifest: dict) -> Path:
    path = Path(engine_dir) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def artifact_entry(engine_dir: Path, fmt: str, file: str, **extra) -> dict:
    path = engine_dir / file
    return {"format": fmt, "file": file, "sha256": sha256_file(path), "bytes": path.stat().st_size,
            **extra}


def find_artifact(manifest: dict, fmt: str) -> dict | None:
    return next((a for a in manifest["artifacts"] if a["format"] == fmt), None)


def is_generation(manifest: dict) -> bool:
    return manifest.get("kind") == "generation"


def graph_dirs(engine_dir: str | Path) -> list[tuple[str, Path]]:
    """(graph name, directory) of every graph of an engine: its subdirectories for a
    generation engine, else ("", the directory itself)."""
    manifest = read_manifest(engine_dir)
    if not is_generation(manifest):
        return [("", Path(engine_dir))]
    return [(name, Path(engine_dir) / sub) for name, sub in manifest["graphs"].items()]
