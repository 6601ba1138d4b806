"""Export recipes: export/<name>.toml, one per deployable, or a checkpoint directory alone.

A recipe names the deployable (family, task), the checkpoint, and what differs from the
deployable's defaults: dims, tolerances, task options, labels for a random head, generation
settings. `Recipe.for_checkpoint(dir)` is the recipe of a Hugging Face checkpoint built as it is
(`kiln build --checkpoint DIR`): the family from config.json's model_type, the task from its
architectures, every dim at the deployable's defaults.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import registry
from .deploy import Deployable
from .errors import InvalidArgumentError
from .manifest import DimRange, Tolerance, Tolerances

FORMATS = ("torchscript", "onnx", "aoti", "tensorrt")  # tensorrt: built from the onnx artifact
DEFAULT_FORMATS = ["torchscript", "onnx", "aoti"]
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
    formats: list[str] = field(default_factory=lambda: list(DEFAULT_FORMATS))
    dims: dict[str, DimRange] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)
    # generation deployables: generation_config.json settings the engine defaults to (over the
    # checkpoint's)
    generation: dict[str, Any] = field(default_factory=dict)
    # the tokenizer to ship when the checkpoint has none: a directory fetched by make setup into
    # $KILN_CACHE/tokenizers (a BPE vocabulary; generation families name theirs) or the name of a
    # fetched checkpoint whose tokenizer files to use ("all-MiniLM-L6-v2": BERT's uncased WordPiece)
    tokenizer: str | None = None
    tolerances: Tolerances = field(default_factory=dict)  # precision -> output -> tolerance, over the graphs'
    path: Path | None = None

    @property
    def deployable(self) -> Deployable:
        return registry.get(self.family, self.task)

    def __post_init__(self) -> None:
        d = self.deployable
        self.dims = {**d.dims, **self.dims}
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise InvalidArgumentError(
                f"recipe {self.name}: unknown format(s) {unknown}; expected some of {list(FORMATS)}"
            )
        bad = [k for k in self.task_options if k not in d.options]
        if bad:
            raise InvalidArgumentError(
                f"recipe {self.name}: task option(s) {bad} are not among {list(d.options)} for {d.name}"
            )

    def with_dims(self, overrides: dict[str, DimRange]) -> Recipe:
        """The recipe with some dims replaced (`kiln build --dims`)."""
        unknown = sorted(set(overrides) - set(self.dims))
        if unknown:
            raise InvalidArgumentError(
                f"--dims {unknown}: not dims of {self.deployable.name}; its dims are {', '.join(self.dims)}"
            )
        self.dims = {
            **self.dims,
            **{n: _with_rules(f"--dims {n}", r.min, r.opt, r.max, self.dims[n]) for n, r in overrides.items()},
        }
        return self

    def graph_tolerances(self, graph_tolerances: Tolerances, outputs: list[str]) -> Tolerances:
        """A graph's tolerance table with the recipe's entries for its outputs laid over it."""
        table = {p: dict(outs) for p, outs in graph_tolerances.items()}
        for precision, outs in self.tolerances.items():
            for out, tol in outs.items():
                if out in outputs:
                    table.setdefault(precision, {})[out] = tol
        return table

    @classmethod
    def for_checkpoint(cls, checkpoint: str | Path, task: str | None = None) -> Recipe:
        """A checkpoint directory built as it is: the deployable from its config.json."""
        from .checkpoint import read_config_dict

        path = Path(checkpoint)
        d = registry.for_checkpoint(read_config_dict(path), task)
        return cls(
            name=f"{path.resolve().name}-{d.task}",
            family=d.family,
            task=d.task,
            checkpoint=str(path),
            description=f"{d.name} from the checkpoint {path}",
            dims=processor_dims(d, path) or {},
        )


def processor_dims(d: Deployable, checkpoint: str | Path) -> dict[str, DimRange] | None:
    """The dims the checkpoint's preprocessor_config.json fixes for this deployable (a SegFormer's
    image size), or None where the family declares none or the checkpoint has no such file."""
    from .processing import PREPROCESSOR_FILE, read_preprocessor_config

    if d.processor_dims is None or not (Path(checkpoint) / PREPROCESSOR_FILE).is_file():
        return None
    try:
        return d.processor_dims(read_preprocessor_config(checkpoint, ""))
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"{Path(checkpoint) / PREPROCESSOR_FILE}: {e}") from None


def _with_rules(where: str, lo: int, opt: int, hi: int, declared: DimRange) -> DimRange:
    """A range for a declared dim, keeping the deployable's rules on it (a derived dim's terms,
    a required multiple); a range that breaks them is an error naming where it came from."""
    try:
        return DimRange(lo, opt, hi, declared.sum, declared.multiple)
    except InvalidArgumentError as e:
        raise InvalidArgumentError(f"{where}: {e}") from None


def parse_dims(specs: list[str]) -> dict[str, DimRange]:
    """`--dims sequence=1:128:384 batch=1:1:8` -> {name: DimRange}."""
    out = {}
    for spec in specs:
        name, _, value = spec.partition("=")
        parts = value.split(":")
        if not name or len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise InvalidArgumentError(
                f"--dims {spec!r}: expected NAME=MIN:OPT:MAX with integers, e.g. sequence=2:128:384"
            )
        lo, opt, hi = (int(p) for p in parts)
        out[name] = DimRange(lo, opt, hi)
    return out


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
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgumentError(f"recipe {path}: not valid TOML ({e})") from None
    missing = [k for k in ("name", "family", "task", "checkpoint") if k not in data]
    if missing:
        raise InvalidArgumentError(f"recipe {path}: missing key(s) {', '.join(missing)}")
    d = registry.get(data["family"], data["task"])
    dims = {}
    for name, rng in data.pop("dims", {}).items():
        if name not in d.dims:
            raise InvalidArgumentError(
                f"recipe {path}: [dims] {name!r} is not a dim of {d.name}; expected one of {sorted(d.dims)}"
            )
        try:
            lo, opt, hi = int(rng["min"]), int(rng["opt"]), int(rng["max"])
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgumentError(f"recipe {path}: [dims.{name}] needs integer min, opt and max ({e})") from None
        dims[name] = _with_rules(f"recipe {path}: [dims.{name}]", lo, opt, hi, d.dims[name])
    tolerances: Tolerances = {}
    for precision, outs in data.pop("tolerances", {}).items():
        for out, tol in outs.items():
            tolerances.setdefault(precision, {})[out] = Tolerance(
                float(tol["atol"]), float(tol["rtol"]), tol.get("why", "set by the recipe")
            )
    known = set(Recipe.__dataclass_fields__) - {"dims", "tolerances", "path"}
    extra = sorted(set(data) - known)
    if extra:
        raise InvalidArgumentError(f"recipe {path}: unknown key(s) {extra}")
    return Recipe(**data, dims=dims, tolerances=tolerances, path=path)


def all_recipes() -> list[Path]:
    return sorted(RECIPE_DIR.glob("*.toml"))
