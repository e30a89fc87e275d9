"""What every Conveyor service runs on: brokers, consumers, /healthz, /metrics, clean stop.

A service describes the queues it consumes per environment and the handlers
for them; :class:`ServiceRuntime` connects (retrying while a broker is down),
declares the topology, starts the consumers, and stops them without losing a
message. :func:`create_service_app` wraps it in a FastAPI app.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from conveyor.bus import Bus, Consumer, QueueSpec
from conveyor.observability import configure_logging, get_logger
from conveyor.settings import ServiceSettings, load_settings, redact_url

__all__ = [
    "BrokerHealth",
    "Health",
    "ServiceRuntime",
    "create_service_app",
    "run_service",
    "serve",
]

log = get_logger(__name__)

HandlerRegistration = Callable[[Consumer], None]
S = TypeVar("S", bound=ServiceSettings)


class ConsumerHealth(BaseModel):
    queue: str
    consuming: bool
    in_flight: int


class BrokerHealth(BaseModel):
    url: str
    connected: bool
    topology_declared: bool
    consumers: list[ConsumerHealth]
    error: str | None


class Health(BaseModel):
    service: str
    version: str
    status: Literal["starting", "ok", "degraded", "stopping"]
    ready: bool
    brokers: dict[str, BrokerHealth]


@dataclass
class _EnvState:
    bus: Bus
    consumers: list[Consumer] = field(default_factory=list)
    declared: bool = False
    error: str | None = None
    task: asyncio.Task[None] | None = None


class ServiceRuntime:
    """Runs one service's buses and consumers across its environments."""

    def __init__(
        self,
        *,
        name: str,
        version: str,
        settings: ServiceSettings,
        queues: Callable[[str], Sequence[QueueSpec]],
        handlers: Mapping[str, HandlerRegistration] | None = None,
    ) -> None:
        """``queues(env)`` lists what the service consumes in ``env``; ``handlers``
        maps a queue name to a function registering its handlers. A queue with
        no handlers is declared (so nothing published to it is lost) but not
        consumed."""
        self.name = name
        self.version = version
        self.settings = settings
        self._queues = queues
        self._handlers = dict(handlers or {})
        self._stop = asyncio.Event()
        self._stopping = False
        self._envs: dict[str, _EnvState] = {
            env: _EnvState(Bus(env=env, url=url, service=name, settings=settings.bus))
            for env, url in settings.selected_envs().items()
        }

    @property
    def buses(self) -> dict[str, Bus]:
        return {env: state.bus for env, state in self._envs.items()}

    async def start(self) -> None:
        """Begin connecting to every environment; returns at once (see ``health()``)."""
        for env, state in self._envs.items():
            state.task = asyncio.create_task(self._bring_up(env, state), name=f"bring-up:{env}")

    async def wait_ready(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(s.task for s in self._envs.values() if s.task is not None))

    async def _bring_up(self, env: str, state: _EnvState) -> None:
        while not self._stop.is_set():
            if not await state.bus.connect_forever(stop=self._stop):
                return
            try:
                await self._declare_and_consume(env, state)
            except Exception as exc:  # noqa: BLE001 - reported on /healthz, retried
                state.error = f"{type(exc).__name__}: {exc}"
                log.error("topology_declare_failed", env=env, error=state.error)
                await state.bus.close()
                state.consumers.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.settings.bus.reconnect_interval_s)
                continue
            state.error = None
            return

    async def _declare_and_consume(self, env: str, state: _EnvState) -> None:
        for spec in self._queues(env):
            consumer = state.bus.consumer(spec)
            state.consumers.append(consumer)
            await consumer.declare()
            register = self._handlers.get(spec.name)
            if register is not None:
                register(consumer)
                await consumer.start()
        state.declared = True
        log.info("service_ready", env=env, queues=[c.spec.name for c in state.consumers])

    async def stop(self) -> None:
        """Stop consuming, let in-flight handlers finish, close every connection."""
        self._stopping = True
        self._stop.set()
        for state in self._envs.values():
            if state.task is not None:
                await state.task
        await asyncio.gather(*(state.bus.close() for state in self._envs.values()))

    def health(self) -> Health:
        brokers = {
            env: BrokerHealth(
                url=redact_url(state.bus.url),
                connected=state.bus.connected,
                topology_declared=state.declared,
                consumers=[
                    ConsumerHealth(queue=c.spec.name, consuming=c.running, in_flight=c.in_flight)
                    for c in state.consumers
                ],
                error=state.error,
            )
            for env, state in self._envs.items()
        }
        ready = all(b.connected and b.topology_declared for b in brokers.values())
        status: Literal["starting", "ok", "degraded", "stopping"]
        if self._stopping:
            status = "stopping"
        elif ready:
            status = "ok"
        elif any(b.topology_declared for b in brokers.values()):
            status = "degraded"
        else:
            status = "starting"
        return Health(
            service=self.name,
            version=self.version,
            status=status,
            ready=ready and not self._stopping,
            brokers=brokers,
        )


Hook = Callable[[], Awaitable[None]]


def create_service_app(
    runtime: ServiceRuntime,
    *,
    startup: Sequence[Hook] = (),
    stopping: Sequence[Hook] = (),
    shutdown: Sequence[Hook] = (),
) -> FastAPI:
    """The service's HTTP face: ``GET /healthz`` (503 until ready) and ``GET /metrics``.

    ``startup`` hooks (a schema migration, say) run before any consumer starts; if
    one fails the service does not start. ``stopping`` hooks run first when the
    service stops, while the consumers still run (to tell long waits in handlers to
    give up); ``shutdown`` hooks run after the consumers have stopped.
    """

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        log.info("service_starting", version=runtime.version, envs=list(runtime.buses))
        for hook in startup:
            await hook()
        await runtime.start()
        try:
            yield
        finally:
            log.info("service_stopping")
            for hook in stopping:
                await hook()
            await runtime.stop()
            for hook in shutdown:
                await hook()
            log.info("service_stopped")

    app = FastAPI(title=f"conveyor-{runtime.name}", version=runtime.version, lifespan=lifespan)
    app.state.runtime = runtime

    @app.get("/healthz", response_model=Health)
    async def healthz(response: Response) -> Health:
        health = runtime.health()
        response.status_code = 200 if health.ready else 503
        return health

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def serve(app: FastAPI, settings: ServiceSettings) -> None:
    """Run under uvicorn until SIGTERM/SIGINT, then shut down gracefully."""
    import uvicorn  # noqa: PLC0415 - only processes that serve need it

    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=settings.http_access_log,
        lifespan="on",
        timeout_graceful_shutdown=max(1, round(settings.bus.shutdown_grace_s)),
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal
    # under the handler that was installed before it; this one turns that into
    # a normal exit, so supervisors see a clean stop rather than a kill.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_after_graceful_stop)
    uvicorn.Server(config).run()


def _exit_after_graceful_stop(signum: int, _: object) -> None:
    raise SystemExit(0 if signum == signal.SIGTERM else 128 + signum)


def _answer_flags(settings_class: type[ServiceSettings]) -> None:
    import sys  # noqa: PLC0415
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    name = settings_class.service_name
    args = sys.argv[1:]
    if not args:
        return
    try:
        release = version(f"conveyor-{name}")
    except PackageNotFoundError:
        release = "unknown"
    if args == ["--version"]:
        print(f"conveyor-{name} {release}")
        raise SystemExit(0)
    if args in (["--help"], ["-h"]):
        prefix = settings_class.model_config.get("env_prefix", "")
        print(f"usage: conveyor-{name} [--help | --version]\n")
        print(f"Conveyor's {name} service ({release}); runs until SIGTERM. Configured by environment")
        print(f"variables (nested settings with '__'); `conveyor config show --service {name}` shows them:\n")
        for field, info in settings_class.model_fields.items():
            print(f"  {(prefix + field.upper()):<48} {info.description or ''}")
        raise SystemExit(0)
    given = " ".join(args)
    print(f"conveyor-{name}: takes no arguments but --help or --version (got {given})", file=sys.stderr)
    raise SystemExit(2)


def run_service(settings_class: type[S], create_app: Callable[[S], FastAPI]) -> None:
    """A service's ``main()``: settings, JSON logging, then serve until SIGTERM. ``--help`` says what
    configures it and ``--version`` which version it is, and neither starts anything."""
    _answer_flags(settings_class)
    settings = load_settings(settings_class)
    configure_logging(
        service=settings_class.service_name, level=settings.log_level, fmt=settings.log_format.value
    )
    serve(create_app(settings), settings)
