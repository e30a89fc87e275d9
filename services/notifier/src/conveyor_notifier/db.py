"""The notifier's database: SQLite by default, MySQL/MariaDB supported (the conventions of
:mod:`conveyor.db`); its schema is migrated with Alembic at start-up."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from conveyor.db import create_engine, session_factory, upgrade

__all__ = ["create_engine", "migrate", "session_factory"]

MIGRATIONS = Path(__file__).with_name("migrations")


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (idempotent)."""
    await upgrade(engine, MIGRATIONS, revision)
