"""kiln's one error type, with the same codes as the C++ runtime (cpp/include/kiln/error.h).

Every error names the thing that is wrong, what was expected, and what to do.
The C++ runtime raises `kiln::Error{code, message}`; the bindings translate it into the
subclass below with the same code, so `except kiln.ShapeError` works whichever side failed.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    # keep in sync with cpp/include/kiln/error.h (tests/test_errors.py checks)
    INVALID_ARGUMENT = 1  # a bad option or argument (unknown backend name, bad value)
    INPUT_NAME = 2  # a missing, extra or misnamed input
    INPUT_DTYPE = 3  # wrong dtype
    INPUT_SHAPE = 4  # wrong rank or a dimension outside the range
    MANIFEST = 5  # manifest missing, unreadable, other format version, missing fields
    ARTIFACT = 6  # artifact missing, truncated or corrupt
    BACKEND_UNAVAILABLE = 7  # backend not built in, or not usable on this machine
    CHECKPOINT = 8  # checkpoint keys or shapes don't fit the model
    INPUT_VALUE = 9  # an input's content is invalid (empty text, too long, bad file)
    RUNTIME = 10  # the backend failed while running
    DEVICE = 11  # no usable CUDA device / driver
    VERSION = 12  # artifact built for another version or GPU


class KilnError(Exception):
    """Base class of every kiln error. `code` is an ErrorCode."""

    code: ErrorCode = ErrorCode.RUNTIME

    def __init__(self, message: str, code: ErrorCode | int | None = None):
        super().__init__(message)
        if code is not None:
            self.code = ErrorCode(code)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgumentError(KilnError, ValueError):
    code = ErrorCode.INVALID_ARGUMENT


class InputNameError(KilnError, KeyError):
    code = ErrorCode.INPUT_NAME

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class InputDTypeError(KilnError, TypeError):
    code = ErrorCode.INPUT_DTYPE


class InputShapeError(KilnError, ValueError):
    code = ErrorCode.INPUT_SHAPE


class ManifestError(KilnError):
    code = ErrorCode.MANIFEST


class ArtifactError(KilnError):
    code = ErrorCode.ARTIFACT


class BackendUnavailableError(KilnError):
    code = ErrorCode.BACKEND_UNAVAILABLE


class CheckpointError(KilnError):
    code = ErrorCode.CHECKPOINT


class InputValueError(KilnError, ValueError):
    code = ErrorCode.INPUT_VALUE


class RuntimeFailure(KilnError, RuntimeError):
    code = ErrorCode.RUNTIME


class DeviceError(KilnError):
    code = ErrorCode.DEVICE


class VersionError(KilnError):
    code = ErrorCode.VERSION


ERROR_CLASSES: dict[ErrorCode, type[KilnError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        InputNameError,
        InputDTypeError,
        InputShapeError,
        ManifestError,
        ArtifactError,
        BackendUnavailableError,
        CheckpointError,
        InputValueError,
        RuntimeFailure,
        DeviceError,
        VersionError,
    )
}


def from_code(code: int, message: str) -> KilnError:
    """The Python exception for a C++ error code (used by the bindings)."""
    cls = ERROR_CLASSES.get(ErrorCode(code), KilnError)
    return cls(message)
