"""The console kiln prints to: rich, at least 120 columns wide when output is not a terminal
(logs and CI would otherwise get 80 and fold every table)."""

from __future__ import annotations


def make_console(**kwargs):
    from rich.console import Console

    console = Console(**kwargs)
    if not console.is_terminal and "width" not in kwargs:
        console = Console(width=140, **kwargs)
    return console
