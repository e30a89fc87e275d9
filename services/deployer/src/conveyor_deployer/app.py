"""Composition root of the deployer service."""

from __future__ import annotations

from functools import partial

from fastapi import FastAPI

from conveyor.bus import Consumer
from conveyor.observability import get_logger
from conveyor.runtime import ServiceRuntime, create_service_app
from conveyor_deployer import __version__, consumers
from conveyor_deployer.api import api_router, install_error_handlers
from conveyor_deployer.config import Settings
from conveyor_deployer.inventory import Inventory, InventoryError, load_inventory
from conveyor_deployer.rabbit_api import install_rabbit_error_handlers, rabbit_router
from conveyor_deployer.service import Deployer

__all__ = ["create_app"]

log = get_logger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    if settings.inventory_file.exists():
        inventory = load_inventory(settings.inventory_file)  # InventoryError: the service does not start
        unknown = [name for name in inventory.env_names() if name not in settings.envs]
        if unknown:
            raise InventoryError(
                f"{settings.inventory_file}: environments {', '.join(unknown)} have no broker in ENVS "
                f"({', '.join(settings.envs)})"
            )
    else:
        log.warning("no_inventory", path=str(settings.inventory_file))
        inventory = Inventory.model_construct(environments=[])

    def register(consumer: Consumer) -> None:  # called once connected, when ``deployer`` exists
        consumers.handlers(deployer)(consumer)

    runtime = ServiceRuntime(
        name=Settings.service_name,
        version=__version__,
        settings=settings,
        queues=partial(consumers.queues, settings),
        handlers={consumers.QUEUE: register},
    )
    deployer = Deployer(settings, inventory, runtime.buses)
    app = create_service_app(
        runtime, startup=[deployer.start], stopping=[deployer.stopping], shutdown=[deployer.stop]
    )
    app.state.deployer = deployer
    app.include_router(api_router(deployer, settings))
    app.include_router(rabbit_router(deployer.rabbit))
    install_error_handlers(app)
    install_rabbit_error_handlers(app)
    return app
