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
NOT_FOR_PEOPLE = frozenset({"node.heartbeat"})
"""Events nobody is notified of: not bound, and dropped if one arrives all the same."""


def queues(settings: Settings, env: str) -> list[QueueSpec]:
    """One queue per environment, bound to every event type people may hear of (an event's routing key
    is its type)."""
    del settings, env
    types = sorted(
        m.message_type
        for m in CATALOGUE
        if m.kind is MessageKind.EVENT and m.message_type not in NOT_FOR_PEOPLE
    )
    return [QueueSpec(name=QUEUE, binding_keys=tuple(types))]


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

    async def drop(envelope: Envelope[Any]) -> None:
        del envelope

    def register(consumer: Consumer) -> None:
        for model in CATALOGUE:
            if model.kind is MessageKind.EVENT:
                consumer.on(model, drop if model.message_type in NOT_FOR_PEOPLE else handle)

    return register
