"""Database mechanisms every service with a database shares, so they all behave alike on MySQL/MariaDB
(asyncmy) and SQLite (aiosqlite, the embedded default): engines, sessions, timestamps, constraint names.
Each service keeps its own tables and Alembic migrations.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, DateTime, TypeDecorator, event
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

__all__ = ["NAMING", "UTCDateTime", "create_engine", "downgrade", "session_factory", "upgrade", "utcnow"]


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # MySQL/MariaDB: replace connections the server dropped; keep them under wait_timeout.
    # READ COMMITTED: a row another consumer just inserted is visible after losing the
    # race to insert it (REPEATABLE READ would keep the older snapshot).
    return create_async_engine(
        url,
        pool_pre_ping=True,
        pool_recycle=1800,
        pool_size=10,
        max_overflow=10,
        isolation_level="READ COMMITTED",
    )


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as naive UTC (MySQL DATETIME has no zone) and read back aware."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; Conveyor stores only timezone-aware UTC times")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


async def upgrade(engine: AsyncEngine, migrations: Path, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` with the Alembic scripts in ``migrations`` (idempotent); the
    scripts' ``env.py`` takes the connection from ``config.attributes["connection"]``. Alembic is
    imported here only, so a process without a database does not need it."""
    from alembic import command  # noqa: PLC0415

    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: command.upgrade(_alembic_config(sync, migrations), revision))


async def downgrade(engine: AsyncEngine, migrations: Path, revision: str = "base") -> None:
    from alembic import command  # noqa: PLC0415

    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: command.downgrade(_alembic_config(sync, migrations), revision))


def _alembic_config(connection: Connection, migrations: Path) -> Any:
    from alembic.config import Config  # noqa: PLC0415

    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["connection"] = connection
    return config
