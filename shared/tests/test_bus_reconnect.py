"""The bus survives the broker closing its connections in the middle of a stream."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any
from urllib.parse import quote

import pytest

from conveyor.bus import QueueSpec
from conveyor.contracts import DriftDetected, Envelope
from conveyor.testing.services import RabbitEndpoint

from .conftest import BusFactory

TOTAL = 1_000


def kill_connections(rabbit: RabbitEndpoint, vhost: str) -> list[str]:
    """Force-close every client connection of ``vhost`` through the management API."""
    with rabbit.admin() as admin:
        connections = admin.get(f"/api/vhosts/{quote(vhost, safe='')}/connections").json()
        names = [c["name"] for c in connections]
        for name in names:
            admin.delete(
                f"/api/connections/{quote(name, safe='')}",
                headers={"X-Reason": "test: force-closed mid-stream"},
            )
    return names


async def wait_for_connections(rabbit: RabbitEndpoint, vhost: str, count: int) -> None:
    while True:
        with rabbit.admin() as admin:
            connections = admin.get(f"/api/vhosts/{quote(vhost, safe='')}/connections").json()
        if len(connections) >= count:
            return
        await asyncio.sleep(0.1)


@pytest.mark.timeout(120)
async def test_force_closed_connections_lose_nothing_and_duplicate_nothing(
    make_bus: BusFactory, rabbit: RabbitEndpoint, vhost: str
) -> None:
    consumer_bus = make_bus(service="consumer")
    publisher_bus = make_bus(service="publisher")
    await consumer_bus.connect()
    await publisher_bus.connect()
    consumer = consumer_bus.consumer(QueueSpec(name="stream", binding_keys=("drift.*",)))
    handled: Counter[str] = Counter()
    done = asyncio.Event()

    async def handle(envelope: Envelope[DriftDetected]) -> None:
        await asyncio.sleep(0.001)  # a little work, so deliveries are in flight when the link drops
        handled[str(envelope.id)] += 1
        if len(handled) == TOTAL:
            done.set()

    consumer.on(DriftDetected, handle)
    await consumer.start()
    await wait_for_connections(rabbit, vhost, 2)

    sent: list[Envelope[Any]] = [
        publisher_bus.wrap(DriftDetected(node="n1", package="web", expected_version=f"v{n}"))
        for n in range(TOTAL)
    ]
    killed: list[str] = []

    async def publish_all() -> None:
        for start in range(0, TOTAL, 50):
            await asyncio.gather(*(publisher_bus.publish(e) for e in sent[start : start + 50]))
            if start == 300:
                killed.extend(await asyncio.to_thread(kill_connections, rabbit, vhost))

    await asyncio.wait_for(publish_all(), 60)
    await asyncio.wait_for(done.wait(), 60)
    await asyncio.sleep(0.5)  # let any late redelivery show itself

    assert len(killed) == 2, killed
    assert consumer_bus.connected
    assert publisher_bus.connected
    assert set(handled) == {str(e.id) for e in sent}
    assert len(handled) == TOTAL
    assert max(handled.values()) == 1, "a message was handled twice"
