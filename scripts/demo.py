"""``make demo``: start every Conveyor service against the local broker and show their health.

Creates the ``dev``, ``qa`` and ``prod`` vhosts if they are missing, starts the
five services, waits until each reports healthy, prints a table, then keeps
them running until Ctrl-C (``--once`` stops them right after the table).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from conveyor.runtime import Health
from conveyor.settings import DEFAULT_ENVS
from conveyor.testing.services import RabbitEndpoint

SERVICES = ("deployer", "version-db", "notifier", "changelog-listener", "firewall-agent")
LOG_DIR = Path(".demo")
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
DEMO_TOKEN = secrets.token_urlsafe(18)  # a reader token for this demo run only
console = Console()


@dataclass
class Running:
    name: str
    port: int
    process: subprocess.Popen[bytes]


def ensure_vhosts(management_url: str) -> None:
    rabbit = RabbitEndpoint.from_url(DEFAULT_ENVS["dev"], management_url)
    with rabbit.admin() as admin:
        try:
            admin.get("/api/overview").raise_for_status()
        except httpx.HTTPError as exc:
            sys.exit(
                f"error: RabbitMQ's management API does not answer at {management_url} ({exc}); "
                "start RabbitMQ and run `rabbitmq-plugins enable rabbitmq_management`"
            )
    for url in DEFAULT_ENVS.values():
        rabbit.create_vhost(unquote(urlsplit(url).path.lstrip("/")))


def start(name: str, port: int) -> Running:
    prefix = f"CONVEYOR_{name.upper().replace('-', '_')}_"
    env = {
        **os.environ,
        f"{prefix}HTTP_PORT": str(port),
        f"{prefix}NODE": "demo-node-1",
        # version-db on the embedded default (SQLite), kept with the demo's logs
        f"{prefix}DATABASE_URL": f"sqlite+aiosqlite:///{(LOG_DIR / 'version-db.sqlite3').resolve()}",
        f"{prefix}ARTIFACTS_DIR": str((LOG_DIR / "artifacts").resolve()),
        f"{prefix}API_TOKENS": json.dumps({"reader": [DEMO_TOKEN]}),
    }
    log = (LOG_DIR / f"{name}.log").open("wb")
    script = Path(sys.executable).parent / f"conveyor-{name}"
    process = subprocess.Popen(
        [str(script)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches the demo, which stops the services in order
        preexec_fn=_unblock_signals,  # noqa: PLW1509 - single-threaded; the child needs SIGTERM
    )
    log.close()
    return Running(name, port, process)


def _unblock_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def health(service: Running) -> Health | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{service.port}/healthz", timeout=1)
        return Health.model_validate_json(response.content)
    except (httpx.HTTPError, ValidationError):
        return None


def wait_until_healthy(services: list[Running], timeout: float) -> dict[str, Health | None]:
    deadline = time.monotonic() + timeout
    while True:
        report = {s.name: health(s) for s in services}
        if all(r is not None and r.ready for r in report.values()) or time.monotonic() > deadline:
            return report
        if any(s.process.poll() is not None for s in services):
            return report
        time.sleep(0.2)


def show(services: list[Running], report: dict[str, Health | None]) -> bool:
    table = Table("service", "port", "status", "brokers", "queues")
    healthy = True
    for service in services:
        data = report[service.name]
        if data is None:
            healthy = False
            exited = service.process.poll()
            status = f"[red]exited {exited}[/]" if exited is not None else "[red]no answer[/]"
            table.add_row(service.name, str(service.port), status, "-", f"see .demo/{service.name}.log")
            continue
        healthy = healthy and data.ready
        colour = "green" if data.ready else "yellow"
        table.add_row(
            service.name,
            str(service.port),
            f"[{colour}]{data.status}[/]",
            " ".join(f"{env}:{'up' if b.connected else 'DOWN'}" for env, b in data.brokers.items()),
            ", ".join(sorted({c.queue for b in data.brokers.values() for c in b.consumers})),
        )
    console.print(table)
    return healthy


def stop(services: list[Running]) -> None:
    for service in services:
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)
    for service in services:
        try:
            service.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.process.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="stop the services after showing their health")
    parser.add_argument("--management-url", default="http://127.0.0.1:15672")
    parser.add_argument("--base-port", type=int, default=8100, help="services listen on this port and up")
    args = parser.parse_args()

    ensure_vhosts(args.management_url)
    LOG_DIR.mkdir(exist_ok=True)
    services = [start(name, args.base_port + offset) for offset, name in enumerate(SERVICES)]
    try:
        healthy = show(services, wait_until_healthy(services, timeout=30))
        if args.once:
            return 0 if healthy else 1
        console.print(
            "Health at http://127.0.0.1:<port>/healthz, logs in .demo/. Try, in another shell:\n"
            "  uv run conveyor bus ping\n"
            "  uv run conveyor events tail --env dev\n"
            f"  CONVEYOR_VERSION_DB_URL=http://127.0.0.1:{args.base_port + 1} CONVEYOR_TOKEN={DEMO_TOKEN} "
            "uv run conveyor versions"
        )
        console.print("Press Ctrl-C to stop every service.")
        signal.sigwait(_STOP_SIGNALS)
        return 0 if healthy else 1
    finally:
        stop(services)
        console.print("stopped: " + ", ".join(f"{s.name} ({s.process.returncode})" for s in services))


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    sys.exit(main())
