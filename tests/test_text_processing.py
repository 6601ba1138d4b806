"""Tokenisation against transformers' tokenizer on the real MiniLM vocabulary, input errors,
and the decoders (labels, entities, QA spans) on hand-made logits with known answers."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from kiln.errors import InputValueError, InvalidArgumentError
from kiln.processing.text import (TextTokenizer, best_span_indices, classify, cosine, mean_pool,
                                  normalize, qa_best_span, softmax, token_entities)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Café Déjà Vu serves crème brûlée in Zürich — naïve, isn't it?",
    "我爱北京天安门，東京タワーも好きです。",
    "Prices rose 3.5% in Q3-2024 (see https://example.com/report?id=42).",
    "Unbelievably, the antidisestablishmentarianism debate continued.",
    "   leading and trailing spaces\tand\ttabs   ",
    "Emoji 🙂 and the [MASK] token.",
]
PAIRS = [
    ("Where does John live?", "John lives in New York City since 2010."),
    ("Wer wohnt in München?", "Jürgen wohnt seit Jahren in München."),
    ("什么是人工智能？", "人工智能是计算机科学的一个分支。"),
]


@pytest.fixture(scope="module")
def tok(minilm_dir) -> TextTokenizer:
    return TextTokenizer.from_dir(minilm_dir)


@pytest.fixture(scope="module")
def hf_tok(minilm_dir):
    import transformers
    return transformers.AutoTokenizer.from_pretrained(minilm_dir)


def _assert_same_batch(enc, ref):
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(getattr(enc, name), np.asarray(ref[name]), err_msg=name)
        assert getattr(enc, name).dtype == np.int64


def test_ids_equal_transformers_single_texts(tok, hf_tok):
    enc = tok.encode(SENTENCES)
    ref = hf_tok(SENTENCES, padding=True, return_offsets_mapping=True, return_special_tokens_mask=True)
    _assert_same_batch(enc, ref)
    np.testing.assert_array_equal(enc.special_tokens_mask, ref["special_tokens_mask"])
    np.testing.assert_array_equal(enc.offsets, np.asarray(ref["offset_mapping"]))
    assert enc.input_ids.shape[1] == max(enc.lengths) and len(enc) == len(SENTENCES)
    # the CJK characters are one token each, accents are stripped (uncased vocabulary)
    assert enc.tokens[2][3:5] == ["北", "京"]
    assert "cafe" in enc.tokens[1] and "zurich" in enc.tokens[1]
    assert enc.input_ids[6].tolist().count(tok.mask_token_id) == 1 and tok.mask_token_id == 103


def test_ids_equal_transformers_pairs(tok, hf_tok):
    questions, contexts = zip(*PAIRS)
    enc = tok.encode(list(questions), list(contexts))
    ref = hf_tok(list(questions), list(contexts), padding=True, return_offsets_mapping=True)
    _assert_same_batch(enc, ref)
    for b in range(len(PAIRS)):
        hf_seq = [-1 if s is None else s for s in ref.sequence_ids(b)]
        np.testing.assert_array_equal(enc.sequence_ids[b], hf_seq)
        np.testing.assert_array_equal(enc.word_ids[b], [-1 if w is None else w for w in ref.word_ids(b)])
    # the second segment's token types are 1 up to the last [SEP], padding is 0
    n = enc.lengths[0]
    assert enc.token_type_ids[0, n - 1] == 1 and enc.token_type_ids[0, enc.sequence_ids[0].tolist().index(1)] == 1


def test_vocab_txt_fallback_gives_the_same_ids(tok, minilm_dir, tmp_path):
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, tmp_path)
    from_vocab = TextTokenizer.from_dir(tmp_path)
    questions, contexts = zip(*PAIRS)
    for args in ((SENTENCES,), (list(questions), list(contexts))):
        a, b = tok.encode(*args), from_vocab.encode(*args)
        for name in ("input_ids", "token_type_ids", "offsets", "sequence_ids", "special_tokens_mask"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    # do_lower_case=false keeps case: "The" is then not the lowercase token
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    cased = TextTokenizer.from_dir(tmp_path).encode("The")
    assert cased.input_ids[0, 1] != tok.encode("The").input_ids[0, 1]


def test_offsets_map_back_to_the_text(tok):
    text = "Hugging Face's tokenizers split words-like-this into pieces: Johannesburg, 2024!"
    enc = tok.encode(text)
    for t in range(enc.lengths[0]):
        token = enc.tokens[0][t]
        start, end = enc.offsets[0, t]
        if enc.special_tokens_mask[0, t]:
            assert (start, end) == (0, 0) and enc.sequence_ids[0, t] == -1
            continue
        assert text[start:end].lower() == token.removeprefix("##"), (token, text[start:end])
    questions, contexts = zip(*PAIRS)
    pair = tok.encode(list(questions), list(contexts))
    for b, (q, c) in enumerate(PAIRS):
        for t in np.flatnonzero(pair.sequence_ids[b] == 1):  # context offsets index the context
            start, end = pair.offsets[b, t]
            assert c[start:end] and not c[start:end].isspace()
        words = [c[s:e] for s, e in pair.offsets[b][pair.sequence_ids[b] == 1]]
        assert "".join(words).replace(" ", "") == c.replace(" ", "")


def test_padding_and_truncation(tok, hf_tok):
    enc = tok.encode(SENTENCES[:2], pad_to=40)
    assert enc.input_ids.shape == (2, 40)
    n = enc.lengths[0]
    assert enc.attention_mask[0, :n].all() and not enc.attention_mask[0, n:].any()
    assert (enc.input_ids[0, n:] == tok.pad_token_id).all() and (enc.sequence_ids[0, n:] == -1).all()
    assert (enc.word_ids[0, n:] == -1).all() and (enc.special_tokens_mask[0, n:] == 1).all()

    long = " ".join(SENTENCES)
    cut = tok.encode([long, SENTENCES[0]], max_length=16, truncation=True)
    ref = hf_tok([long, SENTENCES[0]], max_length=16, truncation=True, padding=True)
    _assert_same_batch(cut, ref)
    assert cut.input_ids.shape == (2, 16) and cut.input_ids[0, -1] == hf_tok.sep_token_id

    q, c = PAIRS[0]
    only_second = tok.encode(q, c * 5, max_length=24, truncation="only_second")
    ref = hf_tok(q, c * 5, max_length=24, truncation="only_second")
    np.testing.assert_array_equal(only_second.input_ids[0], ref["input_ids"])
    longest = tok.encode(q * 8, c * 8, max_length=24, truncation=True)
    ref = hf_tok(q * 8, c * 8, max_length=24, truncation=True)
    np.testing.assert_array_equal(longest.input_ids[0], ref["input_ids"])

    with pytest.raises(InputValueError, match="pad_to=5 is shorter than text 0"):
        tok.encode(SENTENCES[0], pad_to=5)
    with pytest.raises(InvalidArgumentError, match="pad_to=600"):
        tok.encode(SENTENCES[0], pad_to=600)
    with pytest.raises(InputValueError, match="only_second"):  # the question alone is too long
        tok.encode(long, "short context", max_length=16, truncation="only_second")


def test_empty_and_whitespace_texts_are_named(tok):
    with pytest.raises(InputValueError, match=r"texts\[2\] is empty or whitespace only"):
        tok.encode(["fine", "also fine", ""])
    with pytest.raises(InputValueError, match=r"texts\[1\] is empty or whitespace only"):
        tok.encode(["fine", " \n\t "])
    with pytest.raises(InputValueError, match=r"text_pairs\[0\] is empty"):
        tok.encode(["q"], ["  "])
    with pytest.raises(InputValueError, match=r"texts\[0\] has no tokens"):
        tok.encode("\u200b\u0000")  # only characters the normaliser removes
    with pytest.raises(InputValueError, match=r"an empty list"):
        tok.encode([])
    with pytest.raises(InputValueError, match=r"2 texts but 1 text_pairs"):
        tok.encode(["a", "b"], ["c"])


def test_over_long_text_is_an_error_naming_index_count_and_maximum(tok):
    long = "word " * 40  # 40 tokens + [CLS] [SEP]
    with pytest.raises(InputValueError, match=r"text 1 is 42 tokens long .* maximum 32; .*truncation=True"):
        tok.encode(["short", long], max_length=32)
    with pytest.raises(InputValueError, match=r"text 0 is 1002 tokens long .* maximum 512"):
        tok.encode("word " * 1000)  # default: model_max_length from tokenizer_config.json
    assert tok.model_max_length == 512
    assert tok.encode(long, max_length=42).input_ids.shape == (1, 42)


def test_save_writes_a_tokenizer_json_that_reloads(tok, tmp_path):
    file = tok.save(tmp_path / "engine")
    assert file.name == "tokenizer.json"
    data = json.loads(file.read_text())
    assert data["padding"] is None and data["truncation"] is None  # kiln pads and truncates itself
    again = TextTokenizer.from_dir(tmp_path / "engine")
    np.testing.assert_array_equal(again.encode(SENTENCES).input_ids, tok.encode(SENTENCES).input_ids)
    assert again.decode(tok.encode("Hello, world!").input_ids[0]) == "hello, world!"


# --- decoders -----------------------------------------------------------------------------------

def test_softmax_and_classify():
    p = softmax(np.array([1000.0, 1001.0, 1002.0]))  # no overflow
    np.testing.assert_allclose(p, np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum())
    got = classify(np.array([0.5, 2.0, 1.0], dtype=np.float32), ["neg", "pos", "neutral"], top_k=2)
    ref = softmax(np.array([0.5, 2.0, 1.0]))
    assert [label for label, _ in got] == ["pos", "neutral"]
    assert got[0][1] == pytest.approx(ref[1]) and got[1][1] == pytest.approx(ref[2])
    every = classify(np.array([[3.0, 1.0], [-1.0, 4.0]]), ["a", "b"], top_k=None)
    assert [row[0][0] for row in every] == ["a", "b"] and len(every[0]) == 2
    sig = classify(np.array([0.0, 2.0]), ["x", "y"], function="sigmoid")
    assert sig[0] == ("y", pytest.approx(1 / (1 + np.exp(-2))))
    with pytest.raises(InvalidArgumentError, match="3 logits per row but 2 labels"):
        classify(np.zeros(3), ["a", "b"])


LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def _logits_for(tags: list[str], strength: float = 6.0) -> np.ndarray:
    """Logits whose argmax is the given tag per token (special tokens: "O")."""
    out = np.zeros((len(tags), len(LABELS)))
    for t, tag in enumerate(tags):
        out[t, LABELS.index(tag)] = strength
    return out


def test_token_entities_merge_bio_tags(tok):
    text = "John Smith moved from Johannesburg to New York City."
    enc = tok.encode(text, pad_to=16)
    # [CLS] john smith moved from johannesburg to new york city . [SEP] + padding
    tags = ["O", "B-PER", "I-PER", "O", "O", "B-LOC", "O", "B-LOC", "I-LOC", "I-LOC", "O", "O"] + ["B-PER"] * 4
    logits = _logits_for(tags)
    logits[8, LABELS.index("I-LOC")] = 2.0  # a less confident token inside "New York City"
    ents = token_entities(logits, LABELS, enc.offsets[0], text, special_mask=enc.special_tokens_mask[0])
    assert [(e["label"], e["word"], e["start"], e["end"]) for e in ents] == [
        ("PER", "John Smith", 0, 10), ("LOC", "Johannesburg", 22, 34), ("LOC", "New York City", 38, 51)]
    p_sure, p_unsure = softmax(_logits_for(["B-LOC"])[0])[3], softmax(logits[8])[4]
    assert ents[0]["score"] == pytest.approx(p_sure)
    assert ents[2]["score"] == pytest.approx((2 * p_sure + p_unsure) / 3)

    # B- after B- of the same type starts a new entity; I- of another type too
    tags2 = ["O", "B-PER", "B-PER", "O", "O", "B-LOC", "O", "B-LOC", "I-PER", "I-LOC", "O", "O"]
    ents = token_entities(_logits_for(tags2), LABELS, enc.offsets[0][:12], text)  # default: offsets
    assert [(e["label"], e["word"]) for e in ents] == [
        ("PER", "John"), ("PER", "Smith"), ("LOC", "Johannesburg"), ("LOC", "New"), ("PER", "York"),
        ("LOC", "City")]
    none = token_entities(_logits_for(tags), LABELS, enc.offsets[0], text, "none",
                          special_mask=enc.special_tokens_mask[0])
    assert [(e["label"], e["word"], e["index"]) for e in none][:3] == [
        ("B-PER", "John", 1), ("I-PER", "Smith", 2), ("B-LOC", "Johannesburg", 5)]
    assert len(none) == 6  # the padding rows tagged B-PER are skipped


def test_token_entities_word_aggregation(tok):
    text = "Angela Merkel visited Reykjavik."
    enc = tok.encode(text)
    assert enc.tokens[0][2:4] == ["mer", "##kel"]  # one word, two tokens
    # [CLS] angela mer ##kel visited reykjavik . [SEP]; the sub-word disagrees with its word
    logits = _logits_for(["O", "B-PER", "I-PER", "O", "O", "B-LOC", "O", "O"])
    logits[3, LABELS.index("I-LOC")] = 20.0  # "##kel": I-LOC, more confident than "mer"'s I-PER
    kw = dict(special_mask=enc.special_tokens_mask[0], word_ids=enc.word_ids[0])
    simple = token_entities(logits, LABELS, enc.offsets[0], text, **kw)
    assert [(e["label"], e["word"]) for e in simple] == [("PER", "Angela Mer"), ("LOC", "kel"),
                                                         ("LOC", "Reykjavik")]
    first = token_entities(logits, LABELS, enc.offsets[0], text, "first", **kw)
    assert [(e["label"], e["word"]) for e in first] == [("PER", "Angela Merkel"), ("LOC", "Reykjavik")]
    for agg in ("max", "average"):  # "##kel" (p ~ 1) outweighs "mer" (p = 0.990)
        ents = token_entities(logits, LABELS, enc.offsets[0], text, agg, **kw)
        assert [(e["label"], e["word"]) for e in ents] == [
            ("PER", "Angela"), ("LOC", "Merkel"), ("LOC", "Reykjavik")]
    with pytest.raises(InvalidArgumentError, match="needs word_ids"):
        token_entities(logits, LABELS, enc.offsets[0], text, "first")


def test_token_entities_match_the_transformers_pipeline(tok, hf_tok):
    """Same entities (label, span, score) as transformers' token-classification pipeline on a
    small random model, for every aggregation strategy."""
    import torch
    import transformers

    cfg = transformers.BertConfig(vocab_size=hf_tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=37,
                                  id2label=dict(enumerate(LABELS)))
    torch.manual_seed(0)
    model = transformers.BertForTokenClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(150)  # confident, varied tags from a random model
    texts = ["Angela Merkel visited Reykjavik and New York with John Smith.",
             "Unbelievably, Jürgen met Zoë in São Paulo."]
    compared = 0
    for agg in ("none", "simple", "first", "average", "max"):
        pipe = transformers.pipeline("token-classification", model=model, tokenizer=hf_tok,
                                     aggregation_strategy=agg)
        for text in texts:
            enc = tok.encode(text)
            with torch.no_grad():
                logits = model(**{k: torch.from_numpy(v) for k, v in enc.inputs().items()}).logits[0].numpy()
            got = token_entities(logits, LABELS, enc.offsets[0], text, agg,
                                 special_mask=enc.special_tokens_mask[0], word_ids=enc.word_ids[0])
            ref = pipe(text)
            assert [(e["label"], e["start"], e["end"]) for e in got] == \
                   [(e.get("entity_group", e.get("entity")), e["start"], e["end"]) for e in ref], (agg, text)
            np.testing.assert_allclose([e["score"] for e in got], [float(e["score"]) for e in ref], rtol=1e-5)
            compared += len(ref)
    assert compared >= 10


def test_qa_best_span_known_answer(tok):
    question, context = PAIRS[0]  # "John lives in New York City since 2010."
    enc = tok.encode(question, context)
    seq, offsets, T = enc.sequence_ids[0], enc.offsets[0], enc.input_ids.shape[1]
    tokens = enc.tokens[0]
    new, city = tokens.index("new"), tokens.index("city")
    start, end = np.zeros(T), np.zeros(T)
    start[new], end[city] = 5.0, 5.0
    start[tokens.index("john")] = 9.0  # "john" in the question: not part of the context
    end[tokens.index("where")] = 9.0
    ans = qa_best_span(start, end, seq, offsets, context)
    assert (ans["answer"], ans["start"], ans["end"]) == ("New York City", 14, 27)
    ctx = seq == 1
    p_start = np.exp(start[ctx]) / np.exp(start[ctx]).sum()
    p_end = np.exp(end[ctx]) / np.exp(end[ctx]).sum()
    assert ans["score"] == pytest.approx(p_start.max() * p_end.max())
    assert best_span_indices(start, end, ctx) == (new, city)
    # attention-mask decoding (what the registry's task check uses) may pick question tokens,
    # but never an end before its start ("where" precedes "john")
    assert best_span_indices(start, end, enc.attention_mask[0]) == (tokens.index("john"), city)


def test_qa_best_span_respects_order_and_max_length(tok):
    question, context = PAIRS[0]
    enc = tok.encode(question, context, pad_to=40)
    tokens, T = enc.tokens[0], enc.input_ids.shape[1]
    since, lives, new, city = (tokens.index(w) for w in ("since", "lives", "new", "city"))
    start, end = np.zeros(T), np.zeros(T)
    start[since], end[lives] = 8.0, 8.0  # the best end lies before the best start: no span
    start[new], end[city] = 6.0, 6.0  # e^12 beats any span using one of the two maxima (e^8)
    ans = qa_best_span(start, end, enc.sequence_ids[0], enc.offsets[0], context)
    assert best_span_indices(start, end, enc.sequence_ids[0] == 1) == (new, city)
    assert ans["answer"] == "New York City"
    start[:], end[:] = 0, 0
    start[tokens.index("john", tokens.index("[SEP]"))], end[tokens.index("2010")] = 6.0, 6.0
    long = qa_best_span(start, end, enc.sequence_ids[0], enc.offsets[0], context, max_answer_len=30)
    assert long["answer"] == "John lives in New York City since 2010"
    short = qa_best_span(start, end, enc.sequence_ids[0], enc.offsets[0], context, max_answer_len=3)
    assert len(short["answer"].split()) <= 3 and short["score"] < long["score"]
    with pytest.raises(InputValueError, match="no token may be part of the answer"):
        qa_best_span(start, end, np.full(T, -1), enc.offsets[0], context)


def test_embedding_helpers():
    hidden = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(mean_pool(hidden, mask), [hidden[0, :2].mean(0), hidden[1, 0]])
    a = normalize(np.array([[3.0, 4.0], [1.0, 0.0]]))
    np.testing.assert_allclose(a, [[0.6, 0.8], [1.0, 0.0]])
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(2 ** -0.5)
    assert cosine(a, a).shape == (2, 2)
