"""Hostile input on engines built the way users build them: each case a named kiln error, never
a crash. (The C++ runtime's own cases, on its fixture engine, are in test_runtime.py and ctest;
the fuzzer, test_fuzz.py, throws thousands more.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import engine_of

from kiln import errors as E
from kiln.cli import main
from kiln.runtime import Engine, available_backends

CPP = [b for b in ("aoti", "torchscript") if b in available_backends()]


@pytest.fixture(scope="module")
def bert(deployable_engine):
    return engine_of(deployable_engine, "bert", "token-classification")[0]


@pytest.fixture(scope="module")
def gpt2(deployable_engine):
    return engine_of(deployable_engine, "gpt2", "text-generation")[0]


def _feed(batch: int = 2, seq: int = 9) -> dict[str, np.ndarray]:
    return {"input_ids": np.full((batch, seq), 7, np.int64), "attention_mask": np.ones((batch, seq), np.int64),
            "token_type_ids": np.zeros((batch, seq), np.int64)}


@pytest.mark.parametrize("backend", CPP)
@pytest.mark.parametrize("name, value, where, allowed", [
    ("input_ids", 30522, (1, 4), r"\[0, 30521\]"),  # one past the vocabulary: AOTInductor aborted the process
    ("input_ids", -1, (0, 0), r"\[0, 30521\]"),
    ("token_type_ids", 2, (1, 8), r"\[0, 1\]"),  # type_vocab_size 2
    ("attention_mask", 3, (0, 2), r"\[0, 1\]"),
])
def test_ids_out_of_range_are_named_before_any_kernel(bert, backend, name, value, where, allowed):
    engine = Engine(bert, backend=backend)
    feed = _feed()
    feed[name][where] = value
    with pytest.raises(E.InputValueError, match=rf"{name}.*{value}.*\[{where[0]}, {where[1]}\].*{allowed}"):
        engine.run(feed)
    assert engine.run(_feed())["logits"].shape == (2, 9, 7)  # and the engine keeps serving


@pytest.mark.parametrize("backend", CPP)
def test_a_decoder_mask_that_is_not_past_plus_new(gpt2, backend):
    """total = past + new is declared, and checked: on aoti a wrong mask length segfaulted or
    returned non-finite caches."""
    m = json.loads((gpt2 / "decoder" / "manifest.json").read_text())
    assert m["dims"]["total"]["sum"] == ["past", "new"]
    engine = Engine(gpt2 / "decoder", backend=backend)
    cache = np.zeros((2, 2, 1, 4, 5, 16), np.float32)  # layers, 2, batch, heads, past 5, head_dim
    feed = {"input_ids": np.array([[11]]), "attention_mask": np.ones((1, 7), np.int64),
            "position_ids": np.array([[5]]), "past_key_values": cache}
    with pytest.raises(E.InputShapeError, match=r"attention_mask.*total.*7.*past \+ new = 5 \+ 1 = 6"):
        engine.run(feed)
    feed["attention_mask"] = np.ones((1, 6), np.int64)
    feed["position_ids"] = np.array([[128]])  # past the 128 positions
    with pytest.raises(E.InputValueError, match=r"position_ids.*128.*\[0, 127\]"):
        engine.run(feed)
    feed["position_ids"] = np.array([[5]])
    assert np.isfinite(engine.run(feed)["logits"]).all()


def test_non_utf8_text_and_manifests(gpt2, bert, tmp_path, capsys):
    from kiln.manifest import read_manifest
    from kiln.pipelines import pipeline

    with pytest.raises(E.InputValueError, match="not valid UTF-8"):
        pipeline(gpt2)("caf\udce9")  # a lone surrogate: bytes that were not UTF-8 (argv, a latin-1 file)
    broken = tmp_path / "broken"
    shutil.copytree(bert, broken)
    data = (broken / "manifest.json").read_bytes().replace(b'"bert"', b'"b\xe9rt"', 1)
    (broken / "manifest.json").write_bytes(data)
    with pytest.raises(E.ManifestError, match="UTF-8"):
        read_manifest(broken)
    with pytest.raises(E.ManifestError):
        Engine(broken)
    # kiln inspect prints the named error, never a traceback, for manifests broken in any way
    for content in (data, b"{", b"[]", b'{"format_version": 2}', json.dumps({**json.loads(
            (bert / "manifest.json").read_text()), "dims": {"batch": {"min": "x"}}}).encode()):
        (broken / "manifest.json").write_bytes(content)
        assert main(["inspect", str(broken)]) == 1
        err = capsys.readouterr().err
        assert "MANIFEST" in err and "Traceback" not in err


def test_top_k_outside_the_labels_is_refused(deployable_engine, capsys):
    engine = engine_of(deployable_engine, "bert", "text-classification")[0]
    for k in ("-1", "0"):
        assert main(["run", str(engine), "hello", "--top-k", k]) == 2
        assert f"--top-k {k}" in capsys.readouterr().err
    from kiln.pipelines import pipeline

    pipe = pipeline(engine)
    feed, ctx = pipe.preprocess(["hello"])
    with pytest.raises(E.InvalidArgumentError, match="top_k=-1"):
        pipe.postprocess(pipe.run(feed), ctx, top_k=-1)
    assert len(pipe.postprocess(pipe.run(feed), ctx, top_k=None)[0]) == 2  # every label, none dropped
