"""kiln: PyTorch models of the classic ML tasks into deployable engines, with parity proven.

Importing `kiln` is cheap: torch, tokenizers and the C++ extension load only when a
submodule that needs them is imported (`kiln.models.bert`, `kiln.checkpoint`, ...).
"""

from __future__ import annotations

import os as _os
import sys as _sys

__version__ = "0.1.0"

# OpenMP's worker threads (libgomp, under libtorch) spin 300,000 times, by default, before they
# sleep: on an idle machine that saves a wake-up, beside another busy process it burns the CPU the
# other needs. MiniLM batch 1 on 2 cores beside a busy engine took 3.5x its time alone (p90 30x);
# with 3,000 spins 2.0x, the CPU share it lost, at the same speed alone (README "CPU threads
# under load"). libgomp reads it once, when it loads: so before torch, and only if you set none.
if "torch" not in _sys.modules:
    _os.environ.setdefault("GOMP_SPINCOUNT", "3000")
