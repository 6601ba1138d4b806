#!/usr/bin/env python3
"""Generate kiln's TensorRT operator table from onnx-tensorrt's published support matrix.

Input: `docs/operators.md` of https://github.com/onnx/onnx-tensorrt at a release tag
(the "Operator Support Matrix" Markdown table). Output: the TSV that `kiln check-trt`
reads (python/kiln/data/tensorrt_onnx_ops.tsv): `#` comment lines stating where the data
came from, then one line per operator, `operator<TAB>Y|N<TAB>comma-separated types`, in
the order of the source.

Getting the input (the committed table is release/10.1-GA):

    git clone https://github.com/onnx/onnx-tensorrt
    git -C onnx-tensorrt show release/10.1-GA:docs/operators.md > operators.md
    # or: curl -L -o operators.md https://raw.githubusercontent.com/onnx/onnx-tensorrt/release/10.1-GA/docs/operators.md

Regenerating the committed table (byte for byte from the same input):

    python scripts/gen_tensorrt_ops.py operators.md --tag release/10.1-GA \\
        --commit 96e781103cfc4adf4a6bb557e94bac8e693f6f4c > python/kiln/data/tensorrt_onnx_ops.tsv

The file alone does not say which revision it is, so --tag and --commit are written into
the header as given. The TensorRT version is the one in the tag (release/10.1-GA -> 10.1),
else --tensorrt, else the one the document's text names; the opset range is read from the
document's text ("... in the inclusive range of opset 9 to opset 20").

What is normalised, not copied: the Supported column becomes Y or N ("Y [EXPERIMENTAL]"
is Y); empty items of a type list (a trailing comma) are dropped, and two type names
with only a space between them (a missing comma) are read as two; type spellings that are
typos in the source (TYPO_FIXES) are corrected and each correction is listed in the header.
An unknown type name, a duplicated operator or a missing table is an error, so a changed
source is looked at rather than silently misread.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

SOURCE_REPO = "https://github.com/onnx/onnx-tensorrt"
SOURCE_FILE = "docs/operators.md"
OUTPUT = "python/kiln/data/tensorrt_onnx_ops.tsv"

# the element types the matrix uses (TensorRT's names, as kiln's checker compares them)
KNOWN_TYPES = {"FP32", "FP16", "BF16", "FP8", "INT4", "INT8", "INT32", "INT64", "UINT8", "BOOL"}
# misspellings in published revisions of the matrix: source spelling -> type
TYPO_FIXES = {"INF64": "INT64"}  # release/10.1-GA: ConstantOfShape "INF64"

_OPSET_RANGE = re.compile(r"TensorRT\s+(\d+(?:\.\d+)*)\s+supports\s+operators\s+in\s+the\s+inclusive\s+"
                          r"range\s+of\s+opset\s+(\d+)\s+to\s+opset\s+(\d+)", re.IGNORECASE)
_OPSET_UP_TO = re.compile(r"TensorRT\s+(\d+(?:\.\d+)*)\s+supports\s+operators\s+up\s+to\s+opset\s+(\d+)",
                          re.IGNORECASE)
_TAG_VERSION = re.compile(r"(\d+\.\d+(?:\.\d+)*)")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


class MatrixError(ValueError):
    pass


@dataclass
class Row:
    op: str
    supported: str  # "Y" or "N"
    types: list[str]


@dataclass
class Matrix:
    doc_version: str | None  # the TensorRT version the document's text names
    opset_lo: int | None
    opset_hi: int
    notes: list[str]
    rows: list[Row]
    corrections: list[str] = field(default_factory=list)


def _cells(line: str) -> list[str]:
    """The cells of one Markdown table row; the closing pipe is optional (the source omits it
    on some rows), escaped pipes stay inside their cell."""
    body = line.strip()
    if not body.startswith("|"):
        raise MatrixError(f"not a table row: {line!r}")
    body = body[1:]
    if body.endswith("|") and not body.endswith("\\|"):
        body = body[:-1]
    return [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(body)]


def _is_separator(line: str) -> bool:
    cells = _cells(line)
    return bool(cells) and all(re.fullmatch(r":?-{3,}:?", c) for c in cells if c)


def parse(text: str) -> Matrix:
    """The operator support matrix, opset range and notes of an operators.md."""
    prose = " ".join(text.split())
    m = _OPSET_RANGE.search(prose)
    if m:
        doc_version, lo, hi = m.group(1), int(m.group(2)), int(m.group(3))
    else:
        m = _OPSET_UP_TO.search(prose)
        if not m:
            raise MatrixError("no opset range in the document (expected 'TensorRT X supports operators in "
                              "the inclusive range of opset A to opset B')")
        doc_version, lo, hi = m.group(1), None, int(m.group(2))

    notes = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("TensorRT supports the following ONNX data types"):
            notes.append(s)
        elif s.startswith(">"):
            note = s.lstrip(">").strip()
            note = re.sub(r"^Note:\s*", "", note)
            if note:
                notes.append(note)

    lines = text.splitlines()
    start = None
    for i, line in enumerate(lines[:-1]):
        if line.strip().startswith("|") and _is_separator(lines[i + 1]):
            header = [c.lower() for c in _cells(line)]
            if "operator" in header and "supported" in header:
                start = i
                break
    if start is None:
        raise MatrixError("no operator table (a Markdown table with 'Operator' and 'Supported' columns)")
    header = [c.lower() for c in _cells(lines[start])]
    col_op, col_sup = header.index("operator"), header.index("supported")
    col_types = header.index("supported types") if "supported types" in header else None

    matrix = Matrix(doc_version, lo, hi, notes, [])
    seen = set()
    for n, line in enumerate(lines[start + 2:], start + 3):
        if not line.strip().startswith("|"):
            break
        cells = _cells(line)
        get = lambda c: cells[c] if c is not None and c < len(cells) else ""  # noqa: E731
        op, sup_text = get(col_op), get(col_sup)
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", op):
            raise MatrixError(f"line {n}: operator name {op!r}")
        if op in seen:
            raise MatrixError(f"line {n}: {op} is listed twice")
        seen.add(op)
        sup = sup_text.split()[0].upper() if sup_text else ""
        if sup not in ("Y", "N"):
            raise MatrixError(f"line {n}: {op}: Supported is {sup_text!r}, expected Y or N")
        types = []
        # items are comma-separated; a type name never holds a space, so "INT64 BOOL" (a comma
        # missing in release/10.0-GA's Split) is two items
        for t in re.split(r"[,\s]+", get(col_types)):
            if not t:
                continue  # an empty item: a trailing or doubled comma in the source
            if t in TYPO_FIXES:
                matrix.corrections.append(f"{op}: {t!r} read as {TYPO_FIXES[t]}")
                t = TYPO_FIXES[t]
            if t not in KNOWN_TYPES:
                raise MatrixError(f"line {n}: {op}: unknown type {t!r} (known: {sorted(KNOWN_TYPES)}; "
                                  "a new type goes into KNOWN_TYPES, a typo into TYPO_FIXES)")
            if t not in types:
                types.append(t)
        matrix.rows.append(Row(op, sup, types))
    if not matrix.rows:
        raise MatrixError("the operator table has no rows")
    return matrix


def render(matrix: Matrix, tag: str, commit: str, tensorrt: str | None = None) -> str:
    """The TSV, header first; a function of its arguments only (no dates), so that the same
    input gives the same bytes."""
    version = tensorrt
    if version is None:
        m = _TAG_VERSION.search(tag)
        version = m.group(1) if m else matrix.doc_version
    if version is None:
        raise MatrixError("no TensorRT version: give --tensorrt")
    opsets = (f"{matrix.opset_lo}-{matrix.opset_hi}" if matrix.opset_lo is not None
              else f"up to {matrix.opset_hi}")
    described = f"TensorRT {version}"
    if matrix.doc_version and matrix.doc_version != version:
        described += f" (the document's own text still names TensorRT {matrix.doc_version})"
    out = [
        "# TensorRT's ONNX parser: which ONNX operators it accepts (Y/N) and on which element types.",
        f"# source: {SOURCE_REPO} {SOURCE_FILE}, the Operator Support Matrix",
        f"# revision: tag {tag}, commit {commit}",
        f"# describes: {described}",
        f"# opsets: {opsets}",
    ]
    out += [f"# source note: {note}" for note in matrix.notes]
    out += [f"# corrected: {c}" for c in matrix.corrections]
    out += [
        "# generated by scripts/gen_tensorrt_ops.py, do not edit; to regenerate:",
        f"#   git clone {SOURCE_REPO}",
        f"#   git -C onnx-tensorrt show {tag}:{SOURCE_FILE} > operators.md",
        f"#   python scripts/gen_tensorrt_ops.py operators.md --tag {tag} --commit {commit}"
        + (f" --tensorrt {tensorrt}" if tensorrt else "") + f" > {OUTPUT}",
        "# operator\tsupported\ttypes",
    ]
    out += [f"{r.op}\t{r.supported}\t{', '.join(r.types)}" for r in matrix.rows]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="see the module docstring for how to get operators.md")
    p.add_argument("operators_md", help="onnx-tensorrt's docs/operators.md at the release to describe")
    p.add_argument("--tag", required=True, help="the onnx-tensorrt tag the file is from, e.g. release/10.1-GA")
    p.add_argument("--commit", required=True, help="the commit the tag points to (40 hex digits)")
    p.add_argument("--tensorrt", help="the TensorRT version described (default: the tag's)")
    p.add_argument("-o", "--output", help="write here instead of stdout")
    args = p.parse_args(argv)
    if not re.fullmatch(r"[0-9a-f]{40}", args.commit):
        p.error(f"--commit {args.commit!r}: expected a full 40-hex-digit commit id")
    try:
        text = render(parse(Path(args.operators_md).read_text(encoding="utf-8")), args.tag, args.commit,
                      args.tensorrt)
    except MatrixError as e:
        print(f"{args.operators_md}: {e}", file=sys.stderr)
        return 1
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8", newline="\n")
    else:
        sys.stdout.buffer.write(text.encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
