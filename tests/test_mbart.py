"""mBART beyond the registry-driven tests: language codes. The source language code goes where
the tokenizer puts it, the target language is forced first (mBART-50), both as transformers'
tokenizer and generate do, and a code the engine does not have is a named error."""

from __future__ import annotations

import pytest

from kiln import samples
from kiln.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def mbart(deployable_engine):
    from conftest import engine_of

    return engine_of(deployable_engine, "mbart", "translation")


def test_the_manifest_knows_the_languages(mbart):
    from kiln.manifest import read_manifest

    engine, _, _ = mbart
    m = read_manifest(engine)
    languages = m.processing["languages"]
    assert len(languages["codes"]) == 52 and languages["codes"]["en_XX"] < languages["codes"]["fr_XX"]
    assert (languages["position"], languages["source"], languages["target"]) == ("prefix", "en_XX", "fr_XX")
    assert m.generation["forced_bos_token_id"] == languages["codes"]["fr_XX"]  # the tokenizer's target
    assert m.generation["decoder_start_token_id"] == 2  # </s>, then the language


def test_source_and_target_languages_are_transformers(mbart):
    import torch
    import transformers

    from kiln.pipelines import pipeline

    engine, ckpt, hf = mbart
    pipe = pipeline(engine)
    text = samples.TRANSLATION_SOURCES[0]
    ref_tok = transformers.AutoTokenizer.from_pretrained(ckpt, src_lang="de_DE")
    prompts, _ = pipe.preprocess([text], src_lang="de_DE")
    assert prompts[0] == ref_tok(text).input_ids
    assert prompts[0][0] == pipe.languages["codes"]["de_DE"] and prompts[0][-1] == 2
    out = pipe([text], src_lang="de_DE", tgt_lang="ro_RO", num_beams=1, max_new_tokens=8)
    ro = pipe.languages["codes"]["ro_RO"]
    assert out[0]["tokens"][0] == ro  # forced first
    with torch.inference_mode():
        ref = hf.generate(torch.tensor(prompts), attention_mask=torch.ones(1, len(prompts[0]), dtype=torch.long),
                          forced_bos_token_id=ro, decoder_start_token_id=2, num_beams=1, do_sample=False,
                          max_new_tokens=8, eos_token_id=2, pad_token_id=1)
    assert out[0]["tokens"] == [t for t in ref[0, 1:].tolist()][: len(out[0]["tokens"])]


@pytest.mark.parametrize("kwargs,match", [
    ({"src_lang": "xx_YY"}, "src_lang='xx_YY': not a language code of this engine; expected one of ar_AR"),
    ({"tgt_lang": "klingon"}, "tgt_lang='klingon'"),
    ({"tgt_lang": 5}, "tgt_lang=5"),
])
def test_unknown_codes_are_named_errors(mbart, kwargs, match):
    from kiln.pipelines import pipeline

    with pytest.raises(InvalidArgumentError, match=match):
        pipeline(mbart[0])(["Hello"], max_new_tokens=2, **kwargs)


def test_languages_on_an_engine_without_them(deployable_engine, capsys):
    from conftest import engine_of

    from kiln.cli import main
    from kiln.pipelines import pipeline

    t5, _, _ = engine_of(deployable_engine, "t5", "translation")
    with pytest.raises(InvalidArgumentError, match="no language codes"):
        pipeline(t5)(["Hello"], tgt_lang="fr_XX", max_new_tokens=2)
    assert main(["run", str(t5), "Hello", "--tgt-lang", "fr_XX"]) == 2
    assert "has no language codes" in capsys.readouterr().err


def test_kiln_run_sets_both_codes(mbart, capsys):
    import json

    from kiln.cli import main

    engine, _, _ = mbart
    code = main(["run", str(engine), samples.TRANSLATION_SOURCES[1], "--src-lang", "en_XX", "--tgt-lang", "de_DE",
                 "--max-new-tokens", "4", "--num-beams", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    from kiln.manifest import read_manifest

    codes = read_manifest(engine).processing["languages"]["codes"]
    assert out["results"][0]["tokens"][0] == codes["de_DE"]
