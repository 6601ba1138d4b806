"""The `kiln` command: each verb on built engines, checked on what it prints or writes."""
import json
import os

import numpy as np
import pytest

from kiln import samples
from kiln.cli import main
from kiln.pipelines import pipeline


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_explains_every_verb(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for verb in ("list", "build", "run", "parity", "bench", "inspect", "demo"):
        assert f"\n  {verb} " in out, verb


def test_list_shows_recipes_and_backends(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in ("minilm-feature-extraction", "bert-question-answering", "bert-fill-mask"):
        assert name in out
    assert "aoti" in out and "torchscript" in out


def test_run_json_gives_the_pipeline_answer(capsys, tiny_engines):
    engine = tiny_engines["text-classification"][0]
    code, out, _ = run(capsys, "run", engine, *samples.SENTENCES[:3], "--json", "--backend", "torchscript")
    assert code == 0
    data = json.loads(out)
    assert data["backend"] == "torchscript" and data["inputs"] == samples.SENTENCES[:3]
    assert data["results"] == pipeline(engine, backend="torchscript")(samples.SENTENCES[:3])


def test_run_question_answering_prints_the_span(capsys, tiny_engines):
    engine = tiny_engines["question-answering"][0]
    q, c = samples.QA_PAIRS[0]
    code, out, _ = run(capsys, "run", engine, "--question", q, c)
    assert code == 0
    ans = pipeline(engine)([q], [c])[0]
    assert f"answer: {ans['answer']!r} [{ans['start']}:{ans['end']}]" in out


def test_run_embeddings_prints_similarities(capsys, minilm_engine):
    code, out, _ = run(capsys, "run", minilm_engine, "a cat sat on the mat", "a kitten lay on the rug",
                       "--json")
    data = json.loads(out)
    emb = np.array(data["embeddings"])
    assert emb.shape == (2, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert data["cosine"][0][1] == pytest.approx(float(emb[0] @ emb[1]), abs=1e-5)


def test_run_errors_name_the_problem(capsys, tiny_engines):
    engine = tiny_engines["text-classification"][0]
    code, _, err = run(capsys, "run", engine, "hello", "--backend", "tensorrt")
    assert code == 1 and "tensorrt" in err and "aoti" in err  # says what is available
    code, _, err = run(capsys, "run", engine, "")
    assert code == 1 and "INPUT_VALUE" in err and "empty" in err
    # usage errors: exit 2, INVALID_ARGUMENT, saying what to do
    code, _, err = run(capsys, "run", tiny_engines["question-answering"][0], "a context")
    assert code == 2 and "INVALID_ARGUMENT" in err and "--question" in err
    code, _, err = run(capsys, "run", engine, "hello", "--top-k", "0")
    assert code == 2 and "--top-k 0" in err
    code, _, err = run(capsys, "run", engine, "hello", "--precision", "fp16")
    assert code == 2 and "fp16" in err
    code, _, err = run(capsys, "run", engine, "hello", "--save", "out.png")
    assert code == 2 and "not a picture" in err


def test_parity_writes_json_and_sets_the_exit_code(capsys, tiny_engines, tmp_path):
    code, out, _ = run(capsys, "parity", tiny_engines["token-classification"][0], "--json", tmp_path / "p.json")
    assert code == 0 and "PASS" in out
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["pass"] is True
    for name, b in data["backends"].items():
        assert set(b) >= {"pass", "task_match", "outputs"}
        assert set(b["outputs"]["logits"]) >= {"max_abs", "max_rel", "cosine"}
    code, out, _ = run(capsys, "parity", tiny_engines["token-classification"][0], "--backends", "onnxruntime")
    assert code == 0 and "onnxruntime" in out and "kiln-aoti" not in out
    code, _, err = run(capsys, "parity", tiny_engines["token-classification"][0], "--backends", "coreml")
    assert code == 2 and "coreml" in err and "kiln-aoti" in err  # lists the known ones


def test_bench_measures_every_backend(capsys, tiny_engines, tmp_path):
    engine = tiny_engines["text-classification"][0]
    code, out, _ = run(capsys, "bench", engine, "--batch", "1,2", "--seq", "32", "--iters", "4",
                       "--beside-load", "--json", tmp_path / "b.json")
    assert code == 0
    data = json.loads((tmp_path / "b.json").read_text())
    names = {r["backend"] for r in data["rows"]}
    assert names == {"transformers", "eager", "onnxruntime", "kiln-aoti", "kiln-torchscript", "aoti-python",
                     "torchscript-python"}
    # every backend that cannot run here is reported with the reason, as parity does
    assert "tensorrt" in data["skipped"]["kiln-tensorrt"] and "plan" in data["skipped"]["tensorrt-python"]
    for r in data["rows"]:
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput"] == pytest.approx(r["batch"] * 1000 / r["p50_ms"])
        assert r["seq"] == 32 and r["batch"] in (1, 2)
    # the machine's limits, measured in the same run, and each backend's share of them
    limits = {lim["batch"]: lim for lim in data["limits"]}
    assert set(limits) == {1, 2}
    assert limits[2]["flops"] == pytest.approx(2 * limits[1]["flops"])  # twice the rows, twice the work
    assert limits[1]["flops"] >= sum(limits[1]["matmul_flops"].values()) > 0
    for r in data["rows"]:
        lim = limits[r["batch"]]
        assert r["gflops"] == pytest.approx(lim["flops"] / r["p50_ms"] / 1e6)
        assert r["gemm_share"] == pytest.approx(lim["gemm_seconds"] * 1e3 / r["p50_ms"]) and r["gemm_share"] > 0
        assert r["bandwidth_share"] == pytest.approx(
            lim["bytes_read"] / r["p50_ms"] / 1e6 / lim["bandwidth"]["read_GBps"])
    assert data["machine"]["blas"] and len(data["machine"]["load_average"]) == 3
    assert any("linear" in k or k.endswith("mm") for k in data["kernels"])  # what the aoti package calls
    assert "limits measured in this run, batch 2 x 32" in out and "% of the fp32 GEMM roofline" in out
    # the fastest C++ backend alone and beside a busy kiln-run, with kiln's OpenMP spin default
    b = data["beside_load"]
    assert b["backend"] == min((r for r in data["rows"] if r["batch"] == 1 and r["backend"].startswith("kiln-")),
                               key=lambda r: r["p50_ms"])["backend"]
    assert b["slowdown"] == pytest.approx(b["beside_p50_ms"] / b["alone_p50_ms"])
    assert b["GOMP_SPINCOUNT"] == data["machine"]["thread_wait"]["GOMP_SPINCOUNT"] == os.environ.get("GOMP_SPINCOUNT")
    # cold start and memory, in fresh processes, beside each process's base and the weights
    assert set(data["footprint"]) == {"kiln-aoti", "kiln-torchscript"} and data["weight_bytes"] > 0
    for by in data["footprint"].values():
        for who in ("python", "kiln-run"):
            m = by[who]
            assert m["peak_MB"] >= m["base_MB"] > 0
            assert m["cold_start_s"] == pytest.approx(m["open_s"] + m["first_run_s"]) and m["first_run_s"] > 0
            assert m["over_base_per_weight"] == pytest.approx(
                (m["peak_MB"] - m["base_MB"]) * 2**20 / data["weight_bytes"])
    code, _, err = run(capsys, "bench", engine, "--seq", "1000")
    assert code == 2 and "sequence range [2, 128]" in err
    code, _, err = run(capsys, "bench", engine, "--batch", "one")
    assert code == 2 and "--batch 'one'" in err


def test_bench_names_the_transformers_baselines_attention(capsys, tiny_engines, tmp_path):
    """--attention eager loads the baseline with attn_implementation="eager" (the same outputs as
    transformers' default attention) and the report says so, in the JSON and the summary."""
    from kiln.backends import transformers_infer
    from kiln.bench import _feed
    from kiln.manifest import read_graph_manifest

    engine = tiny_engines["text-classification"][0]
    manifest = read_graph_manifest(engine)
    feed = _feed(manifest, 2, 16)
    eager, default = transformers_infer(manifest, "eager")(feed), transformers_infer(manifest)(feed)
    for name, value in default.items():
        assert np.abs(eager[name] - value).max() <= 1e-5 and np.abs(value).max() > 1e-2
    code, out, _ = run(capsys, "bench", engine, "--seq", "16", "--iters", "2", "--attention", "eager",
                       "--backends", "transformers", "kiln-torchscript", "--json", tmp_path / "b.json")
    assert code == 0
    assert json.loads((tmp_path / "b.json").read_text())["transformers_attention"] == "eager"
    assert "transformers eager's speed (attn_implementation: eager)" in " ".join(out.split())


def test_inspect_shows_the_manifest(capsys, tiny_engines):
    code, out, _ = run(capsys, "inspect", tiny_engines["question-answering"][0])
    assert code == 0
    for text in ("question-answering", "input_ids", "start_logits", "model.pt2", "sequence 2..128"):
        assert text in out
    # how the AOTI linears were chosen at build (a tiny model: oneDNN, untimed, and why)
    assert "aoti fp32 linears: oneDNN prepacked" in out and "not timed against MKL" in out, out


def test_build_errors(capsys, tmp_path):
    code, _, err = run(capsys, "build", "no-such-recipe")
    assert code == 2 and "known recipes" in err
    code, _, err = run(capsys, "build", "bert-text-classification", "--checkpoint", tmp_path / "nothing",
                       "--output", tmp_path / "out")
    assert code == 1 and "CHECKPOINT" in err and not (tmp_path / "out").exists()
    code, _, err = run(capsys, "build", "bert-text-classification", "--formats", "coreml")
    assert code == 2 and "coreml" in err
    code, _, err = run(capsys, "build")
    assert code == 2 and "RECIPE" in err and "--checkpoint" in err
    code, _, err = run(capsys, "build", "bert-text-classification", "--dims", "sequence=2:64")
    assert code == 2 and "NAME=MIN:OPT:MAX" in err
    code, _, err = run(capsys, "build", "bert-text-classification", "--dims", "width=1:1:2")
    assert code == 2 and "width" in err and "sequence" in err


def test_build_a_checkpoint_alone(capsys, tmp_path, tiny_engines):
    """`kiln build --checkpoint DIR`: family and task from config.json, dims from the family's
    defaults clamped to the checkpoint's limits (printed), --dims over them."""
    _, ckpt = tiny_engines["question-answering"]  # 128 positions
    out = tmp_path / "qa"
    code, text, _ = run(capsys, "build", "--checkpoint", ckpt, "--output", out, "--formats", "torchscript",
                        "--dims", "batch=1:2:4")
    assert code == 0, text
    assert "sequence max 512 -> 128" in text
    from kiln.manifest import read_manifest
    m = read_manifest(out)
    assert (m.family, m.task) == ("bert", "question-answering")
    assert m.dims["sequence"].max == 128 and (m.dims["batch"].min, m.dims["batch"].opt, m.dims["batch"].max) == (1, 2, 4)
    code, _, err = run(capsys, "build", "--checkpoint", ckpt, "--task", "translation", "--output", out)
    assert code == 2 and "question-answering" in err  # what the family deploys


def test_build_inspect_and_bench_a_generation_engine(capsys, tmp_path, deployable_engine):
    from conftest import engine_of
    from kiln.recipe import find_recipe
    _, ckpt, _ = engine_of(deployable_engine, "bart", "summarization")
    out = tmp_path / "bart"
    # the recipe's ranges (1024 positions) are clamped to the checkpoint's 128, and said so
    code, text, _ = run(capsys, "build", find_recipe("bart-summarization"), "--checkpoint", ckpt, "--output", out,
                        "--formats", "torchscript")
    assert code == 0, text
    assert "total max 1024 -> 128" in text and "source max 1024 -> 128" in text
    assert "encoder/model.ts" in text and "decoder/model.ts" in text
    code, text, _ = run(capsys, "inspect", out)
    assert code == 0
    for needle in ("graphs encoder, decoder", "cross_key_values", "present_key_values", "forced_bos_token_id=0",
                   "total 1..128 (opt 65) = past + new"):
        assert needle in text, needle
    code, _, err = run(capsys, "bench", out, "--seq", "40", "--new-tokens", "6", "--beams", "2", "--runs", "0")
    assert code != 0 and "--runs" in err and "expected an integer >= 1" in err
    code, text, _ = run(capsys, "bench", out, "--seq", "40", "--new-tokens", "6", "--beams", "2", "--runs", "2",
                        "--json", tmp_path / "bench.json")
    assert code == 0, text
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["runs"] == 2
    assert {r["backend"] for r in data["rows"]} == {"transformers-generate", "kiln-torchscript"}
    assert "no aoti artifact" in data["skipped"]["kiln-aoti"]
    assert all(r["new_tokens"] == 6 and r["prompt"] == 40 and r["tokens_per_s"] > 0 for r in data["rows"])
    (lim,) = data["limits"]
    assert lim["decode_step"]["bytes_read"] > 0 and lim["flops"] > 0
    from kiln.roofline import huge_pages_advised
    # the probe's pages are this process's (pytest's: as started); `kiln` itself starts on huge pages
    assert lim["bandwidth"]["huge_pages"] is huge_pages_advised() and ("on huge pages" in text) is huge_pages_advised()
    # the step's widest projection (the vocabulary's: 2 beams x d_model x vocab) through each kernel
    from kiln.manifest import read_manifest
    vocab = data["limits"][0]["vocab_projection"]
    widest = max((tuple(map(int, k.split("x"))) for k in lim["decode_step"]["matmul_flops"]), key=lambda s: s[1] * s[2])
    assert tuple(vocab["shape"]) == widest and widest[0] == 2 and widest[2] == read_manifest(out).vocab_size
    assert set(vocab["GBps"]) == {"mkl_in_out", "mkl_out_in", "onednn_prepacked"} and min(vocab["GBps"].values()) > 0
    assert "vocabulary projection" in text
    for r in data["rows"]:  # a decode step's least bytes over its time, as a share of the measured read
        assert r["decode_GBps"] == pytest.approx(lim["decode_step"]["bytes_read"] / r["per_token_ms"] / 1e6)
        assert r["bandwidth_share"] == pytest.approx(r["decode_GBps"] / lim["bandwidth"]["read_GBps"])


def test_the_kiln_command_starts_itself_again_on_huge_pages(monkeypatch):
    """`kiln` (kiln.command.entry) sets glibc's hugetlb tunable and starts again, once, before torch: glibc
    reads it only at start. Your own GLIBC_TUNABLES or KILN_HUGE_PAGES=0 is left alone."""
    import os
    import sys

    from kiln import cli, command

    calls = []
    monkeypatch.setattr(os, "execv", lambda exe, args: calls.append((exe, args, os.environ.get("GLIBC_TUNABLES"))))
    monkeypatch.setattr(cli, "main", lambda: 7)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/kiln", "bench", "engines/x"])
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-X", "utf8", "/venv/bin/kiln", "bench", "engines/x"])
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("KILN_HUGE_PAGES", raising=False)
    command.entry()  # execv returns here only because it is a stand-in
    again = [sys.executable, "-X", "utf8", "/venv/bin/kiln", "bench", "engines/x"]  # the same command line
    assert calls == [(sys.executable, again, command.HUGE_PAGES_TUNABLE)]
    for env in ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}, {"KILN_HUGE_PAGES": "0"}):
        calls.clear()
        monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert command.entry() == 7 and calls == []
        monkeypatch.delenv("KILN_HUGE_PAGES", raising=False)

    def refused(exe, args):
        raise OSError("no exec here")

    monkeypatch.setattr(os, "execv", refused)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert command.entry() == 7 and "GLIBC_TUNABLES" not in os.environ  # could not start again: as it was
