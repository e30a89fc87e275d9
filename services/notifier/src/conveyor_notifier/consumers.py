"""What the notifier consumes: every event of every environment, to route it to people."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError

from conveyor.bus import Consumer, QueueSpec
from conveyor.contracts import CATALOGUE, Envelope, MessageKind
from conveyor.observability import get_logger
from conveyor_notifier.config import Settings
from conveyor_notifier.service import Notifier

__all__ = ["QUEUE", "event_handlers", "queues"]

log = get_logger(__name__)

QUEUE = "notifier.events"
MAX_BACKOFF_S = 30.0


def queues(settings: Settings, env: str) -> list[QueueSpec]:
    del settings, env
    return [QueueSpec(name=QUEUE, binding_keys=("#",))]


def event_handlers(notifier: Notifier) -> Callable[[Consumer], None]:
    """Every event type of the catalogue; the event is in the database before the broker gets its ack.
    While the database is unreachable the handler waits (the message stays unacked)."""

    async def handle(envelope: Envelope[Any]) -> None:
        delay = 0.5
        while True:
            try:
                await notifier.on_event(envelope)
                return
            except (OperationalError, InterfaceError) as exc:
                log.warning("database_unavailable", error=str(exc.orig or exc)[:300], retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    def register(consumer: Consumer) -> None:
        for model in CATALOGUE:
            if model.kind is MessageKind.EVENT:
                consumer.on(model, handle)

    return register
