"""The CPU-side TensorRT checks (every deployable's graphs are checked by the registry-driven
tests): the real MiniLM passes through the CLI, and the checker catches graphs TensorRT's parser
would not accept."""
import json
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

import kiln.check_trt as trt
from kiln.check_trt import DEFAULT_OPS_TABLE, OPSET_RANGE, check_graph, load_ops_table, ops_table_path
from kiln.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def table():
    return load_ops_table()


def _by_check(findings):
    return {f.check: f for f in findings}


def test_real_minilm_is_tensorrt_ready(minilm_engine, capsys, tmp_path):
    from kiln.cli import main
    code = main(["check-trt", str(minilm_engine), "--json", str(tmp_path / "t.json")])
    out = capsys.readouterr().out
    assert code == 0 and "ready for TensorRT" in out
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["pass"] is True and len(data["checks"]) == 7


def _model(nodes, inputs, outputs, opset=20, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_catches_an_unsupported_operator(tmp_path, table):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])
    theta = helper.make_tensor_value_info("theta", TensorProto.FLOAT, [1, 2, 3])
    size = helper.make_tensor("size", TensorProto.INT64, [4], [1, 1, 2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = _model([helper.make_node("AffineGrid", ["theta", "size"], ["y"])], [theta], [y], initializers=[size])
    onnx.save(m, tmp_path / "m.onnx")
    f = _by_check(check_graph(tmp_path / "m.onnx", table))["operators"]
    assert not f.ok and "AffineGrid (x1)" in f.detail


def test_constant_folding_leaves_nothing_in_the_temporary_directory(tmp_path, monkeypatch):
    # polygraphy's tools leave files there: a session file (.ses) on every run and, from its shape
    # inference on a model read from a path, tmp_polygraphy_*.onnx (as large as the model)
    import tempfile

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    one = helper.make_tensor("one", TensorProto.FLOAT, [2, 3], [1.0] * 6)
    nodes = [helper.make_node("Add", ["one", "one"], ["two"]),  # folds to a constant
             helper.make_node("Mul", ["x", "two"], ["y"])]
    onnx.save(_model(nodes, [x], [y], initializers=[one]), tmp_path / "m.onnx")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    f = trt.fold_constants(tmp_path / "m.onnx", tmp_path / "folded.onnx")
    assert f.ok and "2 -> 1 nodes" in f.detail, f.detail
    assert list(tmp.iterdir()) == []


def test_catches_float64_and_unsupported_types(tmp_path, table):
    a = helper.make_tensor_value_info("a", TensorProto.INT64, [2, 2])
    b = helper.make_tensor_value_info("b", TensorProto.INT64, [2, 2])
    c = helper.make_tensor_value_info("c", TensorProto.DOUBLE, [2, 2])
    nodes = [helper.make_node("MatMul", ["a", "b"], ["ab"]),  # TensorRT: MatMul is float only
             helper.make_node("Cast", ["ab"], ["c"], to=TensorProto.DOUBLE)]
    onnx.save(_model(nodes, [a, b], [c]), tmp_path / "m.onnx")
    checks = _by_check(check_graph(tmp_path / "m.onnx", table))
    assert not checks["types"].ok and "MatMul on INT64" in checks["types"].detail
    assert not checks["float64"].ok and "'c'" in checks["float64"].detail
    assert checks["operators"].ok


def test_catches_an_opset_outside_9_to_20(tmp_path, table):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    onnx.save(_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y], opset=21), tmp_path / "m.onnx")
    f = _by_check(check_graph(tmp_path / "m.onnx", table))["opset"]
    assert not f.ok and "opset 21" in f.detail
    onnx.save(_model([helper.make_node("Relu", ["x"], ["y"])], [x], [y], opset=17), tmp_path / "m.onnx")
    assert _by_check(check_graph(tmp_path / "m.onnx", table))["opset"].ok


def test_the_table_is_read_as_published(table):
    assert "MatMul" in table and table["MatMul"] == {"FP32", "FP16", "BF16"}
    assert "AffineGrid" not in table  # listed as N
    assert all(isinstance(t, set) for t in table.values())


def test_engine_building_code_type_checks_against_tensorrt_stubs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    mypy = [sys.executable, "-m", "mypy", "--config-file", str(root / "pyproject.toml")]
    ok = subprocess.run(mypy + [str(root / "python/kiln/exporters/tensorrt.py")], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    # the stubs are really consulted: a wrong use of the TensorRT API is caught
    bad = tmp_path / "bad.py"
    bad.write_text("import tensorrt as trt\nlogger = trt.Logger(trt.Logger.WARNING)\n"
                   "builder = trt.Builder(logger)\nbuilder.create_network(flags='x', extra=1)\n")
    caught = subprocess.run(mypy + [str(bad)], capture_output=True, text=True)
    assert caught.returncode == 1 and "create_network" in caught.stdout, caught.stdout


def test_build_without_tensorrt_says_what_is_missing_and_builds_the_rest(tmp_path, minilm_dir):
    from kiln.exporters import build
    from kiln.gpu import tensorrt_unavailable
    from kiln.recipe import load_recipe
    why = tensorrt_unavailable()
    if why is None:
        pytest.skip("TensorRT and a GPU are present: the GPU suite covers the build")
    result = build(load_recipe("bert-text-classification"), output=tmp_path / "e",
                   formats=["tensorrt"], precisions=["fp32", "fp16"])
    assert result.skipped == {"tensorrt": why}
    assert "tensorrt" in why.lower() or "gpu" in why.lower()
    assert [a.format for a in result.manifest.artifacts] == ["onnx"]  # what TensorRT builds from


def test_no_gpu_is_detected_without_touching_tensorrt():
    from kiln.gpu import cuda_device_count
    count, why = cuda_device_count()
    if count:
        pytest.skip(f"{count} CUDA device(s) present")
    assert why and ("CUDA" in why or "cudart" in why)


def test_comparisons_are_held_to_their_inputs_type(tmp_path, table):
    """Less outputs BOOL whatever it compares: the table's types are what it compares."""
    a = helper.make_tensor_value_info("a", TensorProto.INT64, [3])
    b = helper.make_tensor_value_info("b", TensorProto.INT64, [3])
    y = helper.make_tensor_value_info("y", TensorProto.BOOL, [3])
    onnx.save(_model([helper.make_node("Less", ["a", "b"], ["y"])], [a, b], [y]), tmp_path / "m.onnx")
    assert _by_check(check_graph(tmp_path / "m.onnx", table))["types"].ok
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [3])
    d = helper.make_tensor_value_info("d", TensorProto.BOOL, [3])
    onnx.save(_model([helper.make_node("Less", ["c", "d"], ["y"])], [c, d], [y]), tmp_path / "m.onnx")
    f = _by_check(check_graph(tmp_path / "m.onnx", table))["types"]
    assert not f.ok and "Less on BOOL" in f.detail


# --- the operator table itself: shipped with kiln, generated from onnx-tensorrt's published list ---

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "scripts" / "gen_tensorrt_ops.py"


def _committed() -> str:
    return DEFAULT_OPS_TABLE.read_text(encoding="utf-8")


def test_the_default_table_ships_with_kiln(monkeypatch):
    import kiln
    monkeypatch.delenv("KILN_TRT_OPS", raising=False)
    assert ops_table_path() == DEFAULT_OPS_TABLE
    assert DEFAULT_OPS_TABLE == Path(kiln.__file__).resolve().parent / "data" / "tensorrt_onnx_ops.tsv"
    assert DEFAULT_OPS_TABLE.is_file()
    text = _committed()
    # the header says where the data is from and which parser it describes
    assert re.search(r"^# source: https://github.com/onnx/onnx-tensorrt docs/operators.md", text, re.M)
    assert re.search(r"^# revision: tag release/10\.\d+-GA, commit [0-9a-f]{40}$", text, re.M)
    assert re.search(r"^# describes: TensorRT 10\.\d+", text, re.M)
    lo, hi = map(int, re.search(r"^# opsets: (\d+)-(\d+)$", text, re.M).groups())
    assert (lo, hi) == OPSET_RANGE  # what the opset check holds graphs to is what the table describes
    assert re.search(r"^#   python scripts/gen_tensorrt_ops.py operators.md ", text, re.M)


def test_kiln_trt_ops_overrides_the_table_and_a_missing_one_is_named(monkeypatch, tmp_path):
    mine = tmp_path / "mine.tsv"
    mine.write_text("# operator\tsupported\ttypes\nRelu\tY\tFP32\nAffineGrid\tN\t\n")
    monkeypatch.setenv("KILN_TRT_OPS", str(mine))
    assert ops_table_path() == mine and load_ops_table() == {"Relu": {"FP32"}}
    monkeypatch.setenv("KILN_TRT_OPS", str(tmp_path / "gone.tsv"))
    with pytest.raises(InvalidArgumentError, match=r"gone\.tsv not found.*--ops-table or KILN_TRT_OPS"):
        load_ops_table()
    monkeypatch.setenv("KILN_TRT_OPS", "")  # empty is unset, not the current directory
    assert ops_table_path() == DEFAULT_OPS_TABLE
    monkeypatch.delenv("KILN_TRT_OPS")
    monkeypatch.setattr(trt, "DEFAULT_OPS_TABLE", tmp_path / "tensorrt_onnx_ops.tsv")
    with pytest.raises(InvalidArgumentError, match=r"ships with kiln.*reinstall kiln"):
        load_ops_table()


# A small operators.md in the published layout (rows of release 10.1's matrix, restrictions
# abridged), with the quirks of the real file: rows without a closing pipe, a trailing comma
# (Selu), a misspelt type (ConstantOfShape's INF64), HTML in a restriction, uneven padding.
SAMPLE_TABLE = """\
## Operator Support Matrix

| Operator                  | Supported  | Supported Types | Restrictions |
|---------------------------|------------|-----------------|--------------|
| Abs | Y | FP32, FP16, BF16, INT32, INT64 |
| AffineGrid                | N          |
| ConstantOfShape           | Y          | FP32, FP16, BF16, INT32, INF64, BOOL |
| Gather                    | Y          | FP32, FP16, BF16, INT32, INT64, BOOL |
| GridSample                | Y          | FP32, FP16 | Input must be 4D.
| LayerNormalization        | Y          | FP32, FP16, BF16 | Only the first output is supported.
| MatMul                    | Y          | FP32, FP16, BF16 |
| NonZero                   | Y          | FP32, FP16
| Resize                    | Y          | FP32, FP16, BF16 | Modes: `nearest`, `linear`.<br />No antialiasing.|
| Selu                      | Y          | FP32, FP16, BF16, |
| Xor                       | Y          | BOOL

More text after the table is not part of it.
"""


def _run_generator(md: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(GENERATOR), str(md), *args], capture_output=True, text=True)


def test_the_generator_reproduces_the_committed_table(tmp_path):
    """scripts/gen_tensorrt_ops.py, run on a sample written here (no network), gives the committed
    table's header byte for byte and exactly the committed lines of the operators it lists."""
    committed = _committed()
    tag, commit = re.search(r"^# revision: tag (\S+), commit ([0-9a-f]{40})$", committed, re.M).groups()
    doc_version = re.search(r"the document's own text still names TensorRT (\S+)\)", committed)
    lo, hi = re.search(r"^# opsets: (\d+)-(\d+)$", committed, re.M).groups()
    notes = [line.removeprefix("# source note: ") for line in committed.splitlines()
             if line.startswith("# source note: ")]
    version = doc_version.group(1) if doc_version else re.search(r"TensorRT (\d+\.\d+)", committed).group(1)
    md = tmp_path / "operators.md"
    md.write_text("# Supported ONNX Operators\n\n"
                  f"TensorRT {version} supports operators in the inclusive range of opset {lo} to opset {hi}.\n\n"
                  + "".join(f"> Note: {n}\n\n" for n in notes) + SAMPLE_TABLE, encoding="utf-8")
    proc = _run_generator(md, "--tag", tag, "--commit", commit)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("\t")[0]: line for line in committed.splitlines() if not line.startswith("#")}
    sample_ops = ["Abs", "AffineGrid", "ConstantOfShape", "Gather", "GridSample", "LayerNormalization",
                  "MatMul", "NonZero", "Resize", "Selu", "Xor"]
    header = "".join(line + "\n" for line in committed.splitlines() if line.startswith("#"))
    assert proc.stdout == header + "".join(rows[op] + "\n" for op in sample_ops)
    # the quirks, read as meant
    assert rows["ConstantOfShape"].endswith("INT32, INT64, BOOL") and rows["Selu"].endswith("BF16")
    assert rows["AffineGrid"] == "AffineGrid\tN\t" and rows["Xor"] == "Xor\tY\tBOOL"
    # -o writes the same bytes
    out = tmp_path / "t.tsv"
    assert _run_generator(md, "--tag", tag, "--commit", commit, "-o", str(out)).returncode == 0
    assert out.read_bytes() == proc.stdout.encode()


def test_the_generator_refuses_what_it_cannot_read(tmp_path):
    head = "TensorRT 10.1 supports operators in the inclusive range of opset 9 to opset 20.\n\n"
    args = ("--tag", "release/10.1-GA", "--commit", "0" * 40)
    md = tmp_path / "operators.md"
    md.write_text(head + SAMPLE_TABLE.replace("| Xor                       | Y          | BOOL",
                                              "| Xor                       | Y          | BOOL, FP33"))
    proc = _run_generator(md, *args)
    assert proc.returncode == 1 and "Xor: unknown type 'FP33'" in proc.stderr
    md.write_text(head + SAMPLE_TABLE + "| Abs | Y | FP32 |\n")  # a second table row block is not read
    assert _run_generator(md, *args).returncode == 0
    md.write_text(head + SAMPLE_TABLE.replace("| NonZero", "| Abs | Y | FP32 |\n| NonZero"))
    proc = _run_generator(md, *args)
    assert proc.returncode == 1 and "Abs is listed twice" in proc.stderr
    md.write_text(SAMPLE_TABLE)
    proc = _run_generator(md, *args)
    assert proc.returncode == 1 and "no opset range" in proc.stderr
    md.write_text(head + SAMPLE_TABLE.replace("| MatMul                    | Y ", "| MatMul | Y [EXPERIMENTAL] "))
    proc = _run_generator(md, *args)
    assert proc.returncode == 0 and "MatMul\tY\tFP32, FP16, BF16\n" in proc.stdout


# What kiln's graphs need from the table: operator -> the element types check_graph holds it to
# (its first input's type; the produced type for Cast), per family. Collected from the ONNX graphs
# that this suite's fixtures export (torch 2.13, opset 20): tiny BERT heads and real MiniLM, GPT-2
# and BART (encoder, KV-cache decoder), ViT, ConvNeXT, Wav2Vec2 CTC. Gather's indices are INT64 in
# every one of them; the matrix's types for Gather are its data's (FP32 embedding tables here).
# GELU is exported as the opset-20 Gelu operator, so no graph of today's families has Erf.
KILN_GRAPHS_NEED = {
    "bert": {"Add": {"FP32"}, "Cast": {"FP32"}, "Clip": {"FP32"}, "Concat": {"INT64"}, "Div": {"FP32"},
             "Expand": {"FP32"}, "Gather": {"FP32"}, "Gelu": {"FP32"}, "Gemm": {"FP32"},
             "LayerNormalization": {"FP32"}, "MatMul": {"FP32"}, "Mul": {"FP32"}, "Range": {"INT64"},
             "ReduceL2": {"FP32"}, "ReduceSum": {"FP32"}, "Reshape": {"FP32"}, "Shape": {"FP32", "INT64"},
             "Slice": {"INT64"}, "Softmax": {"FP32"}, "Squeeze": {"INT64"}, "Sub": {"FP32"}, "Tanh": {"FP32"},
             "Transpose": {"FP32"}, "Unsqueeze": {"INT64"}},
    "gpt2": {"Add": {"FP32", "INT64"}, "And": {"BOOL"}, "Cast": {"BOOL"}, "Concat": {"FP32", "INT64"},
             "Gather": {"FP32"}, "Gelu": {"FP32"}, "LayerNormalization": {"FP32"}, "LessOrEqual": {"INT64"},
             "MatMul": {"FP32"}, "Mul": {"FP32"}, "Range": {"INT64"}, "Reshape": {"FP32"},
             "Shape": {"FP32", "INT64"}, "Slice": {"INT64"}, "Softmax": {"FP32"}, "Split": {"FP32"},
             "Squeeze": {"INT64"}, "Sub": {"INT64"}, "Transpose": {"FP32"},
             "Unsqueeze": {"BOOL", "FP32", "INT64"}, "Where": {"BOOL"}},
    "bart": {"Add": {"FP32", "INT64"}, "And": {"BOOL"}, "Cast": {"BOOL", "FP32"}, "Concat": {"FP32", "INT64"},
             "Gather": {"FP32"}, "Gelu": {"FP32"}, "LayerNormalization": {"FP32"}, "LessOrEqual": {"INT64"},
             "MatMul": {"FP32"}, "Mul": {"FP32"}, "Range": {"INT64"}, "Reshape": {"FP32"},
             "Shape": {"FP32", "INT64"}, "Slice": {"INT64"}, "Softmax": {"FP32"}, "Squeeze": {"INT64"},
             "Sub": {"FP32", "INT64"}, "Transpose": {"FP32"}, "Unsqueeze": {"BOOL", "FP32", "INT64"},
             "Where": {"BOOL"}},
    "vit": {"Add": {"FP32"}, "Concat": {"FP32", "INT64"}, "Conv": {"FP32"}, "Expand": {"FP32"},
            "Gather": {"FP32"}, "Gelu": {"FP32"}, "Gemm": {"FP32"}, "LayerNormalization": {"FP32"},
            "MatMul": {"FP32"}, "Mul": {"FP32"}, "Reshape": {"FP32"}, "Shape": {"FP32"}, "Slice": {"INT64"},
            "Softmax": {"FP32"}, "Transpose": {"FP32"}},
    "convnext": {"Add": {"FP32"}, "Conv": {"FP32"}, "Gelu": {"FP32"}, "Gemm": {"FP32"},
                 "LayerNormalization": {"FP32"}, "MatMul": {"FP32"}, "Mul": {"FP32"}, "ReduceMean": {"FP32"},
                 "Transpose": {"FP32"}},
    "wav2vec2": {"Add": {"FP32", "INT64"}, "Cast": {"FP32", "INT64"}, "Concat": {"INT64"}, "Conv": {"FP32"},
                 "Div": {"FP32", "INT64"}, "Floor": {"FP32"}, "Gelu": {"FP32"}, "LayerNormalization": {"FP32"},
                 "Less": {"INT64"}, "MatMul": {"FP32"}, "Mul": {"FP32"}, "Range": {"INT64"},
                 "ReduceSum": {"INT64"}, "Reshape": {"FP32", "INT64"}, "Shape": {"FP32"},
                 "Slice": {"FP32", "INT64"}, "Softmax": {"FP32"}, "Squeeze": {"INT64"}, "Sub": {"FP32", "INT64"},
                 "Transpose": {"FP32"}, "Unsqueeze": {"FP32", "INT64"}},
}


def test_the_committed_table_has_what_kilns_graphs_need():
    table = load_ops_table(DEFAULT_OPS_TABLE)  # the file in the package, whatever KILN_TRT_OPS says
    missing = {f"{family}: {op} on {', '.join(sorted(types - table.get(op, set())))}"
               for family, needs in KILN_GRAPHS_NEED.items() for op, types in needs.items()
               if not types <= table.get(op, set())}
    assert not missing, sorted(missing)
    # kiln also builds fp16 and bf16 plans: every operator a graph runs on FP32 is listed for both
    floats = {op for needs in KILN_GRAPHS_NEED.values() for op, types in needs.items() if "FP32" in types}
    lower = sorted(op for op in floats if not {"FP16", "BF16"} <= table[op])
    assert not lower, lower
