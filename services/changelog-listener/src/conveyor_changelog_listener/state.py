"""What the listener keeps on disk so that nothing is lost across restarts and broker outages.

``<state_dir>/outbox/``    events waiting for the broker's confirm, one JSON file each
``<state_dir>/commands/``  the reply sent for each command (a redelivery gets the same answer)
``<state_dir>/marks/``     small facts: the last version shipped per source package, the last
                           drift reported per target package
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import Any

from conveyor.contracts import CATALOGUE, ContractError, Envelope
from conveyor.observability import get_logger
from conveyor.pkgvcs.storage import atomic_write

__all__ = ["Journal", "Marks"]

log = get_logger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Journal:
    """The reply given to each command, by command message id."""

    def __init__(self, directory: Path, *, keep_days: float = 14.0) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - keep_days * 86_400
        for path in directory.iterdir():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    def get(self, command_id: str) -> Envelope[Any] | None:
        try:
            return CATALOGUE.decode((self.directory / f"{command_id}.json").read_bytes())
        except FileNotFoundError:
            return None
        except ContractError as exc:
            log.error("journal_entry_unreadable", command_id=command_id, error=str(exc))
            return None

    def record(self, command_id: str, reply: Envelope[Any]) -> None:
        atomic_write(self.directory / f"{command_id}.json", reply.to_json())


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
