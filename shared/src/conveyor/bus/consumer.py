"""Consuming one queue: typed dispatch, idempotency, retries and dead-lettering."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import aiormq.exceptions
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustChannel

from conveyor.bus.errors import BusError, UnroutableMessage
from conveyor.bus.topology import (
    DEAD_LETTER_EXCHANGE,
    EVENTS_EXCHANGE,
    RETRY_EXCHANGE,
    QueueSpec,
    dead_letter_queue_name,
    declare_queue,
    delay_queue_name,
    persistent_message,
)
from conveyor.contracts import ContractError, Envelope, MessageDeadLettered, Payload
from conveyor.contracts.catalogue import DeadLetterReason
from conveyor.observability import (
    HANDLER_SECONDS,
    MESSAGES_CONSUMED,
    MESSAGES_DEAD_LETTERED,
    MESSAGES_RETRIED,
    LabelCache,
    get_logger,
)

if TYPE_CHECKING:
    from conveyor.bus.bus import Bus

__all__ = [
    "ATTEMPTS_HEADER",
    "DEAD_LETTER_ERROR_HEADER",
    "DEAD_LETTER_REASON_HEADER",
    "Consumer",
    "Handler",
]

log = get_logger(__name__)

P = TypeVar("P", bound=Payload)
Handler = Callable[[Envelope[P]], Awaitable[None]]

ATTEMPTS_HEADER = "x-conveyor-attempts"
LAST_ERROR_HEADER = "x-conveyor-last-error"
DEAD_LETTER_REASON_HEADER = "x-conveyor-dead-letter-reason"
DEAD_LETTER_ERROR_HEADER = "x-conveyor-dead-letter-error"
ORIGINAL_ROUTING_KEY_HEADER = "x-conveyor-original-routing-key"

_SETTLE_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
)


class Consumer:
    """Handles one queue with one typed handler per message type.

    A message is acked only after its handler returned, or after a copy of it
    was confirmed into a delay queue (retry) or the dead-letter queue. Handlers
    run as this consumer's own tasks: a lost connection does not cancel them,
    and ``stop()`` lets them finish.
    """

    def __init__(self, bus: Bus, spec: QueueSpec) -> None:
        self.bus = bus
        self.spec = spec
        self._handlers: dict[str, Callable[[Envelope[Any]], Awaitable[None]]] = {}
        self._channel: AbstractRobustChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        labels = (bus.env, spec.name)
        self._consumed = LabelCache(MESSAGES_CONSUMED, *labels)
        self._retried = LabelCache(MESSAGES_RETRIED, *labels)
        self._dead_lettered = LabelCache(MESSAGES_DEAD_LETTERED, *labels)
        self._handler_seconds = LabelCache(HANDLER_SECONDS, *labels)

    def on(self, model: type[P], handler: Handler[P]) -> None:
        """Route messages of ``model``'s type to ``handler``."""
        if model.message_type in self._handlers:
            raise ValueError(f"{self.spec.name} already has a handler for {model.message_type}")
        self._handlers[model.message_type] = handler

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def running(self) -> bool:
        return self._consumer_tag is not None and not self._stopping

    async def declare(self) -> AbstractQueue:
        """Declare the queue and its retry/dead-letter companions without consuming."""
        if self._channel is None:
            channel = await self.bus.connection.channel()
            assert isinstance(channel, AbstractRobustChannel)
            await channel.set_qos(prefetch_count=self.bus.settings.prefetch)
            self._channel = channel
        settings = self.bus.settings
        self._queue = await declare_queue(
            self._channel,
            self.spec,
            retry_delays_s=settings.retry_delays_s,
            delivery_limit=settings.delivery_limit,
        )
        return self._queue

    async def start(self) -> None:
        if not self._handlers:
            raise RuntimeError(f"{self.spec.name}: register a handler with on() before start()")
        queue = self._queue or await self.declare()
        self._stopping = False
        self._consumer_tag = await queue.consume(self._on_message)
        log.info("consumer_started", env=self.bus.env, queue=self.spec.name, types=sorted(self._handlers))

    async def stop(self) -> None:
        """Stop taking deliveries, let in-flight handlers finish, then close the channel.

        Messages delivered but not yet started are returned to the queue
        unacknowledged; after ``shutdown_grace_s`` still-running handlers are
        cancelled and their messages, never acked, are redelivered later.
        """
        if self._channel is None:
            return
        self._stopping = True
        if self._consumer_tag is not None and self._queue is not None and not self._channel.is_closed:
            try:
                await self._queue.cancel(self._consumer_tag)
            except _SETTLE_ERRORS as exc:
                log.warning("consumer_cancel_failed", queue=self.spec.name, error=str(exc))
        self._consumer_tag = None
        if self._tasks:
            log.info("consumer_draining", queue=self.spec.name, in_flight=len(self._tasks))
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.bus.settings.shutdown_grace_s)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("consumer_handlers_abandoned", queue=self.spec.name, count=len(pending))
                await asyncio.wait(pending)
        await self._channel.close()
        self._channel = None
        self._queue = None
        log.info("consumer_stopped", env=self.bus.env, queue=self.spec.name)

    # -- one delivery ---------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._stopping:
            await self._settle(message, requeue=True)
            return
        # Our own task, not aio-pika's delivery task: closing a channel cancels
        # the latter, and a broker blip must not interrupt a handler half-way.
        task = asyncio.create_task(self._handle(message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        env, queue = self.bus.env, self.spec.name
        attempt = _attempts(message) + 1
        try:
            envelope = self.bus.registry.decode(message.body)
        except ContractError as exc:
            # Only known types become label values: the wire must not grow the metric's cardinality.
            known_type = message.type if message.type and message.type in self.bus.registry else "unknown"
            self._consumed(known_type, "rejected").inc()
            await self._dead_letter(
                message,
                reason=DeadLetterReason(exc.reason),
                error=exc.detail,
                attempts=attempt,
                message_id=exc.message_id or message.message_id,
                original_type=message.type,
                correlation=None,
            )
            return

        handler = self._handlers.get(envelope.type)
        if handler is None:
            self._consumed(envelope.type, "ignored").inc()
            log.debug("message_ignored", queue=queue, type=envelope.type, message_id=str(envelope.id))
            await self._settle(message)
            return

        key = f"{queue}:{envelope.id}"
        if not await self.bus.idempotency.begin(key):
            self._consumed(envelope.type, "duplicate").inc()
            log.info("message_duplicate", queue=queue, type=envelope.type, message_id=str(envelope.id))
            await self._settle(message)
            return

        # Each delivery runs in its own task, hence its own copy of the
        # context: what is bound here ends with the task, no reset needed.
        structlog.contextvars.bind_contextvars(
            env=env,
            queue=queue,
            message_id=str(envelope.id),
            message_type=envelope.type,
            correlation_id=str(envelope.correlation_id),
        )
        started = time.perf_counter()
        try:
            await handler(envelope)
        except Exception as exc:  # noqa: BLE001 - any handler failure is retried, then parked
            await self.bus.idempotency.abandon(key)
            self._handler_seconds(envelope.type).observe(time.perf_counter() - started)
            await self._retry_or_dead_letter(message, envelope, exc, attempt)
            return
        except BaseException:
            await self.bus.idempotency.abandon(key)
            raise
        await self.bus.idempotency.complete(key)
        self._handler_seconds(envelope.type).observe(time.perf_counter() - started)
        self._consumed(envelope.type, "handled").inc()
        await self._settle(message)

    async def _retry_or_dead_letter(
        self,
        message: AbstractIncomingMessage,
        envelope: Envelope[Any],
        exc: Exception,
        attempt: int,
    ) -> None:
        queue = self.spec.name
        error = f"{type(exc).__name__}: {exc}"[:2000]
        delays = self.bus.settings.retry_delays_s
        if attempt > len(delays):
            self._consumed(envelope.type, "failed").inc()
            await self._dead_letter(
                message,
                reason=DeadLetterReason.RETRIES_EXHAUSTED,
                error=error,
                attempts=attempt,
                message_id=str(envelope.id),
                original_type=envelope.type,
                correlation=envelope,
            )
            return
        delay = delays[attempt - 1]
        log.warning("handler_failed_will_retry", attempt=attempt, retry_in_s=delay, error=error, exc_info=exc)
        retry = persistent_message(
            message.body,
            message_id=message.message_id,
            message_type=message.type,
            correlation_id=message.correlation_id,
            app_id=message.app_id,
            headers={
                **(message.headers or {}),
                ATTEMPTS_HEADER: attempt,
                LAST_ERROR_HEADER: error[:500],
                ORIGINAL_ROUTING_KEY_HEADER: _original_routing_key(message),
            },
        )
        try:
            await self.bus.publish_raw(RETRY_EXCHANGE, delay_queue_name(queue, delay), retry)
        except BusError as publish_error:
            log.error("retry_publish_failed", error=str(publish_error))
            await self._settle(message, requeue=True)
            return
        self._consumed(envelope.type, "retried").inc()
        self._retried(envelope.type).inc()
        await self._settle(message)

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        *,
        reason: DeadLetterReason,
        error: str,
        attempts: int,
        message_id: str | None,
        original_type: str | None,
        correlation: Envelope[Any] | None,
    ) -> None:
        """Park the message with why it failed, announce it, then ack it."""
        queue = self.spec.name
        routing_key = _original_routing_key(message)
        parked = persistent_message(
            message.body,
            message_id=message.message_id,
            message_type=message.type,
            correlation_id=message.correlation_id,
            app_id=message.app_id,
            headers={
                **(message.headers or {}),
                ATTEMPTS_HEADER: attempts,
                DEAD_LETTER_REASON_HEADER: reason.value,
                DEAD_LETTER_ERROR_HEADER: error[:2000],
                ORIGINAL_ROUTING_KEY_HEADER: routing_key,
            },
        )
        try:
            await self.bus.publish_raw(DEAD_LETTER_EXCHANGE, queue, parked)
        except BusError as publish_error:
            log.error("dead_letter_publish_failed", queue=queue, error=str(publish_error))
            await self._settle(message, requeue=True)
            return
        self._dead_lettered(reason.value).inc()
        log.error(
            "message_dead_lettered",
            queue=queue,
            reason=reason.value,
            error=error,
            attempts=attempts,
            message_id=message_id,
            message_type=original_type,
        )
        await self._announce_dead_letter(
            MessageDeadLettered(
                message_id=message_id,
                original_type=original_type,
                queue=queue,
                dead_letter_queue=dead_letter_queue_name(queue),
                reason=reason,
                error=error[:2000] or reason.value,
                attempts=attempts,
                original_routing_key=routing_key,
                dead_lettered_at=datetime.now(UTC),
            ),
            correlation,
        )
        await self._settle(message)

    async def _announce_dead_letter(
        self, payload: MessageDeadLettered, correlation: Envelope[Any] | None
    ) -> None:
        event: Envelope[Any]
        if correlation is not None:
            event = correlation.follow_up(payload, source=self.bus.service)
        else:
            event = self.bus.wrap(payload, causation_id=_uuid_or_none(payload.message_id))
        try:
            await self.bus.publish(event)
        except UnroutableMessage:
            log.warning("dead_letter_event_unroutable", exchange=EVENTS_EXCHANGE, queue=self.spec.name)
        except BusError as exc:
            # The message itself is parked; only the announcement is missing.
            log.error("dead_letter_event_failed", error=str(exc))

    async def _settle(self, message: AbstractIncomingMessage, *, requeue: bool = False) -> None:
        """Ack (or requeue); if the channel is gone the broker redelivers, which is safe."""
        try:
            if requeue:
                await message.nack(requeue=True)
            else:
                await message.ack()
        except _SETTLE_ERRORS as exc:
            log.warning("settle_failed_will_redeliver", queue=self.spec.name, error=str(exc))


def _attempts(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(ATTEMPTS_HEADER, 0)
    return value if isinstance(value, int) and value >= 0 else 0


def _original_routing_key(message: AbstractIncomingMessage) -> str:
    value = (message.headers or {}).get(ORIGINAL_ROUTING_KEY_HEADER)
    return value if isinstance(value, str) else (message.routing_key or "")


def _uuid_or_none(value: str | None) -> UUID | None:
    try:
        return UUID(value) if value else None
    except ValueError:
        return None
