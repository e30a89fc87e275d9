"""The stat cache (like git's index): which files need hashing again.

For every file seen it keeps ``(mode, size, mtime_ns, ctime_ns, inode)`` and
the sha256 its content had then, plus a copy of the current version's tree so
``status`` never has to parse the manifest. It is a cache: a missing,
unreadable or foreign-format index only costs re-hashing, never correctness.

Racy timestamps: a file changed within the same clock tick as the index was
written can keep the mtime the index recorded. Entries whose mtime is not
older than the index file's own mtime are therefore never trusted and are
hashed again (git's "racy git" rule).
"""

from __future__ import annotations

import hashlib
import marshal
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.pkgvcs.manifest import FileEntry, Tree
from conveyor.pkgvcs.storage import atomic_write

__all__ = ["Index", "Stat"]

_MAGIC = b"CVIX"
_FORMAT = (2, sys.version_info[:2])  # marshal's format follows the interpreter

# (mode, size, mtime_ns, ctime_ns, inode)
Stat = tuple[int, int, int, int, int]
# Stat + the sha256 of the content seen with it
Entry = tuple[int, int, int, int, int, str]


@dataclass
class Index:
    """Plain tuples throughout: this is loaded on every ``status``, 100,000 entries at a time."""

    head: str | None = None
    tree: dict[bytes, tuple[int, int, str]] = field(default_factory=dict)  # HEAD: mode, size, sha256
    stats: dict[bytes, Entry] = field(default_factory=dict)
    written_ns: int = 0  # mtime of the index file when it was read; 0: trust nothing

    @classmethod
    def load(cls, path: Path) -> Index:
        try:
            data = path.read_bytes()
            written_ns = os.stat(path).st_mtime_ns
            payload = data[len(_MAGIC) + 32 :]
            if (
                data[: len(_MAGIC)] != _MAGIC
                or hashlib.sha256(payload).digest() != data[len(_MAGIC) : len(_MAGIC) + 32]
            ):
                return cls()  # not ours, or damaged: re-hash instead
            # marshal only ever reads bytes this code wrote (the checksum above), never foreign input.
            fmt, head, tree, stats = marshal.loads(payload)  # noqa: S302
        except (OSError, ValueError, EOFError, TypeError):
            return cls()
        if fmt != _FORMAT:
            return cls()
        return cls(head=head, tree=tree, stats=stats, written_ns=written_ns)

    def save(self, path: Path) -> None:
        payload = marshal.dumps((_FORMAT, self.head, self.tree, self.stats))
        atomic_write(path, _MAGIC + hashlib.sha256(payload).digest() + payload, durable=False)
        self.written_ns = os.stat(path).st_mtime_ns

    def head_tree(self) -> Tree:
        new = tuple.__new__
        return dict(zip(self.tree, [new(FileEntry, entry) for entry in self.tree.values()], strict=True))

    def set_head(self, head: str | None, tree: Tree) -> None:
        self.head = head
        self.tree = {path: (e.mode, e.size, e.sha256) for path, e in tree.items()}

    def cached_sha(self, path: bytes, stat: Stat) -> str | None:
        """The sha256 recorded for ``path`` if its stat is unchanged and not racy."""
        cached = self.stats.get(path)
        if cached is None or cached[:5] != stat or stat[2] >= self.written_ns:
            return None
        return cached[5]
