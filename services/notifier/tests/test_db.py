"""The notifier's schema from empty to head, on SQLite and MariaDB; the models and the migration agree."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from conveyor_notifier.db import create_engine, migrate
from conveyor_notifier.models import Base


@pytest.fixture(params=["sqlite", "mysql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'notifier.sqlite3'}"
    url: str = request.getfixturevalue("mysql_url")
    return url


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version_notifier"}


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"version_table": "alembic_version_notifier"})
    return list(compare_metadata(context, Base.metadata))


async def test_the_schema_migrates_and_matches_the_models(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await migrate(engine)
        await migrate(engine)  # idempotent
        async with engine.connect() as connection:
            assert await connection.run_sync(_tables) == {
                "inbox",
                "notifications",
                "deliveries",
                "alerts",
                "silences",
            }
            assert await connection.run_sync(_differences) == []
    finally:
        await engine.dispose()
