"""Conveyor's RabbitMQ bus: topology, confirmed publishing, reliable consuming."""

from conveyor.bus.bus import Bus
from conveyor.bus.consumer import Consumer, Handler
from conveyor.bus.errors import (
    BrokerUnavailable,
    BusError,
    PublishFailed,
    PublishRefused,
    UnroutableMessage,
)
from conveyor.bus.idempotency import IdempotencyStore, MemoryIdempotencyStore
from conveyor.bus.topology import (
    COMMANDS_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    EVENTS_EXCHANGE,
    RETRY_EXCHANGE,
    QueueSpec,
    dead_letter_queue_name,
    delay_queue_name,
)

__all__ = [
    "COMMANDS_EXCHANGE",
    "DEAD_LETTER_EXCHANGE",
    "EVENTS_EXCHANGE",
    "RETRY_EXCHANGE",
    "BrokerUnavailable",
    "Bus",
    "BusError",
    "Consumer",
    "Handler",
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "PublishFailed",
    "PublishRefused",
    "QueueSpec",
    "UnroutableMessage",
    "dead_letter_queue_name",
    "delay_queue_name",
]
