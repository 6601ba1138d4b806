"""kiln's C++ generation loop (kiln::Generator) against transformers' generate, token for token.

The loop runs over Python callables (Generator.from_functions) wrapping a tiny random
transformers model. The fake KV cache (1, 2, batch, 1, seq, 2) stores each row's history —
token ids and positions at [0, 0], the attention mask at [0, 1] — and the callable reruns the
model uncached on the whole history, so the loop's cache handling (padding, positions, beam
reordering, per-beam expansion of the encoder output) decides what the model sees.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from kiln import errors
from kiln.generate import Generator

transformers = pytest.importorskip("transformers")

VOCAB = 1000
PAD = 1


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    # initializer_range 0.3: peaked distributions, so eos candidates win beams at different
    # lengths and early stopping is exercised (at 0.02 every hypothesis runs to max length)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                                  bos_token_id=None, eos_token_id=None, pad_token_id=None, initializer_range=0.3)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def bart():
    torch.manual_seed(0)
    cfg = transformers.BartConfig(vocab_size=VOCAB, d_model=64, init_std=0.3, encoder_layers=2, decoder_layers=2,
                                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                                  decoder_ffn_dim=128, max_position_embeddings=128, pad_token_id=PAD,
                                  bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                                  forced_bos_token_id=None, forced_eos_token_id=None)
    return transformers.BartForConditionalGeneration(cfg).eval()


def _append_cache(past, new_ids, new_pos, mask):
    """present = past + the new columns: ids/positions at [0, 0], mask at [0, 1]."""
    b, n = new_ids.shape
    new = np.zeros((1, 2, b, 1, n, 2), np.float32)
    new[0, 0, :, 0, :, 0] = new_ids
    new[0, 0, :, 0, :, 1] = new_pos
    new[0, 1, :, 0, :, 0] = mask[:, -n:]
    return np.concatenate([past, new], axis=4)


def gpt2_generator(model, **generation):
    def decoder(inp):
        present = _append_cache(inp["past_key_values"], inp["input_ids"], inp["position_ids"], inp["attention_mask"])
        ids = present[0, 0, :, 0, :, 0].astype(np.int64)
        pos = present[0, 0, :, 0, :, 1].astype(np.int64)
        mask = inp["attention_mask"]
        assert (present[0, 1, :, 0, :, 0] == mask).all(), "the cache's mask disagrees with attention_mask"
        with torch.no_grad():
            logits = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                           position_ids=torch.from_numpy(pos)).logits
        n = inp["input_ids"].shape[1]
        return {"logits": logits[:, -n:].float().numpy(), "present_key_values": present}

    return Generator.from_functions(decoder, layers=1, heads=1, head_dim=2, vocab_size=VOCAB,
                                    max_positions=model.config.n_positions, generation=generation)


def bart_generator(model, **generation):
    def encoder(inp):
        b, s = inp["input_ids"].shape
        cross = np.zeros((1, 2, b, 1, s, 2), np.float32)
        cross[0, 0, :, 0, :, 0] = inp["input_ids"]
        cross[0, 1, :, 0, :, 0] = inp["attention_mask"]
        return {"cross_key_values": cross}

    def decoder(inp):
        present = _append_cache(inp["past_key_values"], inp["input_ids"], inp["position_ids"], inp["attention_mask"])
        dec = present[0, 0, :, 0, :, 0].astype(np.int64)
        assert (present[0, 0, :, 0, :, 1] == np.arange(dec.shape[1])).all(), "BART positions are 0, 1, ..."
        cross = inp["cross_key_values"]
        src = cross[0, 0, :, 0, :, 0].astype(np.int64)
        src_mask = cross[0, 1, :, 0, :, 0].astype(np.int64)
        assert (src_mask == inp["encoder_attention_mask"]).all(), "cross_key_values rows and the mask disagree"
        with torch.no_grad():
            logits = model(input_ids=torch.from_numpy(src), attention_mask=torch.from_numpy(src_mask),
                           decoder_input_ids=torch.from_numpy(dec)).logits
        n = inp["input_ids"].shape[1]
        return {"logits": logits[:, -n:].float().numpy(), "present_key_values": present}

    return Generator.from_functions(decoder, encoder, layers=1, heads=1, head_dim=2, vocab_size=VOCAB,
                                    max_positions=model.config.max_position_embeddings, encoder_decoder=True,
                                    generation=generation)


def left_pad(prompts, pad):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def right_pad(prompts, pad):
    width = max(map(len, prompts))
    ids = torch.tensor([p + [pad] * (width - len(p)) for p in prompts])
    mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
    return ids, mask


def new_tokens(rows, eos):
    """transformers' padded new tokens -> kiln's: cut after the first eos."""
    out = []
    for row in rows:
        row = [int(t) for t in row]
        for i, t in enumerate(row):
            if t in eos:
                row = row[: i + 1]
                break
        out.append(row)
    return out


HF_PLAIN = dict(do_sample=False, num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0, length_penalty=1.0,
                min_length=0, top_k=None, top_p=None, temperature=None)


def hf_gpt2(model, prompts, eos=None, **kw):
    ids, mask = left_pad(prompts, PAD)
    settings = {**HF_PLAIN, **kw}
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, eos_token_id=eos, pad_token_id=PAD,
                             return_dict_in_generate=True, output_scores=True, **settings)
    seqs = new_tokens(out.sequences[:, ids.shape[1]:], [eos] if isinstance(eos, int) else (eos or []))
    return seqs, getattr(out, "sequences_scores", None)


def hf_bart(model, prompts, **kw):
    ids, mask = right_pad(prompts, PAD)
    settings = {**HF_PLAIN, "eos_token_id": 2, "pad_token_id": PAD, "decoder_start_token_id": 2, **kw}
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, return_dict_in_generate=True, output_scores=True,
                             **settings)
    return new_tokens(out.sequences[:, 1:], [2]), getattr(out, "sequences_scores", None)


P1 = [[5, 17, 230, 41, 9]]
P2 = [[5, 17, 230, 41, 9, 77, 3], [800, 12, 4]]


def test_greedy_64_tokens_single_and_left_padded_batch(gpt2):
    gen = gpt2_generator(gpt2)
    for prompts in (P1, P2):
        ours = gen.generate(prompts, max_new_tokens=64, pad_token_id=PAD)
        theirs, _ = hf_gpt2(gpt2, prompts, max_new_tokens=64)
        assert ours.sequences == theirs
        assert all(len(s) == 64 for s in ours.sequences)
        assert ours.timings["time_to_first_token_ms"] > 0 and len(ours.timings["step_ms"]) == 63


def test_greedy_eos_in_a_batch(gpt2):
    gen = gpt2_generator(gpt2)
    free = gen.generate(P2, max_new_tokens=24, pad_token_id=PAD).sequences
    eos = free[1][6]  # the short row ends at its 7th token, the other runs on (unless it meets it)
    streamed = []
    ours = gen.generate(P2, max_new_tokens=24, eos_token_id=eos, pad_token_id=PAD, on_tokens=streamed.append)
    theirs, _ = hf_gpt2(gpt2, P2, eos=eos, max_new_tokens=24)
    assert ours.sequences == theirs
    assert ours.sequences[1] == free[1][: free[1].index(eos) + 1]  # cut at its first eos
    assert [t[1] for t in streamed if t[1] >= 0] == ours.sequences[1]


@pytest.mark.parametrize("kw", [
    dict(num_beams=4, num_return_sequences=4),
    dict(num_beams=4, length_penalty=2.0, early_stopping=True),
    dict(num_beams=4, length_penalty=0.5, early_stopping=False),
    dict(num_beams=4, early_stopping="never", length_penalty=1.5),
    dict(num_beams=4, no_repeat_ngram_size=2),
    dict(num_beams=3, num_return_sequences=2, repetition_penalty=1.3),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_beam_search(gpt2, kw):
    gen = gpt2_generator(gpt2)
    free = gen.generate(P2, max_new_tokens=16, pad_token_id=PAD).sequences
    eos = [free[0][3], free[1][5]]  # hypotheses end at different lengths
    for prompts in (P1, P2):
        ours = gen.generate(prompts, max_new_tokens=16, eos_token_id=eos, pad_token_id=PAD, **kw)
        theirs, scores = hf_gpt2(gpt2, prompts, eos=eos, max_new_tokens=16, **kw)
        assert ours.sequences == theirs
        np.testing.assert_allclose(ours.scores, scores.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kw", [dict(repetition_penalty=1.3), dict(no_repeat_ngram_size=2), dict(min_new_tokens=12)],
                         ids=["repetition_penalty", "no_repeat_ngram", "min_new_tokens"])
def test_greedy_processors(gpt2, kw):
    gen = gpt2_generator(gpt2)
    free = gen.generate(P1, max_new_tokens=32, pad_token_id=PAD).sequences
    eos = free[0][2]
    ours = gen.generate(P1, max_new_tokens=32, eos_token_id=eos, pad_token_id=PAD, **kw)
    theirs, _ = hf_gpt2(gpt2, P1, eos=eos, max_new_tokens=32, **kw)
    assert ours.sequences == theirs
    if "min_new_tokens" in kw:
        assert len(ours.sequences[0]) > 12 and eos not in ours.sequences[0][:12]


BART_PROMPTS = [[0, 45, 67, 300, 12, 2], [0, 99, 2]]


@pytest.mark.parametrize("kw", [dict(), dict(num_beams=4), dict(num_beams=4, length_penalty=2.0, early_stopping=True,
                                                                  no_repeat_ngram_size=3)],
                         ids=["greedy", "beams", "beams-cnn-like"])
def test_bart_forced_bos_eos(bart, kw):
    gen = bart_generator(bart, eos_token_id=2, pad_token_id=PAD, decoder_start_token_id=2, forced_bos_token_id=0,
                         forced_eos_token_id=2)
    ours = gen.generate(BART_PROMPTS, max_new_tokens=20, **kw)
    theirs, scores = hf_bart(bart, BART_PROMPTS, max_new_tokens=20, forced_bos_token_id=0, forced_eos_token_id=2, **kw)
    assert ours.sequences == theirs
    assert all(s[0] == 0 and s[-1] == 2 for s in ours.sequences)
    if kw:
        np.testing.assert_allclose(ours.scores, scores.numpy(), rtol=1e-4, atol=1e-5)


def test_seeded_sampling_is_reproducible(gpt2):
    gen = gpt2_generator(gpt2)
    kw = dict(max_new_tokens=24, do_sample=True, top_k=20, top_p=0.9, temperature=0.7, pad_token_id=PAD)
    a = gen.generate(P2, seed=7, **kw).sequences
    assert gen.generate(P2, seed=7, **kw).sequences == a
    assert gen.generate(P2, seed=8, **kw).sequences != a
    greedy = gen.generate(P2, max_new_tokens=24, pad_token_id=PAD).sequences
    assert gen.generate(P2, seed=7, **{**kw, "top_k": 1}).sequences == greedy


@pytest.mark.parametrize("prompts,kw,cls,needle", [
    ([], {}, errors.InputValueError, "no prompts"),
    ([[1], []], {}, errors.InputValueError, "prompt 1 is empty"),
    ([[1, VOCAB]], {}, errors.InputValueError, f"token id {VOCAB}"),
    ([[1] * 129], {}, errors.InputShapeError, "128 positions"),
    ([[1] * 120], {"max_new_tokens": 20}, errors.InvalidArgumentError, "at most 8"),
    ([[1]], {"max_new_tokens": 0}, errors.InvalidArgumentError, "max_new_tokens is 0"),
    ([[1]], {"num_beams": 0}, errors.InvalidArgumentError, "num_beams is 0"),
    ([[1]], {"top_p": 1.5}, errors.InvalidArgumentError, "top_p"),
    ([[1]], {"do_sample": True, "temperature": 0.0}, errors.InvalidArgumentError, "temperature"),
    ([[1]], {"top_k": -1}, errors.InvalidArgumentError, "top_k"),
    ([[1]], {"num_beams": 2, "num_return_sequences": 3}, errors.InvalidArgumentError, "num_return_sequences"),
    ([[1]], {"early_stopping": "sometimes"}, errors.InvalidArgumentError, "early_stopping"),
    ([1, 2], {}, errors.InvalidArgumentError, "single id"),
])
def test_bad_inputs(gpt2, prompts, kw, cls, needle):
    gen = gpt2_generator(gpt2)
    with pytest.raises(cls, match=needle):
        gen.generate(prompts, **kw)


def test_errors_from_the_callable_propagate():
    def broken(inp):
        raise RuntimeError("model exploded")

    gen = Generator.from_functions(broken, layers=1, heads=1, head_dim=2, vocab_size=10, max_positions=16)
    with pytest.raises(RuntimeError, match="model exploded"):
        gen.generate([[1, 2]], max_new_tokens=3)

    def wrong(inp):
        return {"logits": np.zeros((1, 1, 11), np.float32), "present_key_values": np.zeros((1, 2, 1, 1, 2, 2), np.float32)}

    gen = Generator.from_functions(wrong, layers=1, heads=1, head_dim=2, vocab_size=10, max_positions=16)
    with pytest.raises(errors.KilnError, match="logits"):
        gen.generate([[1, 2]], max_new_tokens=3)


def test_generation_engine_dir_is_not_an_engine(tmp_path):
    from kiln.runtime import Engine
    (tmp_path / "manifest.json").write_text(
        '{"format_version": 2, "kind": "generation", "name": "g", "family": "gpt2", "task": "text-generation",'
        ' "graphs": {"decoder": "decoder"}}')
    with pytest.raises(errors.ManifestError, match="generation engine with graphs \\[decoder"):
        Engine(tmp_path)


# --- the binding's conversions: token ids, the stream callback, NaN logits -------------------

def _counting_generator(vocab=10, nan_from_step=None):
    """A decoder over plain numpy: logits favour (last id + 1) % vocab; NaN from a given step."""
    calls = []

    def decoder(inp):
        ids, past = inp["input_ids"], inp["past_key_values"]
        b, n = ids.shape
        present = np.concatenate([past, np.zeros((1, 2, b, 1, n, 2), np.float32)], axis=4)
        logits = np.zeros((b, n, vocab), np.float32)
        logits[np.arange(b)[:, None], np.arange(n)[None, :], (ids + 1) % vocab] = 5.0
        if nan_from_step is not None and len(calls) >= nan_from_step:
            logits[1, -1, 4] = np.nan
        calls.append(n)
        return {"logits": logits, "present_key_values": present}

    return Generator.from_functions(decoder, layers=1, heads=1, head_dim=2, vocab_size=vocab, max_positions=32)


@pytest.mark.parametrize("prompt,needle", [
    ([1, 2.5, 3], r"prompt 0 has 2\.5 \(float\) at position 1"),
    ([1, 2**63], r"prompt 0 has token id 9223372036854775808 at position 1, which does not fit in 64 bits"),
    ([1, -2**64], r"prompt 0 has token id -18446744073709551616 at position 1"),
    ([True, 1], r"prompt 0 has True \(bool\) at position 0"),
    (np.array([1.0, 2.0]), r"prompt 0 has (np\.float64\(1\.0\)|1\.0) \(numpy\.float64\) at position 0"),  # numpy 1 / 2 repr
    ([1, "2"], r"prompt 0 has '2' \(str\) at position 1"),
], ids=["float", "2**63", "-2**64", "bool", "numpy-float", "str"])
def test_prompt_ids_must_be_int64_integers(prompt, needle):
    gen = _counting_generator()
    with pytest.raises(errors.InputValueError, match=needle):
        gen.generate([prompt], max_new_tokens=2)
    with pytest.raises(errors.InputValueError, match=needle.replace("prompt 0", "prompt 1")):
        gen._gen.generate([[4], prompt], gen._gen.defaults, None)  # the binding itself


def test_integer_prompts_of_any_kind_are_taken():
    gen = _counting_generator()
    want = gen.generate([[1, 2]], max_new_tokens=3).sequences
    assert want == [[3, 4, 5]]
    assert gen.generate([np.array([1, 2], np.int32)], max_new_tokens=3).sequences == want
    assert gen.generate([(np.int64(1), 2)], max_new_tokens=3).sequences == want
    assert gen.generate([torch.tensor([1, 2])], max_new_tokens=3).sequences == want
    with pytest.raises(errors.InputValueError, match=r"prompt 0 has tensor\(1\.5000\) \(torch\.Tensor\) at position 0"):
        gen.generate([torch.tensor([1.5, 2.0])], max_new_tokens=3)


@pytest.mark.parametrize("returned,type_name", [([], "list"), (0, "int"), ("stop", "str"), (1.0, "float")])
def test_stream_callback_must_return_a_bool_or_none(returned, type_name):
    gen = _counting_generator()
    with pytest.raises(errors.InvalidArgumentError,
                       match=rf"the on_tokens callback returned a {type_name} .*return True \(or None\) to continue"):
        gen.generate([[1]], max_new_tokens=4, on_tokens=lambda tokens: returned)


def test_stream_callback_bools():
    gen = _counting_generator()
    seen = []
    assert gen.generate([[1]], max_new_tokens=4, on_tokens=seen.append).sequences == [[2, 3, 4, 5]]  # None
    assert seen == [[2], [3], [4], [5]]
    out = gen.generate([[1]], max_new_tokens=4, on_tokens=lambda t: np.bool_(t[0] < 3))
    assert out.stopped and out.sequences == [[2, 3]]
    out = gen.generate([[1]], max_new_tokens=4, on_tokens=lambda t: False)
    assert out.stopped and out.sequences == [[2]]


def test_nan_logits_are_a_runtime_error():
    gen = _counting_generator(nan_from_step=3)
    with pytest.raises(errors.RuntimeFailure, match=r"logits of row 1 at step 3 are NaN"):
        gen.generate([[1], [2]], max_new_tokens=6)
    # beam search and sampling check too
    with pytest.raises(errors.RuntimeFailure, match="are NaN"):
        _counting_generator(nan_from_step=0).generate([[1], [2]], max_new_tokens=3, num_beams=2)
