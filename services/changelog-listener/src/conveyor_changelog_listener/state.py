"""What the listener keeps on disk so that nothing is lost across restarts and broker outages.

``<state_dir>/outbox/``    events waiting for the broker's confirm, one JSON file each
``<state_dir>/commands/``  the reply sent for each command (a redelivery gets the same answer)
``<state_dir>/marks/``     small facts: the last version shipped per source package, the last
                           drift reported per target package
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from pathlib import Path
from typing import Any

from conveyor.bus import Bus, UnroutableMessage
from conveyor.contracts import CATALOGUE, ContractError, Envelope
from conveyor.observability import get_logger
from conveyor.pkgvcs.storage import atomic_write

__all__ = ["Journal", "Marks", "Outbox"]

log = get_logger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class Outbox:
    """Events are written here first and published from here: a broker outage delays them,
    a restart does not lose them. Published in the order they were put."""

    def __init__(self, directory: Path, bus: Bus, *, retry_s: float = 2.0) -> None:
        self.directory = directory
        self.bus = bus
        self.retry_s = retry_s
        self._wake = asyncio.Event()
        self._publishing = asyncio.Lock()  # the runner and drain() never send the same file twice at once
        self._sequence = 0
        directory.mkdir(parents=True, exist_ok=True)

    def put(self, envelope: Envelope[Any]) -> None:
        """Durable before it returns; the publisher picks it up at once."""
        self._sequence += 1
        name = f"{time.time_ns():020d}-{self._sequence:06d}-{envelope.id}.json"
        atomic_write(self.directory / name, envelope.to_json())
        self._wake.set()

    def pending(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.suffix == ".json")

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            if await self._send_pending(stop):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 5.0)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_s)

    async def drain(self, timeout: float) -> int:
        """Publish what is pending within ``timeout`` (at shutdown); returns how many are left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._send_pending(asyncio.Event())
        return len(self.pending())

    async def _send_pending(self, stop: asyncio.Event) -> bool:
        """Publish in order until one fails; True when nothing is left."""
        async with self._publishing:
            for path in self.pending():
                if not await self._publish(path, stop):
                    return False
        return True

    async def _publish(self, path: Path, stop: asyncio.Event) -> bool:
        envelope = _load(path)
        if envelope is None:
            return True
        try:
            await self.bus.publish(envelope)
        except UnroutableMessage:
            log.warning("event_unroutable", type=envelope.type, message_id=str(envelope.id))
        except Exception as exc:  # noqa: BLE001 - broker trouble of any kind: keep it, try again later
            if not stop.is_set():
                log.warning("outbox_publish_failed", type=envelope.type, error=str(exc)[:300])
            return False
        _remove(path)
        return True


def _load(path: Path) -> Envelope[Any] | None:
    try:
        return CATALOGUE.decode(path.read_bytes())
    except (ContractError, OSError) as exc:
        log.error("outbox_entry_unreadable", file=path.name, error=str(exc))
        with contextlib.suppress(OSError):
            path.rename(path.with_suffix(".bad"))  # kept for a person to look at, out of the way
        return None


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


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
