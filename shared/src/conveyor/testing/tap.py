"""A test's ear on the bus: a private queue bound to an exchange, decoding every message.

    async with EventTap(amqp_url, ["changeset.#"]) as tap:
        ...  # act
        created = await tap.expect(ChangesetCreated, lambda e: e.payload.package == "web")

Bind before acting: a topic exchange drops what no queue is bound for.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Self, TypeVar

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from conveyor.bus import EVENTS_EXCHANGE
from conveyor.contracts import CATALOGUE, Envelope, Payload

__all__ = ["EventTap"]

P = TypeVar("P", bound=Payload)


class EventTap:
    """Every message routed to ``keys`` on ``exchange`` after entering, in arrival order."""

    def __init__(self, url: str, keys: Sequence[str], *, exchange: str = EVENTS_EXCHANGE) -> None:
        self.url = url
        self.keys = list(keys)
        self.exchange = exchange
        self.seen: list[Envelope[Any]] = []
        self._arrived = asyncio.Condition()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None

    async def __aenter__(self) -> Self:
        self._connection = await aio_pika.connect_robust(
            self.url, client_properties={"connection_name": "conveyor-event-tap"}
        )
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in self.keys:
            await queue.bind(exchange, key)
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        envelope = CATALOGUE.decode(message.body)
        async with self._arrived:
            self.seen.append(envelope)
            self._arrived.notify_all()

    def of(self, model: type[P], where: Callable[[Envelope[P]], bool] | None = None) -> list[Envelope[P]]:
        return [e for e in self.seen if isinstance(e.payload, model) and (where is None or where(e))]

    async def expect(
        self,
        model: type[P],
        where: Callable[[Envelope[P]], bool] | None = None,
        *,
        timeout: float = 30.0,
        count: int = 1,
    ) -> Envelope[P]:
        """The ``count``-th matching message (already seen or still to come)."""
        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(lambda: len(self.of(model, where)) >= count)
        except TimeoutError:
            seen = ", ".join(e.type for e in self.seen[-20:]) or "nothing"
            raise AssertionError(f"no {model.message_type} within {timeout}s; seen: {seen}") from None
        return self.of(model, where)[count - 1]

    async def caused_by(self, cause: Envelope[Any], *, timeout: float = 30.0) -> Envelope[Any]:
        """The first message caused by ``cause`` (a command's reply, say)."""
        try:
            async with asyncio.timeout(timeout), self._arrived:
                await self._arrived.wait_for(lambda: any(e.causation_id == cause.id for e in self.seen))
        except TimeoutError:
            raise AssertionError(f"nothing caused by {cause.type} {cause.id} within {timeout}s") from None
        return next(e for e in self.seen if e.causation_id == cause.id)
