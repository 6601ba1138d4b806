"""GPT-2 and BART generation engines beyond the registry-driven tests: the engine layout, the C++
generation loop's greedy, beam search (with repetition penalty and n-gram blocking) and seeded
sampling on every backend against transformers' generate, `kiln run`, the C++ example, bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import engine_of

from kiln import errors
from kiln.manifest import graph_manifests, read_manifest
from kiln.pipelines import pipeline
from kiln.processing.bpe import BPETokenizer
from kiln.runtime import Generator, available_backends
from kiln.samples import ARTICLE, PROMPTS

CPP_BACKENDS = [b for b in ("torchscript", "aoti") if b in available_backends()]


def _hf(ckpt, encoder_decoder: bool):
    import transformers
    cls = transformers.BartForConditionalGeneration if encoder_decoder else transformers.GPT2LMHeadModel
    return cls.from_pretrained(ckpt).eval()


def _hf_generate(model, prompts: list[list[int]], pad: int, left: bool, **options) -> list[list[int]]:
    """transformers' generate on padded prompts; the new tokens per row, padding after eos cut."""
    import torch
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        sl = slice(width - len(p), width) if left else slice(0, len(p))
        ids[i, sl], mask[i, sl] = torch.tensor(p), 1
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=mask, pad_token_id=pad, **options)
    start = width if left else 1  # decoder-only: after the prompt; BART: after decoder_start
    eos = model.generation_config.eos_token_id
    rows = []
    for row in out[:, start:].tolist():
        if eos in row:
            row = row[:row.index(eos) + 1]
        rows.append(row)
    return rows


def _cut_eos(seqs, eos: int) -> list[list[int]]:
    return [list(s[:list(s).index(eos) + 1]) if eos in list(s) else list(s) for s in seqs]


@pytest.fixture(scope="module")
def gpt2(deployable_engine):
    return engine_of(deployable_engine, "gpt2", "text-generation")[:2]


@pytest.fixture(scope="module")
def bart(deployable_engine):
    return engine_of(deployable_engine, "bart", "summarization")[:2]


def test_build_writes_a_generation_engine(gpt2, bart):
    for (engine, _), graphs in ((gpt2, ["decoder"]), (bart, ["encoder", "decoder"])):
        m = read_manifest(engine)
        assert m.kind == "generation" and list(m.graphs) == graphs
        assert m.max_positions == 128
        assert (engine / "tokenizer.json").is_file() and "tokenizer.json" in m.processing["files"]
        for sub in graph_manifests(engine):
            assert sub.path == engine / sub.graph
            if sub.graph == "decoder":
                assert sub.dims["past"].min == 0  # one graph: prefill (past 0) and decode
                assert sub.dims["total"].sum == ("past", "new")  # derived, checked by the runtime
                positions = next(s for s in sub.inputs if s.name == "position_ids")
                assert (positions.values.min, positions.values.max) == (0, 127)
            # the CPU formats' decoder holds every linear (in, out), tied embeddings read the head's
            # table (kiln.exporters.layout); AOTI says which linear kernels it was compiled for, and why
            for a in sub.artifacts:
                layout = a.extra.get("weight_layout", {}).get("in_out", [])
                from kiln.exporters.layout import one_row_reduction

                reduced = a.extra.get("linear_kernels", {}).get("one_row_reduction", False)
                fp32_aoti_decoder = a.format == "aoti" and a.precision == "fp32" and sub.graph == "decoder"
                assert reduced == (fp32_aoti_decoder and one_row_reduction(sub.dims)), a  # where the rule says
                if reduced:  # AOTI's one-row decoder off Intel: every linear as OneRowLinear, weights (out, in)
                    names = a.extra["weight_layout"]["one_row_reduction"]
                    assert any(n.endswith("lm_head") for n in names) and not layout, a
                elif a.format in ("torchscript", "aoti") and sub.graph == "decoder":
                    assert any(n.endswith("lm_head") for n in layout), a
                    assert any(n.endswith(("wte", "shared")) for n in layout), a
                    if m.encoder_decoder:  # BART's layers are nn.Linear (GPT-2's are Conv1D, already (in, out))
                        for linear in ("decoder.layers.0.fc1", "decoder.layers.0.encoder_attn.q_proj"):
                            assert any(n.endswith(linear) for n in layout), (linear, a)
                else:
                    assert not layout, a
                if a.format == "aoti" and a.precision == "fp32" and sub.graph == "decoder":
                    from kiln.exporters.layout import pack_rows, prepack_linears
                    from kiln.roofline import artifact_kernels

                    prepacked = a.extra["linear_kernels"]["prepacked"]
                    assert prepacked == prepack_linears(sub.dims)[0]
                    rows = a.extra["linear_kernels"].get("packed_for_rows")
                    assert rows == (pack_rows(sub.dims) if prepacked else None), a.extra
                    # what the package calls, though this session compiled prepacked graphs before
                    # (Inductor registers its packing patterns once per process)
                    kernels = artifact_kernels(sub.artifact_path(a))
                    assert ("_linear_pointwise" in kernels) == prepacked, kernels
                    if reduced:  # mm(W, x^T) for several rows; the one-row branch is Inductor's own
                        assert "mm_out" in kernels and "addmm_out" not in kernels, kernels
                    else:
                        assert ("addmm_out" in kernels) == (not prepacked), kernels
    assert read_manifest(bart[0]).generation["forced_bos_token_id"] == 0


@pytest.fixture(scope="module")
def gpt2_prompts(gpt2):
    tok = BPETokenizer.from_dir(gpt2[0])
    return [tok.encode(PROMPTS[0]), tok.encode(PROMPTS[1])]  # different lengths: left padding


@pytest.mark.parametrize("backend", CPP_BACKENDS)
def test_gpt2_greedy_and_beams_equal_transformers(gpt2, gpt2_prompts, backend):
    engine, ckpt = gpt2
    model = _hf(ckpt, False)
    gen = Generator(engine, backend=backend)
    for prompts in ([gpt2_prompts[0]], gpt2_prompts):
        ref = _hf_generate(model, prompts, 50256, True, max_new_tokens=64, min_new_tokens=64, do_sample=False)
        out = gen.generate(prompts, max_new_tokens=64, min_new_tokens=64)
        assert [list(s) for s in out.sequences] == ref
        assert all(len(s) == 64 for s in ref)
    ref = _hf_generate(model, gpt2_prompts[:1], 50256, True, max_new_tokens=24, num_beams=4, do_sample=False,
                       early_stopping=True, no_repeat_ngram_size=2, repetition_penalty=1.3)
    out = gen.generate(gpt2_prompts[:1], max_new_tokens=24, num_beams=4, early_stopping=True,
                       no_repeat_ngram_size=2, repetition_penalty=1.3)
    assert _cut_eos(out.sequences, 50256) == ref


@pytest.mark.parametrize("backend", CPP_BACKENDS)
def test_bart_greedy_and_beams_equal_transformers(bart, backend):
    engine, ckpt = bart
    model = _hf(ckpt, True)
    tok = BPETokenizer.from_dir(engine)
    sources = [tok.encode(ARTICLE[:300]), tok.encode(ARTICLE[300:420])]
    gen = Generator(engine, backend=backend)
    for beams in (1, 4):
        ref = _hf_generate(model, sources, 1, False, max_new_tokens=40, num_beams=beams, do_sample=False,
                           length_penalty=2.0, early_stopping=True)
        out = gen.generate(sources, max_new_tokens=40, num_beams=beams, length_penalty=2.0, early_stopping=True)
        assert _cut_eos(out.sequences, 2) == ref, f"{beams} beam(s)"
        assert all(s[0] == 0 for s in out.sequences)  # forced <s> first, as generation_config says


def test_seeded_sampling_is_the_same_on_every_backend(gpt2, gpt2_prompts):
    if len(CPP_BACKENDS) < 2:
        pytest.skip(f"needs two C++ backends, have {CPP_BACKENDS}")
    runs = {}
    for backend in CPP_BACKENDS:
        gen = Generator(gpt2[0], backend=backend)
        runs[backend] = [gen.generate(gpt2_prompts, max_new_tokens=32, do_sample=True, seed=s, top_k=50,
                                      top_p=0.9, temperature=0.8).sequences for s in (0, 1)]
    first, *others = runs.values()
    assert all(o == first for o in others)
    assert first[0] != first[1]  # the seed matters


def test_kiln_run_generates(gpt2, bart):
    for engine, extra in ((gpt2[0], ["--max-new-tokens", "12"]), (bart[0], ["--max-new-tokens", "12", "--num-beams", "2"])):
        proc = subprocess.run([sys.executable, "-m", "kiln.cli", "run", str(engine), PROMPTS[0], "--json", *extra],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert data["results"][0]["tokens"] and data["weights"] == "real"
        streamed = subprocess.run([sys.executable, "-m", "kiln.cli", "run", str(engine), PROMPTS[0], *extra],
                                  capture_output=True, text=True)
        assert streamed.returncode == 0, streamed.stderr
        assert data["results"][0]["text"] in streamed.stdout


@pytest.mark.parametrize("options, error, needle", [
    ({"num_beams": 0}, errors.InvalidArgumentError, "num_beams"),
    ({"top_p": 1.5, "do_sample": True}, errors.InvalidArgumentError, "top_p"),
    ({"top_p": 0.0, "do_sample": True}, errors.InvalidArgumentError, "top_p"),
    ({"max_new_tokens": 200}, errors.InvalidArgumentError, "max_new_tokens .200. is more than the model's 128"),
    ({"max_new_token": 5}, errors.InvalidArgumentError, r"unknown generation option\(s\) \['max_new_token'\]"),
])
def test_bad_generation_options(gpt2, gpt2_prompts, options, error, needle):
    gen = Generator(gpt2[0])
    with pytest.raises(error, match=needle):
        gen.generate(gpt2_prompts[:1], **options)


def test_bad_prompts(gpt2):
    gen = Generator(gpt2[0])
    with pytest.raises(errors.InputValueError, match="empty"):
        gen.generate([[]], max_new_tokens=4)
    with pytest.raises(errors.InputValueError, match="vocabulary|vocab"):
        gen.generate([[5, 50257]], max_new_tokens=4)
    with pytest.raises(errors.InputShapeError, match="128"):
        gen.generate([[5] * 130], max_new_tokens=4)
    with pytest.raises(errors.InputValueError, match="prompt 0: the text is empty"):
        pipeline(gpt2[0])("  ")


def test_opening_the_top_level_as_an_engine_says_what_to_do(gpt2):
    from kiln.runtime import Engine
    with pytest.raises(errors.ManifestError, match="Generator"):
        Engine(gpt2[0])


def test_cpp_example_generates_what_python_does(gpt2, gpt2_prompts):
    from pathlib import Path
    exe = Path(__file__).resolve().parents[1] / "build" / "skbuild" / "cpp" / "kiln-example-generate"
    if not exe.is_file():
        pytest.skip(f"{exe} is not built (make setup builds it)")
    proc = subprocess.run([str(exe), str(gpt2[0]), "--max-new-tokens", "16", *map(str, gpt2_prompts[0])],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    printed = [int(t) for t in proc.stdout.splitlines()[1].split()]
    expected = Generator(gpt2[0]).generate(gpt2_prompts[:1], max_new_tokens=16).sequences[0]
    assert printed == expected and len(expected) == 16
