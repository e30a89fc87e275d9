"""``conveyor env list`` and ``conveyor bus ping``."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from dataclasses import asdict, dataclass
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq.exceptions
from rich.table import Table

from conveyor.bus import EVENTS_EXCHANGE
from conveyor.cli.output import console, error, print_json_line
from conveyor.settings import CliSettings, load_settings, redact_url

__all__ = ["env_list", "ping"]


def _vhost(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def env_list(*, as_json: bool) -> None:
    settings = load_settings(CliSettings)
    if as_json:
        for name, url in settings.envs.items():
            print_json_line({"env": name, "url": redact_url(url), "vhost": _vhost(url)})
        return
    table = Table("env", "broker", "vhost")
    for name, url in settings.envs.items():
        parts = urlsplit(url)
        table.add_row(name, f"{parts.hostname}:{parts.port or 5672}", _vhost(url))
    console.print(table)


@dataclass
class PingResult:
    env: str
    broker: str
    vhost: str
    reachable: bool
    latency_ms: float | None
    topology: bool | None
    error: str | None


async def _ping_one(env: str, url: str, timeout: float) -> PingResult:
    parts = urlsplit(url)
    broker, vhost = f"{parts.hostname}:{parts.port or 5672}", _vhost(url)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            connection = await aio_pika.connect(
                url, client_properties={"connection_name": "conveyor bus ping"}
            )
            async with connection:
                latency = (time.perf_counter() - started) * 1000
                channel = await connection.channel()
                try:
                    await channel.get_exchange(EVENTS_EXCHANGE, ensure=True)
                    topology = True
                except aiormq.exceptions.ChannelNotFoundEntity:
                    topology = False
    except TimeoutError:
        return PingResult(env, broker, vhost, False, None, None, f"no answer within {timeout:g}s")
    except aiormq.exceptions.ProbableAuthenticationError:
        return PingResult(env, broker, vhost, False, None, None, "login refused (user/password)")
    except aiormq.exceptions.ConnectionNotAllowed:
        reason = f"vhost {vhost!r} does not exist or this user may not use it"
        return PingResult(env, broker, vhost, False, None, None, reason)
    except aiormq.exceptions.InvalidFrameError as exc:
        # aiormq reports the broker's Connection.Close answer to Connection.Open
        # (the step that picks the vhost) as an unexpected frame.
        if "Connection.Close" not in str(exc):
            raise
        reason = f"vhost {vhost!r} does not exist or this user may not use it"
        return PingResult(env, broker, vhost, False, None, None, reason)
    except (OSError, aiormq.exceptions.AMQPError) as exc:
        return PingResult(env, broker, vhost, False, None, None, _explain(exc))
    return PingResult(env, broker, vhost, True, round(latency, 1), topology, None)


def _explain(exc: BaseException) -> str:
    """The socket error under aiormq's wrapper, said plainly."""
    cause = next((a for a in exc.args if isinstance(a, OSError)), exc)
    if isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED:
        return "connection refused (is RabbitMQ running and listening there?)"
    if isinstance(cause, socket.gaierror):
        return f"host name does not resolve: {cause}"
    return f"{type(exc).__name__}: {exc}"


def ping(only: list[str], *, as_json: bool) -> int:
    """Exit status 1 when any selected environment's broker is unreachable."""
    settings = load_settings(CliSettings)
    unknown = [env for env in only if env not in settings.envs]
    if unknown:
        error(f"unknown environment {', '.join(unknown)}; known: {', '.join(settings.envs)}")
        return 2
    targets = {env: url for env, url in settings.envs.items() if not only or env in only}

    async def ping_all() -> list[PingResult]:
        return await asyncio.gather(
            *(_ping_one(env, url, settings.connect_timeout_s) for env, url in targets.items())
        )

    results = asyncio.run(ping_all())
    if as_json:
        for result in results:
            print_json_line(asdict(result))
    else:
        table = Table("env", "broker", "vhost", "reachable", "latency", "topology", "error")
        for r in results:
            table.add_row(
                r.env,
                r.broker,
                r.vhost,
                "[green]yes[/]" if r.reachable else "[red]no[/]",
                f"{r.latency_ms:.1f} ms" if r.latency_ms is not None else "-",
                {True: "declared", False: "[yellow]missing[/]", None: "-"}[r.topology],
                r.error or "",
            )
        console.print(table)
    return 0 if all(r.reachable for r in results) else 1
