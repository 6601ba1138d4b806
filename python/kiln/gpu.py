"""What the GPU path needs to know without building anything: is there a CUDA device and a
TensorRT builder here, which GPU is it, and the TensorRT optimisation profiles of an engine's
shape ranges (the arithmetic the builder, the C++ runtime's profile choice and parity share).

Never create a TensorRT runtime without a device: with the CUDA toolkit but no driver, TensorRT
logs CUDA error 35 and the process can crash. `cuda_device_count` asks the CUDA runtime first.
"""

from __future__ import annotations

from .errors import InputShapeError

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
    missing = (
        "the TensorRT Python module (tensorrt) is not installed: on a GPU host, "
        "`pip install tensorrt` (its wheels download from NVIDIA's package index)"
    )
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
    name = next(n for n, r in dims.items() if r.get("sum"))
    past_name, new_name = dims[name]["sum"]
    new, past, total = dims[new_name], dims[past_name], dims[name]
    top = min(total["max"], past["max"] + new["max"])
    prefill_new = _range(max(new["min"], 1), new["opt"] if new["opt"] > 1 else 32, min(new["max"], top))
    decode_past = _range(max(past["min"], 1), past["opt"], min(past["max"], top - 1))
    half = max(2, top // 2)
    extend_past = _range(1, 16, min(past["max"], top - half))
    extend_new = _range(2, 8, min(new["max"], half))
    shift = lambda a, b: {k: a[k] + b[k] for k in ("min", "opt", "max")}  # noqa: E731
    return [
        {**dims, past_name: _range(0, 0, 0), new_name: prefill_new, name: prefill_new},
        {**dims, past_name: decode_past, new_name: _range(1, 1, 1), name: shift(decode_past, _range(1, 1, 1))},
        {**dims, past_name: extend_past, new_name: extend_new, name: shift(extend_past, extend_new)},
    ]


def profiles_for(inputs: list[dict], dims: dict[str, dict]) -> list[dict[str, dict[str, list[int]]]]:
    """TensorRT optimisation profiles from the recipe's shape ranges (input -> min/opt/max
    shapes): one, or for a KV-cache decoder (a dim total = past + new) prefill, decode and extend
    (cache_profiles). Profiles are listed best first: the runtime takes the first that fits."""
    ranges = cache_profiles(dims) if any(r.get("sum") for r in dims.values()) else [dims]
    profiles = []
    for r in ranges:
        profiles.append(
            {
                spec["name"]: {
                    k: [d if isinstance(d, int) else r[d][k] for d in spec["shape"]] for k in ("min", "opt", "max")
                }
                for spec in inputs
            }
        )
    return profiles


def choose_profile(profiles: list[dict], feed: dict) -> int:
    """The first profile whose [min, max] holds every input's shape (the C++ runtime's rule)."""
    for i, profile in enumerate(profiles):
        if all(
            all(lo <= n <= hi for lo, n, hi in zip(r["min"], feed[name].shape, r["max"]))
            for name, r in profile.items()
            if name in feed
        ):
            return i
    shapes = {name: list(v.shape) for name, v in feed.items()}
    raise InputShapeError(f"no optimisation profile fits the input shapes {shapes}; profiles: {profiles}")


def plan_name(cc: str, precision: str) -> str:
    return f"model.sm{cc.replace('.', '')}.{precision}.plan"
