"""Triton's model configuration (config.pbtxt) as plain Python data, written in protobuf text
format and checked against Triton's own schema.

    render({"name": "m", "max_batch_size": 8, "input": [{"name": "x", "data_type": Enum("TYPE_FP32"),
            "dims": [-1]}]})

A dict is a message, a list a repeated field, `Enum("KIND_CPU")` an enum value, and a dict under
`parameters` (or any `Map`) a protobuf map. `check(text)` parses the text with
`tritonclient.grpc.model_config_pb2.ModelConfig` (Triton's schema, shipped in tritonclient), so a
misspelt field or enum fails here, not on the GPU host.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import InvalidArgumentError

# kiln's dtypes -> Triton's (model_config.proto DataType)
TRITON_DTYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16",
    "int64": "TYPE_INT64",
    "int32": "TYPE_INT32",
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
}


class Enum(str):
    """An enum value: written bare (KIND_CPU), where a plain str is written quoted."""


class Map(dict):
    """A protobuf map field: each item written as `key { key: ... value: ... }`."""


def parameters(values: dict[str, Any]) -> Map:
    """Triton's `parameters` map (string -> ModelParameter { string_value })."""
    return Map({k: {"string_value": v if isinstance(v, str) else json.dumps(v)} for k, v in values.items()})


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string literal is a valid protobuf text string literal
    raise InvalidArgumentError(f"config value {value!r}: not a scalar Triton's config can hold")


def _inline(d: dict) -> str | None:
    """A small message of scalars on one line (`{ name: "x" data_type: TYPE_FP32 dims: [ -1 ] }`)."""
    parts = []
    for key, value in d.items():
        if key.startswith("#") or isinstance(value, dict):
            return None
        if isinstance(value, list):
            if any(isinstance(v, dict) for v in value):
                return None
            parts.append(f"{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        elif value is not None:
            parts.append(f"{key}: {_scalar(value)}")
    return "{ " + " ".join(parts) + " }"


def _field(key: str, value: Any, indent: str, lines: list[str]) -> None:
    if isinstance(value, Map):
        for k, v in value.items():
            if isinstance(v, dict):
                one = _inline(v)
                lines.append(f"{indent}{key} {{ key: {_scalar(k)} value {one} }}")
            else:
                lines.append(f"{indent}{key} {{ key: {_scalar(k)} value: {_scalar(v)} }}")
    elif isinstance(value, dict):
        lines.append(f"{indent}{key} {{")
        _message(value, indent + "  ", lines)
        lines.append(f"{indent}}}")
    elif isinstance(value, list):
        if all(not isinstance(v, dict) for v in value):
            lines.append(f"{indent}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{indent}{key} [")
            for i, v in enumerate(value):
                comma = "," if i < len(value) - 1 else ""
                one = _inline(v)
                if one is not None and len(indent) + len(one) <= 110:
                    lines.append(f"{indent}  {one}{comma}")
                    continue
                lines.append(f"{indent}  {{")
                _message(v, indent + "    ", lines)
                lines.append(f"{indent}  }}{comma}")
            lines.append(f"{indent}]")
    elif value is not None:
        lines.append(f"{indent}{key}: {_scalar(value)}")


def _message(d: dict, indent: str, lines: list[str]) -> None:
    for key, value in d.items():
        if key.startswith("#"):  # a comment: why a setting is what it is
            lines.extend(f"{indent}# {line}" for line in str(value).splitlines())
        else:
            _field(key, value, indent, lines)


def render(config: dict) -> str:
    """config.pbtxt text of a ModelConfig given as nested dicts (keys starting with '#' are comments)."""
    lines: list[str] = []
    _message(config, "", lines)
    return "\n".join(lines) + "\n"


def check(text: str, where: str = "config.pbtxt") -> Any:
    """Parse config.pbtxt text with Triton's ModelConfig schema; returns the message.
    InvalidArgumentError names the file and what the parser refused."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:  # the serve extra
        raise InvalidArgumentError(f"checking {where} needs tritonclient (pip install 'kiln[serve]'): {e}") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise InvalidArgumentError(f"{where}: not a valid Triton model configuration: {e}") from None


def schema_available() -> bool:
    try:
        import tritonclient.grpc.model_config_pb2  # noqa: F401
    except ImportError:
        return False
    return True
