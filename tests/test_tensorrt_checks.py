"""The CPU-side TensorRT checks (every deployable's graphs are checked by the registry-driven
tests): the real MiniLM passes through the CLI, and the checker catches graphs TensorRT's parser
would not accept."""
import json

import onnx
import pytest
from onnx import TensorProto, helper

from kiln.check_trt import check_graph, load_ops_table, ops_table_path

pytestmark = pytest.mark.skipif(not ops_table_path().is_file(),
                                reason=f"TensorRT operator table not found at {ops_table_path()} "
                                       "(../shared/tensorrt/onnx_ops.tsv); set KILN_TRT_OPS")


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
