"""What the listener keeps on disk so that nothing is lost across restarts and broker outages.

``<state_dir>/outbox/``    events waiting for the broker's confirm, one JSON file each
                           (:class:`conveyor.bus.outbox.Outbox`)
``<state_dir>/commands/``  the reply sent for each command, a redelivery gets the same answer
                           (:class:`conveyor.bus.journal.Journal`)
``<state_dir>/marks/``     small facts: the last version shipped per source package, the last
                           drift reported per target package
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from conveyor.observability import get_logger
from conveyor.pkgvcs.storage import atomic_write

__all__ = ["Marks"]

log = get_logger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Marks:
    """Small named values, one file each, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, name: str) -> Path:
        if not _SAFE.fullmatch(name):
            raise ValueError(f"bad mark name {name!r}")
        return self.directory / name

    def get(self, name: str) -> str | None:
        try:
            return self._path(name).read_text().strip() or None
        except FileNotFoundError:
            return None

    def set(self, name: str, value: str | None) -> None:
        path = self._path(name)
        if value is None:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                fd = os.open(self.directory, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        else:
            atomic_write(path, f"{value}\n".encode())
