"""CTC greedy decoding: per-frame logits -> text, as transformers' Wav2Vec2CTCTokenizer decodes.

    dec = CTCDecoder.from_dir(engine_or_checkpoint_dir)   # vocab.json (+ tokenizer_config.json)
    dec.decode(logits[b, :frames])       # argmax, collapse repeats, drop the blank, "|" -> " "
    dec.batch_decode(logits, frame_mask)

Order of operations is transformers' Wav2Vec2CTCTokenizer.decode as its ASR pipeline calls it
for CTC models (skip_special_tokens=False): repeats are collapsed, then the pad (= CTC blank)
token is dropped, the delimiter becomes a space, the result is joined and stripped (and
lower-cased with do_lower_case). Other special tokens (<s>, </s>, <unk>) stay in the text, as
there. With skip_special_tokens=True they are dropped before collapsing, but the blank is
kept until after it (transformers 4.x did the same; 5.x also drops the blank first, which
merges letters a blank separates: "L L" -> "L").
"""

from __future__ import annotations

import json
import os
from itertools import groupby
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError

_DEFAULTS = {
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "word_delimiter_token": "|",
    "replace_word_delimiter_char": " ",
    "do_lower_case": False,
    "clean_up_tokenization_spaces": False,
}
# transformers' PreTrainedTokenizerBase.clean_up_tokenization, applied when the config asks
_CLEAN_UP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)


def _token(v):  # special tokens may be stored as AddedToken dicts
    return v.get("content") if isinstance(v, dict) else v


class CTCDecoder:
    def __init__(
        self,
        vocab: dict[str, int],
        pad_token: str = "<pad>",
        word_delimiter_token: str = "|",
        special_tokens: tuple[str, ...] = ("<s>", "</s>", "<unk>", "<pad>"),
        replace_word_delimiter_char: str = " ",
        do_lower_case: bool = False,
        clean_up_tokenization_spaces: bool = False,
    ):
        self.id_to_token = {int(i): t for t, i in vocab.items()}
        if pad_token not in vocab:
            raise InvalidArgumentError(f"the CTC blank (pad) token {pad_token!r} is not in the vocabulary")
        self.pad_token = pad_token
        self.blank_id = vocab[pad_token]
        self.word_delimiter_token = word_delimiter_token
        self.special_tokens = frozenset(t for t in special_tokens if t) - {word_delimiter_token}
        self.replace_word_delimiter_char = replace_word_delimiter_char
        self.do_lower_case = do_lower_case
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> CTCDecoder:
        path = Path(path)
        vocab_file = path / "vocab.json"
        if not vocab_file.is_file():
            raise InvalidArgumentError(
                f"{path}: no vocab.json; CTC decoding needs the checkpoint's character vocabulary"
            )
        try:
            vocab = json.loads(vocab_file.read_text())
            settings: dict[str, Any] = dict(_DEFAULTS)
            for name in ("special_tokens_map.json", "tokenizer_config.json"):
                if (path / name).is_file():
                    settings.update(
                        {
                            k: _token(v)
                            for k, v in json.loads((path / name).read_text()).items()
                            if k in _DEFAULTS and v is not None
                        }
                    )
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidArgumentError(f"{path}: CTC vocabulary files are not readable JSON ({e})") from None
        if vocab and all(isinstance(v, dict) for v in vocab.values()):
            raise InvalidArgumentError(
                f"{vocab_file}: a multi-language vocabulary (one per language, "
                "MMS style); kiln needs a single-language vocab.json"
            )
        specials = tuple(settings[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token"))
        return cls(
            vocab,
            settings["pad_token"],
            settings["word_delimiter_token"],
            specials,
            settings["replace_word_delimiter_char"],
            bool(settings["do_lower_case"]),
            bool(settings["clean_up_tokenization_spaces"]),
        )

    def decode_ids(self, ids, skip_special_tokens: bool = False) -> str:
        tokens = [self.id_to_token.get(int(i), "") for i in ids]
        if skip_special_tokens:
            tokens = [t for t in tokens if t not in self.special_tokens or t == self.pad_token]
        chars = [t for t, _ in groupby(tokens) if t != self.pad_token]
        chars = [self.replace_word_delimiter_char if c == self.word_delimiter_token else c for c in chars]
        text = "".join(chars).strip()
        if self.do_lower_case:
            text = text.lower()
        if self.clean_up_tokenization_spaces:
            for old, new in _CLEAN_UP:
                text = text.replace(old, new)
        return text

    def decode(self, logits: np.ndarray, skip_special_tokens: bool = False) -> str:
        """(frames, vocab) logits of one utterance (its real frames only) -> text."""
        return self.decode_ids(np.asarray(logits).argmax(-1), skip_special_tokens)

    def batch_decode(
        self, logits: np.ndarray, frame_mask: np.ndarray | None = None, skip_special_tokens: bool = False
    ) -> list[str]:
        """(B, frames, vocab) -> B texts; frame_mask (B, frames) limits each row to its real frames."""
        ids = np.asarray(logits).argmax(-1)
        out = []
        for b in range(ids.shape[0]):
            row = ids[b] if frame_mask is None else ids[b][np.asarray(frame_mask[b]).astype(bool)]
            out.append(self.decode_ids(row, skip_special_tokens))
        return out


def frame_lengths(lengths, conv_kernel, conv_stride) -> list[int]:
    """Real samples per utterance -> real frames (the conv stack's output length)."""
    out = []
    for n in lengths:
        for k, s in zip(conv_kernel, conv_stride):
            n = (n - k) // s + 1
        out.append(max(int(n), 0))
    return out


__all__ = ["CTCDecoder", "frame_lengths"]
