"""Pre- and post-processing: tokenizers, image and audio processors, and the decoders that
turn outputs into answers.

Submodules are imported on use (`from kiln.processing.text import TextTokenizer`), so this
package costs nothing to import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InvalidArgumentError

PREPROCESSOR_FILE = "preprocessor_config.json"


def read_preprocessor_config(path: str | os.PathLike, missing_hint: str) -> dict:
    """The preprocessor_config.json of a checkpoint or engine directory; InvalidArgumentError
    when it is absent (`missing_hint` says what the processor needs it for) or not JSON."""
    file = Path(path) / PREPROCESSOR_FILE
    if not file.is_file():
        raise InvalidArgumentError(f"{path}: no {PREPROCESSOR_FILE}; {missing_hint}")
    try:
        return json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidArgumentError(f"{file}: not readable as JSON ({e})") from None
