"""Composition root of the release board: its bus, its board, its HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException, Response, status
from pydantic import BaseModel

from conveyor.bus import Bus, BusError, QueueSpec
from conveyor.observability import get_logger
from conveyor.settings import redact_url
from release_board import __version__
from release_board.board import Board, Entry
from release_board.contracts import REGISTRY, ReleaseAnnounced
from release_board.settings import Settings

__all__ = ["BINDING_KEYS", "QUEUE", "create_app"]

log = get_logger(__name__)

QUEUE = "release-board.events"
# The board's own announcements come back through its queue like everything else it shows.
BINDING_KEYS = ("release_board.#", "deployment.succeeded", "changeset.applied")


class Published(BaseModel):
    message_id: str
    routing_key: str


class Health(BaseModel):
    ready: bool
    connected: bool
    consuming: bool
    broker: str


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    bus = Bus(
        env=settings.env,
        url=settings.amqp_url,
        service=Settings.service_name,
        settings=settings.bus,
        registry=REGISTRY,
    )
    board = Board(capacity=settings.board_size)
    consumer = bus.consumer(QueueSpec(name=QUEUE, binding_keys=BINDING_KEYS))
    board.register(consumer)

    async def bring_up(stop: asyncio.Event) -> None:
        """Connect (retrying while the broker is down), declare the queue, consume."""
        if not await bus.connect_forever(stop=stop):
            return  # stopped before the broker answered
        try:
            await consumer.start()
        except Exception as exc:  # noqa: BLE001 - reported on /healthz (503) and in the log
            log.error("release_board_consumer_failed", queue=QUEUE, error=f"{type(exc).__name__}: {exc}")

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        # In the background: the API answers (/healthz: 503) while the broker is still unreachable.
        starting = asyncio.create_task(bring_up(stop), name="bring-up")
        log.info("release_board_starting", env=settings.env, broker=redact_url(settings.amqp_url))
        try:
            yield
        finally:
            stop.set()
            await starting
            await bus.close()  # stops the consumer once its handlers are done
            log.info("release_board_stopped")

    app = FastAPI(title="release-board", version=__version__, lifespan=lifespan)

    @app.post("/announcements", status_code=status.HTTP_202_ACCEPTED)
    async def announce(announcement: ReleaseAnnounced) -> Published:
        """Put ``release_board.announced`` on the bus; it shows on the board once consumed."""
        if not bus.connected:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"not connected to {bus!r} yet")
        envelope = bus.wrap(announcement, actor=announcement.announced_by)
        try:
            await bus.publish(envelope)
        except BusError as exc:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
        log.info("release_announced", package=announcement.package, version=announcement.version)
        return Published(message_id=str(envelope.id), routing_key=envelope.routing_key)

    @app.get("/board")
    async def show_board() -> list[Entry]:
        """Announcements, deployments and applied changesets, newest first."""
        return board.entries()

    @app.get("/healthz")
    async def healthz(response: Response) -> Health:
        health = Health(
            ready=bus.connected and consumer.running,
            connected=bus.connected,
            consuming=consumer.running,
            broker=redact_url(settings.amqp_url),
        )
        response.status_code = status.HTTP_200_OK if health.ready else status.HTTP_503_SERVICE_UNAVAILABLE
        return health

    return app
