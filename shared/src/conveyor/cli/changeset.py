"""``conveyor changeset``: build, inspect, verify, apply and roll back changesets."""

from __future__ import annotations

import asyncio
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from rich.table import Table

from conveyor.changeset import (
    ChangesetArchive,
    ChangesetError,
    HostileArchive,
    ParentMismatch,
    ReleaseRoot,
    build_changeset,
)
from conveyor.changeset.store import ArtifactStore
from conveyor.cli.output import console, error
from conveyor.pkgvcs.errors import VcsError
from conveyor.pkgvcs.manifest import FileEntry
from conveyor.pkgvcs.package import Package
from conveyor.pkgvcs.paths import porcelain_quote
from conveyor.settings import CliSettings, load_settings

__all__ = ["run_apply", "run_create", "run_releases", "run_rollback", "run_show", "run_verify"]

_FAILURES = (ChangesetError, VcsError, OSError, ValueError)


def _fail(exc: BaseException) -> int:
    error(str(exc))
    return 1


def _store() -> ArtifactStore:
    settings = load_settings(CliSettings)
    token = settings.token.get_secret_value() if settings.token else None
    return ArtifactStore(settings.version_db_url, token)


def run_create(
    package_dir: str, *, parent: str | None, version: str, out: str | None, upload: bool, as_json: bool
) -> int:
    try:
        package = Package.find(Path(package_dir))
        to = package.resolve(version)
        if parent is None:
            parent_id = package.version(to)[0].parent
        else:
            parent_id = None if parent == "none" else package.resolve(parent)
        directory = Path(out) if out else package.meta / "changesets"
        built = build_changeset(package, parent=parent_id, version=to, directory=directory)
        stored = asyncio.run(_store().upload(built.path, built.id)) if upload else None
    except _FAILURES as exc:
        return _fail(exc)
    counts = built.changes.counts()
    if as_json:
        summary = {"id": built.id, "path": str(built.path), "size": built.size, "stored": stored}
        print(json.dumps({**summary, "version": to, "parent": parent_id, **counts}))
        return 0
    console.print(f"changeset [bold]{built.id}[/]")
    console.print(f"  {package.name} {(parent_id or 'none')[:12]} → {to[:12]}: " + _counts(counts))
    console.print(f"  {built.path} ({built.size} bytes)")
    if upload:
        console.print("  uploaded to the artifact store" if stored else "  already in the artifact store")
    return 0


def _counts(counts: dict[str, int]) -> str:
    return f"{counts['added']} added, {counts['modified']} modified, {counts['deleted']} deleted"


def _locate(reference: str) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """A file, an id (or unique prefix) in this package's changesets, or an id in the artifact store."""
    path = Path(reference)
    if path.is_file():
        return path, None
    if not re.fullmatch(r"[0-9a-f]{4,64}", reference):
        raise ChangesetError(f"{reference}: no such file, and not a changeset id")
    try:
        local = sorted((Package.find(Path()).meta / "changesets").glob(f"{reference}*.zip"))
    except VcsError:
        local = []
    if len(local) == 1:
        return local[0], None
    if len(local) > 1:
        raise ChangesetError(f"{reference} is ambiguous: {', '.join(p.stem[:12] for p in local)}")
    if len(reference) != 64:
        raise ChangesetError(f"{reference}: no local changeset; give the full id to fetch it from the store")
    scratch = tempfile.TemporaryDirectory(prefix="conveyor-changeset-")
    return asyncio.run(_store().download(reference, Path(scratch.name))), scratch


def _file_rows(kind: str, entries: dict[bytes, FileEntry]) -> list[dict[str, Any]]:
    return [
        {"change": kind, "path": os.fsdecode(p), "mode": f"{e.mode:o}", "size": e.size, "sha256": e.sha256}
        for p, e in sorted(entries.items())
    ]


def run_show(reference: str, *, as_json: bool) -> int:
    scratch = None
    try:
        path, scratch = _locate(reference)
        with ChangesetArchive.open(path) as archive:
            info, changes, changeset_id = archive.info, archive.changes, archive.id
    except _FAILURES as exc:
        return _fail(exc)
    finally:
        if scratch is not None:
            scratch.cleanup()
    rows = [
        *_file_rows("added", changes.added),
        *_file_rows("modified", changes.modified),
        *_file_rows("deleted", changes.deleted),
    ]
    header = {
        "id": changeset_id,
        "package": info.package,
        "parent": info.parent,
        "version": info.id,
        "author": info.author,
        "date": info.date,
        "message": info.message,
    }
    if as_json:
        print(json.dumps({**header, "files": rows}, indent=2))
        return 0
    for key, value in header.items():
        console.print(f"[bold]{key:>8}[/]  {value if value is not None else '(none: first changeset)'}")
    table = Table("change", "mode", "size", "sha256", "path", box=None)
    colour = {"added": "green", "modified": "yellow", "deleted": "red"}
    for row in rows:
        change = row["change"]
        table.add_row(
            f"[{colour[change]}]{change}[/]", row["mode"], str(row["size"]), row["sha256"][:12], row["path"]
        )
    console.print(table)
    console.print(_counts(changes.counts()))
    return 0


def run_verify(file: str) -> int:
    try:
        with ChangesetArchive.open(Path(file)) as archive:
            archive.verify()
            info, counts = archive.info, archive.changes.counts()
            changeset_id = archive.id
    except _FAILURES as exc:
        return _fail(exc)
    console.print(f"ok: {changeset_id} ({info.package} {(info.parent or 'none')[:12]} → {info.id[:12]})")
    console.print(f"  every file matches CHANGELOG.ini: {_counts(counts)}")
    return 0


def run_apply(file: str, *, root: str, force: bool, keep: int) -> int:
    try:
        result = ReleaseRoot(Path(root), keep=keep).apply(Path(file), force=force)
    except ParentMismatch as exc:
        error(str(exc))
        return 1
    except HostileArchive as exc:
        error(f"refused: {exc}")
        return 1
    except _FAILURES as exc:
        return _fail(exc)
    if result.already_current:
        console.print(f"{root} already runs {result.version[:12]}: nothing to do")
        return 0
    steps = ", ".join(f"{name} {seconds * 1000:.0f} ms" for name, seconds in result.timings.items())
    console.print(f"{root}: {(result.previous or 'none')[:12]} → [bold]{result.version[:12]}[/] ({steps})")
    if result.forced:
        console.print("[yellow]forced:[/] the release is not the changeset's version; its own id is shown")
    return 0


def run_rollback(*, root: str, keep: int) -> int:
    try:
        left, now = ReleaseRoot(Path(root), keep=keep).rollback()
    except _FAILURES as exc:
        return _fail(exc)
    console.print(f"{root}: {(left or 'none')[:12]} → [bold]{now[:12]}[/] (the release left is marked bad)")
    return 0


def run_releases(*, root: str, as_json: bool) -> int:
    try:
        releases = ReleaseRoot(Path(root))
        current, available = releases.current(), set(releases.available())
        history = releases.history()
        drift = releases.drift()
    except _FAILURES as exc:
        return _fail(exc)
    if as_json:
        print(json.dumps({"current": current, "available": sorted(available), "history": history}, indent=2))
        return 0
    table = Table("when", "version", "state", "changeset", "on disk", box=None)
    for entry in history[-20:]:
        version = entry["version"]
        mark = "[bold]→ " if version == current and entry is history[-1] else "  "
        table.add_row(
            entry.get("switched_at", ""),
            mark + version[:12] + ("[/]" if mark != "  " else ""),
            entry.get("state", ""),
            (entry.get("changeset") or "")[:12],
            "yes" if version in available else "pruned",
        )
    console.print(table)
    if drift:
        console.print(f"[yellow]drift:[/] {len(drift.entries())} files differ from {(current or '')[:12]}:")
        for code, path in drift.entries()[:20]:
            console.print(f"  {code} {porcelain_quote(path)}")
    return 0
