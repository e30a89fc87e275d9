"""Walking a package's working tree: what files exist, with their stat, minus ignored ones."""

from __future__ import annotations

import os
import stat as st
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pathspec

from conveyor.pkgvcs.index import Stat
from conveyor.pkgvcs.manifest import MODE_EXECUTABLE, MODE_FILE, MODE_SYMLINK

__all__ = ["IGNORE_FILE", "METADATA_DIR", "Ignore", "scan"]

METADATA_DIR = b".conveyor"
IGNORE_FILE = ".conveyorignore"


class Ignore:
    """``.conveyorignore`` (gitignore syntax); files already tracked are never ignored."""

    def __init__(self, root: Path, tracked: Iterable[bytes]) -> None:
        try:
            lines = (root / IGNORE_FILE).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        except FileNotFoundError:
            lines = []
        self.spec = pathspec.GitIgnoreSpec.from_lines(lines) if lines else None
        self._tracked = set(tracked) if self.spec else set()
        self._tracked_dirs: set[bytes] = set()
        for path in self._tracked:
            cut = path.rfind(b"/")
            while cut > 0:
                self._tracked_dirs.add(path[:cut])
                cut = path.rfind(b"/", 0, cut)

    def skips_dir(self, path: bytes) -> bool:
        if self.spec is None or path in self._tracked_dirs:
            return False
        return self.spec.match_file(os.fsdecode(path) + "/")

    def skips_file(self, path: bytes) -> bool:
        if self.spec is None or path in self._tracked:
            return False
        return self.spec.match_file(os.fsdecode(path))


def _mode(st_mode: int) -> int | None:
    if st.S_ISREG(st_mode):
        return MODE_EXECUTABLE if st_mode & 0o100 else MODE_FILE
    if st.S_ISLNK(st_mode):
        return MODE_SYMLINK
    return None  # sockets, fifos, devices are not content


def _scan_dir(root: bytes, rel: bytes, ignore: Ignore) -> tuple[dict[bytes, Stat], list[bytes]]:
    """One directory: its files with their stat, and its subdirectories to walk."""
    files: dict[bytes, Stat] = {}
    subdirs: list[bytes] = []
    prefix = rel + b"/" if rel else b""
    with os.scandir(root + b"/" + rel if rel else root) as entries:
        for entry in entries:
            name = entry.name
            path = prefix + name
            if entry.is_dir(follow_symlinks=False):
                if not (name == METADATA_DIR and not rel) and not ignore.skips_dir(path):
                    subdirs.append(path)
                continue
            info = entry.stat(follow_symlinks=False)
            mode = _mode(info.st_mode)
            if mode is None or ignore.skips_file(path):
                continue
            files[path] = (mode, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
    return files, subdirs


def scan(root: Path, ignore: Ignore, *, workers: int = 4) -> dict[bytes, Stat]:
    """Every tracked-kind file below ``root`` (paths relative, bytes), with its lstat.

    Directories are walked by a few threads: ``scandir`` and ``lstat`` release
    the GIL, so the system calls of one overlap with the Python of another.
    """
    base = os.fsencode(root)
    found: dict[bytes, Stat] = {}
    pending = [b""]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        while pending:
            results = pool.map(lambda rel: _scan_dir(base, rel, ignore), pending)
            pending = []
            for files, subdirs in results:
                found.update(files)
                pending.extend(subdirs)
    return found
