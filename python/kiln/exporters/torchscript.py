"""TorchScript: torch.jit.trace of the kiln model (CPU, fp32)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


def export_torchscript(model: torch.nn.Module, example: tuple[torch.Tensor, ...], path: Path) -> None:
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in 2.13, still supported
        traced = torch.jit.trace(model, example, check_trace=False)
        traced = torch.jit.freeze(traced.eval())
        traced.save(str(path))
