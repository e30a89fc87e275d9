"""Composition root of the deployer service."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from conveyor.runtime import ServiceRuntime, create_service_app
from conveyor_deployer import __version__, consumers
from conveyor_deployer.config import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    runtime = ServiceRuntime(
        name=Settings.service_name,
        version=__version__,
        settings=settings,
        queues=partial(consumers.queues, settings),
    )
    return create_service_app(runtime)
