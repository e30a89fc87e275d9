"""Conveyor's bus against raw aio-pika: throughput and end-to-end latency.

Both sides publish persistent ~1 KB messages with publisher confirms into a
durable quorum queue through a topic exchange (64 publishes outstanding) and
consume them with manual acks (prefetch 64), on one connection in this
process. Each run does both phases, alternating which goes first; the report
gives every run, the medians and the verdict against the target (Conveyor
costs at most 15% throughput).

    uv run python bench/bus/run.py [--messages N] [--runs R] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import logging
import os
import platform
import shlex
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import httpx
from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from conveyor.bus import DEAD_LETTER_EXCHANGE, Bus, QueueSpec
from conveyor.contracts import DriftDetected, Envelope
from conveyor.observability import configure_logging
from conveyor.settings import BusSettings
from conveyor.testing.services import RabbitEndpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for results.py
from results import cpu_model, write_section

SECTION_TITLE = "## Bus: Conveyor bus vs raw aio-pika"
TARGET_OVERHEAD = 0.15
RAW = "raw aio-pika"
CONVEYOR = "Conveyor"
RAW_EXCHANGE = "bench.raw"
BINDING_KEY = "drift.*"
ROUTING_KEY = "drift.detected"
NODE, PACKAGE = "qa-web-1", "web"
REPO_ROOT = Path(__file__).resolve().parents[2]

PublishOne = Callable[[int], Awaitable[None]]


# -- configuration --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Config:
    messages: int
    runs: int
    out: Path
    amqp_url: str  # without a vhost
    management_url: str
    window: int = 64
    prefetch: int = 64
    body_bytes: int = 1024
    warmup: int = 2_000
    phase_timeout_s: float = 180.0


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000, help="messages per phase (default 20000)")
    parser.add_argument("--runs", type=int, default=3, help="runs, each doing both phases (default 3)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "RESULTS.md", help="results file")
    parser.add_argument(
        "--warmup", type=int, default=2_000, help="unrecorded messages per bus before run 1 (default 2000)"
    )
    parser.add_argument("--phase-timeout", type=float, default=180.0, help="seconds allowed per phase")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.runs < 1 or args.warmup < 0:
        parser.error("--messages and --runs must be at least 1, --warmup at least 0")
    amqp = os.environ.get("CONVEYOR_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    host = urlsplit(amqp).hostname or "127.0.0.1"
    management = os.environ.get("CONVEYOR_BENCH_MANAGEMENT_URL", f"http://{host}:15672")
    return Config(
        messages=args.messages,
        runs=args.runs,
        out=args.out,
        amqp_url=amqp,
        management_url=management,
        warmup=args.warmup,
        phase_timeout_s=args.phase_timeout,
    )


# -- the broker: a private vhost -------------------------------------------------


def _admin(config: Config) -> httpx.Client:
    parts = urlsplit(config.amqp_url)
    auth = (parts.username or "guest", parts.password or "guest")
    return httpx.Client(base_url=config.management_url, auth=auth, timeout=30.0)


def _user(config: Config) -> str:
    return urlsplit(config.amqp_url).username or "guest"


def private_vhost(config: Config) -> AbstractContextManager[str]:
    """A fresh vhost for this run, deleted afterwards whatever happens."""
    return RabbitEndpoint.from_url(config.amqp_url, config.management_url).private_vhost("bench-bus")


def vhost_url(config: Config, vhost: str) -> str:
    return urlunsplit(urlsplit(config.amqp_url)._replace(path="/" + quote(vhost, safe="")))


async def delete_all_queues(config: Config, vhost: str) -> None:
    """Leave the vhost empty between phases, so every phase meets the same broker state."""
    parts = urlsplit(config.amqp_url)
    auth = (parts.username or "guest", parts.password or "guest")
    path = quote(vhost, safe="")
    async with httpx.AsyncClient(base_url=config.management_url, auth=auth, timeout=30.0) as admin:
        listing = await admin.get(f"/api/queues/{path}", params={"columns": "name"})
        listing.raise_for_status()
        for queue in listing.json():
            await admin.delete(f"/api/queues/{path}/{quote(queue['name'], safe='')}")


# -- measuring ---------------------------------------------------------------------


class PhaseTimedOut(RuntimeError):
    """A phase did not handle every message within ``--phase-timeout``."""


@dataclass
class Tracker:
    """Publish start times by message id; latencies; ``done`` once every message was handled."""

    expected: int
    sent_at: dict[str, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    last_handled: float = 0.0

    def sent(self, message_id: str, started: float) -> None:
        self.sent_at[message_id] = started

    def handled(self, message_id: str | None) -> None:
        now = time.perf_counter()
        started = self.sent_at.pop(message_id or "", None)
        if started is None:
            return  # not ours, or a redelivery already counted
        self.latencies_ms.append((now - started) * 1000.0)
        self.last_handled = now
        if len(self.latencies_ms) >= self.expected:
            self.done.set()


@dataclass(frozen=True)
class Slot:
    """Which phase: the bus measured, the run, and whether it went first (1) or second (2)."""

    bus: str
    run: int
    position: int


@dataclass(frozen=True)
class PhaseResult:
    bus: str
    run: int
    position: int
    messages: int
    seconds: float
    cpu_us: float  # this process's CPU time per message, publisher and consumer together
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        return self.messages / self.seconds


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, round(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


async def publish_window(count: int, window: int, publish_one: PublishOne) -> None:
    """Publish ``count`` messages keeping ``window`` publishes (confirms) outstanding."""
    numbers = itertools.count()

    async def worker() -> None:
        while (n := next(numbers)) < count:
            await publish_one(n)

    await asyncio.gather(*(worker() for _ in range(min(window, count))))


async def measure(slot: Slot, config: Config, tracker: Tracker, publish_one: PublishOne) -> PhaseResult:
    """Publish everything, wait (bounded) for the last message to be handled."""
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        async with asyncio.timeout(config.phase_timeout_s):
            await publish_window(config.messages, config.window, publish_one)
            await tracker.done.wait()
    except TimeoutError:
        raise PhaseTimedOut(
            f"{slot.bus}, run {slot.run}: timed out after {config.phase_timeout_s:g}s with "
            f"{len(tracker.latencies_ms)}/{config.messages} messages handled"
        ) from None
    return PhaseResult(
        bus=slot.bus,
        run=slot.run,
        position=slot.position,
        messages=config.messages,
        seconds=tracker.last_handled - started,
        cpu_us=(time.process_time() - cpu_started) / config.messages * 1e6,
        p50_ms=percentile(tracker.latencies_ms, 50),
        p99_ms=percentile(tracker.latencies_ms, 99),
    )


# -- the messages ------------------------------------------------------------------


def drift_payload(n: int, modified: list[str]) -> DriftDetected:
    return DriftDetected(node=NODE, package=PACKAGE, expected_version=f"v{n}", modified=modified)


def padding_paths(body_bytes: int) -> list[str]:
    """Modified paths that bring a Conveyor envelope's JSON body to about ``body_bytes``."""
    probe = Bus(env="qa", url="amqp://unused/", service="bench")
    paths: list[str] = []
    while True:
        size = len(probe.wrap(drift_payload(99_999, paths)).to_json())
        if size >= body_bytes - 40:
            return paths
        paths.append(f"/srv/web/releases/current/static/assets/chunk-{len(paths):04d}.js")


def raw_body(n: int, message_id: str, modified: list[str]) -> bytes:
    """What a hand-rolled publisher would send: the same fields as Conveyor's envelope, via json."""
    return json.dumps(
        {
            "id": message_id,
            "type": ROUTING_KEY,
            "schema_version": 1,
            "occurred_at": datetime.now(UTC).isoformat(),
            "env": "qa",
            "source": "bench",
            "correlation_id": message_id,
            "causation_id": None,
            "actor": None,
            "payload": {
                "node": NODE,
                "package": PACKAGE,
                "expected_version": f"v{n}",
                "added": [],
                "modified": modified,
                "deleted": [],
            },
        },
        separators=(",", ":"),
    ).encode()


# -- phase (a): raw aio-pika ---------------------------------------------------------


async def raw_phase(config: Config, url: str, slot: Slot, modified: list[str]) -> PhaseResult:
    connection = await aio_pika.connect_robust(url, timeout=10)
    try:
        publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=config.prefetch)
        exchange = await publish_channel.declare_exchange(RAW_EXCHANGE, ExchangeType.TOPIC, durable=True)
        # The same queue arguments Conveyor declares, so the broker does the same work for both.
        queue = await consume_channel.declare_queue(
            f"bench-raw-{slot.run}",
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": BusSettings().delivery_limit,
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                "x-dead-letter-routing-key": f"bench-raw-{slot.run}",
            },
        )
        await queue.bind(RAW_EXCHANGE, routing_key=BINDING_KEY)
        tracker = Tracker(config.messages)

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with message.process():
                json.loads(message.body)  # any real consumer reads the body
                tracker.handled(message.message_id)

        async def publish_one(n: int) -> None:
            started = time.perf_counter()
            message_id = str(uuid.uuid4())
            message = aio_pika.Message(
                raw_body(n, message_id, modified),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
                type=ROUTING_KEY,
                correlation_id=message_id,
                app_id="bench",
            )
            tracker.sent(message_id, started)
            await exchange.publish(message, ROUTING_KEY, mandatory=True, timeout=30)

        tag = await queue.consume(on_message)
        result = await measure(slot, config, tracker, publish_one)
        await queue.cancel(tag)
        return result
    finally:
        await connection.close()


# -- phase (b): Conveyor's bus ---------------------------------------------------------


async def conveyor_phase(config: Config, url: str, slot: Slot, modified: list[str]) -> PhaseResult:
    bus = Bus(env="qa", url=url, service="bench", settings=BusSettings(prefetch=config.prefetch))
    await bus.connect()
    try:
        consumer = bus.consumer(QueueSpec(name=f"bench-conveyor-{slot.run}", binding_keys=(BINDING_KEY,)))
        tracker = Tracker(config.messages)

        async def handle(envelope: Envelope[DriftDetected]) -> None:
            tracker.handled(str(envelope.id))

        async def publish_one(n: int) -> None:
            started = time.perf_counter()
            envelope = bus.wrap(drift_payload(n, modified))
            tracker.sent(str(envelope.id), started)
            await bus.publish(envelope)

        consumer.on(DriftDetected, handle)
        await consumer.start()
        return await measure(slot, config, tracker, publish_one)
    finally:
        await bus.close()


# -- the whole benchmark ----------------------------------------------------------------


PHASES = {RAW: raw_phase, CONVEYOR: conveyor_phase}


async def warm_up(config: Config, vhost: str, modified: list[str]) -> None:
    """Both buses once, unrecorded: imports, pydantic's generic classes and the broker get going."""
    if config.warmup == 0:
        return
    small = dataclasses.replace(config, messages=config.warmup)
    for position, name in enumerate(PHASES, start=1):
        await PHASES[name](small, vhost_url(config, vhost), Slot(name, 0, position), modified)
        await delete_all_queues(config, vhost)


async def bench(config: Config, vhost: str) -> list[PhaseResult]:
    url = vhost_url(config, vhost)
    modified = padding_paths(config.body_bytes)
    await warm_up(config, vhost, modified)
    results: list[PhaseResult] = []
    for run in range(1, config.runs + 1):
        order = [RAW, CONVEYOR] if run % 2 else [CONVEYOR, RAW]
        for position, name in enumerate(order, start=1):
            result = await PHASES[name](config, url, Slot(name, run, position), modified)
            await delete_all_queues(config, vhost)
            print(
                f"run {run} {name:<13} {result.throughput:8.0f} msg/s  "
                f"p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms  cpu {result.cpu_us:4.0f} us/msg",
                file=sys.stderr,
            )
            results.append(result)
    return results


# -- reporting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    raw_throughput: float
    conveyor_throughput: float
    raw_p50: float
    conveyor_p50: float
    raw_p99: float
    conveyor_p99: float
    raw_cpu: float
    conveyor_cpu: float
    run_ratios: list[float]

    @property
    def ratio(self) -> float:
        return self.conveyor_throughput / self.raw_throughput

    @property
    def overhead(self) -> float:
        return 1.0 - self.ratio

    @property
    def passed(self) -> bool:
        return self.overhead <= TARGET_OVERHEAD


def summarise(results: list[PhaseResult]) -> Summary:
    def median(bus: str, metric: Callable[[PhaseResult], float]) -> float:
        return statistics.median(metric(r) for r in results if r.bus == bus)

    by_run = {(r.run, r.bus): r for r in results}
    runs = sorted({r.run for r in results})
    return Summary(
        raw_throughput=median(RAW, lambda r: r.throughput),
        conveyor_throughput=median(CONVEYOR, lambda r: r.throughput),
        raw_p50=median(RAW, lambda r: r.p50_ms),
        conveyor_p50=median(CONVEYOR, lambda r: r.p50_ms),
        raw_p99=median(RAW, lambda r: r.p99_ms),
        conveyor_p99=median(CONVEYOR, lambda r: r.p99_ms),
        raw_cpu=median(RAW, lambda r: r.cpu_us),
        conveyor_cpu=median(CONVEYOR, lambda r: r.cpu_us),
        run_ratios=[by_run[(n, CONVEYOR)].throughput / by_run[(n, RAW)].throughput for n in runs],
    )


def machine_facts(config: Config, load_before: tuple[float, float, float]) -> list[str]:
    with _admin(config) as admin:
        overview = admin.get("/api/overview").json()
    load = ", ".join(f"{value:.2f}" for value in load_before)
    return [
        f"- CPUs (nproc): {os.cpu_count()}; {cpu_model()}; load average before the run: {load}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}",
        f"- RabbitMQ {overview.get('rabbitmq_version', '?')} (Erlang {overview.get('erlang_version', '?')}),"
        " on the same machine over loopback",
        f"- aio-pika {version('aio-pika')}, aiormq {version('aiormq')}, pydantic {version('pydantic')}",
    ]


def results_table(results: list[PhaseResult]) -> list[str]:
    lines = [
        "| run | order | bus | messages | seconds | msg/s | p50 ms | p99 ms | CPU µs/msg |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.run} | {r.position} | {r.bus} | {r.messages} | {r.seconds:.2f} | "
            f"{r.throughput:,.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.cpu_us:.0f} |"
        )
    return lines


def summary_table(summary: Summary) -> list[str]:
    s = summary
    return [
        f"| median over runs | {RAW} | {CONVEYOR} | {CONVEYOR}/raw |",
        "| --- | ---: | ---: | ---: |",
        f"| throughput (msg/s) | {s.raw_throughput:,.0f} | {s.conveyor_throughput:,.0f} | "
        f"{s.ratio:.3f} ({s.overhead:.1%} overhead) |",
        f"| latency p50 (ms) | {s.raw_p50:.1f} | {s.conveyor_p50:.1f} | {s.conveyor_p50 / s.raw_p50:.2f}x |",
        f"| latency p99 (ms) | {s.raw_p99:.1f} | {s.conveyor_p99:.1f} | {s.conveyor_p99 / s.raw_p99:.2f}x |",
        f"| client CPU per message (µs) | {s.raw_cpu:.0f} | {s.conveyor_cpu:.0f} | "
        f"{s.conveyor_cpu / s.raw_cpu:.2f}x |",
    ]


def verdict(summary: Summary) -> str:
    word = "PASS" if summary.passed else "FAIL"
    per_run = ", ".join(f"{ratio:.3f}" for ratio in summary.run_ratios)
    return (
        f"**{word}**: Conveyor reaches {summary.ratio:.1%} of raw aio-pika's median throughput, "
        f"an overhead of {summary.overhead:.1%} against the target of at most {TARGET_OVERHEAD:.0%} "
        f"(Conveyor/raw per run: {per_run})."
    )


def command_line() -> str:
    script = Path(__file__).resolve()
    try:
        shown = str(script.relative_to(Path.cwd()))
    except ValueError:
        shown = str(script)
    return shlex.join(["uv", "run", "python", shown, *sys.argv[1:]])


def render_section(config: Config, results: list[PhaseResult], facts: list[str]) -> str:
    summary = summarise(results)
    lines = [
        SECTION_TITLE,
        "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        *facts,
        "",
        f"Command: `{command_line()}`",
        "",
        f"Each phase publishes {config.messages:,} persistent messages of ~{config.body_bytes} B with "
        f"publisher confirms ({config.window} outstanding) through a topic exchange into a durable "
        f"quorum queue, consumed with manual acks at prefetch {config.prefetch}, publisher and consumer "
        "on one connection. Throughput runs from the first publish to the last message handled; "
        "latency from each publish's start to its handler; CPU is this process's (publisher and "
        "consumer) CPU time per message. Runs alternate which phase goes first, "
        f"after an unrecorded warm-up of {config.warmup:,} messages per bus.",
        "",
        *results_table(results),
        "",
        *summary_table(summary),
        "",
        verdict(summary),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    configure_logging(service="bench", level="warning", fmt="console")
    logging.getLogger("aiormq").setLevel(logging.ERROR)
    # SIGTERM unwinds like Ctrl-C, so the vhost is deleted either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_before = os.getloadavg()
    with private_vhost(config) as vhost:
        print(f"vhost {vhost}: {config.runs} runs x 2 phases x {config.messages} messages", file=sys.stderr)
        try:
            results = asyncio.run(bench(config, vhost))
        except PhaseTimedOut as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    section = render_section(config, results, machine_facts(config, load_before))
    write_section(config.out, SECTION_TITLE, section)
    print(section)
    print(f"written to {config.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
