"""``conveyor events tail``: a live stream of an environment's events."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import signal

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractIncomingMessage

from conveyor.bus import COMMANDS_EXCHANGE, EVENTS_EXCHANGE
from conveyor.cli.output import console, error, print_json_line
from conveyor.contracts import CATALOGUE, ContractError, Envelope, Payload
from conveyor.settings import CliSettings, load_settings, redact_url

__all__ = ["run"]


def _pretty(envelope: Envelope[Payload]) -> None:
    payload = envelope.model_dump(mode="json")["payload"]
    facts = " ".join(f"[dim]{k}=[/]{json.dumps(v)}" for k, v in payload.items() if v not in (None, [], {}))
    actor = f" by {envelope.actor}" if envelope.actor else ""
    console.print(
        f"[dim]{envelope.occurred_at:%H:%M:%S}[/] [bold cyan]{envelope.type}[/] "
        f"[dim]{envelope.source}{actor} corr={str(envelope.correlation_id)[:8]}[/] {facts}",
        soft_wrap=True,
    )


def _show_unreadable(message: AbstractIncomingMessage, problem: ContractError, *, as_json: bool) -> None:
    if as_json:
        print_json_line({"unreadable": True, "routing_key": message.routing_key, "error": str(problem)})
    else:
        console.print(f"[red]unreadable[/] {message.routing_key}: {problem}", soft_wrap=True)


async def _tail(url: str, type_glob: str, *, as_json: bool, commands: bool, limit: int | None) -> None:
    connection = await aio_pika.connect(url, client_properties={"connection_name": "conveyor events tail"})
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)
        # A private, server-named queue: it disappears with this process.
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(EVENTS_EXCHANGE, "#")
        if commands:
            await queue.bind(COMMANDS_EXCHANGE, "#")
        if not as_json:
            console.print(f"[dim]listening on {redact_url(url)} for {type_glob} (Ctrl-C to stop)[/]")
        shown = 0
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                if not fnmatch.fnmatchcase(message.type or message.routing_key or "", type_glob):
                    continue
                try:
                    envelope = CATALOGUE.decode(message.body)
                except ContractError as problem:
                    _show_unreadable(message, problem, as_json=as_json)
                else:
                    if as_json:
                        print_json_line(envelope.model_dump(mode="json"))
                    else:
                        _pretty(envelope)
                shown += 1
                if limit is not None and shown >= limit:
                    return


async def _until_interrupted(url: str, type_glob: str, **options: object) -> None:
    task = asyncio.create_task(_tail(url, type_glob, **options))  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def run(env: str, *, type_glob: str, as_json: bool, commands: bool, limit: int | None) -> int:
    settings = load_settings(CliSettings)
    url = settings.envs.get(env)
    if url is None:
        error(f"unknown environment {env!r}; known: {', '.join(settings.envs)}")
        return 2
    try:
        asyncio.run(_until_interrupted(url, type_glob, as_json=as_json, commands=commands, limit=limit))
    except (OSError, aiormq.exceptions.AMQPError) as exc:
        error(f"cannot tail {env} at {redact_url(url)}: {type(exc).__name__}: {exc}")
        return 1
    return 0
