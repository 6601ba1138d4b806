"""manifest.json, the contract between the exporters and the runtime, as typed dataclasses.

The C++ runtime reads the same file (cpp/src/manifest.cpp, cpp/include/kiln/manifest.h);
engines/README.md describes every field. Two kinds of directory:

    Manifest            one graph: inputs, outputs, dims, artifacts (kiln::Engine opens it)
    GenerationManifest  "kind": "generation": names its graphs (subdirectories, each a
                        Manifest), the KV-cache layout and the generation defaults
                        (kiln::Generator opens it)

`read_manifest(dir)` returns either, validated; every problem is a ManifestError naming the
file and the field. `Manifest.artifact_path` applies the runtime's checks (a file inside
the engine directory, its size and sha256) before Python code loads an artifact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ArtifactError, InvalidArgumentError, ManifestError

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "bool", "uint8")
INTEGER_DTYPES = ("int64", "int32", "bool", "uint8")
# artifact file per format; tensorrt: one plan per GPU and precision (model.sm<cc>.<precision>.plan)
ARTIFACT_FILES = {"torchscript": "model.ts", "onnx": "model.onnx", "aoti": "model.pt2"}


@dataclass(frozen=True)
class DimRange:
    """A symbolic dimension's range. `sum`: the dims it equals the sum of (a decoder's
    total = past + new), which the runtime checks and torch.export derives. `multiple`: every
    size must be a multiple of it (GLPN's H and W: 32, the encoder's total stride), which the
    runtime checks and torch.export builds in (`32 * Dim`); 1 means any size."""

    min: int
    opt: int
    max: int
    sum: tuple[str, ...] = ()
    multiple: int = 1

    def __post_init__(self) -> None:
        # min 0 only where a dim may be empty: a KV cache's past length at prefill
        if not (0 <= self.min <= self.opt <= self.max) or self.max < 1:
            raise InvalidArgumentError(
                f"dim range min={self.min} opt={self.opt} max={self.max}: expected 0 <= min <= opt <= max, max >= 1"
            )
        if self.multiple < 1:
            raise InvalidArgumentError(f"dim multiple={self.multiple}: expected a positive integer")
        if self.multiple > 1:
            if self.sum:
                raise InvalidArgumentError("a derived dim (sum) cannot also declare a multiple")
            off = [
                f"{k}={v}" for k, v in (("min", self.min), ("opt", self.opt), ("max", self.max)) if v % self.multiple
            ]
            if off:
                raise InvalidArgumentError(
                    f"dim range min={self.min} opt={self.opt} max={self.max}: {', '.join(off)} not a multiple of "
                    f"{self.multiple} (the dim takes multiples of {self.multiple} only)"
                )

    def clamp(self, limit: int) -> DimRange:
        """This range with its max (and opt) lowered to `limit` (to a multiple of `multiple`)."""
        hi = min(self.max, limit // self.multiple * self.multiple)
        return dataclasses.replace(self, min=min(self.min, hi), opt=min(self.opt, hi), max=hi)

    def allows(self, size: int) -> bool:
        return self.min <= size <= self.max and size % self.multiple == 0

    def to_json(self) -> dict:
        d: dict[str, Any] = {"min": self.min, "opt": self.opt, "max": self.max}
        if self.sum:
            d["sum"] = list(self.sum)
        if self.multiple > 1:
            d["multiple"] = self.multiple
        return d

    @classmethod
    def from_json(cls, d: dict) -> DimRange:
        return cls(int(d["min"]), int(d["opt"]), int(d["max"]), tuple(d.get("sum", ())), int(d.get("multiple", 1)))


@dataclass(frozen=True)
class ValueRange:
    """Inclusive bounds on every element of an integer input (ids < vocab size, masks 0/1)."""

    min: int
    max: int

    def to_json(self) -> dict:
        return {"min": self.min, "max": self.max}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[str | int, ...]  # str: a symbolic dim named in `dims`; int: fixed
    values: ValueRange | None = None  # inputs that index: the range the runtime enforces

    def to_json(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.values is not None:
            d["values"] = self.values.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict) -> TensorSpec:
        values = d.get("values")
        return cls(
            d["name"],
            d["dtype"],
            tuple(d["shape"]),
            ValueRange(int(values["min"]), int(values["max"])) if values else None,
        )

    @property
    def symbols(self) -> list[str]:
        return [d for d in self.shape if isinstance(d, str)]


@dataclass(frozen=True)
class Tolerance:
    """|test - ref| <= atol, or <= rtol * |ref|, elementwise (polygraphy's "elemwise" check)."""

    atol: float
    rtol: float
    why: str = ""

    def to_json(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol, "why": self.why}

    @classmethod
    def from_json(cls, d: dict) -> Tolerance:
        return cls(float(d["atol"]), float(d["rtol"]), str(d.get("why", "")))


Tolerances = dict[str, dict[str, Tolerance]]  # precision -> output name -> tolerance


@dataclass
class Artifact:
    format: str  # torchscript | onnx | aoti | tensorrt
    file: str  # relative to the engine directory
    sha256: str
    bytes: int
    precision: str = "fp32"
    device: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # opset; TensorRT: compute_capability, profiles, ...

    def to_json(self) -> dict:
        d: dict[str, Any] = {"format": self.format, "file": self.file, "sha256": self.sha256, "bytes": self.bytes}
        d["precision"] = self.precision
        if self.device:
            d["device"] = self.device
        d["versions"] = dict(self.versions)
        d.update(self.extra)
        return d

    @classmethod
    def from_json(cls, d: dict) -> Artifact:
        known = {"format", "file", "sha256", "bytes", "precision", "device", "versions"}
        return cls(
            d["format"],
            d["file"],
            d["sha256"],
            int(d["bytes"]),
            d.get("precision", "fp32"),
            d.get("device", ""),
            dict(d.get("versions", {})),
            {k: v for k, v in d.items() if k not in known},
        )

    @classmethod
    def of(cls, engine_dir: Path, fmt: str, file: str, **extra: Any) -> Artifact:
        """The entry of a file just written into engine_dir (hash and size measured)."""
        path = engine_dir / file
        fields = {k: extra.pop(k) for k in ("precision", "device", "versions") if k in extra}
        return cls(fmt, file, sha256_file(path), path.stat().st_size, **fields, extra=extra)

    @property
    def profiles(self) -> list[dict]:
        return list(self.extra.get("profiles") or [])


@dataclass
class Source:
    """What parity needs to rebuild the eager reference: the same checkpoint and seeded head."""

    checkpoint: str
    sha256: str
    recipe: str | None = None
    random_head: bool = False
    seed: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Source:
        return cls(
            str(d.get("checkpoint", "")),
            str(d.get("sha256", "")),
            d.get("recipe"),
            bool(d.get("random_head", False)),
            int(d.get("seed", 0)),
        )


@dataclass
class _Common:
    """Fields of every manifest: what was built, from what, by whom."""

    name: str
    family: str
    task: str
    config: dict[str, Any]
    dims: dict[str, DimRange]
    source: Source
    description: str = ""
    task_options: dict[str, Any] = field(default_factory=dict)
    weights: str = "real"  # real | random-head | random
    random_keys: list[str] = field(default_factory=list)
    processing: dict[str, Any] = field(default_factory=dict)
    kiln_version: str = ""
    created: str = ""
    format_version: int = FORMAT_VERSION
    path: Path | None = field(default=None, compare=False)  # the directory it was read from

    def _common_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "name": self.name,
            "description": self.description,
            "family": self.family,
            "task": self.task,
            "config": self.config,
            "task_options": self.task_options,
            "weights": self.weights,
            "random_keys": self.random_keys,
            "source": self.source.to_json(),
            "kiln_version": self.kiln_version,
            "created": self.created,
            "dims": {n: r.to_json() for n, r in self.dims.items()},
            "processing": self.processing,
        }

    @staticmethod
    def _common_fields(d: dict) -> dict[str, Any]:
        return {
            "name": d["name"],
            "family": d["family"],
            "task": d["task"],
            "config": dict(d["config"]),
            "dims": {n: DimRange.from_json(r) for n, r in d["dims"].items()},
            "source": Source.from_json(d.get("source") or {}),
            "description": d.get("description", ""),
            "task_options": dict(d.get("task_options") or {}),
            "weights": d.get("weights", "real"),
            "random_keys": list(d.get("random_keys") or []),
            "processing": dict(d.get("processing") or {}),
            "kiln_version": d.get("kiln_version", ""),
            "created": d.get("created", ""),
            "format_version": int(d["format_version"]),
        }

    @property
    def dir(self) -> Path:
        """The directory the manifest was read from (or written to)."""
        if self.path is None:
            raise ManifestError(f"{self.name}: this manifest was not read from an engine directory")
        return self.path

    def to_json(self) -> dict:
        raise NotImplementedError

    def write(self, engine_dir: str | Path) -> Path:
        path = Path(engine_dir) / MANIFEST
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @property
    def random_weights_note(self) -> str | None:
        """What `kiln run` says about an engine whose weights are (partly) random."""
        if self.weights == "random":
            return (
                f"{self.name} has random weights (every tensor seeded, real sizes): its answers show the path "
                "works, they carry no meaning. Build with `kiln build RECIPE --checkpoint HF_DIR` for real answers."
            )
        if self.weights == "random-head":
            return (
                f"{self.name} has a randomly initialised head ({len(self.random_keys)} tensors, seeded): its "
                "answers show the path works, they carry no meaning. Build with "
                "`kiln build RECIPE --checkpoint FINE_TUNED_DIR` for real answers."
            )
        return None


@dataclass
class Manifest(_Common):
    """One graph: what kiln::Engine opens."""

    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    labels: list[str] | None = None
    tolerances: Tolerances = field(default_factory=dict)
    graph: str = "model"  # the deployable's graph this is ("model", or "encoder" / "decoder")
    # the CPU backend `kiln build` measured fastest here: {"backend", "cpu", "measured_ms", "shape"};
    # the C++ runtime's "auto" takes it on a CPU of that model name (kiln.bench.choose_backend)
    backend_choice: dict[str, Any] | None = None

    kind = "engine"

    def to_json(self) -> dict:
        d = self._common_json()
        d.update(
            graph=self.graph,
            inputs=[s.to_json() for s in self.inputs],
            outputs=[s.to_json() for s in self.outputs],
            artifacts=[a.to_json() for a in self.artifacts],
            labels=self.labels,
            tolerances={p: {o: t.to_json() for o, t in outs.items()} for p, outs in self.tolerances.items()},
        )
        if self.backend_choice is not None:
            d["backend_choice"] = self.backend_choice
        return d

    @classmethod
    def from_json(cls, d: dict) -> Manifest:
        return cls(
            **cls._common_fields(d),
            inputs=[TensorSpec.from_json(s) for s in d["inputs"]],
            outputs=[TensorSpec.from_json(s) for s in d["outputs"]],
            artifacts=[Artifact.from_json(a) for a in d["artifacts"]],
            labels=list(d["labels"]) if d.get("labels") else None,
            tolerances={
                p: {o: Tolerance.from_json(t) for o, t in outs.items()}
                for p, outs in (d.get("tolerances") or {}).items()
            },
            graph=d.get("graph") or "model",
            backend_choice=d.get("backend_choice"),
        )

    def artifact(self, fmt: str, precision: str | None = None) -> Artifact | None:
        """The first artifact of a format (and precision), or None."""
        return next(
            (a for a in self.artifacts if a.format == fmt and (precision is None or a.precision == precision)), None
        )

    def artifacts_of(self, fmt: str) -> list[Artifact]:
        return [a for a in self.artifacts if a.format == fmt]

    def artifact_path(self, art: Artifact, verify_sha256: bool = True) -> Path:
        """The artifact's file after the runtime's checks: inside the engine directory, the size
        the manifest says and (verify_sha256) the same sha256; the same for the weights an ONNX
        model over 1.5 GiB keeps beside it (`external_data`). ArtifactError says what is wrong."""
        file = self._checked_file(art.file, art.bytes, art.sha256, verify_sha256)
        data = art.extra.get("external_data")
        if data is not None:
            if not isinstance(data, dict) or not {"file", "bytes", "sha256"} <= set(data):
                raise ArtifactError(
                    f"engine '{self.name}': {art.file}: external_data {data!r}: expected file, bytes and sha256"
                )
            self._checked_file(str(data["file"]), int(data["bytes"]), str(data["sha256"]), verify_sha256)
        return file

    def _checked_file(self, name: str, expected_bytes: int, expected_sha256: str, verify_sha256: bool) -> Path:
        root = self.dir.resolve()
        file = (root / name).resolve()
        if Path(name).is_absolute() or ".." in Path(name).parts or root not in file.parents:
            raise ArtifactError(
                f"engine '{self.name}': artifact file {name!r} is not inside the engine directory {root}; "
                "rebuild the engine with `kiln build`"
            )
        if not file.is_file():
            raise ArtifactError(f"engine '{self.name}': {file} is missing; rebuild the engine with `kiln build`")
        size = file.stat().st_size
        if size != expected_bytes:
            raise ArtifactError(
                f"engine '{self.name}': {name} is {size} bytes, the manifest says {expected_bytes} "
                "(truncated or replaced); rebuild the engine with `kiln build`"
            )
        if verify_sha256 and sha256_file(file) != expected_sha256:
            raise ArtifactError(
                f"engine '{self.name}': {name} does not have the sha256 the manifest records (corrupt or "
                "replaced); rebuild the engine with `kiln build`"
            )
        return file

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]


@dataclass
class Cache:
    """A KV cache's layout: one float32 tensor (layers, 2, batch, heads, seq, head_dim)."""

    layers: int
    heads: int
    head_dim: int


@dataclass
class GenerationManifest(_Common):
    """A generation engine: graphs in subdirectories, the cache layout, generation defaults."""

    graphs: dict[str, str] = field(default_factory=dict)  # graph name -> subdirectory
    cache: Cache = field(default_factory=lambda: Cache(1, 1, 1))
    vocab_size: int = 0
    max_positions: int = 0
    encoder_decoder: bool = False
    generation: dict[str, Any] = field(default_factory=dict)

    kind = "generation"

    def to_json(self) -> dict:
        d = self._common_json()
        d.update(
            kind="generation",
            graphs=dict(self.graphs),
            cache=dataclasses.asdict(self.cache),
            vocab_size=self.vocab_size,
            max_positions=self.max_positions,
            encoder_decoder=self.encoder_decoder,
            generation=self.generation,
        )
        return d

    @classmethod
    def from_json(cls, d: dict) -> GenerationManifest:
        c = d["cache"]
        return cls(
            **cls._common_fields(d),
            graphs={str(k): str(v) for k, v in d["graphs"].items()},
            cache=Cache(int(c["layers"]), int(c["heads"]), int(c["head_dim"])),
            vocab_size=int(d["vocab_size"]),
            max_positions=int(d["max_positions"]),
            encoder_decoder=bool(d.get("encoder_decoder", False)),
            generation=dict(d.get("generation") or {}),
        )

    def graph_dir(self, graph: str) -> Path:
        if graph not in self.graphs:
            raise ManifestError(f"{self.name}: no graph {graph!r}; graphs: {', '.join(self.graphs)}")
        sub = self.graphs[graph]
        if not sub or Path(sub).is_absolute() or ".." in Path(sub).parts:
            raise ManifestError(f"{self.dir / MANIFEST}: graphs.{graph} must name a subdirectory, got {sub!r}")
        return self.dir / sub

    def graph(self, graph: str) -> Manifest:
        """The manifest of one of its graphs."""
        return read_graph_manifest(self.graph_dir(graph))


AnyManifest = Manifest | GenerationManifest

_REQUIRED = ("format_version", "name", "family", "task", "config", "dims", "inputs", "outputs", "artifacts")
_REQUIRED_GENERATION = (
    "format_version",
    "name",
    "family",
    "task",
    "config",
    "dims",
    "graphs",
    "cache",
    "vocab_size",
    "max_positions",
    "generation",
)


def _check_structure(d: dict, where: Path) -> None:
    """Types of the fields the runtime interprets, named by path (the C++ reader's rules)."""

    def bad(what: str) -> ManifestError:
        return ManifestError(f"{where}: {what}; rebuild the engine with `kiln build`")

    if not isinstance(d["dims"], dict):
        raise bad("field 'dims' must be an object")
    for name, r in d["dims"].items():
        if not isinstance(r, dict) or not all(isinstance(r.get(k), int) for k in ("min", "opt", "max")):
            raise bad(f"'dims.{name}' must be an object {{min, opt, max}} of integers")
        if "multiple" in r and (type(r["multiple"]) is not int or r["multiple"] < 1):
            raise bad(f"'dims.{name}.multiple' must be a positive integer, got {r['multiple']!r}")
        try:
            DimRange.from_json(r)
        except InvalidArgumentError as e:
            raise bad(f"'dims.{name}': {e}") from None
        for term in r.get("sum", ()):
            if term not in d["dims"]:
                raise bad(f"'dims.{name}.sum' names {term!r}, which is not a dim")
    if d.get("kind") == "generation":
        if not isinstance(d["graphs"], dict) or "decoder" not in d["graphs"]:
            raise bad("field 'graphs' must be an object naming at least the 'decoder' subdirectory")
        return
    for kind in ("inputs", "outputs"):
        specs = d[kind]
        if not isinstance(specs, list) or not specs:
            raise bad(f"field '{kind}' must be a non-empty list")
        for i, s in enumerate(specs):
            if not isinstance(s, dict) or not isinstance(s.get("name"), str) or not isinstance(s.get("shape"), list):
                raise bad(f"'{kind}[{i}]' must be an object with name, dtype and shape")
            if s.get("dtype") not in DTYPES:
                raise bad(f"'{kind}[{i}].dtype' is {s.get('dtype')!r}, not one of {', '.join(DTYPES)}")
            for dim in s["shape"]:
                if kind == "inputs" and isinstance(dim, str) and dim not in d["dims"]:
                    raise bad(f"'{kind}[{i}].shape' names the dim {dim!r}, which is not in 'dims'")
                if not isinstance(dim, (str, int)) or (isinstance(dim, int) and dim < 0):
                    raise bad(f"'{kind}[{i}].shape' has {dim!r}: expected a dim name or a size >= 0")
    if not isinstance(d["artifacts"], list):
        raise bad("field 'artifacts' must be a list")
    for i, a in enumerate(d["artifacts"]):
        if not isinstance(a, dict) or not all(k in a for k in ("format", "file", "sha256", "bytes")):
            raise bad(f"'artifacts[{i}]' must be an object with format, file, sha256 and bytes")


def read_manifest(engine_dir: str | Path) -> AnyManifest:
    """The validated manifest of an engine directory; ManifestError says what is wrong."""
    engine_dir = Path(engine_dir)
    path = engine_dir / MANIFEST
    if not path.is_file():
        raise ManifestError(
            f"{engine_dir}: no {MANIFEST}; expected an engine directory written by `kiln build` "
            "(engines/<name>/manifest.json)"
        )
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: not readable as UTF-8 JSON ({e}); rebuild the engine with `kiln build`") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: expected a JSON object at the top level")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format_version {version!r}, this kiln reads {FORMAT_VERSION}; "
            "rebuild the engine with this kiln's `kiln build`"
        )
    generation = data.get("kind") == "generation"
    missing = [k for k in (_REQUIRED_GENERATION if generation else _REQUIRED) if k not in data]
    if missing:
        raise ManifestError(f"{path}: missing field(s) {', '.join(missing)}; rebuild the engine with `kiln build`")
    _check_structure(data, path)
    try:
        manifest: AnyManifest = (GenerationManifest if generation else Manifest).from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ManifestError(f"{path}: malformed field ({type(e).__name__}: {e}); rebuild the engine") from None
    manifest.path = engine_dir
    return manifest


def read_graph_manifest(engine_dir: str | Path) -> Manifest:
    """The manifest of a one-graph engine directory (what kiln::Engine opens)."""
    m = read_manifest(engine_dir)
    if isinstance(m, GenerationManifest):
        raise ManifestError(
            f"{engine_dir}: a generation engine with graphs {', '.join(m.graphs)}; open it with kiln.Generator, "
            f"or open one graph's subdirectory (e.g. {Path(engine_dir) / 'decoder'})"
        )
    return m


def graph_manifests(engine_dir: str | Path) -> list[Manifest]:
    """Every graph of an engine: its own manifest, or each graph of a generation engine."""
    m = read_manifest(engine_dir)
    if isinstance(m, GenerationManifest):
        return [m.graph(g) for g in m.graphs]
    return [m]


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
