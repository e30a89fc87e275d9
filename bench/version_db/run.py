"""version-db: event ingestion into MariaDB, and read-API latency.

Part 1 publishes ``--events`` ``DriftDetected`` events into a private vhost
while the version-db service runs in this process (``create_app(settings)``
and its lifespan, as the ingestion tests do), and times the first publish to
the moment the inbox holds every event. The same rows are then batch-inserted
with asyncmy ``executemany`` into a second, freshly migrated database, without
a broker, as a floor to compare with.

Part 2 fills a third database with 1,000 nodes and 100,000 deployments,
serves the app under uvicorn in a child process and drives ``GET /versions``
and ``GET /deployments?limit=50`` with 50 keep-alive clients.

    uv run python bench/version_db/run.py [--events N] [--out bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import random
import secrets
import shlex
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncmy
import httpx
from asyncmy.cursors import Cursor
from sqlalchemy.engine import make_url

from conveyor.bus import Bus
from conveyor.contracts import DriftDetected
from conveyor.observability import configure_logging
from conveyor.settings import BusSettings
from conveyor.testing.services import RabbitEndpoint
from conveyor_version_db.app import create_app
from conveyor_version_db.config import Settings
from conveyor_version_db.consumers import QUEUE
from conveyor_version_db.db import create_engine, migrate

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for results.py
from results import cpu_model, write_section

SECTION_TITLE = "## version-db: ingestion and API"
SCRIPT = Path(__file__).resolve()
REPO_ROOT = SCRIPT.parents[2]
ENV = "qa"
API_ENVS = ("dev", "qa", "prod")
PACKAGE = "web"
INGEST_NODES = 20  # the events name nodes qa-0 .. qa-19, like the ingestion test
SERVER_SETTINGS_VARIABLE = "CONVEYOR_BENCH_VDB_SERVER_SETTINGS"
ENDPOINTS = (("matrix", "/versions"), ("list", "/deployments?limit=50"))
EXIT_FAILED = 1
EXIT_API_MISSING = 3

Row = tuple[Any, ...]


# -- configuration --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Config:
    events: int
    out: Path
    amqp_url: str  # without a vhost
    management_url: str
    mysql_url: str  # SQLAlchemy URL of the server, without a database
    batch: int
    ingest_timeout_s: float
    nodes: int
    deployments: int
    nodes_per_deployment: int
    packages: int
    clients: int
    api_seconds: float
    api_max_requests: int
    window: int = 64  # publishes awaiting their confirm
    poll_interval_s: float = 0.1
    api_warmup_per_client: int = 2
    api_warmup_s: float = 10.0  # no warm-up request starts after this
    api_request_timeout_s: float = 30.0
    server_start_timeout_s: float = 90.0
    packages_per_node: int = 10


def parse_args(argv: list[str] | None = None) -> tuple[Config, int | None]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000, help="events ingested (default 20000)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "RESULTS.md", help="results file")
    parser.add_argument("--batch", type=int, default=1_000, help="rows per raw executemany (default 1000)")
    parser.add_argument(
        "--ingest-timeout", type=float, default=300.0, help="seconds allowed for the service's ingestion"
    )
    parser.add_argument("--nodes", type=int, default=1_000, help="nodes in the API's database")
    parser.add_argument("--deployments", type=int, default=100_000, help="deployments in the API's database")
    parser.add_argument("--nodes-per-deployment", type=int, default=3, help="deployment_nodes rows each")
    parser.add_argument("--packages", type=int, default=50, help="packages in the API's database")
    parser.add_argument("--clients", type=int, default=50, help="concurrent API clients (default 50)")
    parser.add_argument("--api-seconds", type=float, default=20.0, help="measured seconds per endpoint")
    parser.add_argument(
        "--api-max-requests", type=int, default=100_000, help="stop an endpoint's run after this many"
    )
    parser.add_argument("--serve-fd", type=int, default=None, help=argparse.SUPPRESS)  # the API's child
    args = parser.parse_args(argv)
    if min(args.events, args.batch, args.nodes, args.deployments, args.packages, args.clients) < 1:
        parser.error("--events, --batch, --nodes, --deployments, --packages and --clients must be >= 1")
    if not 1 <= args.nodes_per_deployment <= args.nodes // len(API_ENVS):
        parser.error("--nodes-per-deployment must be between 1 and a third of --nodes")
    amqp = os.environ.get("CONVEYOR_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    host = urlsplit(amqp).hostname or "127.0.0.1"
    config = Config(
        events=args.events,
        out=args.out,
        amqp_url=amqp,
        management_url=os.environ.get("CONVEYOR_BENCH_MANAGEMENT_URL", f"http://{host}:15672"),
        mysql_url=os.environ.get("CONVEYOR_BENCH_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/"),
        batch=args.batch,
        ingest_timeout_s=args.ingest_timeout,
        nodes=args.nodes,
        deployments=args.deployments,
        nodes_per_deployment=args.nodes_per_deployment,
        packages=args.packages,
        clients=args.clients,
        api_seconds=args.api_seconds,
        api_max_requests=args.api_max_requests,
    )
    return config, args.serve_fd


class PhaseFailed(RuntimeError):
    """A part of the benchmark could not produce a number (timed out, wrong row counts)."""


# -- the broker: a private vhost -------------------------------------------------


def _admin(config: Config) -> httpx.Client:
    parts = urlsplit(config.amqp_url)
    auth = (parts.username or "guest", parts.password or "guest")
    return httpx.Client(base_url=config.management_url, auth=auth, timeout=30.0)


def private_vhost(config: Config) -> AbstractContextManager[str]:
    """A fresh vhost for this run, deleted afterwards whatever happens."""
    return RabbitEndpoint.from_url(config.amqp_url, config.management_url).private_vhost("bench-vdb")


def vhost_url(config: Config, vhost: str) -> str:
    return urlunsplit(urlsplit(config.amqp_url)._replace(path="/" + quote(vhost, safe="")))


# -- the database server: private databases ------------------------------------------


@asynccontextmanager
async def mysql(
    config: Config, database: str | None = None, *, autocommit: bool = False
) -> AsyncIterator[asyncmy.Connection]:
    """A plain asyncmy connection (autocommit off by default: the caller commits)."""
    url = make_url(config.mysql_url)
    connection = await asyncmy.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        database=database,
        charset="utf8mb4",
        autocommit=autocommit,
    )
    try:
        yield connection
    finally:
        await connection.ensure_closed()


@asynccontextmanager
async def private_databases(config: Config, roles: Sequence[str]) -> AsyncIterator[dict[str, str]]:
    """``bench_vdb_<random>_<role>`` per role, dropped afterwards whatever happens."""
    base = f"bench_vdb_{uuid.uuid4().hex[:10]}"
    created: list[str] = []
    try:
        async with mysql(config) as connection, connection.cursor() as cursor:
            for role in roles:
                name = f"{base}_{role}"
                await cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
                created.append(name)
        yield {role: f"{base}_{role}" for role in roles}
    finally:
        if created:
            async with mysql(config) as connection, connection.cursor() as cursor:
                for name in created:
                    await cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


def database_url(config: Config, database: str) -> str:
    return make_url(config.mysql_url).set(database=database).render_as_string(hide_password=False)


async def migrated(config: Config, database: str) -> None:
    """The schema at head, exactly as the service migrates it."""
    engine = create_engine(database_url(config, database))
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


async def count_rows(cursor: Cursor, table: str) -> int:
    await cursor.execute(f"SELECT COUNT(*) FROM `{table}`")
    row = await cursor.fetchone()
    return int(row[0])


async def insert_many(
    connection: asyncmy.Connection, table: str, columns: Sequence[str], rows: Sequence[Row], batch: int
) -> None:
    """``rows`` in multi-row INSERTs of ``batch`` rows, one transaction per batch."""
    statement = f"INSERT INTO `{table}` ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
    async with connection.cursor() as cursor:
        for start in range(0, len(rows), batch):
            await cursor.executemany(statement, rows[start : start + batch])
            await connection.commit()


# -- CPU accounting -------------------------------------------------------------------


def process_cpu_s(pid: int) -> float | None:
    """user + system CPU seconds of a process, from /proc (None where there is no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def find_pid(command: str) -> int | None:
    """The process whose name is ``command`` (read-only, to account for its CPU), if any."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == command:
                    return int(entry.name)
            except OSError:
                continue
    return None


@dataclass
class CpuMeter:
    """CPU seconds used between start and stop by this process, a child and the database server."""

    child_pid: int | None = None
    database_pid: int | None = field(default_factory=lambda: find_pid("mariadbd") or find_pid("mysqld"))
    wall: float = 0.0
    own: float = 0.0
    child: float | None = None
    database: float | None = None

    def start(self) -> None:
        self.wall, self.own = time.perf_counter(), time.process_time()
        self.child = process_cpu_s(self.child_pid) if self.child_pid else None
        self.database = process_cpu_s(self.database_pid) if self.database_pid else None

    def stop(self) -> CpuUse:
        seconds = time.perf_counter() - self.wall

        def used(pid: int | None, before: float | None) -> float | None:
            after = process_cpu_s(pid) if pid else None
            return None if after is None or before is None else after - before

        return CpuUse(
            seconds=seconds,
            own_s=time.process_time() - self.own,
            child_s=used(self.child_pid, self.child),
            database_s=used(self.database_pid, self.database),
        )


@dataclass(frozen=True)
class CpuUse:
    seconds: float
    own_s: float
    child_s: float | None
    database_s: float | None


def cores(cpu_s: float | None, seconds: float) -> str:
    """CPU seconds per wall second (1.00 = one core busy the whole time)."""
    return "n/a" if cpu_s is None or seconds <= 0 else f"{cpu_s / seconds:.2f}"


# -- part 1a: the service ingesting from the broker ---------------------------------------


@dataclass(frozen=True)
class IngestResult:
    events: int
    seconds: float  # first publish -> the poll that saw every inbox row
    published_s: float  # first publish -> last publish confirmed
    steady_rate: float  # events/s between 10% and 90% of the inbox filled
    cpu: CpuUse

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def drift(n: int) -> DriftDetected:
    """The ingestion test's event: one of 20 nodes, one package, one modified file."""
    return DriftDetected(
        node=f"{ENV}-{n % INGEST_NODES}", package=PACKAGE, expected_version=f"v{n}", modified=[f"f{n}"]
    )


async def publish_window(count: int, window: int, publish_one: Callable[[int], Awaitable[None]]) -> None:
    """Publish ``count`` messages keeping ``window`` publishes (confirms) outstanding."""
    numbers = iter(range(count))

    async def worker() -> None:
        for n in numbers:
            await publish_one(n)

    await asyncio.gather(*(worker() for _ in range(min(window, count))))


def steady_rate(samples: list[tuple[float, int]], expected: int) -> float:
    """events/s between the first samples at >= 10% and >= 90% of ``expected``."""
    low = next(s for s in samples if s[1] >= expected * 0.1)
    high = next(s for s in samples if s[1] >= expected * 0.9)
    if high[0] <= low[0]:
        return (expected / samples[-1][0]) if samples[-1][0] > 0 else float("nan")
    return (high[1] - low[1]) / (high[0] - low[0])


async def ingest_service(config: Config, amqp: str, database: str, workdir: Path) -> IngestResult:
    settings = Settings.model_validate(
        {
            "envs": {ENV: amqp},
            "database_url": database_url(config, database),
            "artifacts_dir": str(workdir / "artifacts-ingest"),
            "log_level": "warning",
        }
    )
    app = create_app(settings)
    expected = config.events
    async with app.router.lifespan_context(app):
        await app.state.runtime.wait_ready(30)
        bus = Bus(env=ENV, url=amqp, service="bench", settings=BusSettings())
        await bus.connect()
        try:
            # autocommit: every count sees the latest commits
            async with mysql(config, database, autocommit=True) as connection, connection.cursor() as cursor:

                async def publish_one(n: int) -> None:
                    await bus.publish(bus.wrap(drift(n)))

                meter = CpuMeter()
                meter.start()
                started = meter.wall
                published_at: list[float] = []

                async def publish_all() -> None:
                    await publish_window(expected, config.window, publish_one)
                    published_at.append(time.perf_counter() - started)

                publishing = asyncio.create_task(publish_all())
                samples: list[tuple[float, int]] = []
                try:
                    while True:  # bounded polling of the inbox's row count
                        count = await count_rows(cursor, "inbox")
                        elapsed = time.perf_counter() - started
                        samples.append((elapsed, count))
                        if count >= expected:
                            break
                        if elapsed > config.ingest_timeout_s:
                            raise PhaseFailed(
                                f"the service recorded {count:,}/{expected:,} events "
                                f"in {config.ingest_timeout_s:g} s (--ingest-timeout)"
                            )
                        if publishing.done() and publishing.exception() is not None:
                            raise PhaseFailed(f"publishing failed: {publishing.exception()!r}")
                        await asyncio.sleep(config.poll_interval_s)
                    cpu = meter.stop()
                    await publishing
                finally:
                    if not publishing.done():
                        publishing.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await publishing
                counts = {t: await count_rows(cursor, t) for t in ("inbox", "drift_reports", "nodes")}
        finally:
            await bus.close()
    wanted = {"inbox": expected, "drift_reports": expected, "nodes": min(INGEST_NODES, expected)}
    if counts != wanted:
        raise PhaseFailed(f"the service's rows are {counts}, expected {wanted}")
    return IngestResult(
        events=expected,
        seconds=samples[-1][0],
        published_s=published_at[0],
        steady_rate=steady_rate(samples, expected),
        cpu=cpu,
    )


# -- part 1b: raw asyncmy batch inserts of the same rows ----------------------------------------


@dataclass(frozen=True)
class RawResult:
    events: int
    seconds: float
    batch: int
    cpu: CpuUse

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def naive_utc() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


async def ingest_raw(config: Config, database: str) -> RawResult:
    """The service's rows for the same events, inserted in batches: no broker, no ORM, no per-event
    transaction. Environment, package and the 20 nodes exist beforehand (not timed)."""
    await migrated(config, database)
    async with mysql(config, database) as connection, connection.cursor() as cursor:
        now = naive_utc()
        await cursor.execute("INSERT INTO environments (name, position) VALUES (%s, 0)", (ENV,))
        env_id = cursor.lastrowid
        await cursor.execute("INSERT INTO packages (name, created_at) VALUES (%s, %s)", (PACKAGE, now))
        package_id = cursor.lastrowid
        await cursor.executemany(
            "INSERT INTO nodes (env_id, name, labels, agent_versions, created_at)"
            " VALUES (%s, %s, '{}', '{}', %s)",
            [(env_id, f"{ENV}-{n}", now) for n in range(INGEST_NODES)],
        )
        await connection.commit()
        await cursor.execute("SELECT name, id FROM nodes")
        node_ids: dict[str, int] = dict(await cursor.fetchall())
        drift_sql = (
            "INSERT INTO drift_reports"
            " (node_id, package_id, expected_version, files, detected_at, message_id)"
            " VALUES (%s, %s, %s, %s, %s, %s)"
        )
        inbox_sql = "INSERT INTO inbox (message_id, type, env, received_at) VALUES (%s, %s, %s, %s)"
        meter = CpuMeter()
        meter.start()
        for start in range(0, config.events, config.batch):
            drifts: list[Row] = []
            inbox: list[Row] = []
            at = naive_utc()
            for n in range(start, min(start + config.batch, config.events)):
                message_id = str(uuid.uuid4())
                files = json.dumps({"added": [], "modified": [f"f{n}"], "deleted": []})
                node_id = node_ids[f"{ENV}-{n % INGEST_NODES}"]
                drifts.append((node_id, package_id, f"v{n}", files, at, message_id))
                inbox.append((message_id, DriftDetected.message_type, ENV, at))
            await cursor.executemany(drift_sql, drifts)
            await cursor.executemany(inbox_sql, inbox)
            await connection.commit()
        cpu = meter.stop()
        counts = {t: await count_rows(cursor, t) for t in ("inbox", "drift_reports")}
    if counts != {"inbox": config.events, "drift_reports": config.events}:
        raise PhaseFailed(f"the raw inserts left {counts}, expected {config.events} rows each")
    return RawResult(events=config.events, seconds=cpu.seconds, batch=config.batch, cpu=cpu)


# -- part 2a: the API's database ---------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    counts: dict[str, int]
    seconds: float


STATES = ("succeeded", "failed", "started", "requested")
STATE_WEIGHTS = (90, 6, 2, 2)
NODE_STATE = {"succeeded": "succeeded", "failed": "failed", "started": "applying", "requested": "pending"}
DEPLOYMENT_COLUMNS = (
    "id",
    "package_id",
    "version",
    "from_env_id",
    "to_env_id",
    "requested_by",
    "strategy",
    "state",
    "reason",
    "failure_budget",
    "rolled_back",
    "requested_at",
    "started_at",
    "finished_at",
)
RESULT_COLUMNS = ("deployment_id", "node_id", "wave", "state", "error", "duration_s", "updated_at")
NODE_COLUMNS = ("env_id", "name", "address", "labels", "agent_versions", "last_heartbeat_at", "created_at")
API_TABLES = (
    "environments",
    "packages",
    "nodes",
    "deployments",
    "deployment_nodes",
    "env_versions",
    "node_versions",
)


@dataclass
class History:
    """Generated deployments, their node results, and each (env, package)'s latest success."""

    deployments: list[Row] = field(default_factory=list)
    results: list[Row] = field(default_factory=list)
    current: dict[tuple[int, int], tuple[str, str, datetime]] = field(default_factory=dict)


def node_rows(config: Config, env_ids: dict[str, int], rng: random.Random, now: datetime) -> list[Row]:
    roles = ("web", "db", "cache", "batch", "edge")
    agents = json.dumps({"node-agent": "1.4.2", "firewall-agent": "1.1.0"})
    rows: list[Row] = []
    for i in range(config.nodes):
        env = API_ENVS[i % len(API_ENVS)]
        labels = json.dumps({"role": roles[i % len(roles)], "rack": f"r{i % 40:02d}"})
        seen = now - timedelta(seconds=rng.uniform(0, 120))
        address = f"10.{i // 250}.{i % 250}.10"
        rows.append((env_ids[env], f"{env}-node-{i:04d}", address, labels, agents, seen, now))
    return rows


def history(
    config: Config,
    *,
    env_ids: dict[str, int],
    package_ids: list[int],
    nodes_by_env: dict[int, list[int]],
    rng: random.Random,
    now: datetime,
) -> History:
    """Two years of deployments, oldest first: a release goes to dev, some reach qa and prod."""
    made = History()
    releases = dict.fromkeys(package_ids, 0)
    first = now - timedelta(days=730)
    step = timedelta(days=730) / config.deployments
    for i in range(config.deployments):
        package_id = rng.choice(package_ids)
        position = rng.choices(range(len(API_ENVS)), weights=(5, 3, 2))[0]
        releases[package_id] += position == 0
        release = releases[package_id]
        version_text = f"1.{release // 10}.{release % 10}"
        to_env = env_ids[API_ENVS[position]]
        from_env = env_ids[API_ENVS[position - 1]] if position else None
        # The newest few are still running.
        state = rng.choices(STATES, weights=STATE_WEIGHTS)[0] if i < config.deployments - 20 else "started"
        requested = first + step * i
        started = requested + timedelta(seconds=5) if state != "requested" else None
        finished = requested + timedelta(seconds=rng.uniform(30, 600)) if state in STATES[:2] else None
        failed = state == "failed"
        deployment_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        made.deployments.append(
            (
                deployment_id,
                package_id,
                version_text,
                from_env,
                to_env,
                f"user{rng.randrange(40)}@example.com",
                "rolling",
                state,
                "failure budget exhausted" if failed else None,
                1,
                failed and rng.random() < 0.5,
                requested,
                started,
                finished,
            )
        )
        for wave, node_id in enumerate(rng.sample(nodes_by_env[to_env], config.nodes_per_deployment)):
            error = "apply: exit status 1" if failed and wave == 0 else None
            duration = rng.uniform(1, 60) if finished else None
            made.results.append(
                (deployment_id, node_id, wave, NODE_STATE[state], error, duration, finished or requested)
            )
        if state == "succeeded" and finished is not None:
            made.current[(to_env, package_id)] = (version_text, deployment_id, finished)
    return made


def node_version_rows(
    config: Config,
    package_ids: list[int],
    nodes_by_env: dict[int, list[int]],
    current: dict[tuple[int, int], tuple[str, str, datetime]],
    rng: random.Random,
) -> list[Row]:
    """Each node runs ``packages_per_node`` packages, at its environment's current version."""
    rows: list[Row] = []
    for env_id, node_ids in nodes_by_env.items():
        for node_id in node_ids:
            for package_id in rng.sample(package_ids, min(config.packages_per_node, len(package_ids))):
                running = current.get((env_id, package_id))
                if running is not None:
                    rows.append((node_id, package_id, running[0], running[2]))
    return rows


async def build_dataset(config: Config, database: str) -> Dataset:
    """Environments dev/qa/prod, packages, nodes spread over the environments, deployments with a
    few node results each, what each environment runs (env_versions) and what each node runs
    (node_versions). Deterministic (seeded)."""
    started = time.perf_counter()
    await migrated(config, database)
    rng = random.Random(20261126)
    now = naive_utc()
    async with mysql(config, database) as connection:
        envs = [(name, position) for position, name in enumerate(API_ENVS)]
        await insert_many(connection, "environments", ("name", "position"), envs, 100)
        packages = [(f"pkg-{i:03d}", now) for i in range(config.packages)]
        await insert_many(connection, "packages", ("name", "created_at"), packages, 1000)
        async with connection.cursor() as cursor:
            await cursor.execute("SELECT name, id FROM environments")
            env_ids: dict[str, int] = dict(await cursor.fetchall())
            await cursor.execute("SELECT id FROM packages ORDER BY id")
            package_ids = [row[0] for row in await cursor.fetchall()]
        await insert_many(connection, "nodes", NODE_COLUMNS, node_rows(config, env_ids, rng, now), 1000)
        nodes_by_env: dict[int, list[int]] = {}
        async with connection.cursor() as cursor:
            await cursor.execute("SELECT env_id, id FROM nodes ORDER BY id")
            for env_id, node_id in await cursor.fetchall():
                nodes_by_env.setdefault(env_id, []).append(node_id)
        made = history(
            config, env_ids=env_ids, package_ids=package_ids, nodes_by_env=nodes_by_env, rng=rng, now=now
        )
        await insert_many(connection, "deployments", DEPLOYMENT_COLUMNS, made.deployments, 5000)
        await insert_many(connection, "deployment_nodes", RESULT_COLUMNS, made.results, 5000)
        await insert_many(
            connection,
            "env_versions",
            ("env_id", "package_id", "version", "deployment_id", "updated_at"),
            [(env, package, *what) for (env, package), what in made.current.items()],
            5000,
        )
        await insert_many(
            connection,
            "node_versions",
            ("node_id", "package_id", "version", "updated_at"),
            node_version_rows(config, package_ids, nodes_by_env, made.current, rng),
            5000,
        )
        async with connection.cursor() as cursor:
            await cursor.execute(f"ANALYZE TABLE {', '.join(API_TABLES)}")
            await cursor.fetchall()
            counts = {t: await count_rows(cursor, t) for t in API_TABLES}
    return Dataset(counts=counts, seconds=time.perf_counter() - started)


# -- part 2b: the API under load ------------------------------------------------------------


@dataclass(frozen=True)
class ApiResult:
    name: str
    path: str
    requests: int
    errors: int  # answers other than 200, and failed requests
    seconds: float
    latencies_ms: list[float]
    mean_bytes: float
    cpu: CpuUse

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


@dataclass(frozen=True)
class ApiUnavailable:
    name: str
    path: str
    status: int | None
    detail: str

    @property
    def missing(self) -> bool:
        """404: the route is not there (yet); anything else is a failure."""
        return self.status == 404


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, round(pct / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@asynccontextmanager
async def api_server(settings: dict[str, Any]) -> AsyncIterator[tuple[str, int]]:
    """The app under uvicorn in a child process on a free port; (base URL, pid).

    The socket is bound and listening here and handed to the child, so requests
    made before the child is up wait in the listen backlog instead of being
    refused: no polling for readiness. This process closes its copy at once,
    so if the child dies, connecting is refused rather than hanging.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(2048)
    port = listener.getsockname()[1]
    env = {**os.environ, SERVER_SETTINGS_VARIABLE: json.dumps(settings)}
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            "--serve-fd",
            str(listener.fileno()),
            pass_fds=(listener.fileno(),),
            env=env,
        )
    finally:
        listener.close()
    try:
        yield f"http://127.0.0.1:{port}", child.pid
    finally:
        if child.returncode is None:
            child.terminate()  # uvicorn: graceful shutdown, then the service's lifespan ends
            try:
                await asyncio.wait_for(child.wait(), 60)
            except TimeoutError:
                child.kill()
                await child.wait()


def serve_api(fd: int) -> None:
    """The child: the version-db app under uvicorn on the inherited listening socket."""
    import uvicorn

    settings = Settings.model_validate(json.loads(os.environ[SERVER_SETTINGS_VARIABLE]))
    configure_logging(service=Settings.service_name, level="warning", fmt="console")
    logging.getLogger("asyncmy").setLevel(logging.ERROR)  # MariaDB's notes on the migration's names
    app = create_app(settings)
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=5
    )

    def stop(signum: int, _: object) -> None:
        raise SystemExit(0 if signum == signal.SIGTERM else 128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


async def probe(config: Config, base: str, token: str, name: str, path: str) -> ApiUnavailable | None:
    """One request (waiting for the child to come up): None if the endpoint answers 200 with JSON."""
    timeout = httpx.Timeout(config.server_start_timeout_s)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout) as client:
        try:
            response = await client.get(path)
        except httpx.HTTPError as exc:
            return ApiUnavailable(name, path, None, f"{type(exc).__name__}: {exc}")
    if response.status_code != 200:
        return ApiUnavailable(name, path, response.status_code, response.text[:200])
    try:
        response.json()
    except ValueError:
        return ApiUnavailable(name, path, 200, f"not JSON: {response.text[:200]!r}")
    return None


async def drive(
    config: Config, clients: list[httpx.AsyncClient], name: str, path: str, server_pid: int
) -> ApiResult:
    """Every client in a loop, one request at a time, for ``--api-seconds`` (or the request cap)."""

    warm_until = time.perf_counter() + config.api_warmup_s

    async def warm(client: httpx.AsyncClient) -> None:
        for _ in range(config.api_warmup_per_client):
            if time.perf_counter() > warm_until:
                return
            with contextlib.suppress(httpx.HTTPError):
                await client.get(path)

    async with asyncio.timeout(config.api_warmup_s + config.api_request_timeout_s + 10):
        await asyncio.gather(*(warm(c) for c in clients))
    latencies: list[float] = []
    sizes: list[int] = []
    errors = 0
    issued = 0
    meter = CpuMeter(child_pid=server_pid)
    meter.start()
    deadline = meter.wall + config.api_seconds
    last_done = meter.wall

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors, issued, last_done
        while issued < config.api_max_requests and time.perf_counter() < deadline:
            issued += 1
            sent = time.perf_counter()
            try:
                response = await client.get(path)
            except httpx.HTTPError:
                errors += 1
                continue
            done = time.perf_counter()
            last_done = max(last_done, done)
            latencies.append((done - sent) * 1000.0)
            sizes.append(len(response.content))
            if response.status_code != 200:
                errors += 1

    async with asyncio.timeout(config.api_seconds + config.api_request_timeout_s + 10):
        await asyncio.gather(*(worker(c) for c in clients))
    cpu = meter.stop()
    if not latencies:
        raise PhaseFailed(f"GET {path}: no request completed")
    return ApiResult(
        name=name,
        path=path,
        requests=len(latencies),
        errors=errors,
        seconds=last_done - meter.wall,
        latencies_ms=latencies,
        mean_bytes=statistics.fmean(sizes),
        cpu=cpu,
    )


async def bench_api(
    config: Config, amqp: str, database: str, workdir: Path
) -> tuple[list[ApiResult | ApiUnavailable], int]:
    """Returns the per-endpoint results and the server's pid (for the report)."""
    token = secrets.token_urlsafe(24)
    settings = {
        # Three environments so the app orders dev < qa < prod as in the data; all three on the
        # private vhost (nothing is published while the API is measured).
        "envs": dict.fromkeys(API_ENVS, amqp),
        "database_url": database_url(config, database),
        "api_tokens": {"reader": [token]},
        "artifacts_dir": str(workdir / "artifacts-api"),
        "log_level": "warning",
        "log_format": "console",
    }
    results: list[ApiResult | ApiUnavailable] = []
    async with api_server(settings) as (base, pid):
        available: list[tuple[str, str]] = []
        for name, path in ENDPOINTS:
            problem = await probe(config, base, token, name, path)
            print(
                f"GET {path}: {'ok' if problem is None else problem.status or problem.detail}",
                file=sys.stderr,
            )
            if problem is None:
                available.append((name, path))
            else:
                results.append(problem)
        if available:
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            timeout = httpx.Timeout(config.api_request_timeout_s)
            headers = {"Authorization": f"Bearer {token}"}
            async with contextlib.AsyncExitStack() as stack:
                clients = [
                    await stack.enter_async_context(
                        httpx.AsyncClient(base_url=base, headers=headers, timeout=timeout, limits=limits)
                    )
                    for _ in range(config.clients)
                ]
                for name, path in available:
                    result = await drive(config, clients, name, path, pid)
                    ms = result.latencies_ms
                    print(
                        f"GET {path}: {result.rate:,.0f} req/s  p50 {percentile(ms, 50):.1f} ms"
                        f"  p99 {percentile(ms, 99):.1f} ms  errors {result.errors}",
                        file=sys.stderr,
                    )
                    results.append(result)
    order = {path: i for i, (_, path) in enumerate(ENDPOINTS)}
    return sorted(results, key=lambda r: order[r.path]), pid


# -- the whole benchmark ----------------------------------------------------------------


@dataclass
class Outcome:
    ingest: IngestResult | None = None
    ingest_error: str | None = None
    raw: RawResult | None = None
    raw_error: str | None = None
    dataset: Dataset | None = None
    api: list[ApiResult | ApiUnavailable] = field(default_factory=list)
    api_error: str | None = None
    database_facts: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.ingest_error or self.raw_error or self.api_error:
            return EXIT_FAILED
        if any(isinstance(r, ApiUnavailable) and not r.missing for r in self.api):
            return EXIT_FAILED
        if any(isinstance(r, ApiUnavailable) for r in self.api):
            return EXIT_API_MISSING
        return 0


async def database_facts(config: Config) -> dict[str, str]:
    async with mysql(config) as connection, connection.cursor() as cursor:
        await cursor.execute(
            "SELECT @@version, @@innodb_flush_log_at_trx_commit, @@innodb_buffer_pool_size, @@log_bin"
        )
        server, flush, pool, log_bin = await cursor.fetchone()
    return {
        "version": str(server),
        "innodb_flush_log_at_trx_commit": str(flush),
        "innodb_buffer_pool_size": f"{int(pool) // 2**20} MiB",
        "log_bin": "ON" if int(log_bin) else "OFF",
    }


async def bench(config: Config, vhost: str) -> Outcome:
    outcome = Outcome(database_facts=await database_facts(config))
    amqp = vhost_url(config, vhost)
    with tempfile.TemporaryDirectory(prefix="bench-vdb-") as tmp:
        workdir = Path(tmp)
        async with private_databases(config, ("svc", "raw", "api")) as databases:
            print(f"databases {', '.join(databases.values())}", file=sys.stderr)
            print(f"ingestion: the service, {config.events:,} events", file=sys.stderr)
            try:
                outcome.ingest = await ingest_service(config, amqp, databases["svc"], workdir)
                print(f"  {outcome.ingest.rate:,.0f} events/s", file=sys.stderr)
            except (PhaseFailed, TimeoutError) as exc:
                outcome.ingest_error = str(exc) or type(exc).__name__
                print(f"  failed: {outcome.ingest_error}", file=sys.stderr)
            print(f"ingestion: raw asyncmy executemany, batches of {config.batch:,}", file=sys.stderr)
            try:
                outcome.raw = await ingest_raw(config, databases["raw"])
                print(f"  {outcome.raw.rate:,.0f} events/s", file=sys.stderr)
            except PhaseFailed as exc:
                outcome.raw_error = str(exc)
            print(
                f"API: building {config.nodes:,} nodes, {config.deployments:,} deployments", file=sys.stderr
            )
            outcome.dataset = await build_dataset(config, databases["api"])
            print(f"  built in {outcome.dataset.seconds:.1f} s: {outcome.dataset.counts}", file=sys.stderr)
            try:
                outcome.api, _ = await bench_api(config, amqp, databases["api"], workdir)
            except (PhaseFailed, TimeoutError) as exc:
                outcome.api_error = str(exc) or type(exc).__name__
    return outcome


# -- reporting ---------------------------------------------------------------------------


def machine_facts(config: Config, load_before: tuple[float, float, float], db: dict[str, str]) -> list[str]:
    with _admin(config) as admin:
        overview = admin.get("/api/overview").json()
    load = ", ".join(f"{value:.2f}" for value in load_before)
    packages = ", ".join(
        f"{name} {version(name)}"
        for name in ("sqlalchemy", "asyncmy", "fastapi", "uvicorn", "httpx", "aio-pika")
    )
    return [
        f"- CPUs (nproc): {os.cpu_count()}; {cpu_model()}; load average before the run: {load}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}",
        f"- MariaDB {db.get('version', '?')} (innodb_flush_log_at_trx_commit="
        f"{db.get('innodb_flush_log_at_trx_commit', '?')}, "
        f"buffer pool {db.get('innodb_buffer_pool_size', '?')}, "
        f"binlog {db.get('log_bin', '?')}); RabbitMQ {overview.get('rabbitmq_version', '?')} "
        f"(Erlang {overview.get('erlang_version', '?')}); both on the same machine over loopback",
        f"- {packages}",
    ]


def command_line() -> str:
    try:
        shown = str(SCRIPT.relative_to(Path.cwd()))
    except ValueError:
        shown = str(SCRIPT)
    return shlex.join(["uv", "run", "python", shown, *sys.argv[1:]])


def ingestion_lines(config: Config, outcome: Outcome) -> list[str]:
    lines = [
        "### Ingestion",
        "",
        f"{config.events:,} `DriftDetected` events (20 nodes, one package, one modified file each, as in "
        "`test_ingestion.py`). **service**: published by a `Bus` in this process "
        f"({config.window} publishes awaiting confirms) to a private vhost and consumed by the version-db "
        f"service running in the same process (`create_app(settings)` and its lifespan; default bus "
        f"settings, prefetch {BusSettings().prefetch}); each event is applied with its inbox row in one "
        "transaction. Timed from the first publish to the poll (every "
        f"{config.poll_interval_s:g} s) that counts {config.events:,} inbox rows. **raw**: the same "
        f"`drift_reports` + `inbox` rows inserted with asyncmy `executemany`, {config.batch:,} events "
        "(2 multi-row INSERTs) per transaction, into a freshly migrated database whose environment, "
        "package and 20 nodes exist beforehand. The raw side batch-inserts without a broker, so "
        "service/raw is the cost of the broker plus a transaction (and ORM lookups) per message, "
        "**not** a like-for-like comparison.",
        "",
        "| path | events | seconds | events/s | events/s 10-90% | bench process CPU ms/event | "
        "bench process cores | MariaDB cores |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ingest, raw = outcome.ingest, outcome.raw
    if ingest is not None:
        lines.append(
            f"| service (broker → consumer → 1 tx/event) | {ingest.events:,} | {ingest.seconds:.2f} | "
            f"{ingest.rate:,.0f} | {ingest.steady_rate:,.0f} | "
            f"{ingest.cpu.own_s / ingest.events * 1e3:.2f} | "
            f"{cores(ingest.cpu.own_s, ingest.cpu.seconds)} | "
            f"{cores(ingest.cpu.database_s, ingest.cpu.seconds)} |"
        )
    else:
        lines.append(
            f"| service (broker → consumer → 1 tx/event) | failed: {outcome.ingest_error} | | | | | | |"
        )
    if raw is not None:
        lines.append(
            f"| raw asyncmy executemany ({raw.batch:,}/tx, no broker) | {raw.events:,} | {raw.seconds:.2f} | "
            f"{raw.rate:,.0f} | n/a | {raw.cpu.own_s / raw.events * 1e3:.3f} | "
            f"{cores(raw.cpu.own_s, raw.cpu.seconds)} | "
            f"{cores(raw.cpu.database_s, raw.cpu.seconds)} |"
        )
    else:
        lines.append(f"| raw asyncmy executemany | failed: {outcome.raw_error} | | | | | | |")
    lines.append("")
    if ingest is not None:
        lines.append(
            f"All {ingest.events:,} events were published (confirmed) {ingest.published_s:.2f} s after the "
            "first publish; the publisher shares the process (one event loop, one core) with the service. "
            "Cores = CPU seconds per wall second over the timed span."
        )
        lines.append("")
    if ingest is not None and raw is not None:
        ratio = ingest.rate / raw.rate
        lines.append(
            f"**Ingestion**: the service records {ingest.rate:,.0f} events/s; raw batch inserts "
            f"{raw.rate:,.0f} events/s; service/raw = {ratio:.3f} ({raw.rate / ingest.rate:.0f}x), the price "
            "of the broker and one transaction per event, not a like-for-like comparison."
        )
    else:
        lines.append("**Ingestion**: FAILED, see the table.")
    return lines


def api_lines(config: Config, outcome: Outcome) -> list[str]:
    lines = ["### API", ""]
    if outcome.dataset is not None:
        counts = ", ".join(f"{table} {n:,}" for table, n in outcome.dataset.counts.items())
        lines += [
            f"Database: {counts} (built in {outcome.dataset.seconds:.1f} s with asyncmy executemany, "
            f"then ANALYZE TABLE). Nodes are spread evenly over dev/qa/prod; each deployment has "
            f"{config.nodes_per_deployment} `deployment_nodes` rows (nodes of its target environment); "
            f"`env_versions` holds each environment's latest successful deployment per package and "
            f"`node_versions` {config.packages_per_node} packages per node. The app (`create_app`) runs "
            "under uvicorn in a child process (one worker, no access log) with "
            '`Settings(api_tokens={"reader": [token]})`; the clients send `Authorization: Bearer <token>`. '
            f"{config.clients} `httpx.AsyncClient`s (one keep-alive connection each) in this process loop "
            f"one request at a time for {config.api_seconds:g} s per endpoint (at most "
            f"{config.api_max_requests:,} requests) after up to {config.api_warmup_per_client} unrecorded "
            f"requests each (none started after {config.api_warmup_s:g} s). "
            "Latency is per request, as the client sees it.",
            "",
        ]
    if outcome.api_error:
        lines.append(f"**API**: FAILED: {outcome.api_error}")
        return lines
    measured = [r for r in outcome.api if isinstance(r, ApiResult)]
    if measured:
        lines += [
            "| endpoint | requests | errors | seconds | req/s | p50 ms | p90 ms | p99 ms | max ms | "
            "bytes/answer | server cores | bench process cores | MariaDB cores |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in measured:
            ms = r.latencies_ms
            lines.append(
                f"| `GET {r.path}` ({r.name}) | {r.requests:,} | {r.errors} | {r.seconds:.1f} | "
                f"{r.rate:,.0f} | {percentile(ms, 50):.1f} | {percentile(ms, 90):.1f} | "
                f"{percentile(ms, 99):.1f} | {max(ms):.1f} | {r.mean_bytes:,.0f} | "
                f"{cores(r.cpu.child_s, r.cpu.seconds)} | {cores(r.cpu.own_s, r.cpu.seconds)} | "
                f"{cores(r.cpu.database_s, r.cpu.seconds)} |"
            )
        lines.append("")
    for answer in outcome.api:
        if isinstance(answer, ApiResult):
            ms = answer.latencies_ms
            lines.append(
                f"**API `GET {answer.path}`**: {answer.rate:,.0f} req/s with {config.clients} clients, "
                f"p50 {percentile(ms, 50):.1f} ms, p99 {percentile(ms, 99):.1f} ms, {answer.errors} errors."
            )
        elif answer.missing:
            lines.append(f"**API not available yet**: `GET {answer.path}` answered 404; not measured.")
        else:
            lines.append(
                f"**API `GET {answer.path}`**: FAILED: answered {answer.status}: `{answer.detail[:150]}`."
            )
    return lines


def render_section(config: Config, outcome: Outcome, facts: list[str]) -> str:
    lines = [
        SECTION_TITLE,
        "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        *facts,
        "",
        f"Command: `{command_line()}`",
        "",
        *ingestion_lines(config, outcome),
        "",
        *api_lines(config, outcome),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    config, serve_fd = parse_args(argv)
    if serve_fd is not None:
        serve_api(serve_fd)
        return 0
    configure_logging(service="bench", level="warning", fmt="console")
    logging.getLogger("aiormq").setLevel(logging.ERROR)
    logging.getLogger("asyncmy").setLevel(logging.ERROR)  # MariaDB's notes on the migration's names
    # SIGTERM unwinds like Ctrl-C, so the vhost, the databases and the child go either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_before = os.getloadavg()
    with private_vhost(config) as vhost:
        print(f"vhost {vhost} (queue {QUEUE})", file=sys.stderr)
        outcome = asyncio.run(bench(config, vhost))
        facts = machine_facts(config, load_before, outcome.database_facts)
    section = render_section(config, outcome, facts)
    write_section(config.out, SECTION_TITLE, section)
    print(section)
    print(f"written to {config.out}", file=sys.stderr)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
