"""AOTInductor: torch.export + aoti_compile_and_package into a .pt2 package (CPU)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch


def inductor_cache_dir() -> str:
    from ..paths import cache_dir

    return os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "inductor"))


# The weights go into the package beside the model's .so, as one blob (<wrapper>_weights.blob),
# not inside it: kiln's C++ runtime reads that blob into one buffer and hands the model its
# constants in place, so a process holds the weights once. Loaded from inside the .so (or left
# to torch's loader), they are resident twice while loading (cpp/src/backends/aoti.cpp, "the
# weights"). torch's own aoti_load_package reads such packages too.
WEIGHTS_BESIDE_SO = {
    "aot_inductor.package_constants_in_so": False,
    "aot_inductor.package_constants_on_disk_format": "binary_blob",
}


def export_program(
    model: torch.nn.Module, example: tuple[torch.Tensor, ...], dynamic_shapes: tuple
) -> torch.export.ExportedProgram:
    with torch.no_grad(), warnings.catch_warnings():
        # torch 2.13's own pytree code trips its LeafSpec deprecation; nothing for users to do
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        return torch.export.export(model, example, dynamic_shapes=dynamic_shapes, strict=False)


@contextlib.contextmanager
def packed_for_rows(rows: int | None) -> Iterator[None]:
    """Inductor packs each linear's weight for oneDNN with a row count as a hint
    (mkldnn._reorder_linear_weight(W, rows)): oneDNN picks the blocked layout for that many
    rows. Where the rows are dynamic, Inductor takes the export example's (a decoder's: 2 x 16).
    Inside this context it takes `rows` (None: Inductor's own choice). See layout.pack_rows."""
    if rows is None:
        yield
        return
    from torch._inductor.fx_passes import mkldnn_fusion

    own = mkldnn_fusion.optimization_hint
    mkldnn_fusion.optimization_hint = lambda expr, *args, **kwargs: rows
    try:
        yield
    finally:
        mkldnn_fusion.optimization_hint = own


def _compile(program: torch.export.ExportedProgram, path: Path, configs: dict, pack_rows: int | None = None) -> None:
    # Inductor applies freezing only with grad disabled: without no_grad the flag is silently
    # ignored (MiniLM b1 x 128: 26 ms -> 16 ms on the AMD EPYC machine).
    with torch.no_grad(), packed_for_rows(pack_rows):
        torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)


def export_aoti(
    model: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    dynamic_shapes: tuple,
    prepack: bool = True,
    pack_rows: int | None = None,
) -> None:
    """`prepack`: Inductor packs the linear weights for oneDNN (layout.prepack_linears says when
    MKL's GEMM is faster). Freezing folds the weights into the graph; with prepacking, linear
    becomes oneDNN's linear_pointwise instead of MKL's addmm (slow on AMD EPYC). `pack_rows`: the
    row count oneDNN lays the packed weights out for (layout.pack_rows; None: Inductor's)."""
    inductor_cache_dir()
    program = export_program(model, example, dynamic_shapes)
    configs = {"freezing": True, "cpp.weight_prepack": prepack, **WEIGHTS_BESIDE_SO}
    if prepack:
        _compile(program, path, configs, pack_rows)
        return
    # Inductor registers its oneDNN weight-packing patterns once per process, by the setting of
    # the first compile (freezing_patterns.lazy_init): an engine whose encoder is prepacked and
    # whose decoder is not would get both packed. So a compile without it runs in a process of
    # its own, and this one only ever compiles with it.
    with tempfile.TemporaryDirectory(prefix="kiln-aoti-") as tmp:
        saved = Path(tmp) / "program.pt2"
        torch.export.save(program, str(saved))
        proc = subprocess.run(
            [sys.executable, "-m", "kiln.exporters.aoti", str(saved), str(path), json.dumps(configs)],
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        from ..errors import KilnError

        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise KilnError(f"AOTInductor compile of {path.name} (no weight prepacking) failed in its process:\n{tail}")


if __name__ == "__main__":  # python -m kiln.exporters.aoti PROGRAM.pt2 PACKAGE.pt2 CONFIGS_JSON
    _compile(torch.export.load(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3]))
