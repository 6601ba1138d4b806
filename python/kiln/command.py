"""The `kiln` command's first moment (the console script's entry point, kept free of imports:
it may start the process again before anything heavy loads)."""

from __future__ import annotations

import os
import sys

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def entry() -> int:
    """The `kiln` command (and `python -m kiln.cli`): main() in a process whose large allocations
    sit on transparent huge pages. glibc reads GLIBC_TUNABLES once, at start, so the first start
    sets it and starts again, before torch is imported (as kiln-run does): a decode step streams
    every weight once, and with 4 KiB pages it walks ~120,000 of them (BART's one-row step
    13.6 -> 12.5 ms; README, "Decoders: weight layout and linear kernels"). Your own
    GLIBC_TUNABLES, or KILN_HUGE_PAGES=0, is left as it is."""
    if "GLIBC_TUNABLES" not in os.environ and os.environ.get("KILN_HUGE_PAGES") != "0" and sys.executable:
        os.environ["GLIBC_TUNABLES"] = HUGE_PAGES_TUNABLE
        # the same command line, interpreter options included (`python -X ... -m kiln.cli ...`, or
        # the console script's path and its arguments)
        again = [sys.executable, *getattr(sys, "orig_argv", [sys.executable, "-m", "kiln.cli", *sys.argv[1:]])[1:]]
        try:
            os.execv(sys.executable, again)
        except OSError:  # go on as we are
            del os.environ["GLIBC_TUNABLES"]
    from .cli import main  # only now: torch, numpy and the rest load in the process that runs

    return main()
