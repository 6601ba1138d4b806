"""kiln.runtime (the C++ runtime through kiln._kiln) against the fixture engine.

The fixture (tests/cpp/make_fixture_engine.py: TorchScript + AOTInductor artifacts and
reference outputs of the eager model) is built once per session.
"""
from __future__ import annotations

import concurrent.futures
import gc
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import kiln.errors as E
from kiln.runtime import Engine, TensorSpec, available_backends

ROOT = pathlib.Path(__file__).resolve().parents[1]
BACKENDS = ["torchscript", "aoti"]
INPUT_NAMES = ["input_ids", "attention_mask", "features"]
OUTPUT_NAMES = ["logits", "hidden"]
TOLERANCE = 1e-5  # fp32 artifacts vs the eager model


def _fixture_maker():
    spec = importlib.util.spec_from_file_location("make_fixture_engine", ROOT / "tests/cpp/make_fixture_engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory) -> pathlib.Path:
    return _fixture_maker().ensure(tmp_path_factory.mktemp("runtime") / "fixture-engine")


@pytest.fixture(scope="session")
def cases(engine_dir) -> dict[str, tuple[dict, dict]]:
    out = {}
    for case in sorted((engine_dir / "reference").iterdir()):
        inputs = {n: np.load(case / f"{n}.npy") for n in INPUT_NAMES}
        expected = {n: np.load(case / f"{n}.npy") for n in OUTPUT_NAMES}
        out[case.name] = (inputs, expected)
    return out


@pytest.fixture(scope="session", params=BACKENDS)
def engine(request, engine_dir) -> Engine:
    return Engine(engine_dir, backend=request.param)


def good_inputs(batch=2, seq=5) -> dict[str, np.ndarray]:
    return {"input_ids": np.full((batch, seq), 3, dtype=np.int64),
            "attention_mask": np.ones((batch, seq), dtype=np.int64),
            "features": np.full((batch, 4), 0.5, dtype=np.float32)}


def max_abs(a, b) -> float:
    assert a.shape == b.shape and a.dtype == b.dtype
    return float(np.abs(a - b).max())


# --- opening, properties, backend choice --------------------------------------------------

def test_available_backends():
    assert available_backends() == ["aoti", "torchscript"]


def test_auto_prefers_aoti(engine_dir):
    assert Engine(engine_dir).backend == "aoti"


def test_build_records_the_faster_cpu_backend_and_auto_follows_it(tiny_engines, tmp_path, capsys):
    from kiln.roofline import cpu_info

    built, _ = tiny_engines["text-classification"]
    engine = tmp_path / "engine"
    shutil.copytree(built, engine)
    manifest = json.loads((engine / "manifest.json").read_text())
    choice = manifest["backend_choice"]
    ms = choice["measured_ms"]
    assert set(ms) == {"aoti", "torchscript"} and all(v > 0 for v in ms.values())
    assert choice["backend"] == min(ms, key=ms.get) and choice["cpu"] == cpu_info()["cpu"]
    assert choice["shape"]["batch"] == manifest["dims"]["batch"]["opt"]
    assert Engine(engine).backend == choice["backend"]
    from kiln.cli import main
    assert main(["inspect", str(engine)]) == 0
    assert f"auto runs {choice['backend']} on {choice['cpu']}" in " ".join(capsys.readouterr().out.split())

    def edit(**fields):
        (engine / "manifest.json").write_text(json.dumps({**manifest, "backend_choice": {**choice, **fields}}))

    for backend in ("aoti", "torchscript"):  # "auto" follows the record, whichever it names
        edit(backend=backend)
        assert Engine(engine).backend == backend
    edit(backend="torchscript", cpu="a CPU of another model")  # measured elsewhere: the fixed order
    assert Engine(engine).backend == "aoti"
    edit(backend="onnx")  # an artifact the C++ runtime cannot run: never chosen, the fixed order stays
    assert Engine(engine).backend == "aoti"
    edit(backend="tensorrt")
    with pytest.raises(E.ManifestError, match="backend_choice.backend' is 'tensorrt', a format with no artifact"):
        Engine(engine)
    (engine / "manifest.json").write_text(json.dumps({**manifest, "backend_choice": "torchscript"}))
    with pytest.raises(E.ManifestError, match="'backend_choice' must be an object"):
        Engine(engine)


def test_properties(engine_dir):
    e = Engine(engine_dir, backend="torchscript")
    assert e.name == "fixture-engine" and e.backend == "torchscript"
    assert e.inputs == [TensorSpec("input_ids", "int64", ("batch", "sequence")),
                        TensorSpec("attention_mask", "int64", ("batch", "sequence")),
                        TensorSpec("features", "float32", ("batch", 4))]
    assert e.outputs == [TensorSpec("logits", "float32", ("batch", 3)),
                         TensorSpec("hidden", "float32", ("batch", "sequence", 8))]
    m = e.manifest
    assert m["format_version"] == 2 and m["dims"]["sequence"] == {"min": 1, "opt": 16, "max": 64}
    assert m["inputs"][0]["values"] == {"min": 0, "max": 49} and "values" not in m["inputs"][2]
    assert {a["format"] for a in m["artifacts"]} == {"torchscript", "aoti"}


def test_num_threads_sets_libtorch_intra_op_threads(engine_dir):
    torch = pytest.importorskip("torch")  # the same libtorch as libkiln's, in this process
    before = torch.get_num_threads()
    try:
        Engine(engine_dir, backend="torchscript", num_threads=1)
        assert torch.get_num_threads() == 1
        Engine(engine_dir, backend="torchscript")  # 0: left as it is
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(E.InvalidArgumentError, match="num_threads is -2"):
        Engine(engine_dir, num_threads=-2)


@pytest.mark.parametrize("n", [100000, 20000])
def test_num_threads_is_bounded(engine_dir, n):
    # libgomp exits the process past its limit (20000) and a pool of 100000 crashed it
    limit = 4 * (os.cpu_count() or 1)
    with pytest.raises(E.InvalidArgumentError, match=rf"num_threads is {n}; use 0 \(leave as is\) or 1\.\.{limit}"):
        Engine(engine_dir, num_threads=n)
    assert Engine(engine_dir, backend="torchscript", num_threads=limit).backend == "torchscript"


# --- numbers ------------------------------------------------------------------------------

def test_parity_with_eager_reference(engine, cases):
    worst = 0.0
    for name, (inputs, expected) in cases.items():
        out = engine.run(inputs)
        assert list(out) == OUTPUT_NAMES
        for k in OUTPUT_NAMES:
            d = max_abs(out[k], expected[k])
            worst = max(worst, d)
            assert d <= TOLERANCE, f"{engine.backend} {name} {k}: max abs diff {d}"
    print(f"{engine.backend}: worst max abs diff {worst:.3g} over {len(cases)} cases")


def test_torch_tensor_inputs(engine, cases):
    torch = pytest.importorskip("torch")
    inputs, expected = cases["b3s5"]
    t = {k: torch.from_numpy(v.copy()) for k, v in inputs.items()}
    t["features"].requires_grad_(True)  # detached by kiln.runtime (DLPack refuses grad tensors)
    out = engine.run(t)
    for k in OUTPUT_NAMES:
        assert max_abs(out[k], expected[k]) <= TOLERANCE
    # a non-contiguous torch view is copied by kiln.runtime, refused by the bare binding
    features_t = torch.from_numpy(np.ascontiguousarray(inputs["features"].T)).T
    assert not features_t.is_contiguous()
    out = engine.run({**t, "features": features_t})
    assert max_abs(out["logits"], expected["logits"]) <= TOLERANCE
    with pytest.raises(E.InputValueError, match="'features' is not C-contiguous"):
        engine._engine.run({**t, "features": features_t.detach()})


def test_noncontiguous_numpy_is_copied_by_runtime_refused_by_binding(engine, cases):
    inputs, expected = cases["b2s7"]
    ids_view = np.ascontiguousarray(inputs["input_ids"].T).T  # same values, Fortran order
    assert not ids_view.flags.c_contiguous
    out = engine.run({**inputs, "input_ids": ids_view})
    assert max_abs(out["hidden"], expected["hidden"]) <= TOLERANCE
    with pytest.raises(E.InputValueError) as info:
        engine._engine.run({**inputs, "input_ids": ids_view})
    assert "'input_ids'" in str(info.value) and "C-contiguous" in str(info.value)


def test_readonly_inputs(engine, cases):
    inputs, expected = cases["b1s1"]
    frozen = {k: v.copy() for k, v in inputs.items()}
    for v in frozen.values():
        v.flags.writeable = False
    out = engine.run(frozen)
    assert max_abs(out["logits"], expected["logits"]) <= TOLERANCE


def test_unaligned_inputs(engine, cases):
    inputs, expected = cases["b8s64"]

    def at_offset(a, offset):  # same values, data starting `offset` bytes into a buffer
        view = np.zeros(a.nbytes + 64, np.uint8)[offset:offset + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        return view

    for offset in (4, 8, 1):
        out = engine.run({k: at_offset(v, offset) for k, v in inputs.items()})
        for k in OUTPUT_NAMES:
            assert max_abs(out[k], expected[k]) <= TOLERANCE


def test_outputs_are_not_copied_and_outlive_the_engine(engine_dir, cases):
    inputs, expected = cases["b8s64"]
    e = Engine(engine_dir, backend="aoti")
    out = e.run(inputs)
    hidden = out["hidden"]
    # a view of the runtime's buffer (base: nanobind's wrapper of the at::Tensor's owner)
    assert not hidden.flags.owndata and hidden.base is not None and not isinstance(hidden.base, np.ndarray)
    assert hidden.flags.c_contiguous and hidden.flags.writeable
    again = e.run(inputs)["hidden"]
    assert not np.shares_memory(hidden, again)  # each run hands out its own buffer
    del e, out, again
    gc.collect()
    assert max_abs(hidden, expected["hidden"]) <= TOLERANCE


# --- bad inputs: the right kiln.errors class, a message naming engine, input, expectation ---

def _drop(name):
    return lambda x: x.pop(name)


BAD_INPUTS = [
    ("missing", _drop("features"), E.InputNameError, ["missing input 'features'", "float32 [batch, 4]"]),
    ("extra", lambda x: x.update(token_type_ids=np.zeros((2, 5), np.int64)), E.InputNameError,
     ["unexpected input 'token_type_ids'", "input_ids int64 [batch, sequence]"]),
    ("misnamed", lambda x: x.update(input_id=x.pop("input_ids")), E.InputNameError,
     ["'input_id' is not an input", "did you mean 'input_ids'"]),
    ("float64", lambda x: x.update(features=x["features"].astype(np.float64)), E.InputDTypeError,
     ["'features'", "float64", "expected float32"]),
    ("int32 ids", lambda x: x.update(input_ids=x["input_ids"].astype(np.int32)), E.InputDTypeError,
     ["'input_ids'", "int32", "expected int64"]),
    ("rank", lambda x: x.update(input_ids=np.zeros((2, 5, 1), np.int64)), E.InputShapeError,
     ["'input_ids'", "rank 3", "expected rank 2", "[batch, sequence]"]),
    ("sequence too long", lambda x: x.update(**good_inputs(2, 65)), E.InputShapeError,
     ["'input_ids'", "'sequence') is 65", "1..64"]),
    ("batch too large", lambda x: x.update(**good_inputs(9, 5)), E.InputShapeError,
     ["'input_ids'", "'batch') is 9", "1..8"]),
    ("fixed dim", lambda x: x.update(features=np.zeros((2, 3), np.float32)), E.InputShapeError,
     ["'features'", "dimension 1 is 3", "expected 4"]),
    ("batch disagreement", lambda x: x.update(features=np.zeros((4, 4), np.float32)), E.InputShapeError,
     ["'features'", "'batch') is 4", "input 'input_ids' has batch = 2"]),
    ("sequence disagreement", lambda x: x.update(attention_mask=np.ones((2, 6), np.int64)), E.InputShapeError,
     ["'attention_mask'", "input 'input_ids' has sequence = 5"]),
    ("not an array", lambda x: x.update(features=[[0.5] * 4] * 2), E.InputValueError,
     ["'features'", "not an array", "expected float32 [batch, 4]"]),
]


@pytest.mark.parametrize("label,mutate,error,needles", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(engine, label, mutate, error, needles):
    inputs = good_inputs()
    mutate(inputs)
    for call in (engine.run, engine.validate):
        with pytest.raises(error) as info:
            call(inputs)
        assert info.value.code == error.code
        message = str(info.value)
        assert message.startswith("engine 'fixture-engine': ")
        for needle in needles:
            assert needle in message, f"{needle!r} not in {message!r}"


def test_errors_are_also_builtin_exceptions(engine):
    with pytest.raises(ValueError):  # InputShapeError is a ValueError
        engine.run(good_inputs(2, 65))
    with pytest.raises(KeyError):  # InputNameError is a KeyError
        engine.run({"input_ids": good_inputs()["input_ids"]})


VALUE_ERRORS = [
    ("input_ids", (0, 0), 1000, "'input_ids' has the value 1000 at [0, 0], outside its allowed range [0, 49]"),
    ("input_ids", (1, 4), 50, "'input_ids' has the value 50 at [1, 4]"),
    ("input_ids", (1, 0), -1, "'input_ids' has the value -1 at [1, 0]"),
    ("attention_mask", (0, 3), 2, "'attention_mask' has the value 2 at [0, 3], outside its allowed range [0, 1]"),
]


@pytest.mark.parametrize("name,where,value,needle", VALUE_ERRORS, ids=[f"{v[0]}={v[2]}" for v in VALUE_ERRORS])
def test_value_ranges_are_checked_before_running(engine, name, where, value, needle):
    inputs = good_inputs()
    inputs[name][where] = value
    for call in (engine.run, engine.validate):
        with pytest.raises(E.InputValueError) as info:
            call(inputs)
        assert needle in str(info.value) and "manifest.json inputs[" in str(info.value)
        assert str(info.value).startswith("engine 'fixture-engine': ")


def test_backend_failure_is_a_runtime_error(scratch, engine):
    d, manifest, save = scratch  # without value ranges, a bad id reaches the kernel
    for spec in manifest["inputs"]:
        spec.pop("values", None)
    save()
    inputs = good_inputs()
    inputs["input_ids"][0, 0] = 1000  # outside the embedding table (50 rows)
    with pytest.raises(E.RuntimeFailure) as info:
        Engine(d, backend=engine.backend).run(inputs)
    assert "broken-engine" in str(info.value) and "index out of" in str(info.value)
    assert "Exception raised from" not in str(info.value)  # no C++ backtrace


# --- broken engine directories -------------------------------------------------------------

@pytest.fixture
def scratch(engine_dir, tmp_path):
    """A copy of the fixture engine that a test may break; returns (dir, manifest dict, save)."""
    d = tmp_path / "broken-engine"
    shutil.copytree(engine_dir, d, ignore=shutil.ignore_patterns("reference"))
    manifest = json.loads((d / "manifest.json").read_text())

    def save():
        (d / "manifest.json").write_text(json.dumps(manifest))
    return d, manifest, save


def test_manifest_errors(scratch, tmp_path):
    d, manifest, save = scratch
    with pytest.raises(E.ManifestError, match="not a directory"):
        Engine(tmp_path / "nowhere")
    manifest["format_version"] = 1
    save()
    with pytest.raises(E.ManifestError, match="format_version 1, this runtime reads version 2; rebuild the engine "
                                                "with `kiln build`"):
        Engine(d)
    manifest["format_version"] = 2
    del manifest["inputs"][2]["dtype"]
    save()
    with pytest.raises(E.ManifestError, match=r"'inputs\[2\]\.dtype' is missing"):
        Engine(d)
    (d / "manifest.json").write_text("{ not json")
    with pytest.raises(E.ManifestError, match="not valid JSON"):
        Engine(d)
    (d / "manifest.json").unlink()
    with pytest.raises(E.ManifestError, match="'broken-engine'.*manifest.json"):
        Engine(d)


def test_manifest_with_invalid_utf8_is_a_manifest_error(scratch):
    d, manifest, save = scratch
    (d / "manifest.json").write_bytes(b'{"format_version": 2, "name": "\xff\xfe bad"}')
    with pytest.raises(E.ManifestError) as info:
        Engine(d)
    assert "not valid JSON" in str(info.value) and "\ufffd" in str(info.value)
    from kiln import _kiln
    with pytest.raises(E.ManifestError):
        _kiln.Generator(str(d))


def test_manifest_v2_fields_are_checked(scratch):
    d, manifest, save = scratch
    manifest["inputs"][2]["values"] = {"min": 0, "max": 1}
    save()
    with pytest.raises(E.ManifestError, match=r"'inputs\[2\]\.values' is given for a float32 input"):
        Engine(d)
    del manifest["inputs"][2]["values"]
    manifest["inputs"][0]["values"] = {"min": 3, "max": 2}
    save()
    with pytest.raises(E.ManifestError, match=r"'inputs\[0\]\.values' has min 3 > max 2"):
        Engine(d)
    manifest["inputs"][0]["values"] = {"min": 0, "max": 49}
    manifest["dims"]["total"] = {"min": 1, "opt": 2, "max": 9, "sum": ["batch", "tokens"]}
    save()
    with pytest.raises(E.ManifestError, match=r"'dims\.total\.sum\[1\]' is 'tokens', which is not a dimension"):
        Engine(d)


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m["inputs"][0].update(dtype="int32"), "input 0 ('input_ids') as int64, manifest.json says int32"),
    (lambda m: m["inputs"][1].update(shape=["batch"]), "input 1 ('attention_mask') with rank 2"),
], ids=["dtype", "rank"])
def test_aoti_artifact_and_manifest_disagree_at_open(scratch, edit, needle):
    d, manifest, save = scratch
    edit(manifest)
    save()
    with pytest.raises(E.ArtifactError, match=re.escape(needle)):
        Engine(d, backend="aoti")


def _kiln_aoti_dirs(tmp) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("kiln-aoti-"))


def test_aoti_package_is_unpacked_into_a_kiln_directory(engine_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    e = Engine(engine_dir, backend="aoti")
    mine = _kiln_aoti_dirs(tmp_path)
    assert len(mine) == 1 and mine[0].startswith(f"kiln-aoti-{os.getpid()}-")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("aotinductor_")]
    del e
    gc.collect()
    assert _kiln_aoti_dirs(tmp_path) == []


def test_a_crashed_process_leaves_a_directory_the_next_open_removes(engine_dir, tmp_path, monkeypatch):
    code = ("import os, signal, kiln._kiln as k\n"
            f"e = k.Engine({str(engine_dir)!r}, 'aoti')\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.communicate(timeout=120)
    assert proc.returncode == -9
    left = _kiln_aoti_dirs(tmp_path)
    assert len(left) == 1 and left[0].startswith(f"kiln-aoti-{proc.pid}-")  # what a crash leaves
    assert any((tmp_path / left[0]).rglob("*.so"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    e = Engine(engine_dir, backend="aoti")  # the next open sweeps it
    assert [n for n in _kiln_aoti_dirs(tmp_path) if not n.startswith(f"kiln-aoti-{os.getpid()}-")] == []
    del e


def test_artifact_errors(scratch):
    d, manifest, save = scratch
    data = (d / "model.pt2").read_bytes()
    (d / "model.pt2").write_bytes(data[:-10])
    with pytest.raises(E.ArtifactError, match="model.pt2 is .* bytes, manifest.json says"):
        Engine(d)
    (d / "model.pt2").write_bytes(data[:500] + bytes([data[500] ^ 1]) + data[501:])
    with pytest.raises(E.ArtifactError, match="model.pt2 has sha256"):
        Engine(d)
    (d / "model.ts").unlink()
    with pytest.raises(E.ArtifactError, match="model.ts named by manifest.json is missing"):
        Engine(d, backend="torchscript")


def test_backend_errors(scratch, engine_dir):
    d, manifest, save = scratch
    with pytest.raises(E.InvalidArgumentError, match="unknown backend 'tflite'; use 'auto' or one of: aoti, torchscript"):
        Engine(engine_dir, backend="tflite")
    with pytest.raises(E.BackendUnavailableError, match="Python only"):
        Engine(engine_dir, backend="onnx")
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["format"] == "torchscript"]
    save()
    assert Engine(d).backend == "torchscript"
    with pytest.raises(E.BackendUnavailableError, match="no aoti artifact"):
        Engine(d, backend="aoti")


# --- threads and processes ---------------------------------------------------------------

def test_concurrent_runs_equal_single_thread(engine, cases):
    names = sorted(cases)
    single = {n: engine.run(cases[n][0]) for n in names}

    def work(i):
        n = names[i % len(names)]
        out = engine.run(cases[n][0])
        return all(np.array_equal(out[k], single[n][k]) for k in OUTPUT_NAMES)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(200)))
    assert all(results)


@pytest.mark.parametrize("torch_first", [False, True])
def test_fresh_interpreter(engine_dir, torch_first):
    code = (("import torch\n" if torch_first else "")
            + "import sys, numpy as np\nimport kiln._kiln as k\n"
            + f"e = k.Engine({str(engine_dir)!r})\n"
            + "x = {'input_ids': np.ones((1, 3), np.int64), 'attention_mask': np.ones((1, 3), np.int64),"
              " 'features': np.zeros((1, 4), np.float32)}\n"
            + "print(e.backend, e.run(x)['hidden'].shape, 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["aoti", "(1,", "3,", "8)", str(torch_first)]


def test_precision_chooses_among_the_artifacts(engine_dir):
    for backend in ("aoti", "torchscript"):
        assert Engine(engine_dir, backend=backend, precision="fp32").precision == "fp32"
        with pytest.raises(E.InvalidArgumentError, match=f"the {backend} backend, which runs fp32, int8"):
            Engine(engine_dir, backend=backend, precision="fp16")
        # int8 is a CPU precision, but this engine was built without it: say how to build it
        with pytest.raises(E.ArtifactError, match=f"no int8 {backend} artifact.*--precision int8"):
            Engine(engine_dir, backend=backend, precision="int8")
    with pytest.raises(E.InvalidArgumentError, match="precision 'int4' is not one of auto, fp32, fp16, bf16, int8"):
        Engine(engine_dir, precision="int4")
