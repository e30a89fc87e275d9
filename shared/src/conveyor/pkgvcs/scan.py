"""Walking a package's working tree: what files exist, with their stat, minus ignored ones."""

from __future__ import annotations

import os
import stat as st
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from conveyor.pkgvcs.index import Stat
from conveyor.pkgvcs.manifest import MODE_EXECUTABLE, MODE_FILE, MODE_SYMLINK

__all__ = ["IGNORE_FILE", "METADATA_DIR", "Ignore", "iter_files", "read_content"]

METADATA_DIR = b".conveyor"
IGNORE_FILE = ".conveyorignore"


class Ignore:
    """``.conveyorignore`` (gitignore syntax); files already tracked are never ignored."""

    def __init__(self, root: Path, tracked: Iterable[bytes]) -> None:
        try:
            lines = (root / IGNORE_FILE).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        except FileNotFoundError:
            lines = []
        self.spec: Any = None
        if lines:
            import pathspec  # noqa: PLC0415 - only packages with an ignore file pay for it

            self.spec = pathspec.GitIgnoreSpec.from_lines(lines)
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
        return bool(self.spec.match_file(os.fsdecode(path) + "/"))

    def skips_file(self, path: bytes) -> bool:
        if self.spec is None or path in self._tracked:
            return False
        return bool(self.spec.match_file(os.fsdecode(path)))


def iter_files(
    root: Path, ignore: Ignore, starts: Iterable[bytes] = (b"",), *, recurse: bool = True
) -> Iterator[tuple[bytes, Stat]]:
    """Every tracked-kind file below ``root``: its relative path (bytes) and lstat.

    ``starts`` are the directories (relative) to walk, the root by default;
    with ``recurse=False`` only their own files are listed.

    One ``lstat`` per file is the floor (file contents change without touching
    their directory), so this loop is kept as lean as Python allows: no
    per-file function calls unless an ignore file exists. Threads do not help
    here: the per-entry work holds the GIL far longer than the system call.
    """
    base = os.fsencode(root)
    check = ignore.spec is not None
    pending: list[bytes] = list(starts)
    while pending:
        rel = pending.pop()
        prefix = rel + b"/" if rel else b""
        with os.scandir(base + b"/" + rel if rel else base) as entries:
            for entry in entries:
                path = prefix + entry.name
                if entry.is_dir(follow_symlinks=False):
                    if (
                        recurse
                        and (rel or entry.name != METADATA_DIR)
                        and not (check and ignore.skips_dir(path))
                    ):
                        pending.append(path)
                    continue
                info = entry.stat(follow_symlinks=False)
                st_mode = info.st_mode
                if _S_ISREG(st_mode):
                    mode = MODE_EXECUTABLE if st_mode & 0o100 else MODE_FILE
                elif _S_ISLNK(st_mode):
                    mode = MODE_SYMLINK
                else:
                    continue  # sockets, fifos, devices are not content
                if check and ignore.skips_file(path):
                    continue
                yield path, (mode, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


_S_ISREG = st.S_ISREG
_S_ISLNK = st.S_ISLNK


def read_content(root: bytes, path: bytes, mode: int) -> bytes:
    """What a tracked file's sha256 is taken of: its bytes, or a symlink's target."""
    full = root + b"/" + path
    if mode == MODE_SYMLINK:
        return os.readlink(full)
    with open(full, "rb") as handle:
        return handle.read()
