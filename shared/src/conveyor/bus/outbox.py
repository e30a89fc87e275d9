"""An outbox on disk: events are written here first and published from here.

A broker outage delays them, a restart does not lose them; they go out in
the order they were put. One directory per environment's bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from conveyor.bus.bus import Bus
from conveyor.bus.errors import UnroutableMessage
from conveyor.contracts import CATALOGUE, ContractError, Envelope
from conveyor.observability import get_logger
from conveyor.pkgvcs.storage import atomic_write

__all__ = ["Outbox"]

log = get_logger(__name__)


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
