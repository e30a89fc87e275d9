"""Restoring the working tree to a version, never writing outside the package."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat as st

from conveyor.pkgvcs.errors import UncommittedChanges, VcsError
from conveyor.pkgvcs.manifest import MODE_EXECUTABLE, MODE_SYMLINK, FileEntry, Tree, diff_trees
from conveyor.pkgvcs.package import Package
from conveyor.pkgvcs.paths import porcelain_quote
from conveyor.pkgvcs.storage import atomic_write, package_lock

__all__ = ["checkout"]


def checkout(package: Package, ref: str, *, force: bool = False) -> str:
    """Make the working tree version ``ref``; returns its id.

    Without ``force`` any uncommitted change (untracked files included) stops
    it before anything is touched. Every path of the target manifest was
    validated when it was read (relative, no ``..``, none below a file).
    """
    with package_lock(package.lock_path):
        target = package.resolve(ref)
        _, wanted = package.version(target)
        index = package.load_index()
        current, _ = package.working_tree(index)
        head_tree = index.head_tree()
        pending = diff_trees(head_tree, current)
        if pending and not force:
            raise UncommittedChanges(
                f"{len(pending.added)} added, {len(pending.modified)} modified and {len(pending.deleted)} "
                "deleted files are not committed; commit them, or checkout --force to discard them"
            )
        root = os.fsencode(package.root)
        removals = [p for p in current.keys() - wanted.keys() if p in head_tree or force]
        _check_nothing_in_the_way(root, wanted, set(removals))  # before anything changes
        for path in removals:
            _remove(root, path)
        for path, entry in sorted(wanted.items()):
            if current.get(path) != entry:
                _write(package, root, path, entry)
        atomic_write(package.meta / "HEAD", f"{target}\n".encode())
        index.set_head(target, wanted)
        index.stats.clear()  # re-learn the stat of everything written
        index.save(package.index_path)
        return target


def _remove(root: bytes, path: bytes) -> None:
    full = root + b"/" + path
    with contextlib.suppress(FileNotFoundError):
        os.unlink(full)
    parent = path.rpartition(b"/")[0]
    while parent:  # drop directories the removal left empty (git does the same)
        try:
            os.rmdir(root + b"/" + parent)
        except OSError:
            break
        parent = parent.rpartition(b"/")[0]


def _ensure_parents(root: bytes, path: bytes) -> None:
    """Create the parent directories as real directories; never follow a symlink there."""
    parts = path.split(b"/")[:-1]
    current = root
    for part in parts:
        current = current + b"/" + part
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current)
            continue
        if not st.S_ISDIR(info.st_mode):
            os.unlink(current)  # a file or symlink where the version has a directory
            os.mkdir(current)


def _holds_files(directory: bytes, leaving: set[bytes], prefix: bytes) -> bool:
    """Whether ``directory`` contains a file (at any depth) that is not about to be removed."""
    with os.scandir(directory) as entries:
        for entry in entries:
            rel = prefix + b"/" + entry.name
            if entry.is_dir(follow_symlinks=False):
                if _holds_files(entry.path, leaving, rel):
                    return True
            elif rel not in leaving:
                return True
    return False


def _check_nothing_in_the_way(root: bytes, wanted: Tree, leaving: set[bytes]) -> None:
    """Refuse, before touching anything, to replace a directory holding files by a file."""
    for path in wanted:
        full = root + b"/" + path
        if os.path.isdir(full) and not os.path.islink(full) and _holds_files(full, leaving, path):
            raise VcsError(
                f"{porcelain_quote(path)} is a directory with files in it where the version has a file; "
                "move them away and run checkout again"
            )


def _temporary_beside(full: bytes) -> bytes:
    """A fresh name in the same directory that no tracked path can have been given."""
    head, _, name = full.rpartition(b"/")
    return b"%s/.%s.%s.conveyor-tmp" % (head, name[:100], secrets.token_hex(8).encode())


def _write(package: Package, root: bytes, path: bytes, entry: FileEntry) -> None:
    data = package.objects.get(entry.sha256)
    _ensure_parents(root, path)
    full = root + b"/" + path
    if os.path.isdir(full) and not os.path.islink(full):
        shutil.rmtree(full)  # only empty directories are left here (checked up front)
    tmp = _temporary_beside(full)
    try:
        if entry.mode == MODE_SYMLINK:
            os.symlink(data, tmp)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, 0o755 if entry.mode == MODE_EXECUTABLE else 0o644)
        os.replace(tmp, full)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
