"""Language codes of multilingual tokenizers (mBART's en_XX, fr_XX, ...; NLLB-style eng_Latn).

At build time `language_info` reads them from the engine's tokenizer.json: the special tokens
shaped like a language code, where the tokenizer puts the source language (before the text, as
mBART-50 does, or after its </s>, as mbart-large-cc25 does), the default source language its
post-processor uses, and the default target language its tokenizer_config.json names. The
manifest keeps this as processing["languages"]; the generation pipeline then sets the source
code of each input (`src_lang`) and the target language (`tgt_lang`: forced as the first
generated token for mBART-50, the decoder's start token for cc25).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError

LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}_[A-Z][A-Za-z]{1,3}$")  # en_XX, zh_CN, eng_Latn


def language_info(engine_dir: Path) -> dict[str, Any] | None:
    """processing["languages"] of a tokenizer.json with language codes, else None."""
    from tokenizers import Tokenizer

    path = Path(engine_dir) / "tokenizer.json"
    if not path.is_file():
        return None
    tok = Tokenizer.from_file(str(path))
    codes = {t.content: i for i, t in sorted(tok.get_added_tokens_decoder().items()) if LANGUAGE_CODE.match(t.content)}
    if not codes:
        return None
    ids = tok.encode("a").ids
    by_id = {i: c for c, i in codes.items()}
    position, source = None, None
    if ids and ids[0] in by_id:
        position, source = "prefix", by_id[ids[0]]
    elif ids and ids[-1] in by_id:
        position, source = "suffix", by_id[ids[-1]]
    config_file = Path(engine_dir) / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    target = config.get("tgt_lang") if config.get("tgt_lang") in codes else None
    return {"codes": codes, "position": position, "source": source, "target": target}


def language_id(languages: dict[str, Any] | None, code: Any, name: str) -> int:
    """The token id of a language code the engine's tokenizer has; a clear error otherwise."""
    if not languages:
        raise InvalidArgumentError(f"{name}: this engine's tokenizer has no language codes; leave {name} out")
    codes = languages["codes"]
    if not isinstance(code, str) or code not in codes:
        shown = ", ".join(list(codes)[:12]) + (", ..." if len(codes) > 12 else "")
        raise InvalidArgumentError(f"{name}={code!r}: not a language code of this engine; expected one of {shown}")
    return int(codes[code])


def with_source_language(ids: list[int], languages: dict[str, Any], code: str) -> list[int]:
    """Token ids encoded with the tokenizer's default source code, with `code` in its place."""
    default = languages["codes"][languages["source"]]
    new = language_id(languages, code, "src_lang")
    at = 0 if languages["position"] == "prefix" else len(ids) - 1
    if not ids or ids[at] != default:
        raise InvalidArgumentError("src_lang: the tokenizer put no source language code where expected")
    return [*ids[:at], new, *ids[at + 1 :]]
