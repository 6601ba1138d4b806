"""The machine's own limits, measured in the same run as a benchmark (`kiln bench`).

An absolute time holds on one machine only; the share of the machine's limit a backend reaches
holds on every machine. So every benchmark measures, beside the model:

    cpu_info()                   the CPU model, the ISA flags that matter (AVX-512, VNNI, AMX,
                                 BF16), the BLAS and oneDNN that torch was built with
    Work.of(module, args)        what one call of the eager model does: matmul shapes and FLOPs,
                                 all FLOPs (torch's FlopCounterMode), the bytes it must read at
                                 least (each tensor it reads once; an embedding only its rows)
    gemm_rate(shapes)            GFLOP/s of torch.mm on the model's own matmul shapes
    bandwidth(nbytes)            a streaming read as large as the weights: GB/s (the best of a
                                 sum and a GEMV, both bound by memory), on the pages this
                                 process gives an engine's weights (huge where it was started so)

and reports per backend: for encoders and prefill, the time the model's FLOPs take at the
GEMM speed measured on its own shapes, over the measured time (the GEMM share); for decode
steps, the bytes a step must read over the measured step time, over the streaming bandwidth
(the bandwidth share). Both are at most about 1 for a backend that does no redundant work.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)


def cpu_model_name() -> str:
    """The first "model name" line of /proc/cpuinfo (what kiln::detail::cpu_model_name reads)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return ""


def cpu_info() -> dict:
    """What a figure means only beside: the CPU, its flags, the BLAS / oneDNN torch calls."""
    import torch

    name, vendor, flags = cpu_model_name(), "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "vendor_id":
                vendor = value.strip()
            elif key == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    config = torch.__config__.show()
    blas = next((p.split("=", 1)[1] for p in config.replace(",", " ").split() if p.startswith("BLAS_INFO=")), "?")
    onednn = next((line.strip(" -") for line in config.splitlines() if "MKL-DNN" in line or "oneDNN" in line), "")
    return {
        "cpu": name or platform.processor(),
        "vendor": vendor,
        "cores": os.cpu_count(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": blas,
        "onednn": onednn.split(" (")[0],
    }


# --- what one call does ----------------------------------------------------------------------------

MATMULS = ("mm", "addmm", "bmm", "baddbmm", "matmul")
GATHERS = ("embedding", "index_select")  # read only the rows they return


@dataclass
class Work:
    """One call of a model: FLOPs and the least bytes it must read."""

    flops: float = 0.0  # every op FlopCounterMode counts (matmuls, convolutions, attention)
    matmul_flops: dict[tuple[int, int, int], float] = field(default_factory=dict)  # (M, K, N) -> FLOPs
    bytes_read: float = 0.0  # each distinct tensor read once; a gathered table only its rows

    def add_matmul(self, batch: int, m: int, k: int, n: int) -> None:
        key = (int(m), int(k), int(n))
        self.matmul_flops[key] = self.matmul_flops.get(key, 0.0) + 2.0 * batch * m * k * n

    @classmethod
    def of(cls, call: Callable[[], Any]) -> Work:
        """Run `call` (the eager model, once) and record what it does."""
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import FlopCounterMode

        work = cls()
        seen: dict[int, int] = {}  # storage address -> most bytes read from it
        alive = []  # every storage read, held until the end: a freed address must not be reused

        def read(t: torch.Tensor, nbytes: int | None = None) -> None:
            storage = t.untyped_storage()
            alive.append(storage)
            key = storage.data_ptr()
            seen[key] = max(seen.get(key, 0), t.numel() * t.element_size() if nbytes is None else nbytes)

        class Record(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                name = func._overloadpacket.__name__
                tensors = [a for a in args if isinstance(a, torch.Tensor)]
                if name in GATHERS and isinstance(out, torch.Tensor):
                    read(tensors[0], out.numel() * out.element_size())
                    for t in tensors[1:]:
                        read(t)
                else:
                    for t in tensors:
                        if t.device.type == "cpu" and t.numel():
                            read(t)
                if name == "linear":  # (input (..., K), weight (N, K), bias): one (M, K) x (K, N)
                    x, weight = tensors[0], tensors[1]
                    k, n = x.shape[-1], weight.shape[0]
                    work.add_matmul(1, x.numel() // max(k, 1), k, n)
                elif name in MATMULS and tensors[-2].dim() >= 2 and tensors[-1].dim() >= 2:
                    a, b = tensors[-2], tensors[-1]
                    batch = a.numel() // max(a.shape[-2] * a.shape[-1], 1)
                    work.add_matmul(batch, a.shape[-2], a.shape[-1], b.shape[-1])
                return out

        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter, Record():
            call()
        work.flops = float(counter.get_total_flops())
        work.bytes_read = float(sum(seen.values()))
        return work

    def top_shapes(self, cover: float = 0.9, most: int = 4) -> list[tuple[int, int, int]]:
        """The matmul shapes that hold `cover` of the matmul FLOPs (at most `most`)."""
        total = sum(self.matmul_flops.values())
        out: list[tuple[int, int, int]] = []
        done = 0.0
        for shape, f in sorted(self.matmul_flops.items(), key=lambda kv: -kv[1]):
            if done >= cover * total or len(out) >= most:
                break
            out.append(shape)
            done += f
        return out


# --- the machine's limits -----------------------------------------------------------------------------


def _best_seconds(fn: Callable[[], Any], budget_s: float, least: int = 3) -> float:
    """The fastest of repeated calls within a budget (the limit is what the machine can do)."""
    fn()
    best, spent, n = float("inf"), 0.0, 0
    while n < least or spent < budget_s:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent, n = min(best, dt), spent + dt, n + 1
        if n >= 200:
            break
    return best


def _restoring_threads(probe: Callable[..., Any]) -> Callable[..., Any]:
    """A probe runs on its `threads`, then gives the process back the intra-op thread count it
    had: a caller in the same process (a test, a server comparing bits) keeps its own."""

    @functools.wraps(probe)
    def run(*args: Any, **kwargs: Any) -> Any:
        import torch

        before = torch.get_num_threads()
        try:
            return probe(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return run


@_restoring_threads
def gemm_rate(shapes: list[tuple[int, int, int]], threads: int, budget_s: float = 0.5) -> dict[str, float]:
    """GFLOP/s of a fp32 torch.mm per (M, K, N) shape, plus the 1024^3 reference; key "MxKxN"."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for m, k, n in [*shapes, (1024, 1024, 1024)]:
        key = f"{m}x{k}x{n}"
        if key in out:
            continue
        a, b = torch.randn(m, k), torch.randn(k, n)
        c = torch.empty(m, n)
        secs = _best_seconds(functools.partial(torch.mm, a, b, out=c), budget_s)
        out[key] = 2.0 * m * k * n / secs / 1e9
    return out


def huge_pages_advised() -> bool:
    """Whether this process's large allocations (an engine's weights, and the probes' buffers, made
    by the same allocator) go on transparent huge pages: glibc's malloc was started with hugetlb
    set in GLIBC_TUNABLES, as the `kiln` command and kiln-run start themselves
    (kiln.command.entry). A 371 MB read measured 34 GB/s on 4 KiB pages, 37 GB/s on huge pages:
    the probes share the weights' pages, so a share compares like with like."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(t.strip() in ("glibc.malloc.hugetlb=1", "glibc.malloc.hugetlb=2") for t in tunables.split(":"))


@_restoring_threads
def bandwidth(nbytes: float, threads: int, budget_s: float = 1.0) -> dict[str, float]:
    """A streaming read of `nbytes` (at least 64 MiB, beyond the caches): GB/s of a sum and of a
    GEMV (what a decode step is) over the same buffer, and the best of both ("read")."""
    import torch

    torch.set_num_threads(threads)
    cols = 4096
    rows = max(int(max(nbytes, 64 << 20) // (4 * cols)), 1)
    x = torch.randn(rows, cols)
    v = torch.randn(cols)
    size = x.numel() * 4
    sum_gbs = size / _best_seconds(lambda: x.sum(), budget_s / 2) / 1e9
    gemv_gbs = size / _best_seconds(lambda: torch.mv(x, v), budget_s / 2) / 1e9
    return {
        "bytes": float(size),
        "sum_GBps": sum_gbs,
        "gemv_GBps": gemv_gbs,
        "read_GBps": max(sum_gbs, gemv_gbs),
        "huge_pages": huge_pages_advised(),
    }


@_restoring_threads
def linear_kernels(m: int, k: int, n: int, threads: int, budget_s: float = 0.6) -> dict[str, float]:
    """GB/s of weight read by the fp32 linear kernels a compiled graph can call for one (M, K, N)
    projection (kiln.exporters.layout chooses among them at build): MKL's GEMM over a weight
    stored (in, out) and over one stored (out, in), and oneDNN's prepacked linear."""
    import torch

    torch.set_num_threads(threads)
    w = torch.randn(n, k)
    x = torch.randn(m, k)
    w_in_out = w.t().contiguous()
    kernels: dict[str, Callable[[], Any]] = {
        "mkl_in_out": lambda: torch.mm(x, w_in_out),
        "mkl_out_in": lambda: torch.nn.functional.linear(x, w),
    }
    if torch.backends.mkldnn.is_available():  # x86 builds of torch
        packed = torch.ops.mkldnn._reorder_linear_weight(w, m)
        kernels["onednn_prepacked"] = lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    with torch.no_grad():
        return {name: w.nbytes / _best_seconds(f, budget_s / len(kernels)) / 1e9 for name, f in kernels.items()}


def gemm_seconds(work: Work, rates: Mapping[str, float]) -> float:
    """The least time this call's FLOPs take at this machine's GEMM speed: each measured matmul
    shape at its own rate, every other FLOP at the slowest rate measured on the model's shapes."""
    measured = {k: v for k, v in rates.items() if k != "1024x1024x1024"} or dict(rates)
    floor = min(measured.values())
    secs, counted = 0.0, 0.0
    for (m, k, n), f in work.matmul_flops.items():
        rate = measured.get(f"{m}x{k}x{n}")
        if rate:
            secs += f / (rate * 1e9)
            counted += f
    return secs + max(work.flops - counted, 0.0) / (floor * 1e9)


def wrapper_source(pt2: Path) -> str:
    """The C++ source Inductor generated for an AOTInductor package's model (its wrapper.cpp
    entries): it names the extern kernels and each constant's shape, stride and oneDNN layout.
    Raises OSError or zipfile.BadZipFile for a file that is not a readable package."""
    import zipfile

    with zipfile.ZipFile(pt2) as z:
        return "".join(z.read(i).decode(errors="replace") for i in z.infolist() if i.filename.endswith("wrapper.cpp"))


def artifact_kernels(pt2: Path) -> dict[str, int]:
    """The extern kernels an AOTInductor package calls, by name and count (its generated wrapper
    names them): oneDNN's prepacked linear (`_linear_pointwise`), MKL's packed GEMM
    (`mkl_linear`), torch's BLAS (`mm`, `addmm`, `bmm`), attention kernels ..."""
    import re
    import zipfile
    from collections import Counter

    try:
        text = wrapper_source(pt2)
    except (OSError, zipfile.BadZipFile):
        return {}
    counts: Counter[str] = Counter(re.findall(r"aoti_torch_cpu_(\w+?)\(", text))
    counts.update(re.findall(r"\bmkl_linear\b", text))
    return dict(counts.most_common())
