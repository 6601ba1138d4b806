"""Engines end to end: build from a checkpoint, parity of every backend, task answers through
the C++ runtime compared with transformers, atomic builds, and errors for broken engines.

Tiny BERT checkpoints (random weights, transformers' save_pretrained, the real MiniLM
vocabulary so real text goes in) stand in for fine-tuned ones; every artifact is built once
per session.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from kiln import samples
from kiln.errors import ArtifactError, CheckpointError, InputValueError, ManifestError
from kiln.exporters import build
from kiln.exporters.manifest import find_artifact, read_manifest, sha256_file
from kiln.parity import run_parity
from kiln.pipelines import pipeline
from kiln.recipe import load_recipe

from conftest import TASKS, make_checkpoint, tiny_recipe

# --- build --------------------------------------------------------------------------------

@pytest.mark.parametrize("task", TASKS)
def test_build_writes_a_complete_engine(tiny_engines, task):
    engine, ckpt = tiny_engines[task]
    m = read_manifest(engine)
    assert (m["family"], m["task"]) == ("bert", task)
    assert {a["format"] for a in m["artifacts"]} == {"torchscript", "onnx", "aoti"}
    for a in m["artifacts"]:
        assert sha256_file(engine / a["file"]) == a["sha256"]
        assert (engine / a["file"]).stat().st_size == a["bytes"]
    assert m["weights"] == "real" and m["random_keys"] == []
    labels = TASKS[task][2]
    assert m["labels"] == labels  # from the checkpoint's id2label, not the recipe's
    assert (engine / "tokenizer.json").is_file() and m["processing"]["tokenizer"] == "tokenizer.json"
    assert m["dims"]["sequence"] == {"min": 2, "opt": 64, "max": 128}
    import onnx
    model = onnx.load(str(engine / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in model.graph.output] == [o["name"] for o in m["outputs"]]
    assert all(o.version <= 20 for o in model.opset_import if o.domain in ("", "ai.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in dims), "batch and sequence stay dynamic in the ONNX graph"
    assert not list(engine.parent.glob(".*tmp-*")), "no temporary build directory is left behind"


def test_real_minilm_build_records_random_nothing(minilm_engine, minilm_dir):
    m = read_manifest(minilm_engine)
    assert m["weights"] == "real" and m["task_options"] == {"pooling": "mean", "normalize": True}
    assert m["outputs"] == [{"name": "embeddings", "dtype": "float32", "shape": ["batch", 384]}]
    from kiln.checkpoint import checkpoint_hash
    assert m["source"]["sha256"] == checkpoint_hash(minilm_dir)


def test_random_head_recipe_says_so(tmp_path, minilm_dir):
    r = load_recipe("bert-text-classification")
    result = build(r, output=tmp_path / "cls", formats=["torchscript"])
    m = result.manifest
    assert m["weights"] == "random-head"
    assert m["random_keys"] == ["classifier.bias", "classifier.weight"]
    assert m["labels"] == ["NEGATIVE", "POSITIVE"]
    assert [a["format"] for a in m["artifacts"]] == ["torchscript"]
    note = pipeline(result.path, load_engine=False).random_weights_note
    assert "randomly initialised head" in note and "--checkpoint" in note


def test_failed_build_leaves_the_previous_engine(tmp_path, monkeypatch, minilm_dir):
    r = load_recipe("bert-text-classification")
    out = tmp_path / "engines" / "cls"
    build(r, output=out, formats=["torchscript"])
    before = (out / "manifest.json").read_text()

    import kiln.exporters.onnx as onnx_exporter

    def broken(*args, **kwargs):
        raise RuntimeError("simulated exporter crash")
    monkeypatch.setattr(onnx_exporter, "export_onnx", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        build(r, output=out, formats=["torchscript", "onnx"])
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["cls"], "temp dirs are cleaned up"


def test_checkpoint_that_does_not_fit_is_refused(tmp_path, minilm_dir):
    import torch
    from safetensors.torch import load_file, save_file
    bad = tmp_path / "bad"
    shutil.copytree(minilm_dir, bad)
    state = load_file(bad / "model.safetensors")
    state["encoder.layer.0.attention.self.query.weight"] = torch.zeros(384, 380)
    save_file(state, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"encoder\.layer\.0\.attention\.self\.query\.weight"
                                              r".*\[384, 380\].*\[384, 384\]"):
        build(load_recipe("minilm-feature-extraction"), checkpoint=bad, output=tmp_path / "e")
    assert not (tmp_path / "e").exists()


# --- parity -------------------------------------------------------------------------------

EXPECTED_BACKENDS = {"torchscript-python", "onnxruntime", "kiln-torchscript", "kiln-aoti"}


@pytest.mark.parametrize("task", TASKS)
def test_parity_every_backend_matches_eager(tiny_engines, task):
    report = run_parity(tiny_engines[task][0])
    assert set(report.backends) == EXPECTED_BACKENDS
    assert "kiln-tensorrt" in report.skipped
    for name, b in report.backends.items():
        assert b.error is None, b.error
        for out, o in b.outputs.items():
            assert o["max_abs"] <= 1e-4, (name, out, o)
            assert o["cosine"] >= 0.99999, (name, out, o)
        assert b.task_match, b.task_detail
    assert report.passed and report.iterations >= 3


def test_parity_on_real_minilm(minilm_engine, tmp_path):
    from kiln.parity import write_json
    report = run_parity(minilm_engine)
    assert report.passed
    write_json(report, tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["pass"] is True
    for name in EXPECTED_BACKENDS:
        b = data["backends"][name]
        assert b["pass"] and b["task_match"]
        o = b["outputs"]["embeddings"]
        assert set(o) >= {"max_abs", "max_rel", "cosine"} and o["max_abs"] <= 1e-5


def test_parity_catches_a_wrong_artifact(tiny_engines, tmp_path):
    """The harness fails when an artifact computes something else (an ONNX graph of other weights)."""
    engine = tmp_path / "mixed"
    shutil.copytree(tiny_engines["text-classification"][0], engine)
    ckpt = make_checkpoint(tmp_path / "other", "BertForSequenceClassification", ["NEGATIVE", "POSITIVE"],
                           tiny_engines["text-classification"][1], seed=1)
    other = build(tiny_recipe("bert-text-classification"), checkpoint=ckpt, output=tmp_path / "other-engine", formats=["onnx"]).path
    shutil.copy2(other / "model.onnx", engine / "model.onnx")
    report = run_parity(engine)
    assert not report.passed
    ort = report.backends["onnxruntime"]
    assert not ort.passed and ort.outputs["logits"]["max_abs"] > 1e-2
    assert report.backends["kiln-aoti"].passed  # the others still match


def test_parity_reports_a_corrupt_cpp_artifact(tiny_engines, tmp_path):
    engine = tmp_path / "corrupt"
    shutil.copytree(tiny_engines["question-answering"][0], engine)
    data = (engine / "model.pt2").read_bytes()
    (engine / "model.pt2").write_bytes(data[: len(data) // 2])  # truncated
    report = run_parity(engine)
    assert not report.passed
    assert "ArtifactError" in report.backends["kiln-aoti"].error
    assert "model.pt2" in report.backends["kiln-aoti"].error


# --- task answers through the C++ runtime vs transformers --------------------------------

def _hf(task, ckpt):
    import transformers
    return transformers.pipeline(task, model=str(ckpt), device="cpu")


def test_text_classification_answers_match_transformers(tiny_engines):
    engine, ckpt = tiny_engines["text-classification"]
    pipe = pipeline(engine)
    feed, ctx = pipe.preprocess(samples.SENTENCES)
    ours = pipe.postprocess(pipe.run(feed), ctx, top_k=None)
    theirs = _hf("text-classification", ckpt)(samples.SENTENCES, top_k=None)
    for o, t in zip(ours, theirs):
        assert [x["label"] for x in o] == [x["label"] for x in t]
        np.testing.assert_allclose([x["score"] for x in o], [x["score"] for x in t], atol=1e-5)


def test_token_classification_entities_match_transformers(tiny_engines):
    engine, ckpt = tiny_engines["token-classification"]
    ours = pipeline(engine)(samples.ENTITY_SENTENCES)
    hf = _hf("token-classification", ckpt)
    hf_out = hf(samples.ENTITY_SENTENCES, aggregation_strategy="simple")
    assert sum(len(o) for o in ours) > 0, "the tiny model tags something"
    for o, t in zip(ours, hf_out):
        assert [(e["label"], e["start"], e["end"]) for e in o] == \
               [(e["entity_group"], e["start"], e["end"]) for e in t]
        np.testing.assert_allclose([e["score"] for e in o], [e["score"] for e in t], atol=1e-4)


def test_question_answering_span_is_the_best_context_span(tiny_engines):
    """kiln's answer equals a brute-force search over transformers' logits, inside the context."""
    import torch
    import transformers
    engine, ckpt = tiny_engines["question-answering"]
    answers = pipeline(engine)([q for q, _ in samples.QA_PAIRS], [c for _, c in samples.QA_PAIRS])
    tok = transformers.AutoTokenizer.from_pretrained(str(ckpt))
    model = transformers.BertForQuestionAnswering.from_pretrained(str(ckpt)).eval()
    for (q, c), ans in zip(samples.QA_PAIRS, answers):
        enc = tok(q, c, return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0].tolist()
        with torch.no_grad():
            out = model(**enc)
        seq = enc.sequence_ids(0)
        ctx = [i for i, s in enumerate(seq) if s == 1]
        ps = torch.softmax(out.start_logits[0, ctx], -1)
        pe = torch.softmax(out.end_logits[0, ctx], -1)
        best = max(((ps[i] * pe[j]).item(), i, j) for i in range(len(ctx))
                   for j in range(i, min(len(ctx), i + 30)))
        start, end = offsets[ctx[best[1]]][0], offsets[ctx[best[2]]][1]
        assert (ans["start"], ans["end"]) == (start, end)
        assert ans["answer"] == c[start:end] and ans["answer"] in c
        assert ans["score"] == pytest.approx(best[0], abs=1e-5)


def test_fill_mask_predictions_match_transformers(tiny_engines):
    engine, ckpt = tiny_engines["fill-mask"]
    text = "The capital of France is [MASK]."
    ours = pipeline(engine)([text])[0][0]
    theirs = _hf("fill-mask", ckpt)(text, top_k=5)
    assert [o["token_id"] for o in ours] == [t["token"] for t in theirs]
    np.testing.assert_allclose([o["score"] for o in ours], [t["score"] for t in theirs], atol=1e-5)


def test_semantic_search_through_the_cpp_runtime(minilm_engine, minilm_dir):
    import torch
    import transformers
    pipe = pipeline(minilm_engine)
    assert pipe.backend == "aoti"
    ranked = pipe.similarity(samples.SEARCH_QUERY, samples.SEARCH_DOCUMENTS)
    top2 = {doc for _, doc in ranked[:2]}
    assert top2 <= {samples.SEARCH_DOCUMENTS[i] for i in (0, 2, 4)}, ranked  # the deployment ones
    assert ranked[-1][1] in {samples.SEARCH_DOCUMENTS[i] for i in (1, 3, 5)}
    # and the embeddings are what sentence-transformers computes with transformers
    texts = [samples.SEARCH_QUERY, *samples.SEARCH_DOCUMENTS]
    tok = transformers.AutoTokenizer.from_pretrained(str(minilm_dir))
    model = transformers.BertModel.from_pretrained(str(minilm_dir)).eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
    ours = pipe(texts)
    assert np.abs(ours - ref).max() <= 1e-5


# --- bad input through the pipelines ----------------------------------------------------

def test_pipeline_input_errors(tiny_engines):
    engine = tiny_engines["text-classification"][0]
    pipe = pipeline(engine)
    with pytest.raises(InputValueError, match=r"texts\[1\] is empty"):
        pipe(["fine", "   "])
    with pytest.raises(InputValueError, match=r"text 0 is \d+ tokens long.*maximum 128"):
        pipe(["word " * 200])
    with pytest.raises(InputValueError, match="no text given"):
        pipe([])
    with pytest.raises(InputValueError, match="at most 32"):
        pipe(["hi"] * 33)
    # truncation is the documented way through
    feed, _ = pipe.preprocess(["word " * 200], truncation=True)
    assert feed["input_ids"].shape == (1, 128)


def test_broken_engine_directories(tiny_engines, tmp_path):
    src = tiny_engines["text-classification"][0]
    old = tmp_path / "old"
    shutil.copytree(src, old)
    m = json.loads((old / "manifest.json").read_text())
    m["format_version"] = 99
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="format_version 99.*reads 2"):
        pipeline(old)
    partial = tmp_path / "partial"
    shutil.copytree(src, partial)
    m = json.loads((partial / "manifest.json").read_text())
    del m["inputs"], m["dims"]
    (partial / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ManifestError, match="missing field.*dims.*inputs"):
        pipeline(partial)
    with pytest.raises(ManifestError, match="no manifest.json"):
        pipeline(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    with open(broken / "model.pt2", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ArtifactError, match="model.pt2"):
        pipeline(broken, backend="aoti")
    assert find_artifact(read_manifest(broken), "aoti")["bytes"] > 1000
