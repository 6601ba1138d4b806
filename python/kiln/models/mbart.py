"""mBART (MBartForConditionalGeneration: mbart-large-cc25, mbart-large-50 and its many-to-many
translation checkpoints): BART's model with LayerNorm before each sublayer and a final LayerNorm
after each stack, embeddings scaled by sqrt(d_model) where `scale_embedding` says so, and language
codes as special tokens.

Attribute names are BART's (models/bart.py), plus `model.encoder.layer_norm` and
`model.decoder.layer_norm`. The two generation graphs are BART's.

Languages are the tokenizer's: its language codes (en_XX, fr_XX, ...) are special tokens. The
source is [src_lang] text </s> for mBART-50 (text </s> [src_lang] for mbart-large-cc25); for
mBART-50 the target language is forced as the first generated token (`forced_bos_token_id`)
after the decoder starts from </s>. `kiln run ENGINE TEXT --src-lang en_XX --tgt-lang fr_XX` sets
both (kiln.processing.languages).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..deploy import seq2seq
from .bart import _TINY as _BART_TINY
from .bart import BartConfig, BartForConditionalGeneration, _cache, _decoder_case, _defaults, _encoder_case


@dataclass
class MBartConfig(BartConfig):
    model_type: ClassVar[str] = "mbart"
    display_name: ClassVar[str] = "mBART"
    pre_norm: ClassVar[bool] = True
    unsupported: ClassVar[tuple[tuple[str, str], ...]] = ()
    vocab_size: int = 250054  # mbart-large-50's
    scale_embedding: bool = False  # transformers' default; the mBART checkpoints say true
    decoder_start_token_id: int | None = None  # None: generation starts from bos_token_id, as transformers does
    forced_eos_token_id: int | None = 2


class MBartForConditionalGeneration(BartForConditionalGeneration):
    """BART's encode / decode / forward, over pre-LN layers with final LayerNorms."""

    config_class = MBartConfig
    hf_architecture = "MBartForConditionalGeneration"


# BART's tiny config with mBART's scaled embeddings; mBART-50 starts with </s>, then the target
# language is forced (no forced BOS of its own)
_TINY = {k: v for k, v in {**_BART_TINY, "scale_embedding": True}.items() if k != "forced_bos_token_id"}

DEPLOYABLES = (
    seq2seq(
        MBartForConditionalGeneration,
        "translation",
        cache=_cache,
        positions=lambda c: c.max_position_embeddings,
        defaults=_defaults,
        tokenizer="mbart",
        encoder_case=_encoder_case,
        decoder_case=_decoder_case,
        tiny=_TINY,
    ),
)
