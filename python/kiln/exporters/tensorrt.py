"""TensorRT engine building (runs where TensorRT and a GPU are).

`kiln build RECIPE --formats tensorrt` builds one plan per precision from the exported ONNX
through polygraphy's TensorRT backend (the tensorrt Python module underneath): the optimisation
profiles of the engine's shape ranges (kiln.gpu.profiles_for), a persistent timing cache,
optionally version-compatible plans for the lean runtime. The readiness of a graph for TensorRT's
parser is checked on the CPU by kiln.check_trt.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidArgumentError
from ..gpu import PRECISIONS, compute_capability, plan_name, profiles_for, tensorrt_unavailable
from ..manifest import Artifact, DimRange, TensorSpec


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    profiles: list[dict],
    precision: str,
    version_compatible: bool = False,
    timing_cache: Path | None = None,
) -> None:
    """A serialized TensorRT engine from an ONNX file (polygraphy's TensorRT loaders)."""
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path

    trt_profiles = []
    for prof in profiles:
        p = Profile()
        for name, shapes in prof.items():
            p.add(name, min=shapes["min"], opt=shapes["opt"], max=shapes["max"])
        trt_profiles.append(p)
    cache = str(timing_cache) if timing_cache else None
    config = CreateConfig(
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        profiles=trt_profiles,
        load_timing_cache=cache,
        version_compatible=version_compatible,
        exclude_lean_runtime=version_compatible,
    )
    network = network_from_onnx_path(str(onnx_path))
    plan = engine_bytes_from_network(network, config=config, save_timing_cache=cache)
    plan_path.write_bytes(bytes(plan))


def build_tensorrt(
    engine_tmp: Path,
    onnx_file: str,
    inputs: list[TensorSpec],
    dims: dict[str, DimRange],
    precisions: list[str],
    version_compatible: bool,
    previous: Path | None,
    progress: Callable[[str], None] = lambda msg: None,
) -> tuple[list[Artifact], str | None]:
    """TensorRT artifacts for one graph, or ([], why not). A plan whose inputs (TensorRT
    version, GPU, precision, profiles, ONNX hash, version compatibility) are unchanged is taken
    from the previous build of the same engine instead of being rebuilt."""
    why = tensorrt_unavailable()
    if why:
        return [], why
    import shutil

    import tensorrt as trt

    from ..errors import KilnError
    from ..manifest import read_graph_manifest, sha256_file
    from ..paths import cache_dir

    cc = compute_capability()
    onnx_sha = sha256_file(engine_tmp / onnx_file)
    profiles = profiles_for([s.to_json() for s in inputs], {n: r.to_json() for n, r in dims.items()})
    old: list[Artifact] = []
    if previous is not None:
        try:
            old = read_graph_manifest(previous).artifacts_of("tensorrt")
        except KilnError:  # an unreadable previous build is simply not reused
            old = []
    timing_cache = cache_dir() / "tensorrt" / f"timing-sm{cc.replace('.', '')}-{trt.__version__}.cache"
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    artifacts = []
    for precision in precisions:
        file = plan_name(cc, precision)
        key = {
            "compute_capability": cc,
            "profiles": profiles,
            "onnx_sha256": onnx_sha,
            "version_compatible": version_compatible,
        }
        versions = {"tensorrt": trt.__version__}
        same = next(
            (
                a
                for a in old
                if a.precision == precision
                and a.versions == versions
                and all(a.extra.get(k) == v for k, v in key.items())
            ),
            None,
        )
        if (
            same
            and previous is not None
            and (previous / same.file).is_file()
            and sha256_file(previous / same.file) == same.sha256
        ):
            progress(f"  tensorrt {precision}: unchanged, reusing {same.file}")
            shutil.copy2(previous / same.file, engine_tmp / file)
        else:
            progress(f"  tensorrt {precision}: building {file} (sm {cc}, TensorRT {trt.__version__})")
            build_plan(engine_tmp / onnx_file, engine_tmp / file, profiles, precision, version_compatible, timing_cache)
        artifacts.append(
            Artifact.of(engine_tmp, "tensorrt", file, precision=precision, device="cuda", versions=versions, **key)
        )
    return artifacts, None
