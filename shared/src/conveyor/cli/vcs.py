"""``conveyor vcs``: the package version control's commands (imported only when used)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conveyor.pkgvcs.errors import NothingToCommit, VcsError
from conveyor.pkgvcs.package import Package
from conveyor.pkgvcs.paths import porcelain_quote

__all__ = [
    "run_checkout",
    "run_commit",
    "run_diff",
    "run_fsck",
    "run_init",
    "run_log",
    "run_show",
    "run_status",
    "run_tag",
]

_SECTIONS = (("A", "New files", "green"), ("M", "Modified files", "yellow"), ("D", "Deleted files", "red"))


class _LazyConsole:
    """rich is imported only by commands that print for people (not ``status --porcelain``)."""

    def __getattr__(self, name: str) -> Any:
        from conveyor.cli.output import console as real  # noqa: PLC0415

        return getattr(real, name)


console = _LazyConsole()


def _package(path: str | None) -> Package:
    return Package.find(Path(path or "."))


def _fail(exc: Exception) -> int:
    from conveyor.cli.output import error  # noqa: PLC0415

    error(str(exc))
    return 1 if isinstance(exc, VcsError) else 2


def run_init(path: str | None, name: str) -> int:
    try:
        package = Package.init(Path(path or "."), name)
    except (VcsError, ValueError, OSError) as exc:
        return _fail(exc)
    console.print(f"Tracking package [bold]{name}[/] in {package.meta}")
    return 0


def run_status(path: str | None, *, porcelain: bool, as_json: bool, exit_code: bool) -> int:
    try:
        package = _package(path)
        status = package.status()
    except (VcsError, OSError) as exc:
        return _fail(exc)
    entries = status.entries()
    if porcelain:
        sys.stdout.write("".join(f"{code} {porcelain_quote(p)}\n" for code, p in entries))
    elif as_json:
        import json  # noqa: PLC0415 - only --json needs it

        print(
            json.dumps(
                {
                    "package": package.name,
                    "version": status.head,
                    "changes": [{"status": code, "path": os.fsdecode(p)} for code, p in entries],
                }
            )
        )
    else:
        _print_status(package, status.head, entries)
    return 1 if exit_code and entries else 0


def _print_status(package: Package, head: str | None, entries: list[tuple[str, bytes]]) -> None:
    console.print(f"Package [bold]{package.name}[/], version {head[:12] if head else '(none committed)'}")
    if not entries:
        console.print("nothing to commit, working tree clean")
        return
    for code, title, colour in _SECTIONS:
        paths = [p for c, p in entries if c == code]
        if paths:
            console.print(f"\n{title}:")
            for path in paths:
                console.print(f"\t[{colour}]{porcelain_quote(path)}[/]", markup=True, highlight=False)
    console.print('\n(use "conveyor vcs commit -m MESSAGE" to record them)')


def run_commit(path: str | None, message: str, author: str | None) -> int:
    try:
        info = _package(path).commit(message, author=author)
    except NothingToCommit as exc:
        console.print(str(exc))
        return 1
    except (VcsError, ValueError, OSError) as exc:
        return _fail(exc)
    counts = info.counts
    console.print(
        f"[bold]{info.id[:12]}[/] {info.message.splitlines()[0]} — "
        f"{counts['added']} added, {counts['modified']} modified, {counts['deleted']} deleted"
    )
    return 0


def run_log(path: str | None, *, as_json: bool) -> int:
    try:
        history = list(_package(path).history())
    except (VcsError, OSError) as exc:
        return _fail(exc)
    for info in history:
        if as_json:
            import json  # noqa: PLC0415

            print(
                json.dumps(
                    {
                        "id": info.id,
                        "parent": info.parent,
                        "author": info.author,
                        "date": info.date,
                        "message": info.message,
                        **info.counts,
                    }
                )
            )
            continue
        console.print(f"[yellow]version {info.id}[/]\nAuthor: {info.author}\nDate:   {info.date}\n")
        console.print("".join(f"    {line}\n" for line in info.message.splitlines()))
    return 0


def run_show(path: str | None, ref: str) -> int:
    try:
        package = _package(path)
        version = package.resolve(ref)
        info, changes = package.changelog(version)
    except (VcsError, OSError) as exc:
        return _fail(exc)
    console.print(f"[yellow]version {info.id}[/]\nParent: {info.parent or '-'}\nAuthor: {info.author}")
    console.print(f"Date:   {info.date}\n\n    {info.message}\n")
    for code, tree in (("A", changes.added), ("M", changes.modified), ("D", changes.deleted)):
        for file_path, entry in sorted(tree.items()):
            console.print(
                f"{code} {entry.mode:o} {entry.size:>10} {porcelain_quote(file_path)}", highlight=False
            )
    return 0


def run_diff(path: str | None, ref: str, paths: Sequence[str]) -> int:
    try:
        package = _package(path)
        selected = [os.fsencode(p).strip(b"/") for p in paths]
        from conveyor.pkgvcs.diffs import diff  # noqa: PLC0415

        for line in diff(package, ref, selected):
            sys.stdout.write(line)
    except (VcsError, OSError) as exc:
        return _fail(exc)
    return 0


def run_checkout(path: str | None, ref: str, *, force: bool) -> int:
    try:
        from conveyor.pkgvcs.worktree import checkout  # noqa: PLC0415

        version = checkout(_package(path), ref, force=force)
    except (VcsError, OSError) as exc:
        return _fail(exc)
    console.print(f"Working tree is now version {version[:12]}")
    return 0


def run_tag(path: str | None, name: str | None, ref: str) -> int:
    try:
        package = _package(path)
        if name is None:
            for tag, version in package.tags().items():
                console.print(f"{tag}\t{version[:12]}")
            return 0
        version = package.tag(name, ref)
    except (VcsError, ValueError, OSError) as exc:
        return _fail(exc)
    console.print(f"{name} → {version[:12]}")
    return 0


def run_fsck(path: str | None) -> int:
    try:
        from conveyor.pkgvcs.integrity import fsck  # noqa: PLC0415

        versions, problems = fsck(_package(path))
    except (VcsError, OSError) as exc:
        return _fail(exc)
    for problem in problems:
        _fail(VcsError(problem))
    if not problems:
        console.print(f"{versions} versions and their objects verified")
    return 1 if problems else 0
