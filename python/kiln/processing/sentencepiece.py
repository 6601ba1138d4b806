"""SentencePiece vocabularies (T5's spiece.model, mBART's sentencepiece.bpe.model): converted at
build time into the engine's tokenizer.json, which the runtime reads with `tokenizers` alone.

    files = convert_sentencepiece(checkpoint_dir, engine_dir)   # tokenizer.json + its config

T5 and mBART checkpoints often ship only the SentencePiece model. The conversion is
transformers' own (its tokenizer class for the checkpoint, built from the SentencePiece model
by its slow-to-fast converter), which needs `transformers`, `sentencepiece` and `protobuf`:
build-time dependencies (`pip install 'kiln[convert]'`; `make setup` installs them), never
runtime ones. The converted ids equal SentencePiece's own (tests/test_sentencepiece.py).

`train_vocabulary` makes kiln's own SentencePiece models, T5's layout (<pad> 0, </s> 1, <unk> 2,
a unigram model) or mBART's (<unk> 0, <s> 1, </s> 2; transformers shifts them to
fairseq's order): `make setup` trains one of each from GPT-2's vocabulary words for the
random-weight T5 and mBART recipes (no real one is on a registry reachable here), and the tests
train small ones from multilingual text.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..errors import CheckpointError, InvalidArgumentError

SENTENCEPIECE_FILES = ("spiece.model", "sentencepiece.bpe.model")
LAYOUTS = {
    # layout: (file, model_type, special ids, tokenizer_config.json)
    "t5": (
        "spiece.model",
        "unigram",
        {"pad_id": 0, "eos_id": 1, "unk_id": 2, "bos_id": -1},
        {"tokenizer_class": "T5Tokenizer", "extra_ids": 100},
    ),
    "mbart": (
        "sentencepiece.bpe.model",  # a unigram model, whatever its name says (as XLM-R's and mBART's are)
        "unigram",
        {"unk_id": 0, "bos_id": 1, "eos_id": 2, "pad_id": -1},
        {"tokenizer_class": "MBart50Tokenizer", "src_lang": "en_XX", "tgt_lang": "fr_XX"},
    ),
}


def sentencepiece_file(path: Path) -> Path | None:
    """The SentencePiece model a checkpoint directory holds, if any."""
    return next((path / f for f in SENTENCEPIECE_FILES if (path / f).is_file()), None)


def convert_sentencepiece(checkpoint: str | os.PathLike, out: str | os.PathLike) -> list[str]:
    """tokenizer.json (+ tokenizer_config.json, special_tokens_map.json) in `out`, converted from
    the checkpoint's SentencePiece model by transformers' tokenizer class for the checkpoint.
    Returns the file names written."""
    checkpoint, out = Path(checkpoint), Path(out)
    model = sentencepiece_file(checkpoint)
    if model is None:
        raise CheckpointError(
            f"{checkpoint}: no SentencePiece model (expected one of {', '.join(SENTENCEPIECE_FILES)})"
        )
    try:
        import google.protobuf  # noqa: F401  (the converter reads the model's protobuf)
        import sentencepiece  # noqa: F401
        import transformers
    except ImportError as e:
        raise CheckpointError(
            f"{model}: converting a SentencePiece model into tokenizer.json needs transformers, sentencepiece "
            f"and protobuf ({e.name} is missing); pip install 'kiln[convert]' (make setup installs them), "
            "or give the checkpoint a tokenizer.json"
        ) from None
    transformers.logging.set_verbosity_error()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    except Exception as e:  # a corrupt model, an unknown tokenizer class: transformers' own message
        raise CheckpointError(f"{model}: transformers could not convert it ({type(e).__name__}: {e})") from None
    if not hasattr(tok, "backend_tokenizer"):
        raise CheckpointError(f"{model}: transformers gave a {type(tok).__name__}, which has no tokenizer.json form")
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        written = []
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (Path(tmp) / name).is_file():
                shutil.copy2(Path(tmp) / name, out / name)
                written.append(name)
    return written


def train_vocabulary(sentences: Iterable[str], out: str | os.PathLike, layout: str, vocab_size: int) -> Path:
    """A SentencePiece model of the layout ("t5" | "mbart") trained on `sentences`, written with
    the tokenizer_config.json transformers reads it by. Deterministic (one thread). Returns `out`."""
    import sentencepiece as spm

    if layout not in LAYOUTS:
        raise InvalidArgumentError(f"layout {layout!r}: expected one of {sorted(LAYOUTS)}")
    file, model_type, ids, config = LAYOUTS[layout]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences)),
        model_writer=proto,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        hard_vocab_limit=False,  # fewer pieces where the text has fewer
        num_threads=1,
        minloglevel=2,
        **ids,
    )
    (out / file).write_bytes(proto.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    return out
