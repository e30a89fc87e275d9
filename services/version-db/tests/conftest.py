"""Every version-db test runs on both databases: SQLite (embedded) and MariaDB (production)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from conveyor.testing.services import RabbitEndpoint
from conveyor_version_db.db import create_engine, migrate


@pytest.fixture(params=["sqlite", "mysql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A private, empty database of each kind (MariaDB: a fresh database per test)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'version-db.sqlite3'}"
    url: str = request.getfixturevalue("mysql_url")
    return url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a database migrated to head."""
    engine = create_engine(database_url)
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def three_envs(rabbit: RabbitEndpoint, amqp_url: str) -> Iterator[dict[str, str]]:
    """dev, qa and prod as three private vhosts (one per test), deleted afterwards."""
    with rabbit.private_vhost() as qa, rabbit.private_vhost() as prod:
        yield {"dev": amqp_url, "qa": rabbit.url_for(qa), "prod": rabbit.url_for(prod)}
