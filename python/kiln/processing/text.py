"""Text in and answers out: WordPiece tokenisation (the `tokenizers` library) and the numpy
decoders that turn BERT outputs into labels, entities, answer spans and embeddings.

    tok = TextTokenizer.from_dir(checkpoint_or_engine_dir)
    enc = tok.encode(["a text", "another"], max_length=128)     # numpy int64 [B, T] arrays
    classify(logits[0], labels, top_k=2)                       # [(label, score), ...]
    token_entities(logits[0], labels, enc.offsets[0], text)    # [{"label", "score", "start", "end", "word"}]
    qa_best_span(start[0], end[0], enc.sequence_ids[0], enc.offsets[0], context)

The decoders import no torch: they run on whatever a backend returned.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, InputValueError, InvalidArgumentError

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"

# a model_max_length at or above this is transformers' "no limit" sentinel (int(1e30))
_NO_LIMIT = 1_000_000
_DEFAULT_MAX_LENGTH = 512
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")


@dataclass
class Encoding:
    """A tokenised batch, right-padded to a common length T.

    input_ids, attention_mask, token_type_ids: int64 [B, T], the model inputs.
    offsets: int64 [B, T, 2], each token's character span (start, end) in the text it came
        from (the first or the second of a pair: see sequence_ids); (0, 0) for special tokens
        and padding.
    sequence_ids: int64 [B, T], 0 for tokens of the text, 1 for tokens of the pair text,
        -1 for special tokens and padding.
    word_ids: int64 [B, T], the index of the word a token belongs to within its text, -1 for
        special tokens and padding.
    special_tokens_mask: int64 [B, T], 1 for [CLS]/[SEP]/padding, 0 for text tokens.
    tokens: the token strings per row, without padding.
    lengths: int64 [B], the unpadded length of each row.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    offsets: np.ndarray
    sequence_ids: np.ndarray
    word_ids: np.ndarray
    special_tokens_mask: np.ndarray
    tokens: list[list[str]]
    lengths: np.ndarray

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def inputs(self) -> dict[str, np.ndarray]:
        """The model inputs by name (what an engine or a kiln model takes)."""
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not readable as JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def _token_name(value: Any, default: str) -> str:
    # special_tokens_map.json writes a token either as a string or as an AddedToken dict
    if isinstance(value, dict):
        return str(value.get("content", default))
    return str(value) if value else default


class TextTokenizer:
    """A WordPiece (BERT) tokenizer producing numpy model inputs, with kiln's input checks."""

    def __init__(
        self,
        tokenizer,
        *,
        model_max_length: int = _DEFAULT_MAX_LENGTH,
        pad_token: str = "[PAD]",
        mask_token: str = "[MASK]",
    ):
        from tokenizers import Tokenizer

        if not isinstance(tokenizer, Tokenizer):
            raise InvalidArgumentError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        # padding and truncation are kiln's (checked, numpy): the file's own settings
        # (all-MiniLM-L6-v2's tokenizer.json pads and truncates to 128) must not apply silently
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tok = tokenizer
        # enable_truncation mutates the tokenizer: one encode at a time may change it
        self._lock = threading.Lock()
        self.model_max_length = int(model_max_length)
        self.pad_token = pad_token
        self.mask_token = mask_token
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise CheckpointError(f"tokenizer: the pad token {pad_token!r} is not in the vocabulary")
        self.pad_token_id = int(pad_id)
        mask_id = tokenizer.token_to_id(mask_token)
        self.mask_token_id = None if mask_id is None else int(mask_id)

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | os.PathLike) -> TextTokenizer:
        """From a checkpoint or engine directory: tokenizer.json, else vocab.txt (WordPiece with
        the lowercase / accent / CJK settings of tokenizer_config.json)."""
        from tokenizers import Tokenizer

        path = Path(path)
        config = _read_json(path / TOKENIZER_CONFIG_FILE)
        special = {**config, **_read_json(path / SPECIAL_TOKENS_FILE)}
        mask = _token_name(special.get("mask_token"), "[MASK]")
        max_len = config.get("model_max_length")
        if not isinstance(max_len, (int, float)) or max_len >= _NO_LIMIT or max_len < 1:
            max_len = _DEFAULT_MAX_LENGTH
        if (path / TOKENIZER_FILE).is_file():
            try:
                tok = Tokenizer.from_file(str(path / TOKENIZER_FILE))
            except Exception as e:  # tokenizers raises a bare Exception on a malformed file
                raise CheckpointError(f"{path / TOKENIZER_FILE}: not a readable tokenizer ({e})") from None
            # the pad token: special_tokens_map / tokenizer_config, else the file's own padding
            pad = _token_name(special.get("pad_token"), (tok.padding or {}).get("pad_token", "[PAD]"))
        elif (path / VOCAB_FILE).is_file():
            tok = _wordpiece_from_vocab(path / VOCAB_FILE, config, special)
            pad = _token_name(special.get("pad_token"), "[PAD]")
        else:
            raise CheckpointError(f"{path}: no tokenizer; expected {TOKENIZER_FILE} or {VOCAB_FILE}")
        return cls(tok, model_max_length=int(max_len), pad_token=pad, mask_token=mask)

    def save(self, path: str | os.PathLike) -> Path:
        """Write tokenizer.json into `path` (created if needed); returns the file."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        file = path / TOKENIZER_FILE
        with self._lock:
            self._tok.save(str(file))
        return file

    # --- vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # --- encoding ---------------------------------------------------------------------------

    def encode(
        self,
        texts: list[str] | str,
        text_pairs: list[str] | str | None = None,
        *,
        max_length: int | None = None,
        truncation: bool | str = False,
        pad_to: int | None = None,
    ) -> Encoding:
        """Tokenise a batch (or one text) into right-padded numpy inputs.

        text_pairs: a second text per row (question-answering: question, context).
        max_length: the longest row allowed, special tokens included (default: the tokenizer's
            model_max_length). A longer row is an InputValueError unless `truncation` is set.
        truncation: False, True (= "longest_first", as transformers), or a strategy name:
            "longest_first", "only_first", "only_second" (keep the question, cut the context).
        pad_to: pad every row to this length instead of to the longest row.
        """
        texts = self._check_texts(texts, "texts")
        pairs = None
        if text_pairs is not None:
            pairs = self._check_texts(text_pairs, "text_pairs")
            if len(pairs) != len(texts):
                raise InputValueError(
                    f"{len(texts)} texts but {len(pairs)} text_pairs; expected one pair text per text"
                )
        max_length = self.model_max_length if max_length is None else int(max_length)
        if max_length < 2:
            raise InvalidArgumentError(f"max_length={max_length}: expected at least 2 ([CLS] [SEP])")
        if pad_to is not None and not (1 <= pad_to <= max_length):
            raise InvalidArgumentError(f"pad_to={pad_to}: expected 1 <= pad_to <= max_length={max_length}")
        strategy = None
        if truncation:
            strategy = "longest_first" if truncation is True else str(truncation)
            if strategy not in TRUNCATION_STRATEGIES:
                raise InvalidArgumentError(
                    f"truncation={truncation!r}: expected a bool or one of {', '.join(TRUNCATION_STRATEGIES)}"
                )

        batch = texts if pairs is None else list(zip(texts, pairs))
        with self._lock:
            try:
                if strategy:
                    self._tok.enable_truncation(max_length, strategy=strategy)
                encs = self._tok.encode_batch(batch)
            except Exception as e:  # e.g. only_second when the question alone is too long
                raise InputValueError(
                    f"could not tokenise with truncation={strategy!r} to max_length={max_length}: {e}"
                ) from None
            finally:
                self._tok.no_truncation()

        for i, enc in enumerate(encs):
            seq_ids = enc.sequence_ids
            for s, name in ((0, "texts"), (1, "text_pairs")):
                if (s == 0 or pairs is not None) and s not in seq_ids:
                    raise InputValueError(
                        f"{name}[{i}] has no tokens after normalisation (only "
                        "control or unknown characters?); expected some text"
                    )
            if len(enc.ids) > max_length:
                what = f"text {i}" if pairs is None else f"text pair {i}"
                raise InputValueError(
                    f"{what} is {len(enc.ids)} tokens long (special tokens included), more than the "
                    f"maximum {max_length}; shorten it or pass truncation=True"
                )
        return self._pad(encs, pad_to)

    def _check_texts(self, texts: list[str] | str, name: str) -> list[str]:
        texts = as_text_list(texts, name)
        if not texts:
            raise InputValueError(f"{name}: an empty list; expected at least one text")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise InputValueError(f"{name}[{i}] is a {type(t).__name__}; expected a str")
            if not t.strip():
                raise InputValueError(f"{name}[{i}] is empty or whitespace only; expected some text")
        return texts

    def _pad(self, encs, pad_to: int | None) -> Encoding:
        lengths = np.array([len(e.ids) for e in encs], dtype=np.int64)
        T = int(lengths.max()) if pad_to is None else int(pad_to)
        if T < lengths.max():
            i = int(lengths.argmax())
            raise InputValueError(
                f"pad_to={pad_to} is shorter than text {i} ({int(lengths[i])} "
                "tokens); raise pad_to or pass truncation=True with max_length=pad_to"
            )
        B = len(encs)
        ids = np.full((B, T), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((B, T), dtype=np.int64)
        types = np.zeros((B, T), dtype=np.int64)
        offsets = np.zeros((B, T, 2), dtype=np.int64)
        seq_ids = np.full((B, T), -1, dtype=np.int64)
        word_ids = np.full((B, T), -1, dtype=np.int64)
        special = np.ones((B, T), dtype=np.int64)
        for b, e in enumerate(encs):
            n = len(e.ids)
            ids[b, :n] = e.ids
            mask[b, :n] = e.attention_mask
            types[b, :n] = e.type_ids
            offsets[b, :n] = e.offsets
            special[b, :n] = e.special_tokens_mask
            seq_ids[b, :n] = [-1 if s is None else s for s in e.sequence_ids]
            word_ids[b, :n] = [-1 if w is None else w for w in e.word_ids]
        # special tokens and padding carry no sequence (tokenizers marks [CLS]/[SEP] as None already)
        seq_ids[special == 1] = -1
        return Encoding(ids, mask, types, offsets, seq_ids, word_ids, special, [list(e.tokens) for e in encs], lengths)


def _wordpiece_from_vocab(vocab_file: Path, config: dict, special: dict):
    """The BERT WordPiece pipeline (what tokenizers' BertWordPieceTokenizer builds) from vocab.txt."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    try:
        vocab = models.WordPiece.read_file(str(vocab_file))
    except Exception as e:
        raise CheckpointError(f"{vocab_file}: not a readable WordPiece vocabulary ({e})") from None
    names = {k: _token_name(special.get(f"{k}_token"), f"[{k.upper()}]") for k in ("unk", "sep", "pad", "cls", "mask")}
    absent = [t for t in (names["unk"], names["sep"], names["cls"]) if t not in vocab]
    if absent:
        raise CheckpointError(f"{vocab_file}: special token(s) {absent} are not in the vocabulary")
    lowercase = bool(config.get("do_lower_case", True))
    strip_accents = config.get("strip_accents")  # None: strip when lowercasing, as BERT does
    tok = Tokenizer(models.WordPiece(vocab, unk_token=names["unk"], max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=bool(config.get("tokenize_chinese_chars", True)),
        strip_accents=strip_accents,
        lowercase=lowercase,
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_, sep = names["cls"], names["sep"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls_}:0 $A:0 {sep}:0",
        pair=f"{cls_}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls_, vocab[cls_]), (sep, vocab[sep])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    # registered as special so that "[MASK]" in a text stays one token, as in tokenizer.json
    tok.add_special_tokens([t for t in names.values() if t in vocab])
    return tok


# --- decoders -----------------------------------------------------------------------------------


def as_text_list(texts: Any, name: str = "texts") -> list:
    """One text or a list (tuple) of them, as a list; anything else is an InputValueError."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (list, tuple)):
        return list(texts)
    raise InputValueError(f"{name}: got {type(texts).__name__}; expected a str or a list of str")


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # tanh form: no overflow for large |x|


def _check_labels(n: int, labels: Sequence[str], what: str) -> list[str]:
    labels = list(labels)
    if len(labels) != n:
        raise InvalidArgumentError(f"{what}: {n} logits per row but {len(labels)} labels; expected one label per logit")
    return labels


def classify(logits: np.ndarray, labels: Sequence[str], top_k: int | None = 1, function: str = "softmax") -> list:
    """Logits [L] -> the top_k (label, score) pairs, best first ([B, L] -> one list per row).

    function: "softmax" (one label per text), "sigmoid" (independent labels), "none" (raw).
    top_k None: every label.
    """
    logits = np.asarray(logits)
    if logits.ndim == 2:
        return [classify(row, labels, top_k, function) for row in logits]
    if logits.ndim != 1:
        raise InvalidArgumentError(f"classify: logits of shape {logits.shape}; expected [L] or [B, L]")
    labels = _check_labels(logits.shape[0], labels, "classify")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise InvalidArgumentError(f"top_k={top_k!r}: expected a number of labels >= 1, or None for all of them")
    if function == "softmax":
        scores = softmax(logits)
    elif function == "sigmoid":
        scores = sigmoid(logits)
    elif function == "none":
        scores = logits.astype(np.float64)
    else:
        raise InvalidArgumentError(f"classify: function={function!r}; expected softmax, sigmoid or none")
    order = np.argsort(-scores, kind="stable")[: (len(labels) if top_k is None else int(top_k))]
    return [(labels[i], float(scores[i])) for i in order]


AGGREGATIONS = ("none", "simple", "first", "average", "max")


def _bio(label: str) -> tuple[str, str]:
    """("B", "PER") for B-PER, ("I", "PER") for I-PER; a label without a prefix continues."""
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def token_entities(
    logits: np.ndarray,
    labels: Sequence[str],
    offsets: np.ndarray,
    text: str,
    aggregation: str = "simple",
    *,
    special_mask: np.ndarray | None = None,
    word_ids: np.ndarray | None = None,
    ignore_labels: Sequence[str] = ("O",),
) -> list[dict[str, Any]]:
    """Per-token logits [T, L] of one text -> entities, as transformers' token-classification
    pipeline groups them, with character spans from the tokenizer offsets.

    aggregation:
        "none"    one entity per token: {"label", "score", "index", "start", "end", "word"}
        "simple"  adjacent tokens of one type merged (B- starts a new entity, I- continues):
                  {"label" (prefix removed), "score" (mean), "start", "end", "word"}
        "first" / "average" / "max"  tokens of one word (word_ids) first agree on a label (the
                  first token's, the averaged scores', the most confident token's), then merge
    special_mask: 1 for special tokens and padding (Encoding.special_tokens_mask); by default
        tokens with an empty offset span are taken as special.
    Entities whose label is in ignore_labels (after grouping) are dropped. `word` is the
    original text between start and end.
    """
    logits = np.asarray(logits)
    offsets = np.asarray(offsets)
    if logits.ndim != 2 or offsets.shape != (logits.shape[0], 2):
        raise InvalidArgumentError(
            f"token_entities: logits {logits.shape} and offsets {offsets.shape}; expected [T, L] and [T, 2]"
        )
    labels = _check_labels(logits.shape[1], labels, "token_entities")
    if aggregation not in AGGREGATIONS:
        raise InvalidArgumentError(f"aggregation={aggregation!r}: expected one of {', '.join(AGGREGATIONS)}")
    if aggregation in ("first", "average", "max") and word_ids is None:
        raise InvalidArgumentError(f"aggregation={aggregation!r} needs word_ids (Encoding.word_ids)")
    if special_mask is None:
        keep = offsets[:, 1] > offsets[:, 0]
    else:
        keep = np.asarray(special_mask) == 0
    scores = softmax(logits)
    idx = np.flatnonzero(keep)

    def span(i: int, j: int) -> tuple[int, int]:
        return int(offsets[i, 0]), int(offsets[j, 1])

    # one candidate per token (none / simple) or per word (first / average / max)
    units: list[dict[str, Any]] = []
    if aggregation in ("none", "simple"):
        for t in idx:
            k = int(scores[t].argmax())
            units.append(
                {"label": labels[k], "score": float(scores[t, k]), "index": int(t), "first": int(t), "last": int(t)}
            )
    else:
        words = np.asarray(word_ids)
        groups: list[list[int]] = []
        for t in idx:
            if groups and words[t] >= 0 and words[t] == words[groups[-1][-1]]:
                groups[-1].append(int(t))
            else:
                groups.append([int(t)])
        for g in groups:
            s = scores[g]
            if aggregation == "first":
                row = s[0]
            elif aggregation == "max":
                row = s[int(s.max(axis=1).argmax())]
            else:
                row = s.mean(axis=0)
            k = int(row.argmax())
            units.append({"label": labels[k], "score": float(row[k]), "first": g[0], "last": g[-1]})

    ignore = set(ignore_labels)
    if aggregation == "none":
        out = []
        for u in units:
            start, end = span(u["first"], u["last"])
            if u["label"] not in ignore:
                out.append(
                    {
                        "label": u["label"],
                        "score": u["score"],
                        "index": u["index"],
                        "start": start,
                        "end": end,
                        "word": text[start:end],
                    }
                )
        return out

    grouped: list[list[dict[str, Any]]] = []
    for u in units:
        bi, tag = _bio(u["label"])
        if grouped and bi != "B" and _bio(grouped[-1][-1]["label"])[1] == tag:
            grouped[-1].append(u)
        else:
            grouped.append([u])
    entities = []
    for group in grouped:
        tag = _bio(group[0]["label"])[1]
        if tag in ignore:
            continue
        start, end = span(group[0]["first"], group[-1]["last"])
        entities.append(
            {
                "label": tag,
                "score": float(np.mean([u["score"] for u in group])),
                "start": start,
                "end": end,
                "word": text[start:end],
            }
        )
    return entities


def _span_probabilities(
    start_logits: np.ndarray, end_logits: np.ndarray, allowed: np.ndarray, max_answer_len: int
) -> np.ndarray:
    """[T, T] matrix of p_start[i] * p_end[j] for allowed i <= j < i + max_answer_len, else 0;
    the softmaxes run over the allowed tokens only."""
    if max_answer_len < 1:
        raise InvalidArgumentError(f"max_answer_len={max_answer_len}: expected at least 1")
    allowed = np.asarray(allowed).astype(bool)
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    if not (start_logits.shape == end_logits.shape == allowed.shape) or allowed.ndim != 1:
        raise InvalidArgumentError(
            f"span decoding: start {start_logits.shape}, end {end_logits.shape}, "
            f"mask {allowed.shape}; expected three [T] arrays"
        )
    if not allowed.any():
        raise InputValueError(
            "no token may be part of the answer (the context was truncated away?); expected at least one context token"
        )

    def masked_softmax(x: np.ndarray) -> np.ndarray:
        x = np.where(allowed, np.asarray(x, dtype=np.float64), -np.inf)
        e = np.exp(x - x.max())
        return e / e.sum()

    outer = masked_softmax(start_logits)[:, None] * masked_softmax(end_logits)[None, :]  # (T, T)
    return np.tril(np.triu(outer), max_answer_len - 1)  # start <= end < start + max_answer_len


def best_span_indices(
    start_logits: np.ndarray, end_logits: np.ndarray, mask: np.ndarray, max_answer_len: int = 30
) -> tuple[int, int]:
    """The (start, end) token indices, inclusive, of the most probable span whose tokens all
    have mask != 0 (e.g. the context tokens, or the attention mask)."""
    cand = _span_probabilities(start_logits, end_logits, mask, max_answer_len)
    s, e = np.unravel_index(int(cand.argmax()), cand.shape)
    return int(s), int(e)


def qa_best_span(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    sequence_ids: np.ndarray,
    offsets: np.ndarray,
    context: str,
    max_answer_len: int = 30,
    context_sequence: int = 1,
) -> dict[str, Any]:
    """Extractive QA answer for one (question, context) row.

    Only tokens of the context (sequence_ids == context_sequence) can be in the answer; the
    score is p_start * p_end with each softmax taken over the context tokens (the
    transformers question-answering pipeline's score, without its null answer).
    Returns {"answer", "start", "end", "score"} with character offsets into `context`.
    """
    allowed = np.asarray(sequence_ids) == context_sequence
    cand = _span_probabilities(start_logits, end_logits, allowed, max_answer_len)
    s, e = np.unravel_index(int(cand.argmax()), cand.shape)
    offsets = np.asarray(offsets)
    start, end = int(offsets[s, 0]), int(offsets[e, 1])
    return {"answer": context[start:end], "start": start, "end": end, "score": float(cand[s, e])}


def mean_pool(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """[B, T, H] token states -> [B, H], the mean over tokens with mask 1 (sentence-transformers)."""
    mask = np.asarray(attention_mask, dtype=np.float64)[..., None]
    summed = (np.asarray(hidden, dtype=np.float64) * mask).sum(axis=-2)
    return summed / np.clip(mask.sum(axis=-2), 1e-9, None)


def normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """L2-normalise along axis (F.normalize's eps)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Cosine similarity: [H]·[H] -> float, [N, H]·[H] -> [N], [N, H]·[M, H] -> [N, M]."""
    a, b = normalize(a), normalize(b)
    sim = a @ b.T
    return float(sim) if np.ndim(sim) == 0 else sim
