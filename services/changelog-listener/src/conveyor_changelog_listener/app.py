"""Composition root of the changelog-listener service."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import FastAPI

from conveyor.bus import Consumer
from conveyor.runtime import ServiceRuntime, create_service_app
from conveyor_changelog_listener import __version__, consumers
from conveyor_changelog_listener.config import Settings
from conveyor_changelog_listener.service import Listener

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    def register(consumer: Consumer) -> None:  # called once connected, when ``listener`` exists
        consumers.command_handlers(listener)(consumer)

    runtime = ServiceRuntime(
        name=Settings.service_name,
        version=__version__,
        settings=settings,
        queues=partial(consumers.queues, settings),
        handlers={consumers.queue_name(settings): register},
    )
    listener = Listener(settings, runtime.buses[settings.env])
    app = create_service_app(runtime, startup=[listener.start], shutdown=[listener.stop])
    app.state.listener = listener

    @app.get("/packages")
    async def packages() -> list[dict[str, Any]]:
        """The packages this node manages: role, version, release state."""
        return listener.describe()

    return app
