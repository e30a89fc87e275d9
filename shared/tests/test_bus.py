"""The bus against a real broker: confirms, routing, retries, dead letters, duplicates."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import aio_pika
import pytest

from conveyor.bus import (
    COMMANDS_EXCHANGE,
    EVENTS_EXCHANGE,
    QueueSpec,
    UnroutableMessage,
    dead_letter_queue_name,
)
from conveyor.bus.consumer import (
    ATTEMPTS_HEADER,
    DEAD_LETTER_ERROR_HEADER,
    DEAD_LETTER_REASON_HEADER,
)
from conveyor.contracts import CATALOGUE, DriftDetected, Envelope, MessageDeadLettered, Payload
from conveyor.contracts.examples import EXAMPLES

from .conftest import FAST, BusFactory


def drift(n: int = 0) -> DriftDetected:
    return DriftDetected(node="qa-web-1", package="web", expected_version=f"v{n}", modified=[f"f{n}"])


async def collect(bus_factory: BusFactory, queue: str, model: type[Payload], *, bindings: tuple[str, ...]):
    """A consumer that puts every handled envelope on an asyncio queue."""
    received: asyncio.Queue[Envelope[Any]] = asyncio.Queue()
    bus = bus_factory(service=f"{queue}-svc")
    await bus.connect()
    consumer = bus.consumer(QueueSpec(name=queue, binding_keys=bindings))

    async def handle(envelope: Envelope[Any]) -> None:
        await received.put(envelope)

    consumer.on(model, handle)
    await consumer.start()
    return received, consumer


async def get_all(amqp_url: str, queue: str, *, expect: int, timeout: float = 10.0) -> list[Any]:
    """Drain ``expect`` messages from ``queue`` with basic.get (waiting for them to arrive)."""
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    async with await aio_pika.connect(amqp_url) as connection:
        channel = await connection.channel()
        q = await channel.get_queue(queue, ensure=True)
        while len(messages) < expect and time.monotonic() < deadline:
            message = await q.get(fail=False, no_ack=True)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            messages.append(message)
    return messages


@pytest.mark.parametrize("message_type", sorted(EXAMPLES))
async def test_every_contract_round_trips_through_the_broker(make_bus: BusFactory, message_type: str) -> None:
    example = EXAMPLES[message_type]
    bus = make_bus()
    await bus.connect()
    queue = f"roundtrip-{message_type}"
    exchange = COMMANDS_EXCHANGE if example.kind == "command" else EVENTS_EXCHANGE
    consumer = bus.consumer(QueueSpec(name=queue, exchange=exchange, binding_keys=("#",)))
    received: asyncio.Future[Envelope[Any]] = asyncio.get_running_loop().create_future()

    async def handle(envelope: Envelope[Any]) -> None:
        received.set_result(envelope)

    consumer.on(type(example), handle)
    await consumer.start()
    sent = bus.wrap(example, actor="ada")
    await bus.publish(sent)

    got = await asyncio.wait_for(received, 10)
    assert got == sent
    assert type(got.payload) is type(example)
    assert got.payload == example


async def test_unroutable_publish_raises_and_confirmed_publish_is_queued(
    make_bus: BusFactory, amqp_url: str
) -> None:
    bus = make_bus()
    await bus.connect()
    with pytest.raises(UnroutableMessage, match=r"no queue is bound for 'drift.detected'"):
        await bus.publish(bus.wrap(drift()))

    await bus.consumer(QueueSpec(name="drift-only", binding_keys=("drift.*",))).declare()
    sent = bus.wrap(drift(1))
    await bus.publish(sent)  # returns only once the broker confirmed it

    [message] = await get_all(amqp_url, "drift-only", expect=1, timeout=1)
    assert message.message_id == str(sent.id)
    assert message.type == "drift.detected"
    assert message.correlation_id == str(sent.correlation_id)
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert CATALOGUE.decode(message.body) == sent


async def test_failing_handler_is_retried_with_growing_delay_then_dead_lettered(
    make_bus: BusFactory, amqp_url: str
) -> None:
    bus = make_bus()
    await bus.connect()
    consumer = bus.consumer(QueueSpec(name="flaky", binding_keys=("drift.#",)))
    # Whoever watches the events sees the dead-letter announcement.
    watcher, _ = await collect(make_bus, "watcher", MessageDeadLettered, bindings=("message.dead_lettered",))
    poison = bus.wrap(drift(0))
    attempts: list[float] = []
    handled: list[str] = []

    async def handle(envelope: Envelope[DriftDetected]) -> None:
        if envelope.id == poison.id:
            attempts.append(time.monotonic())
            raise RuntimeError("database is down")
        handled.append(envelope.payload.expected_version)

    consumer.on(DriftDetected, handle)
    await consumer.start()
    await bus.publish(poison)
    for n in range(1, 6):
        await bus.publish(bus.wrap(drift(n)))

    announcement = await asyncio.wait_for(watcher.get(), 15)
    # Later messages flowed past the failing one long before it gave up.
    assert handled == ["v1", "v2", "v3", "v4", "v5"]
    assert len(attempts) == 4  # first try + 3 retries
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # Each retry waited at least its own, growing delay (the delay queue's TTL
    # guarantees the lower bound; a loaded machine can only add to it).
    for gap, delay in zip(gaps, [0.2, 0.4, 0.8], strict=True):
        assert delay * 0.95 <= gap < delay + 5

    dead: MessageDeadLettered = announcement.payload
    assert dead.message_id == str(poison.id)
    assert dead.reason == "retries_exhausted"
    assert dead.attempts == 4
    assert "RuntimeError: database is down" in dead.error
    assert dead.dead_letter_queue == "flaky.dead"
    assert announcement.correlation_id == poison.correlation_id
    assert announcement.causation_id == poison.id

    [parked] = await get_all(amqp_url, dead_letter_queue_name("flaky"), expect=1)
    assert parked.message_id == str(poison.id)
    assert parked.headers[DEAD_LETTER_REASON_HEADER] == "retries_exhausted"
    assert "database is down" in parked.headers[DEAD_LETTER_ERROR_HEADER]
    assert parked.headers[ATTEMPTS_HEADER] == 4
    assert CATALOGUE.decode(parked.body) == poison


async def test_same_message_id_delivered_twice_is_handled_once(make_bus: BusFactory) -> None:
    received, _ = await collect(make_bus, "dedup", DriftDetected, bindings=("drift.*",))
    bus = make_bus()
    await bus.connect()
    first = bus.wrap(drift(1))
    await bus.publish(first)
    await bus.publish(first)  # a publisher retry after a lost confirm looks like this
    await bus.publish(bus.wrap(drift(2)))

    got = [await asyncio.wait_for(received.get(), 10) for _ in range(2)]
    assert [e.payload.expected_version for e in got] == ["v1", "v2"]
    await asyncio.sleep(0.3)  # the duplicate is already settled; nothing more may arrive
    assert received.empty()


@pytest.mark.parametrize(
    ("body", "properties", "reason", "says"),
    [
        (b"\x00not json", {}, "malformed", "body is not JSON"),
        (b'["a", "list"]', {}, "malformed", "expected an object"),
        (b"{}", {"message_id": "abc"}, "malformed", "id: Field required"),
        ("unknown", {}, "unknown_type", "unknown message type 'drift.renamed'"),
        ("version", {}, "unsupported_schema_version", "schema v9 is not supported"),
        ("payload", {}, "invalid_payload", "expected_version"),
    ],
)
async def test_malformed_bodies_are_dead_lettered_with_a_reason(
    make_bus: BusFactory, amqp_url: str, body: Any, properties: dict[str, str], reason: str, says: str
) -> None:
    received, _ = await collect(make_bus, "strict", DriftDetected, bindings=("drift.#",))
    watcher, _ = await collect(make_bus, "watcher", MessageDeadLettered, bindings=("message.#",))
    bus = make_bus()
    await bus.connect()
    good = json.loads(bus.wrap(drift(1)).to_json())
    if body == "unknown":
        body = json.dumps({**good, "type": "drift.renamed"}).encode()
    elif body == "version":
        body = json.dumps({**good, "schema_version": 9}).encode()
    elif body == "payload":
        body = json.dumps({**good, "payload": {**good["payload"], "expected_version": ""}}).encode()

    message = aio_pika.Message(body, **properties)  # type: ignore[arg-type]
    await bus.publish_raw(EVENTS_EXCHANGE, "drift.detected", message)
    after = bus.wrap(drift(2))
    await bus.publish(after)

    # The consumer is still alive and handles what comes next.
    assert (await asyncio.wait_for(received.get(), 10)).id == after.id
    announcement = await asyncio.wait_for(watcher.get(), 10)
    assert announcement.payload.reason == reason
    assert says in announcement.payload.error
    assert announcement.payload.attempts == 1
    [parked] = await get_all(amqp_url, "strict.dead", expect=1)
    assert parked.body == body
    assert parked.headers[DEAD_LETTER_REASON_HEADER] == reason
    if properties.get("message_id"):
        assert announcement.payload.message_id == "abc"


async def test_stop_lets_in_flight_handlers_finish_and_returns_the_rest(
    make_bus: BusFactory, amqp_url: str
) -> None:
    bus = make_bus()
    await bus.connect()
    consumer = bus.consumer(QueueSpec(name="slow", binding_keys=("drift.*",)))
    all_started = asyncio.Event()
    release = asyncio.Event()
    running: list[str] = []
    finished: list[str] = []

    async def handle(envelope: Envelope[DriftDetected]) -> None:
        running.append(envelope.payload.expected_version)
        if len(running) == 5:  # prefetch lets all five start
            all_started.set()
        await release.wait()
        finished.append(envelope.payload.expected_version)

    consumer.on(DriftDetected, handle)
    await consumer.start()
    for n in range(5):
        await bus.publish(bus.wrap(drift(n)))
    await asyncio.wait_for(all_started.wait(), 10)
    assert consumer.in_flight == 5

    stopping = asyncio.create_task(consumer.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done(), "stop() must wait for the handlers in flight"
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert sorted(finished) == ["v0", "v1", "v2", "v3", "v4"]
    # Every handled message was acked: nothing is left to redeliver.
    assert await get_all(amqp_url, "slow", expect=1, timeout=0.5) == []


async def test_handler_still_running_after_the_grace_period_is_not_acked(
    make_bus: BusFactory, amqp_url: str
) -> None:
    bus = make_bus(settings=FAST.model_copy(update={"shutdown_grace_s": 0.3}))
    await bus.connect()
    consumer = bus.consumer(QueueSpec(name="stuck", binding_keys=("drift.*",)))
    started = asyncio.Event()

    async def handle(envelope: Envelope[DriftDetected]) -> None:
        started.set()
        await asyncio.Event().wait()  # never finishes

    consumer.on(DriftDetected, handle)
    await consumer.start()
    sent = bus.wrap(drift(7))
    await bus.publish(sent)
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.wait_for(consumer.stop(), 10)

    # The unfinished message went back to the queue, whole.
    [message] = await get_all(amqp_url, "stuck", expect=1)
    assert message.message_id == str(sent.id)
    assert message.redelivered
