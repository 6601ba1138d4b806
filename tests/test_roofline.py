"""The machine's limits beside every benchmark: what a call does (FLOPs, matmul shapes, least
bytes read), the probes, and the shares the bench reports."""

import pytest
import torch

from kiln import roofline
from kiln.roofline import Work


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(1000, 64)
        self.up = torch.nn.Linear(64, 256)
        self.down = torch.nn.Linear(256, 64, bias=False)

    def forward(self, ids):
        h = self.embed(ids)  # (B, T, 64)
        return self.down(torch.relu(self.up(h))) @ h.transpose(1, 2)  # (B, T, T)


def test_work_counts_flops_shapes_and_the_least_bytes_read():
    model, ids = Tiny(), torch.randint(0, 1000, (2, 10))
    work = Work.of(lambda: model(ids))
    tokens = 2 * 10
    assert work.matmul_flops == {
        (tokens, 64, 256): 2.0 * tokens * 64 * 256,
        (tokens, 256, 64): 2.0 * tokens * 256 * 64,
        (10, 64, 10): 2.0 * 2 * 10 * 64 * 10,  # the batched (B, T, 64) x (B, 64, T)
    }
    assert work.flops == sum(work.matmul_flops.values())
    assert work.top_shapes(cover=0.4) == [(tokens, 64, 256)]  # the two weights tie; the first holds 49 %
    assert set(work.top_shapes()) == {(tokens, 64, 256), (tokens, 256, 64)}
    # the embedding table is read only where the ids point (20 rows), every weight once
    weights = 4 * (64 * 256 + 256 + 256 * 64)
    rows = 4 * tokens * 64
    activations = 4 * tokens * (64 + 256 + 256 + 64)  # h, up, relu, down; ids are int64
    assert work.bytes_read == weights + rows + activations + 8 * tokens


def test_gemm_seconds_weighs_each_shape_by_its_own_rate():
    work = Work(flops=5e9, matmul_flops={(8, 8, 8): 2e9, (4, 4, 4): 2e9})
    rates = {"8x8x8": 100.0, "4x4x4": 50.0, "1024x1024x1024": 400.0}
    # 2 GFLOP at 100 + 2 GFLOP at 50 + the 1 GFLOP of other ops at the slowest model shape (50)
    assert roofline.gemm_seconds(work, rates) == pytest.approx(0.02 + 0.04 + 0.02)


def test_probes_measure_this_machine():
    rates = roofline.gemm_rate([(64, 128, 256)], threads=1, budget_s=0.05)
    assert set(rates) == {"64x128x256", "1024x1024x1024"} and all(0 < v < 1e5 for v in rates.values())
    bw = roofline.bandwidth(1 << 20, threads=1, budget_s=0.1)
    assert bw["bytes"] >= 64 << 20  # never a cache-sized probe
    assert bw["read_GBps"] == max(bw["sum_GBps"], bw["gemv_GBps"]) and 0.1 < bw["read_GBps"] < 1e4


def test_probes_and_weights_share_the_process_pages(monkeypatch):
    """The bandwidth probe's buffer comes from the allocator that holds an engine's weights, so a
    share compares like with like; the report says whether that allocator gives huge pages (glibc
    started with hugetlb, as the `kiln` command and kiln-run are), and in such a process a large
    tensor does sit on them."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
    assert roofline.huge_pages_advised()
    for plain in ("", "glibc.malloc.hugetlb=0", "glibc.malloc.arena_max=2"):
        monkeypatch.setenv("GLIBC_TUNABLES", plain)
        assert not roofline.huge_pages_advised()
    assert roofline.bandwidth(1 << 20, threads=1, budget_s=0.05)["huge_pages"] is False

    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if not thp.is_file() or "[never]" in thp.read_text():
        pytest.skip("this kernel offers no transparent huge pages (THP 'never' or absent)")
    code = (
        "import torch, re; x = torch.randn(16, 1 << 20); x.add_(1); "  # 64 MiB, touched
        "print(re.search(r'AnonHugePages:\\s+(\\d+)', open('/proc/self/smaps_rollup').read()).group(1))"
    )
    huge_kb = {}
    for tunables in ("glibc.malloc.hugetlb=1", ""):
        out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "GLIBC_TUNABLES": tunables},
                             capture_output=True, text=True, check=True)
        huge_kb[tunables] = int(out.stdout.split()[-1])
    assert huge_kb["glibc.malloc.hugetlb=1"] >= 32 * 1024  # kB: at least half of the tensor
    assert huge_kb[""] < huge_kb["glibc.malloc.hugetlb=1"]


def test_cpu_info_names_the_machine():
    info = roofline.cpu_info()
    assert info["cpu"] and info["cores"] >= 1
    assert info["blas"] in ("mkl", "open", "openblas", "accelerate", "?") or info["blas"]
    assert set(info["isa"]) <= set(roofline.ISA_FLAGS)
    flags = open("/proc/cpuinfo").read()
    assert ("avx512f" in info["isa"]) == (" avx512f " in flags)


def test_kiln_sets_a_short_openmp_spin_unless_told_or_too_late():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    probe = "import os; print(os.environ.get('GOMP_SPINCOUNT'))"

    def spin(code: str, **extra: str) -> str:
        return subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True,
                              text=True, check=True).stdout.strip()

    assert spin("import kiln; " + probe) == "3000"  # before torch loads libgomp
    assert spin("import kiln; " + probe, GOMP_SPINCOUNT="77") == "77"  # the user's choice stands
    assert spin("import torch, kiln; " + probe) == "None"  # libgomp has read it already: left alone


def test_the_probes_give_the_process_back_its_thread_count():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        roofline.gemm_rate([(8, 8, 8)], threads=1, budget_s=0.01)
        roofline.bandwidth(1 << 20, threads=1, budget_s=0.01)
        roofline.linear_kernels(1, 16, 16, threads=1, budget_s=0.01)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
