"""TensorRT readiness of an exported ONNX graph, checked on the CPU (`kiln check-trt`).

No TensorRT builder is reachable on kiln's development and CI machines, so everything that
can be proved about the TensorRT path without one is proved here:
  1. opset within what TensorRT 10's ONNX parser reads (9-20);
  2. every operator, and the element type it runs on, in the parser's support table
     (onnx_ops.tsv: ONNX-TensorRT 10.1 operator matrix);
  3. no float64 tensor anywhere (TensorRT has no FP64);
  4. `polygraphy surgeon sanitize --fold-constants` succeeds, and the folded graph still
     matches eager PyTorch in ONNX Runtime (constant folding is what TensorRT's parser sees
     first; a fold that changes numbers would be invisible until a GPU run).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ArtifactError, InputShapeError, InvalidArgumentError

OPSET_RANGE = (9, 20)
_ROOT = Path(__file__).resolve().parents[3]
# the table is the team's shared data (../shared beside the repository); KILN_TRT_OPS overrides
DEFAULT_OPS_TABLE = _ROOT.parent / "shared" / "tensorrt" / "onnx_ops.tsv"

_ONNX_TYPE_NAMES = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16",
                    11: "FP64", 16: "BF16"}


_PRODUCERS = {"Cast", "CastLike", "Constant", "ConstantOfShape", "RandomNormal", "RandomUniform"}


def ops_table_path() -> Path:
    return Path(os.environ.get("KILN_TRT_OPS", DEFAULT_OPS_TABLE))


def load_ops_table(path: str | Path | None = None) -> dict[str, set[str]]:
    """operator -> element types TensorRT's ONNX parser accepts (only supported operators)."""
    path = Path(path) if path else ops_table_path()
    if not path.is_file():
        raise InvalidArgumentError(
            f"TensorRT operator table {path} not found; expected the team's onnx_ops.tsv "
            "(../shared/tensorrt/onnx_ops.tsv beside the repository) or KILN_TRT_OPS=/path/to/it")
    table: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        op, supported = parts[0].strip(), parts[1].strip() if len(parts) > 1 else "N"
        if supported == "Y":
            table[op] = {t.strip() for t in (parts[2] if len(parts) > 2 else "").split(",") if t.strip()}
    return table


@dataclass
class Finding:
    check: str
    ok: bool
    detail: str


@dataclass
class TrtReport:
    engine: str
    onnx: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(f.ok for f in self.findings)

    def to_json(self) -> dict:
        return {"pass": self.passed, "engine": self.engine, "onnx": self.onnx,
                "checks": [f.__dict__ for f in self.findings]}


def _tensor_types(model) -> dict[str, int]:
    """name -> ONNX element type for every value the graph (after shape inference) types."""
    import onnx
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    types = {}
    g = inferred.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def check_graph(onnx_path: str | Path, table: dict[str, set[str]]) -> list[Finding]:
    """Opset, operators with their types, and float64, of one ONNX file."""
    import onnx
    model = onnx.load(str(onnx_path))
    findings = []
    lo, hi = OPSET_RANGE
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    version = opsets.get("ai.onnx")
    findings.append(Finding("opset", version is not None and lo <= version <= hi,
                            f"ai.onnx opset {version} (TensorRT 10 parses {lo}-{hi})"))
    others = sorted(d for d in opsets if d not in ("ai.onnx",) and any(n.domain == d for n in model.graph.node))
    findings.append(Finding("domains", not others,
                            "only the standard ONNX domain is used" if not others else
                            f"custom op domains {others}: TensorRT needs plugins for them"))
    types = _tensor_types(model)
    unsupported: dict[str, int] = {}
    bad_types: dict[str, set[str]] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        allowed = table.get(node.op_type)
        if allowed is None:
            unsupported[node.op_type] = unsupported.get(node.op_type, 0) + 1
            continue
        # the type the table lists is the operator's data type: its first input (comparisons
        # such as Less output BOOL whatever they compare), or what it produces where it reads
        # no data (Constant, ConstantOfShape) or converts to it (Cast)
        produces = node.op_type in _PRODUCERS or not node.input
        names = [n for n in (list(node.output) if produces else list(node.input[:1])) if n]
        for name in names:
            t = _ONNX_TYPE_NAMES.get(types.get(name, 0))
            if t and t not in allowed:
                bad_types.setdefault(node.op_type, set()).add(t)
    ops = sorted({n.op_type for n in model.graph.node})
    findings.append(Finding("operators", not unsupported,
                            f"{len(ops)} operator types, all in the TensorRT parser's table" if not unsupported
                            else "not supported by TensorRT's ONNX parser: " +
                            ", ".join(f"{op} (x{n})" for op, n in sorted(unsupported.items()))))
    findings.append(Finding("types", not bad_types,
                            "every operator runs on a type the parser accepts" if not bad_types else
                            "; ".join(f"{op} on {', '.join(sorted(t))}" for op, t in sorted(bad_types.items()))))
    fp64 = sorted(n for n, t in types.items() if t == 11)
    findings.append(Finding("float64", not fp64, "no float64 tensor" if not fp64 else
                            f"{len(fp64)} float64 tensors (TensorRT has no FP64), e.g. {fp64[:3]}"))
    return findings


def fold_constants(onnx_path: str | Path, out_path: str | Path) -> Finding:
    """`polygraphy surgeon sanitize --fold-constants`, as a user would run it."""
    # the polygraphy console script of this interpreter's environment (the package has no __main__)
    cmd = [sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())",
           "surgeon", "sanitize", str(onnx_path), "--fold-constants", "-o", str(out_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not Path(out_path).is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return Finding("fold-constants", False, "polygraphy surgeon sanitize --fold-constants failed: "
                       + " | ".join(tail))
    import onnx
    before = len(onnx.load(str(onnx_path), load_external_data=False).graph.node)
    after = len(onnx.load(str(out_path), load_external_data=False).graph.node)
    return Finding("fold-constants", True, f"polygraphy folded {before} -> {after} nodes")


def check_engine(engine_dir: str | Path, table_path: str | Path | None = None) -> TrtReport:
    """Every CPU-side TensorRT check of an engine directory's ONNX artifact."""
    from .manifest import find_artifact, read_manifest
    from ..parity import Backend, onnxruntime_infer, run_parity

    engine_dir = Path(engine_dir)
    manifest = read_manifest(engine_dir)
    art = find_artifact(manifest, "onnx")
    if art is None:
        raise ArtifactError(f"{engine_dir}: no ONNX artifact in the manifest; TensorRT engines are built "
                            "from it: `kiln build RECIPE --formats onnx`")
    onnx_path = engine_dir / art["file"]
    report = TrtReport(manifest["name"], str(onnx_path))
    report.findings += check_graph(onnx_path, load_ops_table(table_path))
    with tempfile.TemporaryDirectory() as tmp:
        folded = Path(tmp) / "folded.onnx"
        fold = fold_constants(onnx_path, folded)
        report.findings.append(fold)
        if fold.ok:
            name = "onnxruntime-folded"
            parity = run_parity(engine_dir, backends=[name],
                                extra_backends=[Backend(name, lambda: onnxruntime_infer(folded, manifest))])
            b = parity.backends.get(name)
            if b is None or b.error:
                report.findings.append(Finding("folded-parity", False, (b.error if b else None) or "did not run"))
            else:
                worst = max(b.outputs.items(), key=lambda kv: kv[1]["max_abs"])
                report.findings.append(Finding(
                    "folded-parity", b.passed,
                    f"folded graph in ONNX Runtime vs eager fp32: max abs {worst[1]['max_abs']:.2e} "
                    f"({worst[0]}), {b.task_detail}"))
    return report


def print_report(report: TrtReport, console=None) -> None:
    from ..term import make_console
    console = console or make_console()
    console.print(f"[bold]TensorRT readiness[/] of {report.engine} ({report.onnx})")
    for f in report.findings:
        mark = "[green]ok[/]  " if f.ok else "[red]FAIL[/]"
        console.print(f"  {mark} {f.check:<15} {f.detail}")
    console.print("[bold green]ready for TensorRT's ONNX parser[/]" if report.passed
                  else "[bold red]not ready for TensorRT: see FAIL above[/]")


# --- engine building (runs where TensorRT and a GPU are) ----------------------------------------
# `kiln build RECIPE --formats tensorrt` builds one plan per precision from the exported ONNX
# through polygraphy's TensorRT backend (the tensorrt Python module underneath): one
# optimisation profile per recipe shape range (min / opt / max of every symbolic dim), a
# persistent timing cache, optionally version-compatible plans for the lean runtime.

PRECISIONS = ("fp32", "fp16", "bf16")


def cuda_device_count() -> tuple[int, str | None]:
    """(number of usable CUDA devices, why none) via the CUDA runtime, without TensorRT.

    On a machine with the CUDA toolkit but no driver, cudaGetDeviceCount returns error 35
    (insufficient driver) and leaves the count unset: any error means "no GPU".
    """
    import ctypes
    import ctypes.util
    names = ["libcudart.so", "libcudart.so.13", "libcudart.so.12"]
    found = ctypes.util.find_library("cudart")
    if found:
        names.insert(0, found)
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return 0, "the CUDA runtime (libcudart) is not installed"
    count = ctypes.c_int(0)
    err = lib.cudaGetDeviceCount(ctypes.byref(count))
    if err != 0:
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        msg = lib.cudaGetErrorString(err).decode()
        return 0, f"cudaGetDeviceCount failed with CUDA error {err} ({msg}): no usable GPU or driver"
    if count.value == 0:
        return 0, "no CUDA device"
    return count.value, None


def tensorrt_unavailable() -> str | None:
    """Why TensorRT engines cannot be built here, or None when they can."""
    missing = ("the TensorRT Python module (tensorrt) is not installed: on a GPU host, "
               "`pip install tensorrt` (its wheels download from NVIDIA's package index)")
    try:
        import tensorrt
    except ImportError:
        return missing
    if not hasattr(tensorrt, "Builder"):  # tensorrt-stubs alone makes `tensorrt` a namespace package
        return missing + "; only its type stubs are"
    count, why = cuda_device_count()
    if count == 0:
        return f"no GPU to build on: {why}"
    return None


def compute_capability(device: int = 0) -> str:
    import ctypes
    import ctypes.util
    lib = ctypes.CDLL(ctypes.util.find_library("cudart") or "libcudart.so")
    major, minor = ctypes.c_int(), ctypes.c_int()
    # cudaDevAttrComputeCapabilityMajor = 75, ...Minor = 76
    lib.cudaDeviceGetAttribute(ctypes.byref(major), 75, device)
    lib.cudaDeviceGetAttribute(ctypes.byref(minor), 76, device)
    return f"{major.value}.{minor.value}"


def _range(lo: int, opt: int, hi: int) -> dict[str, int]:
    return {"min": lo, "opt": min(max(opt, lo), hi), "max": hi}


def cache_profiles(dims: dict[str, dict]) -> list[dict[str, dict]]:
    """A KV-cache decoder's shape ranges as three profiles whose every corner is a shape the
    graph can have (total = past + new; one range per dim would pair past 1023 with new 1024):
    prefill (past 0), decode (one new token), extend (several new tokens on a cache)."""
    new, past, total = dims["new"], dims["past"], dims["total"]
    top = min(total["max"], past["max"] + new["max"])
    prefill_new = _range(max(new["min"], 1), new["opt"] if new["opt"] > 1 else 32, min(new["max"], top))
    decode_past = _range(max(past["min"], 1), past["opt"], min(past["max"], top - 1))
    half = max(2, top // 2)
    extend_past = _range(1, 16, min(past["max"], top - half))
    extend_new = _range(2, 8, min(new["max"], half))
    shift = lambda a, b: {k: a[k] + b[k] for k in ("min", "opt", "max")}  # noqa: E731
    return [
        {**dims, "past": _range(0, 0, 0), "new": prefill_new, "total": prefill_new},
        {**dims, "past": decode_past, "new": _range(1, 1, 1), "total": shift(decode_past, _range(1, 1, 1))},
        {**dims, "past": extend_past, "new": extend_new, "total": shift(extend_past, extend_new)},
    ]


def profiles_for(inputs: list[dict], dims: dict[str, dict]) -> list[dict[str, dict[str, list[int]]]]:
    """TensorRT optimisation profiles from the recipe's shape ranges (input -> min/opt/max
    shapes): one, or for a KV-cache decoder (dims past, new and total) prefill, decode and extend
    (cache_profiles). Profiles are listed best first: the runtime takes the first that fits."""
    ranges = cache_profiles(dims) if {"past", "new", "total"} <= set(dims) else [dims]
    profiles = []
    for r in ranges:
        profiles.append({spec["name"]: {k: [d if isinstance(d, int) else r[d][k] for d in spec["shape"]]
                                        for k in ("min", "opt", "max")} for spec in inputs})
    return profiles


def choose_profile(profiles: list[dict], feed: dict) -> int:
    """The first profile whose [min, max] holds every input's shape (the C++ runtime's rule)."""
    for i, profile in enumerate(profiles):
        if all(all(lo <= n <= hi for lo, n, hi in zip(r["min"], feed[name].shape, r["max"]))
               for name, r in profile.items() if name in feed):
            return i
    shapes = {name: list(v.shape) for name, v in feed.items()}
    raise InputShapeError(f"no optimisation profile fits the input shapes {shapes}; profiles: {profiles}")


def plan_name(cc: str, precision: str) -> str:
    return f"model.sm{cc.replace('.', '')}.{precision}.plan"


def build_plan(onnx_path: Path, plan_path: Path, profiles: list[dict], precision: str,
               version_compatible: bool = False, timing_cache: Path | None = None) -> None:
    """A serialized TensorRT engine from an ONNX file (polygraphy's TensorRT loaders)."""
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    from polygraphy.backend.trt import (CreateConfig, Profile, engine_bytes_from_network,
                                        network_from_onnx_path)
    trt_profiles = []
    for prof in profiles:
        p = Profile()
        for name, shapes in prof.items():
            p.add(name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
        trt_profiles.append(p)
    cache = str(timing_cache) if timing_cache else None
    config = CreateConfig(fp16=precision == "fp16", bf16=precision == "bf16", profiles=trt_profiles,
                          load_timing_cache=cache, version_compatible=version_compatible,
                          exclude_lean_runtime=version_compatible)
    network = network_from_onnx_path(str(onnx_path))
    plan = engine_bytes_from_network(network, config=config, save_timing_cache=cache)
    plan_path.write_bytes(bytes(plan))


def build_tensorrt(engine_tmp: Path, onnx_file: str, manifest_inputs: list[dict], dims: dict,
                   precisions: list[str], version_compatible: bool, previous: Path | None,
                   progress=lambda msg: None) -> tuple[list[dict], str | None]:
    """TensorRT artifacts for the manifest, or ([], why not). A plan whose inputs (TensorRT
    version, GPU, precision, profiles, ONNX hash, version compatibility) are unchanged is taken
    from the previous build of the same engine instead of being rebuilt."""
    why = tensorrt_unavailable()
    if why:
        return [], why
    import shutil

    import tensorrt as trt

    from ..paths import cache_dir
    from .manifest import artifact_entry, read_manifest, sha256_file
    cc = compute_capability()
    onnx_sha = sha256_file(engine_tmp / onnx_file)
    profiles = profiles_for(manifest_inputs, dims)
    old = []
    if previous is not None:
        try:
            old = [a for a in read_manifest(previous)["artifacts"] if a["format"] == "tensorrt"]
        except Exception:  # an unreadable previous build is simply not reused
            old = []
    timing_cache = cache_dir() / "tensorrt" / f"timing-sm{cc.replace('.', '')}-{trt.__version__}.cache"
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    artifacts = []
    for precision in precisions:
        file = plan_name(cc, precision)
        key = {"precision": precision, "compute_capability": cc, "profiles": profiles,
               "onnx_sha256": onnx_sha, "version_compatible": version_compatible,
               "versions": {"tensorrt": trt.__version__}}
        same = next((a for a in old if all(a.get(k) == v for k, v in key.items())), None)
        if same and previous is not None and (previous / same["file"]).is_file() \
                and sha256_file(previous / same["file"]) == same["sha256"]:
            progress(f"  tensorrt {precision}: unchanged, reusing {same['file']}")
            shutil.copy2(previous / same["file"], engine_tmp / file)
        else:
            progress(f"  tensorrt {precision}: building {file} (sm {cc}, TensorRT {trt.__version__})")
            build_plan(engine_tmp / onnx_file, engine_tmp / file, profiles, precision,
                       version_compatible, timing_cache)
        artifacts.append(artifact_entry(engine_tmp, "tensorrt", file, device="cuda", **key))
    return artifacts, None
