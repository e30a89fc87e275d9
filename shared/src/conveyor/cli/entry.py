"""The ``conveyor`` console script: hot paths first, then the typer application.

``conveyor vcs status`` runs in scripts and prompts, often many times a
second; typer's import alone costs more than a status of a small package, so
its plain forms are dispatched here without importing typer at all.
"""

from __future__ import annotations

import sys

__all__ = ["run"]

_STATUS_FLAGS = frozenset({"--porcelain", "--json", "--exit-code"})


def _fast_vcs_status(args: list[str]) -> int | None:
    """Only the plain forms (the flags above, at most one path); anything else,
    ``--help`` or a typo included, returns None and goes through typer."""
    flags = [a for a in args if a.startswith("-")]
    paths = [a for a in args if not a.startswith("-")]
    if len(paths) > 1 or not set(flags) <= _STATUS_FLAGS or len(set(flags)) != len(flags):
        return None
    from conveyor.cli import vcs  # noqa: PLC0415

    return vcs.run_status(
        paths[0] if paths else None,
        porcelain="--porcelain" in flags,
        as_json="--json" in flags,
        exit_code="--exit-code" in flags,
    )


def run() -> None:
    args = sys.argv[1:]
    if args[:2] == ["vcs", "status"]:
        code = _fast_vcs_status(args[2:])
        if code is not None:
            raise SystemExit(code)
    from conveyor.cli.main import app  # noqa: PLC0415

    app()
