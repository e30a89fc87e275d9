"""What the version-db consumes: every event of every environment, to record it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conveyor.bus import Consumer, QueueSpec
from conveyor.contracts import CATALOGUE, Envelope, MessageKind
from conveyor.observability import get_logger
from conveyor_version_db.config import Settings
from conveyor_version_db.service import RECORDERS, record

__all__ = ["QUEUE", "queues", "recording_handlers"]

QUEUE = "version-db.events"
MAX_BACKOFF_S = 15.0

log = get_logger(__name__)


def queues(settings: Settings, env: str) -> list[QueueSpec]:
    """Bound to every event type of Conveyor's catalogue (an event's routing key is its type), not
    to ``#``: events other applications publish on the exchange are not Conveyor's to record, and
    would be dead-lettered as unknown types."""
    del settings, env
    types = sorted(m.message_type for m in CATALOGUE if m.kind is MessageKind.EVENT)
    return [QueueSpec(name=QUEUE, binding_keys=tuple(types))]


def recording_handlers(sessions: async_sessionmaker[AsyncSession]) -> Callable[[Consumer], None]:
    """One handler per event type; each applies the event and its inbox row in one transaction.

    The bus acks only after the handler returned, i.e. after the commit. While
    the database is unreachable the handler waits and tries again (the message
    stays unacked); any other failure goes through the bus's retries and, in the
    end, its dead-letter queue. The inbox makes a redelivery after a lost ack a
    no-op.
    """

    async def handle(envelope: Envelope[Any]) -> None:
        delay = 0.5
        while True:
            try:
                async with sessions() as session, session.begin():
                    applied = await record(session, envelope)
                break
            except (OperationalError, InterfaceError) as exc:
                # The database is unreachable or dropped us (or a lock timed out):
                # wait for it rather than spend the message's retries on an outage.
                # The message stays unacked meanwhile; prefetch bounds how many wait.
                log.warning("database_unavailable", error=str(exc.orig or exc)[:300], retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
        if not applied:
            log.info("event_already_recorded", message_id=str(envelope.id), type=envelope.type)

    def register(consumer: Consumer) -> None:
        for model in RECORDERS:
            consumer.on(model, handle)

    return register
