"""Migrations from empty to head and back, on SQLite and MariaDB; models and migrations agree."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect

from conveyor_version_db.db import create_engine, downgrade, migrate
from conveyor_version_db.models import Base

TABLES = {
    "audit_log",
    "blocked_versions",
    "changesets",
    "deployment_nodes",
    "deployments",
    "drift_reports",
    "env_versions",
    "environments",
    "inbox",
    "node_versions",
    "nodes",
    "packages",
}


def tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


async def test_empty_to_head_to_base_and_back(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(tables) == set()
        await migrate(engine)
        await migrate(engine)  # idempotent
        async with engine.connect() as connection:
            assert await connection.run_sync(tables) == TABLES
        await downgrade(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(tables) == set()
        await migrate(engine)
        async with engine.connect() as connection:
            assert await connection.run_sync(tables) == TABLES
    finally:
        await engine.dispose()


async def test_models_and_migrations_describe_the_same_schema(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await migrate(engine)

        def differences(connection: Connection) -> list[object]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))

        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()
