"""Ingestion from real brokers into SQLite and MariaDB: exact rows under duplicates and outages."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from conveyor.bus import Bus
from conveyor.contracts import DriftDetected, Envelope
from conveyor.settings import BusSettings
from conveyor_version_db.app import create_app
from conveyor_version_db.config import Settings
from conveyor_version_db.db import create_engine
from conveyor_version_db.models import DriftReport, InboxMessage, Node

FAST = BusSettings(
    prefetch=64, retry_delays_s=[0.2, 0.5, 1.0], publish_timeout_s=30, reconnect_interval_s=0.2
)


def drift(node: str, n: int) -> DriftDetected:
    return DriftDetected(node=node, package="web", expected_version=f"v{n}", modified=[f"f{n}"])


async def row_count(engine: AsyncEngine, model: type[Any]) -> int:
    async with engine.connect() as connection:
        return (await connection.execute(select(func.count()).select_from(model))).scalar_one()


async def wait_for_rows(engine: AsyncEngine, model: type[Any], expected: int, timeout: float) -> int:
    """Poll until ``expected`` rows exist (bounded); returns the last count seen."""
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        count = await row_count(engine, model)
        if count >= expected:
            return count
        await asyncio.sleep(0.2)
    return count


async def publish_all(envs: dict[str, str], envelopes: dict[str, list[Envelope[Any]]]) -> None:
    buses = {env: Bus(env=env, url=url, service="test", settings=FAST) for env, url in envs.items()}
    try:
        for bus in buses.values():
            await bus.connect()
        for env, batch in envelopes.items():
            for start in range(0, len(batch), 100):
                await asyncio.gather(*(buses[env].publish(e) for e in batch[start : start + 100]))
    finally:
        for bus in buses.values():
            await bus.close()


@pytest.mark.timeout(240)
async def test_ten_thousand_events_across_three_environments_give_exact_rows(
    database_url: str, three_envs: dict[str, str]
) -> None:
    settings = Settings(envs=three_envs, database_url=database_url, bus=FAST)  # type: ignore[arg-type]
    app = create_app(settings)
    per_env = {"dev": 3334, "qa": 3333, "prod": 3333}
    envelopes = {
        env: [Envelope.wrap(drift(f"{env}-{n % 20}", n), env=env, source="test") for n in range(count)]
        for env, count in per_env.items()
    }
    duplicates = {env: batch[::25] for env, batch in envelopes.items()}  # every 25th sent twice
    engine = create_engine(database_url)
    try:
        async with app.router.lifespan_context(app):
            await app.state.runtime.wait_ready(30)
            await publish_all(three_envs, {env: envelopes[env] + duplicates[env] for env in envelopes})
            assert await wait_for_rows(engine, InboxMessage, 10_000, timeout=180) == 10_000
            await asyncio.sleep(0.5)  # late duplicates have settled; nothing more may appear
        assert await row_count(engine, InboxMessage) == 10_000
        assert await row_count(engine, DriftReport) == 10_000
        assert await row_count(engine, Node) == 60
    finally:
        await engine.dispose()


@pytest.mark.timeout(180)
async def test_killed_database_connections_lose_and_double_nothing(mysql_url: str, amqp_url: str) -> None:
    """MariaDB ``KILL``s every connection of the service while it records: it waits, reconnects,
    and each event ends recorded exactly once."""
    settings = Settings(envs={"qa": amqp_url}, database_url=mysql_url, bus=FAST)  # type: ignore[arg-type]
    app = create_app(settings)
    database = make_url(mysql_url).database
    admin = create_async_engine(str(make_url(mysql_url).set(database="")))
    engine = create_engine(mysql_url)
    batch = [Envelope.wrap(drift(f"qa-{n % 5}", n), env="qa", source="test") for n in range(2_000)]
    try:
        async with app.router.lifespan_context(app):
            await app.state.runtime.wait_ready(30)
            publishing = asyncio.create_task(publish_all({"qa": amqp_url}, {"qa": batch}))
            await wait_for_rows(engine, InboxMessage, 300, timeout=60)
            killed = 0
            for _ in range(3):  # several rounds, so connections opened after a kill die too
                async with admin.connect() as connection:
                    ids = (
                        (
                            await connection.execute(
                                text(
                                    "SELECT id FROM information_schema.processlist"
                                    " WHERE db = :db AND id <> CONNECTION_ID()"
                                ),
                                {"db": database},
                            )
                        )
                        .scalars()
                        .all()
                    )
                    for connection_id in ids:
                        try:
                            await connection.execute(text(f"KILL {int(connection_id)}"))
                            killed += 1
                        except OperationalError:
                            pass  # it ended on its own meanwhile
                await asyncio.sleep(0.3)
            await publishing
            assert await wait_for_rows(engine, InboxMessage, len(batch), timeout=120) == len(batch)
        assert killed > 0
        assert await row_count(engine, DriftReport) == len(batch)
    finally:
        await engine.dispose()
        await admin.dispose()
