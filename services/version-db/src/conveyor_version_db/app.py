"""Composition root of the version-db service."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from conveyor.runtime import ServiceRuntime, create_service_app
from conveyor_version_db import __version__, consumers
from conveyor_version_db.api import api_router
from conveyor_version_db.artifacts import ArtifactStore, artifacts_router
from conveyor_version_db.auth import TokenAuth
from conveyor_version_db.config import Settings
from conveyor_version_db.db import create_engine, migrate, session_factory
from conveyor_version_db.service import ensure_environments

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    engine = create_engine(settings.database_url.get_secret_value())  # connects lazily
    sessions = session_factory(engine)
    runtime = ServiceRuntime(
        name=Settings.service_name,
        version=__version__,
        settings=settings,
        queues=partial(consumers.queues, settings),
        handlers={consumers.QUEUE: consumers.recording_handlers(sessions)},
    )

    async def prepare_database() -> None:
        if settings.migrate_on_start:
            await migrate(engine)
        async with sessions() as session, session.begin():
            await ensure_environments(session, list(settings.envs))

    app = create_service_app(runtime, startup=[prepare_database], shutdown=[engine.dispose])
    app.state.sessions = sessions
    auth = TokenAuth(settings, sessions)
    app.include_router(api_router(auth))
    store = ArtifactStore(settings.artifacts_dir, max_bytes=settings.artifact_max_bytes)
    app.include_router(
        artifacts_router(store, write_guard=auth.require("deployer"), read_guard=auth.require("reader"))
    )
    return app
