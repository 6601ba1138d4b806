"""Export recipes: export/<name>.toml, one per deployable."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import registry
from .errors import InvalidArgumentError

FORMATS = ("torchscript", "onnx", "aoti", "tensorrt")  # tensorrt: built from the onnx artifact
RECIPE_DIR = Path(__file__).resolve().parents[2] / "export"


@dataclass
class Recipe:
    name: str
    family: str
    task: str
    checkpoint: str
    description: str = ""
    random_head: bool = False
    random_weights: bool = False  # checkpoint is a config-only dir: every weight drawn from `seed`
    seed: int = 0
    labels: list[str] | None = None
    formats: list[str] = field(default_factory=lambda: ["torchscript", "onnx", "aoti"])
    dims: dict[str, registry.DimRange] = field(default_factory=dict)
    task_options: dict = field(default_factory=dict)
    # generation deployables: generation_config.json settings the engine defaults to
    # (overrides the checkpoint's), and the BPE vocabulary to ship when the checkpoint has
    # none: a directory under $KILN_CACHE/tokenizers ("gpt2", "bart"; fetched by make setup)
    generation: dict = field(default_factory=dict)
    tokenizer: str | None = None
    tolerances: dict[str, dict[str, registry.Tolerance]] = field(default_factory=dict)
    path: Path | None = None

    @property
    def entry(self) -> registry.TaskEntry:
        return registry.get(self.family, self.task)


def find_recipe(ref: str | Path) -> Path:
    """A recipe file from a path or a bare name (looked up in export/)."""
    path = Path(ref)
    if path.is_file():
        return path
    for candidate in (RECIPE_DIR / f"{ref}.toml", RECIPE_DIR / str(ref)):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in RECIPE_DIR.glob("*.toml")))
    raise InvalidArgumentError(f"recipe {str(ref)!r}: no such file; known recipes: {known}")


def load_recipe(ref: str | Path) -> Recipe:
    path = find_recipe(ref)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise InvalidArgumentError(f"recipe {path}: not valid TOML ({e})") from None
    missing = [k for k in ("name", "family", "task", "checkpoint") if k not in data]
    if missing:
        raise InvalidArgumentError(f"recipe {path}: missing key(s) {', '.join(missing)}")
    entry = registry.get(data["family"], data["task"])
    dims = dict(entry.dims)
    for name, rng in data.pop("dims", {}).items():
        if name not in dims:
            raise InvalidArgumentError(f"recipe {path}: [dims] {name!r} is not a dim of "
                                       f"{entry.family}/{entry.task}; expected one of {sorted(dims)}")
        dims[name] = registry.DimRange(rng["min"], rng["opt"], rng["max"])
    tolerances = {p: dict(t) for p, t in entry.tolerances.items()}
    for precision, outs in data.pop("tolerances", {}).items():
        for out, tol in outs.items():
            tolerances.setdefault(precision, {})[out] = registry.Tolerance(
                tol["atol"], tol["rtol"], tol.get("why", "set by the recipe"))
    formats = data.pop("formats", ["torchscript", "onnx", "aoti"])
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise InvalidArgumentError(f"recipe {path}: unknown format(s) {unknown}; expected {list(FORMATS)}")
    for key in data.get("task_options", {}):
        if key not in entry.model_options:
            raise InvalidArgumentError(f"recipe {path}: task option {key!r} is not one of "
                                       f"{list(entry.model_options)} for {entry.family}/{entry.task}")
    known = {f for f in Recipe.__dataclass_fields__} - {"dims", "tolerances", "formats", "path"}
    extra = sorted(set(data) - known)
    if extra:
        raise InvalidArgumentError(f"recipe {path}: unknown key(s) {extra}")
    return Recipe(**data, dims=dims, tolerances=tolerances, formats=formats, path=path)


def all_recipes() -> list[Path]:
    return sorted(RECIPE_DIR.glob("*.toml"))
