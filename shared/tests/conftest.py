from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from conveyor.bus import Bus
from conveyor.settings import BusSettings

FAST = BusSettings(retry_delays_s=[0.2, 0.4, 0.8], publish_timeout_s=20, reconnect_interval_s=0.2)

BusFactory = Callable[..., Bus]


@pytest.fixture
async def make_bus(amqp_url: str) -> AsyncIterator[BusFactory]:
    """Buses on this test's vhost (env ``qa``), closed at the end of the test."""
    buses: list[Bus] = []

    def factory(*, service: str = "test", settings: BusSettings = FAST) -> Bus:
        bus = Bus(env="qa", url=amqp_url, service=service, settings=settings)
        buses.append(bus)
        return bus

    yield factory
    for bus in buses:
        await bus.close()
