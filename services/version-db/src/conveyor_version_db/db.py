"""Engines, sessions and migrations: one code path for MySQL/MariaDB (asyncmy) and SQLite (aiosqlite)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from conveyor.db import create_engine, session_factory, upgrade
from conveyor.db import downgrade as _downgrade

__all__ = ["create_engine", "downgrade", "migrate", "session_factory"]

MIGRATIONS = Path(__file__).with_name("migrations")


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the schema to ``revision`` (idempotent)."""
    await upgrade(engine, MIGRATIONS, revision)


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    await _downgrade(engine, MIGRATIONS, revision)
