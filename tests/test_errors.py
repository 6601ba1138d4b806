"""kiln's error codes are one list: the C++ enum and the Python ErrorCode agree, and a C++
error crosses the bindings as the Python class with the same code."""
import re
from pathlib import Path

import pytest

from kiln.errors import ERROR_CLASSES, ErrorCode, KilnError, ManifestError, from_code

HEADER = Path(__file__).resolve().parents[1] / "cpp" / "include" / "kiln" / "error.h"


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z])(?=[A-Z])", "_", name).upper()  # InputDType -> INPUT_DTYPE


def test_cpp_and_python_codes_are_the_same_list():
    enum = re.search(r"enum class ErrorCode : int \{(.*?)\};", HEADER.read_text(), re.S).group(1)
    cpp = {_snake(m.group(1)): int(m.group(2)) for m in re.finditer(r"(\w+)\s*=\s*(\d+)", enum)}
    assert cpp == {c.name: c.value for c in ErrorCode}
    assert set(ERROR_CLASSES) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode))
def test_from_code_gives_the_class_with_that_code(code):
    err = from_code(int(code), "msg")
    assert isinstance(err, KilnError) and err.code == code and str(err) == "msg"


def test_a_cpp_error_arrives_as_the_python_class(tmp_path):
    from kiln import _kiln
    with pytest.raises(ManifestError) as info:
        _kiln.Engine(str(tmp_path))
    assert info.value.code == ErrorCode.MANIFEST and "manifest.json" in str(info.value)
