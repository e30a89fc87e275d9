"""ServiceRuntime: readiness, broker outages and a clean stop, against a real broker."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from conveyor.bus import Bus, Consumer, QueueSpec
from conveyor.contracts import DriftDetected, Envelope
from conveyor.runtime import ServiceRuntime, create_service_app
from conveyor.settings import ServiceSettings

from .conftest import FAST
from .test_bus import drift, get_all


def runtime_for(url: str, **kwargs: Any) -> ServiceRuntime:
    settings = ServiceSettings(envs={"qa": url}, bus=FAST)
    return ServiceRuntime(
        name="probe",
        version="0.0.0",
        settings=settings,
        queues=lambda env: [QueueSpec(name=f"probe.{env}", binding_keys=("drift.*",))],
        **kwargs,
    )


async def test_declares_its_queues_without_consuming_when_it_has_no_handlers(amqp_url: str) -> None:
    runtime = runtime_for(amqp_url)
    assert runtime.health().status == "starting"
    await runtime.start()
    await runtime.wait_ready(10)
    health = runtime.health()
    assert health.ready
    assert health.status == "ok"
    assert [c.queue for c in health.brokers["qa"].consumers] == ["probe.qa"]
    assert not health.brokers["qa"].consumers[0].consuming

    publisher = Bus(env="qa", url=amqp_url, service="test", settings=FAST)
    await publisher.connect()
    await publisher.publish(publisher.wrap(drift(1)))  # routable: the queue exists and keeps it
    await publisher.close()
    await runtime.stop()
    assert runtime.health().status == "stopping"
    assert len(await get_all(amqp_url, "probe.qa", expect=1)) == 1


async def test_http_health_is_503_while_the_broker_is_down_and_stop_still_works() -> None:
    runtime = runtime_for("amqp://guest:guest@127.0.0.1:1/qa")
    app = create_service_app(runtime)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
            response = await client.get("/healthz")
            assert response.status_code == 503
            body = response.json()
            assert body["ready"] is False
            assert body["brokers"]["qa"]["connected"] is False
            assert body["brokers"]["qa"]["url"] == "amqp://guest:***@127.0.0.1:1/qa"
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert "conveyor_messages_published_total" in metrics.text


async def test_stop_waits_for_the_handler_in_flight_and_acks_it(amqp_url: str) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def handle(envelope: Envelope[DriftDetected]) -> None:
        started.set()
        await release.wait()
        handled.append(envelope.payload.expected_version)

    def register(consumer: Consumer) -> None:
        consumer.on(DriftDetected, handle)

    runtime = runtime_for(amqp_url, handlers={"probe.qa": register})
    await runtime.start()
    await runtime.wait_ready(10)
    assert runtime.health().brokers["qa"].consumers[0].consuming

    publisher = Bus(env="qa", url=amqp_url, service="test", settings=FAST)
    await publisher.connect()
    await publisher.publish(publisher.wrap(drift(3)))
    await publisher.close()
    await asyncio.wait_for(started.wait(), 10)

    stopping = asyncio.create_task(runtime.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done()
    assert runtime.health().brokers["qa"].consumers[0].in_flight == 1
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert handled == ["v3"]
    assert await get_all(amqp_url, "probe.qa", expect=1, timeout=0.5) == []
