"""Composition root of the firewall-agent service."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import FastAPI

from conveyor.bus import Consumer
from conveyor.runtime import ServiceRuntime, create_service_app
from conveyor_firewall_agent import __version__, consumers
from conveyor_firewall_agent.config import Settings
from conveyor_firewall_agent.service import FirewallAgent

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    def register(consumer: Consumer) -> None:  # called once connected, when ``agent`` exists
        consumers.command_handlers(agent)(consumer)

    runtime = ServiceRuntime(
        name=Settings.service_name,
        version=__version__,
        settings=settings,
        queues=partial(consumers.queues, settings),
        handlers={consumers.queue_name(settings): register},
    )
    agent = FirewallAgent(settings, runtime.buses[settings.env])
    app = create_service_app(runtime, startup=[agent.start], shutdown=[agent.stop])
    app.state.agent = agent

    @app.get("/firewall")
    async def firewall() -> dict[str, Any]:
        """This node's firewall: enabled or disabled, the lease, the audit log's last record."""
        return agent.describe()

    return app
