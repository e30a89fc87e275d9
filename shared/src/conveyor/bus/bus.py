"""One environment's broker: a robust connection and confirmed publishing."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractExchange, AbstractRobustChannel, AbstractRobustConnection

from conveyor.bus.consumer import Consumer
from conveyor.bus.errors import BrokerUnavailable, PublishFailed, PublishRefused, UnroutableMessage
from conveyor.bus.idempotency import IdempotencyStore, MemoryIdempotencyStore
from conveyor.bus.topology import (
    QueueSpec,
    declare_exchanges,
    exchange_for,
    persistent_message,
)
from conveyor.contracts import CATALOGUE, Envelope, Payload, Registry
from conveyor.observability import MESSAGES_PUBLISHED, LabelCache, get_logger
from conveyor.settings import BusSettings, redact_url

__all__ = ["Bus"]

log = get_logger(__name__)

# Failures after which the same publish may succeed once the robust
# connection has come back.
_TRANSIENT = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelClosed,
    aiormq.exceptions.DeliveryError,
    ConnectionError,
    TimeoutError,
)


class Bus:
    """Conveyor's bus in one environment.

    ``connect()`` opens a robust connection that reconnects by itself and
    restores consumers; ``publish()`` waits for the broker's confirm and, if
    the connection drops meanwhile, publishes again once it is back (at least
    once: consumers deduplicate by message id).
    """

    def __init__(
        self,
        *,
        env: str,
        url: str,
        service: str,
        settings: BusSettings | None = None,
        registry: Registry = CATALOGUE,
        idempotency: IdempotencyStore | None = None,
    ) -> None:
        self.env = env
        self.url = url
        self.service = service
        self.settings = settings or BusSettings()
        self.registry = registry
        self.idempotency = idempotency or MemoryIdempotencyStore(self.settings.idempotency_capacity)
        self.connection_name = f"{service}@{socket.gethostname()}/{env}"
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._channel_lock = asyncio.Lock()
        self._exchanges: dict[str, AbstractExchange] = {}
        self._consumers: list[Consumer] = []
        self._closing = False
        self._published = LabelCache(MESSAGES_PUBLISHED, env)

    def __repr__(self) -> str:
        return f"Bus(env={self.env!r}, url={redact_url(self.url)!r})"

    @property
    def connected(self) -> bool:
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise RuntimeError(f"{self!r} is not connected; call connect() first")
        return self._connection

    async def connect(self, *, timeout: float = 10.0) -> None:
        """Connect once (raise ``BrokerUnavailable`` naming the broker) and declare the exchanges."""
        try:
            connection = await aio_pika.connect_robust(
                self.url,
                client_properties={"connection_name": self.connection_name},
                reconnect_interval=self.settings.reconnect_interval_s,
                timeout=timeout,
            )
        except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
            raise BrokerUnavailable(
                f"cannot reach the {self.env} broker at {redact_url(self.url)}: {_describe(exc)}"
            ) from exc
        connection.reconnect_callbacks.add(self._on_reconnect)
        connection.close_callbacks.add(self._on_connection_lost)
        self._connection = connection
        await declare_exchanges(await self._publish_channel())
        log.info("broker_connected", env=self.env, broker=redact_url(self.url))

    async def connect_forever(self, *, stop: asyncio.Event | None = None) -> bool:
        """Retry ``connect()`` with backoff until it works (True) or ``stop`` is set (False)."""
        delay = self.settings.reconnect_interval_s
        while stop is None or not stop.is_set():
            try:
                await self.connect()
                return True
            except BrokerUnavailable as exc:
                log.warning("broker_unreachable", env=self.env, error=str(exc), retry_in_s=delay)
            try:
                if stop is None:
                    await asyncio.sleep(delay)
                else:
                    await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
            delay = min(delay * 2, 30.0)
        return False

    def _on_connection_lost(self, _: Any, exc: BaseException | None) -> None:
        if exc is not None and not self._closing and not isinstance(exc, asyncio.CancelledError):
            log.warning("broker_connection_lost", env=self.env, error=_describe(exc))

    def _on_reconnect(self, _: Any) -> None:
        log.info("broker_reconnected", env=self.env)

    def consumer(self, spec: QueueSpec) -> Consumer:
        consumer = Consumer(self, spec)
        self._consumers.append(consumer)
        return consumer

    async def close(self) -> None:
        """Stop every consumer (waiting for in-flight handlers), then disconnect."""
        self._closing = True
        for consumer in self._consumers:
            await consumer.stop()
        self._consumers.clear()
        if self._connection is not None:
            await self._connection.close()
            log.info("broker_disconnected", env=self.env)
        self._connection = None
        self._channel = None
        self._exchanges.clear()
        self._closing = False

    # -- publishing -----------------------------------------------------------

    async def publish(self, envelope: Envelope[Any], *, mandatory: bool = True) -> None:
        """Publish and wait for the broker's confirm.

        Raises ``UnroutableMessage`` when ``mandatory`` and nothing is bound
        for the routing key, ``PublishRefused`` on a missing exchange or
        permission, ``PublishFailed`` when no confirm came in time.
        """
        if envelope.env != self.env:
            raise ValueError(f"message for env {envelope.env!r} published on the {self.env} bus")
        message = persistent_message(
            envelope.to_json(),
            message_id=str(envelope.id),
            message_type=envelope.type,
            correlation_id=str(envelope.correlation_id),
            app_id=envelope.source,
        )
        await self.publish_raw(
            exchange_for(envelope.kind), envelope.routing_key, message, mandatory=mandatory
        )
        self._published(envelope.type).inc()

    def wrap(self, payload: Payload, **kwargs: Any) -> Envelope[Any]:
        """An envelope for this environment and service around ``payload``."""
        return Envelope.wrap(payload, env=self.env, source=self.service, **kwargs)

    async def publish_raw(
        self,
        exchange: str,
        routing_key: str,
        message: aio_pika.Message,
        *,
        mandatory: bool = True,
    ) -> None:
        deadline = time.monotonic() + self.settings.publish_timeout_s
        backoff = 0.05
        while True:
            remaining = deadline - time.monotonic()
            try:
                target = await self._exchange(exchange, remaining)
                await target.publish(message, routing_key, mandatory=mandatory, timeout=remaining)
                return
            except aiormq.exceptions.PublishError as exc:
                raise UnroutableMessage(
                    f"{self.env}: no queue is bound for {routing_key!r} on {exchange!r}; "
                    "the message was not delivered"
                ) from exc
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                raise PublishRefused(
                    f"{self.env}: exchange {exchange!r} does not exist on {redact_url(self.url)}"
                ) from exc
            except aiormq.exceptions.ChannelAccessRefused as exc:
                raise PublishRefused(
                    f"{self.env}: user may not publish to {exchange!r}: {_describe(exc)}"
                ) from exc
            except _TRANSIENT as exc:
                if time.monotonic() + backoff >= deadline:
                    raise PublishFailed(
                        f"{self.env}: no confirm for {routing_key!r} within "
                        f"{self.settings.publish_timeout_s:g}s: {_describe(exc)}"
                    ) from exc
                log.debug("publish_retry", env=self.env, routing_key=routing_key, error=_describe(exc))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 1.0)

    async def _exchange(self, name: str, timeout: float) -> AbstractExchange:
        channel = await self._publish_channel(timeout)
        exchange = self._exchanges.get(name)
        if exchange is None:
            exchange = await channel.get_exchange(name, ensure=False)
            self._exchanges[name] = exchange
        return exchange

    async def _publish_channel(self, timeout: float = 10.0) -> AbstractRobustChannel:
        """The confirming channel; a robust channel restores itself after a loss."""
        channel = self._channel
        if channel is not None and not channel.is_closed:
            return channel  # the common case, kept free of locks and timers
        async with self._channel_lock:
            if self._channel is None:
                channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
                assert isinstance(channel, AbstractRobustChannel)
                self._channel = channel
        await asyncio.wait_for(self._channel.ready(), timeout)
        return self._channel


def _describe(exc: BaseException) -> str:
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"
