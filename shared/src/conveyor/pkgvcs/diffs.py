"""``conveyor vcs diff``: unified diffs between a version and the working tree."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, Sequence

from conveyor.pkgvcs.manifest import MODE_SYMLINK, FileEntry, diff_trees
from conveyor.pkgvcs.package import Package
from conveyor.pkgvcs.paths import porcelain_quote

__all__ = ["diff"]


def _text(data: bytes) -> list[str] | None:
    if b"\x00" in data[:8000]:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def _selected(path: bytes, only: Sequence[bytes]) -> bool:
    return not only or any(path == p or path.startswith(p.rstrip(b"/") + b"/") for p in only)


def _content(package: Package, path: bytes, entry: FileEntry | None, *, worktree: bool) -> bytes:
    if entry is None:
        return b""
    if not worktree:
        return package.objects.get(entry.sha256)
    full = os.fsencode(package.root) + b"/" + path
    if entry.mode == MODE_SYMLINK:
        return os.readlink(full)
    with open(full, "rb") as handle:
        return handle.read()


def diff(package: Package, ref: str = "HEAD", paths: Sequence[bytes] = ()) -> Iterator[str]:
    """Lines of a unified diff from version ``ref`` to the working tree."""
    _, old_tree = package.version(package.resolve(ref))
    new_tree, _ = package.working_tree(package.load_index())
    changes = diff_trees(old_tree, new_tree)
    touched = sorted({*changes.added, *changes.modified, *changes.deleted})
    for path in touched:
        if not _selected(path, paths):
            continue
        old, new = old_tree.get(path), new_tree.get(path)
        a_path, b_path = porcelain_quote(b"a/" + path), porcelain_quote(b"b/" + path)
        yield f"diff --conveyor {a_path} {b_path}\n"
        if old is not None and new is not None and old.mode != new.mode:
            yield f"old mode {old.mode:o}\nnew mode {new.mode:o}\n"
        if old is None:
            yield f"new file mode {new.mode:o}\n" if new else ""
        if new is None and old is not None:
            yield f"deleted file mode {old.mode:o}\n"
        if old is not None and new is not None and old.sha256 == new.sha256:
            continue
        before = _content(package, path, old, worktree=False)
        after = _content(package, path, new, worktree=True)
        a_lines, b_lines = _text(before), _text(after)
        if a_lines is None or b_lines is None:
            yield f"Binary files {a_path} and {b_path} differ\n"
            continue
        a_name = a_path if old is not None else "/dev/null"
        b_name = b_path if new is not None else "/dev/null"
        for line in difflib.unified_diff(a_lines, b_lines, a_name, b_name):
            yield line if line.endswith("\n") else line + "\n\\ No newline at end of file\n"
