"""int8 engines (kiln build --precision int8) on a tiny BERT sentence-embedding engine: the build
records what was quantised, the C++ runtime chooses the artifact by precision, and parity holds
the int8 artifacts to the measured int8 table and the task check."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from kiln import errors as E
from kiln import registry

pytestmark = pytest.mark.slow


def build_int8(root, family: str, task: str, formats: list[str]):
    """A tiny checkpoint of this deployable built as `kiln build --precision int8` builds it."""
    from kiln.exporters import build
    from kiln.recipe import Recipe
    from kiln.testing import make_checkpoint

    d = registry.get(family, task)
    ckpt, _ = make_checkpoint(d, root / "ckpt")
    return build(Recipe.for_checkpoint(ckpt, d.task), output=root / "engine", formats=formats,
                 precisions=["fp32", "int8"]).path


@pytest.fixture(scope="module")
def int8_engine(tmp_path_factory):
    return build_int8(tmp_path_factory.mktemp("int8"), "bert", "feature-extraction", ["onnx", "aoti"])


def test_build_records_precision_and_the_quantisation_recipe(int8_engine):
    m = json.loads((int8_engine / "manifest.json").read_text())
    by = {(a["format"], a["precision"]): a for a in m["artifacts"]}
    assert set(by) == {("onnx", "fp32"), ("aoti", "fp32"), ("onnx", "int8"), ("aoti", "int8")}
    q = by["aoti", "int8"]["quantization"]
    assert q["scheme"] == "int8-dynamic-activation-int8-weight"
    assert q["layers"] == 2 * 6  # tiny BERT: 2 layers x (q, k, v, out, intermediate, output)
    assert q["quantized"] + len(q["excluded"]) == q["layers"]
    assert len(q["excluded"]) <= q["layers"] // 8  # the share kept fp32 is bounded
    assert set(q["excluded"]) <= set(q["most_sensitive"]) | set(q["excluded"])
    assert 0.99 <= q["measured_cosine"] <= 1.0
    assert by["aoti", "int8"]["versions"]["torchao"]
    o = by["onnx", "int8"]["quantization"]
    assert o["scheme"] == "onnxruntime-dynamic" and o["quantized"] + len(o["excluded"]) == o["layers"] == 12
    assert len(o["excluded"]) == len(q["excluded"])  # the same layers kept fp32 in both
    # the int8 table is the deployable's measured one, not derived from the format
    assert m["tolerances"]["int8"]["embeddings"]["why"].startswith("int8: measured")


def test_precision_chooses_the_artifact(int8_engine):
    from kiln.runtime import Engine

    auto = Engine(int8_engine)
    assert (auto.backend, auto.precision) == ("aoti", "fp32")  # auto keeps fp32 beside int8
    q = Engine(int8_engine, precision="int8")
    assert (q.backend, q.precision) == ("aoti", "int8")
    d = registry.get("bert", "feature-extraction")
    config = d.config_class.from_dict(auto.manifest["config"])
    feed = d.graphs[0].make_example(config, {"batch": 2, "sequence": 24}, seed=3)
    a, b = auto.run(feed)["embeddings"], q.run(feed)["embeddings"]
    diff = float(np.abs(a - b).max())
    assert 0 < diff < 0.1  # quantised (not the fp32 file again), and close
    with pytest.raises(E.InvalidArgumentError, match="precision 'int4' is not one of auto, fp32, fp16, bf16, int8"):
        Engine(int8_engine, precision="int4")
    with pytest.raises(E.InvalidArgumentError, match="does not exist for the aoti backend"):
        Engine(int8_engine, backend="aoti", precision="fp16")
    with pytest.raises(E.BackendUnavailableError, match="no torchscript artifact for backend 'torchscript'"):
        Engine(int8_engine, backend="torchscript", precision="int8")


def test_only_int8_runs_int8_under_auto(int8_engine, tmp_path):
    import shutil

    from kiln.manifest import read_manifest
    from kiln.runtime import Engine

    only = tmp_path / "only-int8"
    shutil.copytree(int8_engine, only)
    m = read_manifest(only)
    m.artifacts = [a for a in m.artifacts if a.precision == "int8"]
    m.write(only)
    e = Engine(only)
    assert (e.backend, e.precision) == ("aoti", "int8")
    with pytest.raises(E.ArtifactError, match="no fp32 aoti artifact.*model.int8.pt2"):
        Engine(only, precision="fp32")


def test_parity_holds_int8_to_its_table(int8_engine):
    from kiln.parity import run_parity

    report = run_parity(int8_engine)
    names = set(report.backends)
    assert {"kiln-aoti-int8", "aoti-python-int8", "onnxruntime-int8", "kiln-aoti"} <= names
    table = report.tolerances["int8"]["embeddings"]
    for name in ("kiln-aoti-int8", "aoti-python-int8", "onnxruntime-int8"):
        b = report.backends[name]
        assert b.passed, (name, b.outputs, b.task_detail)
        out = b.outputs["embeddings"]
        assert out["precision"] == "int8"
        assert 0 < out["max_abs"] <= table["atol"] + table["rtol"]  # measured, nonzero, in the table
        assert "(>= 0.99)" in b.task_detail
    fp32 = report.backends["kiln-aoti"].outputs["embeddings"]
    assert fp32["max_abs"] < report.backends["kiln-aoti-int8"].outputs["embeddings"]["max_abs"]


def test_int8_needs_a_measured_table_and_a_cpu_format(tmp_path):
    from kiln.exporters import build
    from kiln.recipe import load_recipe

    with pytest.raises(E.InvalidArgumentError, match="no measured int8 tolerance table"):
        build(load_recipe("vit-image-classification"), output=tmp_path / "vit", precisions=["int8"])
    with pytest.raises(E.InvalidArgumentError, match="int8 artifacts are aoti and onnx"):
        build(
            load_recipe("minilm-feature-extraction"),
            output=tmp_path / "m",
            formats=["torchscript"],
            precisions=["int8"],
        )
    with pytest.raises(E.InvalidArgumentError, match="--precision \\['int4'\\]"):
        build(load_recipe("minilm-feature-extraction"), output=tmp_path / "m", precisions=["int4"])
    assert not (tmp_path / "vit").exists() and not (tmp_path / "m").exists()


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    from kiln.int8 import spearman

    rng = np.random.default_rng(0)
    a = rng.normal(size=60)
    b = a + rng.normal(scale=0.5, size=60)
    b[3] = b[4]  # a tie
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)


@pytest.fixture(scope="module")
def int8_decoder(tmp_path_factory):
    return build_int8(tmp_path_factory.mktemp("int8-gpt2"), "gpt2", "text-generation", ["aoti"])


def test_int8_decoder_keeps_int8_weights_and_generates(int8_decoder):
    """A decode step is memory-bound: the int8 package must hold int8 weights (_int_mm), not
    weights that Inductor's freezing folded back into fp32 (what weight-only int8 became), and the
    C++ runtime decodes with it; parity holds the decoder to GPT-2's int8 table."""
    from kiln import roofline
    from kiln.manifest import read_graph_manifest
    from kiln.parity import run_parity
    from kiln.runtime import Generator

    m = read_graph_manifest(int8_decoder / "decoder")
    q8, f32 = m.artifact("aoti", "int8"), m.artifact("aoti", "fp32")
    assert q8.extra["quantization"]["scheme"] == "int8-dynamic-activation-int8-weight"
    kernels = roofline.artifact_kernels(m.artifact_path(q8))
    assert kernels.get("_int_mm_out", 0) == q8.extra["quantization"]["quantized"] > 0, kernels
    assert "_int_mm_out" not in roofline.artifact_kernels(m.artifact_path(f32))
    prompt = [[464, 2068, 7586, 21831]]
    runs = {
        p: Generator(int8_decoder, backend="aoti", precision=p).generate(prompt, max_new_tokens=6, min_new_tokens=6)
        for p in ("fp32", "int8")
    }
    assert all(len(r.sequences[0]) == 6 for r in runs.values())
    report = run_parity(int8_decoder / "decoder", backends=["kiln-aoti", "kiln-aoti-int8"])
    b = report.backends["kiln-aoti-int8"]
    assert b.passed, (b.outputs, b.task_detail)
    assert b.outputs["logits"]["max_abs"] > report.backends["kiln-aoti"].outputs["logits"]["max_abs"]  # quantised
    assert re.search(r"decisive next tokens, 0 differ", b.task_detail) and "top-1 agreement" in b.task_detail
    # The parity feeds have a few rows, and the decoder returns each row's last position only:
    # too few for a decisive one. Over real text, teacher-forced (what `kiln int8` measures):
    # wherever fp32 leads by more than twice the int8 logits bound, int8 picks the same token.
    from kiln.int8 import _teacher_forced
    from kiln.manifest import read_manifest
    from kiln.models.gpt2 import INT8_LOGITS
    from kiln.pipelines import pipeline
    from kiln.runtime import Engine
    from kiln.samples import SENTENCES

    cache = read_manifest(int8_decoder).cache
    tokenizer = pipeline(int8_decoder, load_engine=False).tokenizer
    engines = [Engine(int8_decoder / "decoder", backend="aoti", precision=p) for p in ("fp32", "int8")]
    bound = INT8_LOGITS.atol
    decisive = differ = 0
    for text in SENTENCES:
        ids = np.array([tokenizer.encode(text)], np.int64)
        f32, q8 = (_teacher_forced(e, ids, cache) for e in engines)
        top2 = np.sort(f32, -1)[:, -2:]
        lead = top2[:, 1] - top2[:, 0] > 2 * bound
        decisive += int(lead.sum())
        differ += int((lead & (f32.argmax(-1) != q8.argmax(-1))).sum())
    assert decisive > 0 and differ == 0, (decisive, differ)


def test_kiln_int8_measures_accuracy_and_speed(int8_engine, int8_decoder):
    """`kiln int8`: embeddings' cosine and ranking against fp32 over the 120 sentences, decoders'
    top-1 agreement over every prompt position, speeds of both precisions in one run."""
    from kiln.int8 import measure
    from kiln.pipelines import pipeline
    from kiln.samples import SENTENCE_PAIRS, SENTENCES

    report = measure(int8_engine, repeats=2)
    r = report["embeddings"]
    assert r["sentences"] == 2 * len(SENTENCE_PAIRS) and report["machine"]["cpu"]
    for name in ("kiln-aoti-int8", "onnxruntime-int8"):
        a = r["accuracy"][name]
        assert 0.99 <= a["min_cosine"] <= a["mean_cosine"] < 1 and 0.95 <= a["spearman"] <= 1, (name, a)
    for size, s in r["speed"].items():
        assert set(s["ms"]) == {"kiln-aoti", "kiln-aoti-int8", "onnxruntime", "onnxruntime-int8"}, size
        assert s["speedup"]["kiln-aoti-int8"] == pytest.approx(s["ms"]["kiln-aoti"] / s["ms"]["kiln-aoti-int8"])
    d = measure(int8_decoder, repeats=2)["decoder"]
    tokenizer = pipeline(int8_decoder, load_engine=False).tokenizer
    assert d["positions"] == sum(len(tokenizer.encode(t)) for t in SENTENCES)
    assert 0 <= d["top1_agreement"] <= 1 and d["decode"]["new_tokens"] == 48
    assert d["decode"]["speedup"] == pytest.approx(d["decode"]["step_ms"]["fp32"] / d["decode"]["step_ms"]["int8"])


def test_a_cpu_without_an_int8_dot_product_is_named_at_build():
    """aten._int_mm without VNNI or AMX is a reference loop (35-50x slower than fp32 mm on an AVX2
    AMD EPYC): `kiln build --precision int8` says so on such a machine, and only there."""
    from kiln.exporters.quantize import slow_int8_cpu

    note = slow_int8_cpu({"avx2", "fma"}, name="AMD EPYC")
    assert note and "AMD EPYC" in note and "avx512_vnni" in note and "kiln int8" in note
    assert slow_int8_cpu({"avx2", "avx512f", "avx512_vnni"}) is None
    assert slow_int8_cpu({"avx2", "avx_vnni"}) is None and slow_int8_cpu({"amx_int8"}) is None
