"""kiln: PyTorch models of the classic ML tasks into deployable engines, with parity proven.

Importing `kiln` is cheap: torch, tokenizers and the C++ extension load only when a
submodule that needs them is imported (`kiln.models.bert`, `kiln.checkpoint`, ...).
"""

from __future__ import annotations

__version__ = "0.1.0"
