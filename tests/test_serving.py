"""Serving on a real Triton Inference Server (the one bundled in nvidia-pytriton), over loopback.

The module's server runs the tiny engines of `deployable_engine` as kiln writes them
(`kiln triton-repo`): a BERT feature-extraction engine and a ViT image classifier (exact batching)
with their -text models, a BERT token classifier batched by padding, and GPT-2's streaming model.
It starts once for the module on free ports and is stopped (SIGINT, then its process group
killed) when the module ends, whatever happened.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient  # the serve extra: make setup installs it
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from kiln import samples
from kiln.cli import main
from kiln.errors import InvalidArgumentError
from kiln.manifest import Artifact, DimRange, Manifest, Source, TensorSpec, read_graph_manifest
from kiln.runtime import Engine
from kiln.serving import batching
from kiln.serving.config import check, render
from kiln.serving.repository import RepoOptions, RepositoryWriter
from kiln.serving.server import TritonServer, free_port_block

ENGINES = {
    "bert": ("bert", "feature-extraction"),
    "vit": ("vit", "image-classification"),
    "tokens": ("bert", "token-classification"),
    "gpt2": ("gpt2", "text-generation"),
}
TIMEOUT = 300  # s for the server to load every model (2 shared cores)


@pytest.fixture(scope="module")
def default_threads() -> int:
    """torch's intra-op thread count in a fresh process: what the served model's process runs."""
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


@pytest.fixture(autouse=True)
def threads_as_served(default_threads):
    """Bit-for-bit comparisons with the served model need this process's Engines on the model's
    thread count: on an AMD EPYC (Zen 3) oneDNN's kernels split a matmul by thread, and earlier
    tests in the same pytest process (kiln.roofline's probes) leave torch on other counts."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(default_threads)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engines(deployable_engine) -> dict[str, Path]:
    from conftest import engine_of

    return {key: Path(engine_of(deployable_engine, *ft)[0]) for key, ft in ENGINES.items()}


def gpu_engine(engine: Path, root: Path) -> Path:
    """A copy of an engine with two TensorRT plans recorded as a GPU host's `kiln build --formats
    tensorrt` records them (the files are stand-ins: plans are built only on a GPU)."""
    import shutil

    dst = root / "bert-gpu"
    shutil.copytree(engine, dst)
    m = read_graph_manifest(dst)
    seq = m.dims["sequence"]
    shape = {"min": [1, seq.min], "opt": [1, seq.opt], "max": [m.dims["batch"].max, seq.max]}
    for precision, compatible in (("fp16", False), ("fp32", True)):
        file = f"model.sm90.{precision}.plan"
        (dst / file).write_bytes(b"stand-in for a TensorRT plan " + precision.encode())
        m.artifacts.append(
            Artifact.of(
                dst,
                "tensorrt",
                file,
                precision=precision,
                device="cuda",
                versions={"tensorrt": "10.13.0"},
                compute_capability="9.0",
                version_compatible=compatible,
                profiles=[{s.name: shape for s in m.inputs}],
            )
        )
    m.write(dst)
    return dst


@pytest.fixture(scope="module")
def repository(engines, tmp_path_factory):
    """The repository as `kiln triton-repo` writes it: every kind of model, native ones included."""
    root = tmp_path_factory.mktemp("triton")
    repo = root / "models"
    written = []
    everything = RepositoryWriter(repo, RepoOptions())
    for key in ("bert", "vit", "gpt2"):
        written += everything.add(engines[key])
    padded = RepositoryWriter(repo, RepoOptions(batching="pad", kinds=("engine",)))
    written += padded.add(engines["tokens"])
    plans = RepositoryWriter(repo, RepoOptions(kinds=("trt",)))
    written += plans.add(gpu_engine(engines["bert"], root))
    return repo, {w.name: w for w in written}


@pytest.fixture(scope="module")
def server(repository):
    repo, written = repository
    s = TritonServer(repo, models=[name for name, w in written.items() if w.runs_here])
    try:
        s.start(timeout=TIMEOUT)
        yield s
    finally:
        s.close()
        assert not s.running()


def backend_of(written, name: str) -> str:
    """The kiln backend a Python model of the repository runs (its config's parameter)."""
    return check(written[name].config).parameters["kiln_backend"].string_value


# --- clients ----------------------------------------------------------------------------------

_DTYPES = {"int64": "INT64", "float32": "FP32", "int32": "INT32"}


def infer_all(server, model: str, feeds: list[dict], outputs: list[str]) -> list:
    """Every request at once from 32 threads, alternately over gRPC (one shared client) and HTTP
    (a client per thread: tritonclient.http is gevent-based); results or InferenceServerException."""
    shared = grpcclient.InferenceServerClient(server.grpc_url)
    local = threading.local()

    def send(i: int) -> dict | InferenceServerException:
        if i % 2 == 0:
            mod, client = grpcclient, shared
        else:
            if not hasattr(local, "client"):
                local.client = httpclient.InferenceServerClient(server.http_url)
            mod, client = httpclient, local.client
        inputs = []
        for name, arr in feeds[i].items():
            x = mod.InferInput(name, list(arr.shape), _DTYPES[str(arr.dtype)])
            x.set_data_from_numpy(arr)
            inputs.append(x)
        try:
            r = client.infer(model, inputs, outputs=[mod.InferRequestedOutput(n) for n in outputs])
        except InferenceServerException as e:
            return e
        return {n: r.as_numpy(n) for n in outputs}

    with ThreadPoolExecutor(32) as pool:
        return list(pool.map(send, range(len(feeds))))


def text_feeds(rng: np.random.Generator, manifest: Manifest, lengths: list[int]) -> list[dict]:
    """Requests of 1-3 rows of random ids at these lengths (a padded row now and then)."""
    vocab = manifest.inputs[0].values.max + 1  # type: ignore[union-attr]
    feeds = []
    for length in lengths:
        rows = int(rng.integers(1, 4))
        ids = rng.integers(0, vocab, (rows, length), dtype=np.int64)
        mask = np.ones((rows, length), np.int64)
        if rows > 1:
            mask[-1, max(2, length * 3 // 4) :] = 0
        types = np.zeros((rows, length), np.int64)
        types[:, length // 2 :] = 1
        feeds.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    return feeds


def executions(server, model: str) -> tuple[float, float]:
    m = server.metrics().get(model, {})
    return m.get("nv_inference_request_success", 0.0), m.get("nv_inference_exec_count", 0.0)


# --- parity under load --------------------------------------------------------------------------


def test_bert_parity_under_concurrent_load(server, repository, engines):
    """72 concurrent requests of mixed lengths over gRPC and HTTP: each response is bit for bit
    Engine.run of that request in this process, and the server ran fewer executions than requests."""
    _, written = repository
    name = engines["bert"].name
    manifest = read_graph_manifest(engines["bert"])
    rng = np.random.default_rng(0)
    feeds = text_feeds(rng, manifest, [int(n) for n in rng.integers(2, 41, 72)])
    requests0, execs0 = executions(server, name)
    results = infer_all(server, name, feeds, ["embeddings"])
    requests1, execs1 = executions(server, name)
    engine = Engine(engines["bert"], backend=backend_of(written, name))
    for feed, got in zip(feeds, results):
        assert not isinstance(got, Exception), got
        want = engine.run(feed)["embeddings"]
        assert got["embeddings"].dtype == want.dtype and got["embeddings"].shape == want.shape
        assert np.array_equal(got["embeddings"], want)  # bit for bit
    assert requests1 - requests0 == len(feeds)
    assert execs1 - execs0 < len(feeds), "Triton's dynamic batcher merged no requests"


def test_image_parity_under_concurrent_load(server, repository, engines):
    _, written = repository
    name = engines["vit"].name
    spec = read_graph_manifest(engines["vit"]).inputs[0]
    rng = np.random.default_rng(1)
    feeds = [
        {"pixel_values": rng.uniform(-1.5, 1.5, (int(rng.integers(1, 4)), *spec.shape[1:])).astype(np.float32)}
        for _ in range(64)
    ]
    requests0, execs0 = executions(server, name)
    results = infer_all(server, name, feeds, ["logits"])
    requests1, execs1 = executions(server, name)
    engine = Engine(engines["vit"], backend=backend_of(written, name))
    for feed, got in zip(feeds, results):
        assert not isinstance(got, Exception), got
        assert np.array_equal(got["logits"], engine.run(feed)["logits"])
    assert requests1 - requests0 == len(feeds)
    assert execs1 - execs0 < len(feeds)


@pytest.mark.parametrize("backend", batching.BATCH_INVARIANT)
def test_batch_invariant_backends_give_a_row_the_same_bits_in_any_batch(engines, backend):
    """What 'exact' batching rests on: where the load-time check finds an engine batch-invariant
    on this machine, requests concatenated into one Engine.run get the bits each gets alone (ViT:
    one shape; BERT: mixed masks); where it does not, the batcher runs each request alone. (On an
    Intel Xeon AOTInductor's engines are invariant; on an AMD EPYC Zen 3 they are not.)"""
    rng = np.random.default_rng(3)
    vit = Engine(engines["vit"], backend=backend)
    spec = read_graph_manifest(engines["vit"]).inputs[0]
    bert = Engine(engines["bert"], backend=backend)
    measured = {}
    for engine, key in ((vit, "vit"), (bert, "bert")):
        m = read_graph_manifest(engines[key])
        invariant, detail = batching.batch_invariant(engine, m)
        measured[id(engine)] = invariant
        assert detail and batching.Batcher(m, "exact", backend, invariant).concatenate == invariant
        if not invariant:  # the check saw a row change: confirm it, so the check cannot just say no
            assert "differs from its run alone" in detail, detail

    def images() -> dict:
        return {"pixel_values": rng.uniform(-1.5, 1.5, (int(rng.integers(1, 4)), *spec.shape[1:])).astype(np.float32)}

    cases = []
    for _ in range(6):
        cases.append((vit, [images() for _ in range(3)]))
        cases.append((bert, text_feeds(rng, read_graph_manifest(engines["bert"]), [int(rng.integers(2, 41))] * 3)))
    for engine, feeds in cases:
        if not measured[id(engine)]:
            continue
        together = engine.run({n: np.concatenate([f[n] for f in feeds]) for n in feeds[0]})
        alone = [engine.run(f) for f in feeds]
        for name, got in together.items():
            assert np.array_equal(got, np.concatenate([a[name] for a in alone])), (engine, name)


def test_padded_batching_slices_each_request_back(server, repository, engines):
    """batching 'pad': 64 requests, every one a different length, so any execution that merged
    requests padded them into one Engine.run; per-token logits come back at each request's own
    length, equal to its own Engine.run within the manifest's fp32 tolerance, same tags."""
    _, written = repository
    name = engines["tokens"].name
    manifest = read_graph_manifest(engines["tokens"])
    assert check(written[name].config).parameters["batching"].string_value == "pad"
    rng = np.random.default_rng(2)
    lengths = list(range(2, 66))
    rng.shuffle(lengths)
    feeds = text_feeds(rng, manifest, lengths)
    requests0, execs0 = executions(server, name)
    results = infer_all(server, name, feeds, ["logits"])
    requests1, execs1 = executions(server, name)
    engine = Engine(engines["tokens"], backend=backend_of(written, name))
    tol = manifest.tolerances["fp32"]["logits"]
    for feed, got in zip(feeds, results):
        assert not isinstance(got, Exception), got
        want = engine.run(feed)["logits"]
        assert got["logits"].shape == want.shape  # (rows, its own length, labels)
        np.testing.assert_allclose(got["logits"], want, atol=tol.atol, rtol=tol.rtol)
        mask = feed["attention_mask"].astype(bool)
        assert (got["logits"].argmax(-1)[mask] == want.argmax(-1)[mask]).mean() > 0.99
    assert requests1 - requests0 == len(feeds)
    assert execs1 - execs0 < len(feeds), "no execution merged requests of different lengths"


# --- errors -----------------------------------------------------------------------------------


def bert_inputs(mod, feed: dict) -> list:
    inputs = []
    for name, arr in feed.items():
        x = mod.InferInput(name, list(arr.shape), _DTYPES[str(arr.dtype)])
        x.set_data_from_numpy(arr)
        inputs.append(x)
    return inputs


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_requests_fail_alone_with_named_errors(server, repository, engines, protocol):
    mod = grpcclient if protocol == "grpc" else httpclient
    client = mod.InferenceServerClient(server.grpc_url if protocol == "grpc" else server.http_url)
    name = engines["bert"].name
    manifest = read_graph_manifest(engines["bert"])
    good = text_feeds(np.random.default_rng(3), manifest, [7])[0]
    batch_max, seq_max = manifest.dims["batch"].max, manifest.dims["sequence"].max

    def with_ids(ids: np.ndarray, drop: str | None = None, dtype=np.int64) -> dict:
        feed = {
            "input_ids": ids.astype(dtype),
            "attention_mask": np.ones(ids.shape, np.int64),
            "token_type_ids": np.zeros(ids.shape, np.int64),
        }
        return {k: v for k, v in feed.items() if k != drop}

    cases = {
        # Triton checks dtypes, required inputs and the batch limit before the model runs
        "wrong dtype": (with_ids(good["input_ids"], dtype=np.float32), ["input_ids", "FP32", "INT64"]),
        "missing input": (with_ids(good["input_ids"], drop="token_type_ids"), ["token_type_ids", "missing"]),
        # Triton's message for the batch names the limit and the model, not an input (its core
        # checks it before any model code; max_batch_size is the engine's dims.batch.max)
        "batch over the max": (
            with_ids(np.full((batch_max + 1, 5), 101)),
            [f"batch-size must be <= {batch_max}", name],
        ),
        # kiln's runtime checks ranges: its code and message, naming the input, the dim and the range
        "sequence over the range": (
            with_ids(np.full((1, seq_max + 1), 101)),
            ["kiln error [INPUT_SHAPE]", "input_ids", "sequence", f"2..{seq_max}"],
        ),
        "id outside the vocabulary": (
            with_ids(np.array([[101, 10**6, 102]])),
            ["kiln error [INPUT_VALUE]", "input_ids", "1000000"],
        ),
    }
    engine = Engine(engines["bert"], backend=backend_of(repository[1], name))
    for case, (feed, expected) in cases.items():
        with pytest.raises(InferenceServerException) as e:
            client.infer(name, bert_inputs(mod, feed))
        for text in expected:
            assert text in str(e.value), f"{case}: {text!r} not in {e.value}"
        assert "400" in str(e.value) or "INVALID_ARGUMENT" in str(e.value), case
        # ... and the next request is served
        r = client.infer(name, bert_inputs(mod, good))
        assert np.array_equal(r.as_numpy("embeddings"), engine.run(good)["embeddings"])


def test_a_bad_request_in_a_batch_fails_alone(server, repository, engines):
    """Bad requests mixed into a concurrent burst: each fails with kiln's named error, every other
    request of the same executions is answered bit for bit."""
    _, written = repository
    name = engines["bert"].name
    manifest = read_graph_manifest(engines["bert"])
    rng = np.random.default_rng(4)
    feeds = text_feeds(rng, manifest, [int(n) for n in rng.integers(2, 30, 40)])
    bad = {5, 17, 30}
    for i in bad:
        feeds[i]["input_ids"][0, 1] = 10**6
    results = infer_all(server, name, feeds, ["embeddings"])
    engine = Engine(engines["bert"], backend=backend_of(written, name))
    for i, (feed, got) in enumerate(zip(feeds, results)):
        if i in bad:
            assert isinstance(got, InferenceServerException)
            assert "kiln error [INPUT_VALUE]" in str(got) and "input_ids" in str(got)
        else:
            assert not isinstance(got, Exception), got
            assert np.array_equal(got["embeddings"], engine.run(feed)["embeddings"])


# --- text in, answers out -----------------------------------------------------------------------


def text_answers(server, model: str, inputs: dict[str, list]) -> list:
    client = httpclient.InferenceServerClient(server.http_url)
    tensors = []
    for name, values in inputs.items():
        x = httpclient.InferInput(name, [len(values)], "BYTES")
        x.set_data_from_numpy(np.array([v if isinstance(v, bytes) else v.encode() for v in values], dtype=object))
        tensors.append(x)
    r = client.infer(model, tensors)
    return [json.loads(a) for a in r.as_numpy("answer")]


def kiln_run_json(capsys, *argv) -> dict:
    code = main([str(a) for a in argv])
    out = capsys.readouterr().out
    assert code == 0
    return json.loads(out)


def test_text_model_answers_as_kiln_run_json(server, engines, capsys):
    texts = samples.SENTENCES[:3]
    run = kiln_run_json(capsys, "run", engines["bert"], *texts, "--json")
    assert text_answers(server, f"{engines['bert'].name}-text", {"text": texts}) == run["embeddings"]


def test_image_text_model_answers_as_kiln_run_json(server, engines, capsys, tmp_path):
    from PIL import Image

    files = []
    for i, photo in enumerate(samples.photos()[:2]):
        files.append(tmp_path / f"photo{i}.png")
        Image.fromarray(photo).save(files[-1])
    run = kiln_run_json(capsys, "run", engines["vit"], *files, "--json")
    answers = text_answers(server, f"{engines['vit'].name}-text", {"image": [f.read_bytes() for f in files]})
    assert answers == run["results"]


def test_text_model_errors_are_kilns(server, engines):
    with pytest.raises(InferenceServerException) as e:
        text_answers(server, f"{engines['vit'].name}-text", {"image": [b"not an image"]})
    assert "kiln error [INPUT_VALUE]" in str(e.value)
    assert text_answers(server, f"{engines['bert'].name}-text", {"text": ["still serving"]})


# --- streaming generation ---------------------------------------------------------------------


def stream(server, model: str, text: str | None = None, ids: list[int] | None = None, **params):
    """One decoupled request: (token ids, streamed text, error or None)."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    q: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: q.put((result, error)))
    inputs = []
    if text is not None:
        x = grpcclient.InferInput("text", [1], "BYTES")
        x.set_data_from_numpy(np.array([text.encode()], dtype=object))
        inputs.append(x)
    if ids is not None:
        x = grpcclient.InferInput("input_ids", [len(ids)], "INT64")
        x.set_data_from_numpy(np.array(ids, np.int64))
        inputs.append(x)
    tokens: list[int] = []
    pieces: list[str] = []
    try:
        client.async_stream_infer(model, inputs, parameters=params, enable_empty_final_response=True)
        while True:
            result, error = q.get(timeout=120)
            if error is not None:
                return tokens, "".join(pieces), error
            out = result.as_numpy("token_ids")
            if out is not None:
                assert out.shape == (1,)  # one response per token
                tokens.append(int(out[0]))
                pieces.append(result.as_numpy("text")[0].decode())
            if result.get_response().parameters["triton_final_response"].bool_param:
                return tokens, "".join(pieces), None
    finally:
        client.stop_stream()
        client.close()


def test_streamed_tokens_are_the_generators(server, repository, engines):
    from kiln.processing.bpe import BPETokenizer
    from kiln.runtime import Generator

    _, written = repository
    name = engines["gpt2"].name
    gen = Generator(engines["gpt2"], backend=backend_of(written, name))
    tok = BPETokenizer.from_dir(engines["gpt2"])
    prompt = "The kiln was hot"
    ids = tok.encode(prompt)
    cases = [
        ({"max_new_tokens": 12}, {"max_new_tokens": 12}),
        # sampling options as Triton parameters: ints, a bool, doubles
        (
            {"max_new_tokens": 10, "do_sample": True, "seed": 5, "top_p": 0.9, "temperature": 0.8},
            {"max_new_tokens": 10, "do_sample": True, "seed": 5, "top_p": 0.9, "temperature": 0.8},
        ),
        ({"max_new_tokens": 6, "num_beams": 2}, {"max_new_tokens": 6, "num_beams": 2}),
    ]
    for params, options in cases:
        want = gen.generate([ids], **options).sequences[0]
        tokens, text, error = stream(server, name, text=prompt, **params)
        assert error is None, error
        assert tokens == want, params
        assert tok.decode(tokens).startswith(text) and len(text) > 0
    tokens, _, error = stream(server, name, ids=ids, max_new_tokens=5)  # token ids in
    assert error is None and tokens == gen.generate([ids], max_new_tokens=5).sequences[0]


def test_generation_options_are_checked_with_named_errors(server, engines):
    name = engines["gpt2"].name
    bad = [
        ({"max_new_tokens": 4, "top_q": 0.5}, "unknown generation parameter 'top_q'"),
        ({"max_new_tokens": "four"}, "max_new_tokens"),
        ({"num_beams": 0}, "num_beams is 0"),
        ({"top_p": 1.5}, "top_p is 1.5"),
    ]
    for params, expected in bad:
        tokens, _, error = stream(server, name, text="Hello", **params)
        assert tokens == [] and error is not None
        assert "kiln error [INVALID_ARGUMENT]" in str(error) and expected in str(error), str(error)
    _, _, error = stream(server, name, text="Hello", ids=[15496], max_new_tokens=2)
    assert error is not None and "exactly one of the inputs" in str(error)
    tokens, _, error = stream(server, name, text="Hello", max_new_tokens=3)  # still serving
    assert error is None and len(tokens) == 3


# --- every config parses with Triton's schema ---------------------------------------------------


def test_every_config_parses_with_tritons_schema(repository, engines):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    repo, written = repository
    configs = {}
    for path in sorted(repo.glob("*/config.pbtxt")):
        configs[path.parent.name] = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    assert set(configs) == set(written)
    kinds = {c.platform or c.backend for c in configs.values()}
    assert kinds == {"python", "onnxruntime_onnx", "pytorch_libtorch", "tensorrt_plan"}

    bert = engines["bert"].name
    manifest = read_graph_manifest(engines["bert"])
    c = configs[bert]
    assert c.max_batch_size == manifest.dims["batch"].max and c.dynamic_batching is not None
    assert [(i.name, list(i.dims), i.allow_ragged_batch) for i in c.input] == [
        (n, [-1], True) for n in manifest.input_names
    ]
    assert [list(o.dims) for o in c.output] == [[manifest.outputs[0].shape[1]]]
    assert c.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert (repo / bert / "1" / "model.py").is_file()
    onnx = configs[f"{bert}-onnx"]
    assert onnx.platform == "onnxruntime_onnx" and (repo / f"{bert}-onnx" / "1" / "model.onnx").is_file()
    ts = configs[f"{bert}-ts"]
    assert [o.name for o in ts.output] == ["embeddings__0"] and ts.input[2].name == "token_type_ids__2"
    assert (repo / f"{bert}-ts" / "1" / "model.pt").is_file()
    for precision, compatible in (("fp16", "false"), ("fp32", "true")):
        trt = configs[f"bert-gpu-trt-sm90-{precision}"]
        assert trt.default_model_filename == f"model.sm90.{precision}.plan"
        assert trt.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        assert list(trt.instance_group[0].profile) == ["0"]
        assert trt.parameters["tensorrt_version"].string_value == "10.13.0"
        assert trt.parameters["version_compatible"].string_value == compatible
        note = (repo / f"bert-gpu-trt-sm90-{precision}" / "README.md").read_text()
        assert "--backend-config=tensorrt,version-compatible=true" in note
        assert ("needs TensorRT 10.13.0 exactly" in note) == (compatible == "false")
    gpt2 = configs[engines["gpt2"].name]
    assert gpt2.model_transaction_policy.decoupled and gpt2.max_batch_size == 0
    text = configs[f"{bert}-text"]
    assert [i.name for i in text.input] == ["text"] and text.output[0].data_type == model_config_pb2.TYPE_STRING


def test_configs_with_a_typo_fail_the_schema_check():
    assert check(render({"name": "m", "backend": "python", "max_batch_size": 8})).max_batch_size == 8
    for typo in (
        'name: "m" dynamic_batching { max_queue_delay_us: 100 }',
        'input [ { name: "x" data_type: TYPE_INT46 } ]',
    ):
        with pytest.raises(InvalidArgumentError, match="not a valid Triton model configuration"):
            check(typo)


# --- the batching logic, without a server --------------------------------------------------------


def small_manifest(inputs, outputs, dims) -> Manifest:
    return Manifest(
        name="m", family="f", task="t", config={}, dims=dims, source=Source("", ""), inputs=inputs, outputs=outputs
    )


def test_padding_is_refused_where_it_would_not_be_exact():
    dims = {"batch": DimRange(1, 1, 8), "samples": DimRange(16, 32, 64)}
    audio_in = [
        TensorSpec("input_values", "float32", ("batch", "samples")),
        TensorSpec("attention_mask", "int64", ("batch", "samples")),
    ]
    ctc = small_manifest(audio_in, [TensorSpec("logits", "float32", ("batch", "frames", 32))], dims)
    assert "frames" in batching.pad_refusal(ctc)
    assert batching.resolve_batching(ctc, "auto", "tensorrt") == "exact"
    with pytest.raises(InvalidArgumentError, match="not exact"):
        batching.resolve_batching(ctc, "pad", "aoti")
    no_mask = small_manifest(audio_in[:1], [TensorSpec("logits", "float32", ("batch", 4))], dims)
    assert "no attention_mask" in batching.pad_refusal(no_mask)
    tags = small_manifest(audio_in, [TensorSpec("logits", "float32", ("batch", "samples", 3))], dims)
    assert batching.pad_refusal(tags) is None
    assert batching.resolve_batching(tags, "auto", "tensorrt") == "pad"
    assert batching.resolve_batching(tags, "auto", "aoti") == "exact"


def test_batcher_groups_or_pads_and_splits_back():
    dims = {"batch": DimRange(1, 1, 8), "sequence": DimRange(2, 4, 16)}
    m = small_manifest(
        [
            TensorSpec("input_ids", "int64", ("batch", "sequence")),
            TensorSpec("attention_mask", "int64", ("batch", "sequence")),
        ],
        [TensorSpec("tags", "float32", ("batch", "sequence", 2)), TensorSpec("pooled", "float32", ("batch", 3))],
        dims,
    )
    feeds = {
        i: {"input_ids": np.full((rows, n), i + 1, np.int64), "attention_mask": np.ones((rows, n), np.int64)}
        for i, (rows, n) in enumerate([(1, 3), (2, 5), (1, 3), (3, 2)])
    }

    def fake_run(feed):  # per-token output echoes the ids; pooled is the row's mask sum
        ids = feed["input_ids"].astype(np.float32)
        return {
            "tags": np.stack([ids, ids], -1),
            "pooled": np.repeat(feed["attention_mask"].sum(1, keepdims=True), 3, 1).astype(np.float32),
        }

    exact = batching.Batcher(m, "exact", "aoti")
    runs = list(exact.plan(feeds))
    assert [r.requests for r in runs] == [[0, 2], [1], [3]]  # one run per shape
    alone = batching.Batcher(m, "exact", "torchscript")  # not batch-invariant: a run per request
    assert [r.requests for r in alone.plan(feeds)] == [[0], [1], [2], [3]]
    pad = batching.Batcher(m, "pad")
    (run,) = pad.plan(feeds)
    assert run.feed["input_ids"].shape == (7, 5) and run.feed["attention_mask"][0].tolist() == [1, 1, 1, 0, 0]
    for batcher, plan in ((exact, runs), (pad, [run])):
        for r in plan:
            for i, out in zip(r.requests, batcher.split(r, fake_run(r.feed))):
                rows, n = feeds[i]["input_ids"].shape
                assert out["tags"].shape == (rows, n, 2) and (out["tags"] == i + 1).all()
                assert (out["pooled"] == n).all()


def test_generation_parameters_are_checked_like_kiln_run():
    assert batching.generation_options({"max_new_tokens": 5, "top_p": "0.5", "do_sample": "true"}) == {
        "max_new_tokens": 5,
        "top_p": 0.5,
        "do_sample": True,
        "seed": 0,
    }
    for params, match in (
        ({"bogus": 1}, "unknown generation parameter 'bogus'"),
        ({"num_beams": 2.5}, "num_beams=2.5: expected int"),
        ({"max_new_tokens": True}, "expected int"),
        ({"temperature": "hot"}, "temperature='hot': expected float"),
        ({"do_sample": 1}, "expected bool"),
    ):
        with pytest.raises(InvalidArgumentError, match=match):
            batching.generation_options(params)


# --- the commands -------------------------------------------------------------------------------


def test_triton_repo_command_writes_a_checked_repository(engines, tmp_path, capsys):
    code = main(
        [
            "triton-repo",
            str(engines["bert"]),
            "--output",
            str(tmp_path / "repo"),
            "--copy-engines",
            "--onnx-tensorrt",
            "fp16",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "checked against Triton's schema" in out
    name = engines["bert"].name
    for model in (name, f"{name}-text", f"{name}-onnx", f"{name}-ts"):
        assert model in out and (tmp_path / "repo" / model / "config.pbtxt").is_file()
    config = check((tmp_path / "repo" / name / "config.pbtxt").read_text())
    assert config.parameters["engine_dir"].string_value == f"{name}/engine"  # relocatable
    assert (tmp_path / "repo" / name / "engine" / "manifest.json").is_file()
    onnx = check((tmp_path / "repo" / f"{name}-onnx" / "config.pbtxt").read_text())
    accelerator = onnx.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"


class Output:
    """A process's output lines, read by a thread as they come."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stdout), daemon=True)
        self.thread.start()
        self.proc = proc

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and marker not in self.text:
            if self.proc.poll() is not None:
                self.thread.join(5)
                break
            time.sleep(0.2)
        assert marker in self.text, f"{marker!r} never printed; output:\n{self.text}"
        return self.text


def test_kiln_serve_answers_curl_and_stops_on_ctrl_c(engines):
    """`kiln serve ENGINE --port P`: the printed endpoints answer the README's request (a POST of
    texts to the -text model), and SIGINT (Ctrl-C) stops it cleanly, leaving nothing listening."""
    port = free_port_block(3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kiln.cli", "serve", str(engines["bert"]), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = Output(proc)
        out = output.wait_for("Ctrl-C stops the server", TIMEOUT)
        assert f"http://127.0.0.1:{port}" in out and f"127.0.0.1:{port + 1}" in out
        body = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": samples.SENTENCES[:2]}]}
        url = f"http://127.0.0.1:{port}/v2/models/{engines['bert'].name}-text/infer"
        with urllib.request.urlopen(urllib.request.Request(url, data=json.dumps(body).encode()), timeout=60) as r:
            answer = json.loads(r.read())
        embeddings = [json.loads(a) for a in answer["outputs"][0]["data"]]
        from kiln.pipelines import pipeline

        assert np.array_equal(np.asarray(embeddings, np.float32), pipeline(engines["bert"])(samples.SENTENCES[:2]))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        output.thread.join(10)
        assert "stopped (tritonserver exit status 0)" in output.text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for p in (port, port + 1, port + 2):  # nothing left listening
        import socket

        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", p)) != 0


def test_bench_serve_reports_latency_batching_and_the_ratio(engines, tmp_path, capsys):
    out_json = tmp_path / "serve.json"
    code = main(
        [
            "bench-serve",
            str(engines["bert"]),
            "--clients",
            "1,6",
            "--seconds",
            "2",
            "--seq",
            "16",
            "--json",
            str(out_json),
            "--markdown",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    result = json.loads(out_json.read_text())
    assert [level["clients"] for level in result["levels"]] == [1, 6]
    for level in result["levels"]:
        assert level["errors"] == 0 and level["requests"] > 0
        assert level["p50_ms"] <= level["p90_ms"] <= level["p99_ms"]
        assert level["mean_batch"] >= 1 and level["ratio"] > 0
        assert level["in_process"]["rows_per_s"] > 0
    assert "| clients |" in out and "server / in-process" in out


def test_batch_invariance_is_not_assumed_where_it_cannot_be_checked():
    """The load-time check answers no, with the reason, for a backend that cannot be invariant,
    an engine of one row, and an engine kiln cannot make inputs for; the batcher then runs each
    request alone."""

    class Stub:
        def __init__(self, backend):
            self.backend = backend

        def run(self, feed):
            raise AssertionError("nothing should run")

    spec = [TensorSpec("x", "float32", ("batch", 4))]
    many = small_manifest(spec, spec, {"batch": DimRange(1, 2, 8)})
    one = small_manifest(spec, spec, {"batch": DimRange(1, 1, 1)})
    cases = [(Stub("torchscript"), many, "torchscript"), (Stub("aoti"), one, "one row"), (Stub("aoti"), many, "f/t")]
    for engine, manifest, why in cases:
        invariant, detail = batching.batch_invariant(engine, manifest)
        assert not invariant and why in detail, detail
        assert not batching.Batcher(manifest, "exact", engine.backend, invariant).concatenate
    assert batching.Batcher(many, "exact", "aoti", True).concatenate
