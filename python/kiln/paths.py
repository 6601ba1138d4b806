"""Where kiln keeps downloads, checkpoints and compile caches ($KILN_CACHE)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointError


def cache_dir() -> Path:
    return Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))


def resolve_checkpoint(ref: str | os.PathLike) -> Path:
    """A checkpoint directory from a path, or from a name fetched by `make setup`."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    named = cache_dir() / "checkpoints" / str(ref)
    if named.is_dir():
        return named
    raise CheckpointError(
        f"checkpoint {str(ref)!r}: no such directory, and no checkpoint of that name in "
        f"{cache_dir() / 'checkpoints'}; give a Hugging Face checkpoint directory (config.json + "
        "model.safetensors) or run `make setup` to fetch the named ones"
    )
