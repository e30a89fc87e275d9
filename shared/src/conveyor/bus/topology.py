"""Exchanges and queues, named once; declaring them is idempotent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractQueue, ExchangeType

from conveyor.contracts import MessageKind

__all__ = [
    "COMMANDS_EXCHANGE",
    "DEAD_LETTER_EXCHANGE",
    "EVENTS_EXCHANGE",
    "RETRY_EXCHANGE",
    "QueueSpec",
    "dead_letter_queue_name",
    "declare_exchanges",
    "declare_queue",
    "delay_queue_name",
    "exchange_for",
]

EVENTS_EXCHANGE = "conveyor.events"
COMMANDS_EXCHANGE = "conveyor.commands"
RETRY_EXCHANGE = "conveyor.retry"
DEAD_LETTER_EXCHANGE = "conveyor.dead-letter"


def exchange_for(kind: MessageKind) -> str:
    return EVENTS_EXCHANGE if kind is MessageKind.EVENT else COMMANDS_EXCHANGE


@dataclass(frozen=True, kw_only=True)
class QueueSpec:
    """One consuming service's durable queue and what is bound to it.

    ``binding_keys`` are topic patterns on ``exchange`` (``changeset.*``,
    ``firewall.*.qa-web-1``, ``#``).
    """

    name: str
    exchange: str = EVENTS_EXCHANGE
    binding_keys: tuple[str, ...] = ("#",)

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 200:
            raise ValueError(f"queue name {self.name!r} must be 1 to 200 characters")
        if self.exchange not in (EVENTS_EXCHANGE, COMMANDS_EXCHANGE):
            raise ValueError(
                f"queues bind to {EVENTS_EXCHANGE} or {COMMANDS_EXCHANGE}, not {self.exchange!r}"
            )
        if not self.binding_keys:
            raise ValueError(f"queue {self.name} needs at least one binding key")


def delay_queue_name(queue: str, delay_s: float) -> str:
    """Named by its delay, so a new retry schedule never conflicts with an old queue."""
    return f"{queue}.delay.{round(delay_s * 1000)}ms"


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dead"


async def declare_exchanges(channel: AbstractChannel) -> None:
    for name in (EVENTS_EXCHANGE, COMMANDS_EXCHANGE):
        await channel.declare_exchange(name, ExchangeType.TOPIC, durable=True)
    for name in (RETRY_EXCHANGE, DEAD_LETTER_EXCHANGE):
        await channel.declare_exchange(name, ExchangeType.DIRECT, durable=True)


async def declare_queue(
    channel: AbstractChannel,
    spec: QueueSpec,
    *,
    retry_delays_s: list[float],
    delivery_limit: int,
) -> AbstractQueue:
    """The consumer's quorum queue, its dead-letter queue and one delay queue per retry delay.

    Retries go through ``conveyor.retry`` into a delay queue whose TTL sends
    them back to the consumer's queue only (through the default exchange), so
    other consumers bound to the same key never see a retry. The broker's
    ``x-delivery-limit`` dead-letters a message that keeps crashing its
    consumer before it can even be retried.
    """
    await declare_exchanges(channel)
    dead_name = dead_letter_queue_name(spec.name)
    dead = await channel.declare_queue(dead_name, durable=True, arguments={"x-queue-type": "quorum"})
    await dead.bind(DEAD_LETTER_EXCHANGE, routing_key=spec.name)

    for delay in sorted(set(retry_delays_s)):
        name = delay_queue_name(spec.name, delay)
        arguments: dict[str, Any] = {
            "x-queue-type": "quorum",
            "x-message-ttl": round(delay * 1000),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": spec.name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }
        delay_queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        await delay_queue.bind(RETRY_EXCHANGE, routing_key=name)

    queue = await channel.declare_queue(
        spec.name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": spec.name,
        },
    )
    for key in spec.binding_keys:
        await queue.bind(spec.exchange, routing_key=key)
    return queue


def persistent_message(
    body: bytes,
    *,
    message_id: str | None,
    message_type: str | None,
    correlation_id: str | None,
    app_id: str | None,
    headers: dict[str, Any] | None = None,
) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        type=message_type,
        correlation_id=correlation_id,
        app_id=app_id,
        headers=headers or {},
    )
