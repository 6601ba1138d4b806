"""The Python face of kiln's C++ runtime (libkiln, through the kiln._kiln bindings).

    engine = Engine("engines/minilm-feature-extraction")          # backend "auto"
    out = engine.run({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    out["embeddings"]                                             # numpy.ndarray

Inputs are numpy arrays or torch tensors on the CPU, borrowed without a copy when they are
C-contiguous; a non-contiguous one (a transposed or sliced view) is copied here first, and a
torch tensor that requires grad is detached. Outputs are numpy arrays that own the runtime's
result (no copy). Errors are kiln.errors classes: InputNameError, InputDTypeError,
InputShapeError, ManifestError, ArtifactError, BackendUnavailableError, RuntimeFailure...
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from kiln import _kiln  # type: ignore[attr-defined]  # the C++ extension

__all__ = ["Engine", "TensorSpec", "available_backends"]


class TensorSpec(NamedTuple):
    name: str
    dtype: str  # "float32", "int64", ...
    shape: tuple[int | str, ...]  # symbolic dimensions by name


def available_backends() -> list[str]:
    """Backends compiled into this build and usable on this machine, best first."""
    return list(_kiln.available_backends())


def _as_array(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value if value.flags.c_contiguous else np.ascontiguousarray(value)
    # torch.Tensor, without importing torch: DLPack refuses tensors that require grad.
    if hasattr(value, "__dlpack__") and hasattr(value, "is_contiguous"):
        if getattr(value, "requires_grad", False):
            value = value.detach()
        if not value.is_contiguous():
            value = value.contiguous()
    return value  # anything else is the runtime's to accept or reject (InputValueError)


class Engine:
    """An engine directory (manifest.json + artifacts) opened on one backend.

    backend: "auto" (the best available here: AOTInductor before TorchScript) or a name
    from available_backends(). num_threads: intra-op threads, 0 leaves the setting as it
    is (process-wide in libtorch); at most 4 x the hardware threads (InvalidArgumentError
    beyond). verify_sha256: check the artifact's hash at open (its
    size is always checked). `run` is safe to call from several threads; it releases the GIL.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        backend: str = "auto",
        num_threads: int = 0,
        verify_sha256: bool = True,
        precision: str = "auto",
    ):
        """precision: which artifact to run ("auto": fp32, else fp16, else bf16 (TensorRT plans),
        else int8 (CPU artifacts of `kiln build --precision int8`)); "int8" with backend "auto"
        picks the first backend that has an int8 artifact."""
        self._engine = _kiln.Engine(os.fspath(path), backend, num_threads, verify_sha256, precision)
        self._manifest: dict | None = None

    @property
    def name(self) -> str:
        """The engine directory's name (used in error messages)."""
        return self._engine.name

    @property
    def precision(self) -> str:
        """The precision of the artifact running: "fp32", "int8", or a TensorRT plan's "fp16" / "bf16"."""
        return self._engine.precision

    @property
    def path(self) -> str:
        return self._engine.dir

    @property
    def backend(self) -> str:
        """The backend running it: "aoti", "torchscript", ..."""
        return self._engine.backend

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(n, d, tuple(s)) for n, d, s in self._engine.inputs]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(n, d, tuple(s)) for n, d, s in self._engine.outputs]

    @property
    def manifest(self) -> dict:
        """manifest.json, parsed (config, dims, labels, processing, ...)."""
        if self._manifest is None:
            self._manifest = json.loads(self._engine.manifest_json)
        return self._manifest

    def validate(self, inputs: Mapping[str, Any]) -> None:
        """Raise the error `run` would raise for these inputs, without running: names, dtypes,
        shapes, derived dims (total = past + new) and the manifest's value ranges (token ids
        below the vocabulary size, masks of 0 and 1, ...)."""
        self._engine.validate({name: _as_array(v) for name, v in inputs.items()})

    def run(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run on {input name: array}; returns {output name: numpy array} in manifest order."""
        return self._engine.run({name: _as_array(v) for name, v in inputs.items()})

    def __repr__(self) -> str:
        return f"Engine({self.path!r}, backend={self.backend!r})"


# The generation loop's Python face lives in kiln.generate; re-exported here beside Engine.
from kiln.generate import GenerationResult, Generator  # noqa: E402

__all__ += ["Generator", "GenerationResult"]
