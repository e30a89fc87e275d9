"""Printing for the CLI: rich tables on a terminal, one-line errors, JSON on request."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

__all__ = ["console", "error", "print_json_line"]

console = Console(highlight=False)
_stderr = Console(stderr=True, highlight=False)


def error(message: str) -> None:
    """One line on stderr, no traceback: what was wrong and what to do next."""
    _stderr.print(f"[bold red]error:[/] {message}", soft_wrap=True)


def print_json_line(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()
