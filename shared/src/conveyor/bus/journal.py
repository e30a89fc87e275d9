"""The reply an agent gave to each command, kept on disk: a redelivered command (the broker redelivers
after a crash or a lost connection) gets the same answer again instead of being acted on twice.

One JSON file per command message id in a directory; entries older than ``keep_days`` are dropped
when the journal opens.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from conveyor.bus.outbox import Outbox
from conveyor.contracts import CATALOGUE, ContractError, Envelope, Payload
from conveyor.observability import get_logger
from conveyor.pkgvcs.storage import atomic_write

__all__ = ["Journal", "answer_once"]

log = get_logger(__name__)


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


async def answer_once(
    journal: Journal,
    outbox: Outbox,
    envelope: Envelope[Any],
    act: Callable[[], Awaitable[Payload]],
    *,
    source: str,
    publish_timeout_s: float,
) -> Payload | None:
    """Answer a command exactly once: a redelivery gets the recorded reply again without ``act``
    running; otherwise ``act`` runs, its outcome is recorded as the reply first, then sent through the
    outbox. Returns the new outcome, or None for a redelivery. Either way the outbox is drained (up to
    ``publish_timeout_s``) before returning, so the reply is out before the broker gets its ack."""
    known = journal.get(str(envelope.id))
    outcome: Payload | None = None
    if known is not None:
        log.info("command_already_answered", command_id=str(envelope.id), reply=known.type)
        outbox.put(known)
    else:
        outcome = await act()
        reply = envelope.follow_up(outcome, source=source)
        journal.record(str(envelope.id), reply)  # first: a redelivery then repeats this reply
        outbox.put(reply)
    await outbox.drain(publish_timeout_s)
    return outcome
