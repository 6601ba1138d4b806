"""SentencePiece vocabularies: a model trained here with `sentencepiece` itself (no real one is
reachable), converted at build time into tokenizer.json by transformers' converter, gives the
ids SentencePiece gives, through `tokenizers` alone at run time; a checkpoint with no tokenizer
at all is a clear error before any export."""

from __future__ import annotations

import shutil

import pytest

from kiln import registry, samples
from kiln.errors import CheckpointError, InvalidArgumentError
from kiln.processing.bpe import BPETokenizer
from kiln.processing.sentencepiece import convert_sentencepiece, train_vocabulary

MULTILINGUAL = [
    "Le café était déjà fermé, alors nous sommes allés à la crêperie.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein, sagte Jürgen.",
    "東京の天気は晴れです。明日は雨が降るでしょう。",
    "北京烤鸭很好吃，我们明天再去吧。",
    "서울의 봄은 아름답습니다.",
    "Добрый вечер, как у вас дела?",
    "The kiln is hot 🔥🙂 and the clay is ready 🏺.",
    "Ñandú, pingüino y acción: ¿dónde está el niño?",
]
TEST_TEXT = "Héllo wörld! Le café est très bon. 東京は晴れ 🙂 Добрый день, ¿qué tal?"


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    words = " ".join(samples.SENTENCES + samples.PROMPTS + [samples.ARTICLE]).split()
    return MULTILINGUAL + samples.SENTENCES + samples.PROMPTS + [samples.ARTICLE, TEST_TEXT] + words


@pytest.mark.parametrize("layout", ["t5", "mbart"])
def test_converted_ids_equal_sentencepiece(layout, corpus, tmp_path):
    import sentencepiece as spm

    vocab = train_vocabulary(corpus, tmp_path / "vocab", layout, vocab_size=600)
    model = next(vocab.glob("*.model"))
    (tmp_path / "engine").mkdir()
    written = convert_sentencepiece(vocab, tmp_path / "engine")
    assert "tokenizer.json" in written
    tok = BPETokenizer.from_dir(tmp_path / "engine")  # tokenizers alone
    assert tok.flavour == "sentencepiece"
    sp = spm.SentencePieceProcessor(model_file=str(model))
    for text in [TEST_TEXT, *MULTILINGUAL]:
        pieces = sp.encode(text)
        if layout == "t5":  # T5: SentencePiece's ids, then </s>
            expected = pieces + [sp.piece_to_id("</s>")]
        else:  # mBART-50: fairseq's order (<s> 0, <pad> 1, </s> 2, <unk> 3, pieces + 1), [en_XX] ... </s>
            shifted = [3 if i == sp.unk_id() else i + 1 for i in pieces]
            expected = [tok.token_to_id("en_XX"), *shifted, 2]
        assert tok.encode(text) == expected, text
        assert tok.decode(tok.encode(text)) == sp.decode(pieces), text  # the text back, NFKC-normalised as SentencePiece does
    if layout == "t5":  # the sentinels come last, <extra_id_0> highest, as T5's vocabulary has them
        assert tok.token_to_id("<extra_id_0>") == tok.vocab_size - 1
        assert tok.token_to_id("<extra_id_99>") == sp.get_piece_size()


def test_streamed_text_holds_back_partial_characters(corpus, tmp_path):
    """Byte-fallback-free SentencePiece pieces are whole characters: the stream equals the decode."""
    vocab = train_vocabulary(corpus, tmp_path / "vocab", "t5", vocab_size=600)
    convert_sentencepiece(vocab, vocab)
    tok = BPETokenizer.from_dir(vocab)
    ids = tok.encode(TEST_TEXT)
    stream = tok.stream()
    assert "".join(stream.push(i) for i in ids) == tok.decode(ids)


def test_a_checkpoint_without_a_model_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="no SentencePiece model"):
        convert_sentencepiece(tmp_path, tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"not a protobuf")
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer"}')
    with pytest.raises(CheckpointError, match="spiece.model"):
        convert_sentencepiece(tmp_path, tmp_path)


def test_unknown_layout_is_refused(tmp_path):
    with pytest.raises(InvalidArgumentError, match="layout"):
        train_vocabulary(["a b c"], tmp_path, "gpt2", 10)


def test_a_checkpoint_with_no_tokenizer_fails_before_export(tmp_path):
    """Real weights with neither tokenizer.json nor a SentencePiece model: refused at once, naming
    what was looked for (kiln never pairs real weights with a vocabulary of its own)."""
    from kiln.exporters import build
    from kiln.recipe import Recipe
    from kiln.testing import make_checkpoint

    d = registry.get("t5", "summarization")
    ckpt, _ = make_checkpoint(d, tmp_path / "ckpt")
    (ckpt / "spiece.model").unlink()
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    with pytest.raises(InvalidArgumentError, match="no tokenizer.*spiece.model"):
        build(Recipe.for_checkpoint(ckpt, "summarization"), output=tmp_path / "out")
    assert not (tmp_path / "out").exists()
