"""ONNX: torch.onnx.export (dynamo exporter) with dynamic dims; weights inline up to 1.5 GiB, beside it above."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch

OPSET = 20  # TensorRT 10 parses opsets 9-20


def export_onnx(
    model: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: tuple,
) -> None:
    # the dynamo exporter prints progress to stdout and logs at INFO; keep `kiln build` readable
    # (and its registry warns about torchvision ops, which no kiln model uses)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        # renaming axes that share a Dim is expected: one Dim object serves all inputs
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        program = torch.onnx.export(
            model,
            example,
            None,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
        )
    if program is None:  # only the TorchScript-based exporter returns nothing
        raise RuntimeError("torch.onnx.export (dynamo) returned no program")
    # weights over 1.5 GiB (torch's threshold; protobuf stops at 2 GB) go to <file>.data beside the
    # graph, which ONNX Runtime, onnx.load and TensorRT's parser read from there;
    # KILN_ONNX_EXTERNAL_DATA=1 always does so (tests)
    program.save(str(path), external_data=True if os.environ.get("KILN_ONNX_EXTERNAL_DATA") == "1" else None)
