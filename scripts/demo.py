"""``make demo``: start Conveyor against the local broker and send a change from dev to QA.

Creates the ``dev``, ``qa`` and ``prod`` vhosts if they are missing, starts the
services (version-db on SQLite) and three changelog listeners — ``dev-web-1``
watching the source package ``.demo/nodes/dev-web-1/web``, ``qa-web-1`` and
``qa-web-2`` holding its releases — waits until each reports healthy and
prints a table. Then it edits the dev package twice; each edit becomes a
version and a changeset, which the demo (standing in for the deployer's
promotions) sends to both QA nodes; their replies and the versions version-db
records are printed. Everything keeps running until Ctrl-C (``--once`` stops
right after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit
from uuid import uuid4

import httpx
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from conveyor.bus import Bus
from conveyor.contracts import ChangesetApplied, ChangesetApply, ChangesetCreated, ChangesetFailed
from conveyor.observability import configure_logging
from conveyor.runtime import Health
from conveyor.settings import DEFAULT_ENVS, BusSettings
from conveyor.signing import SigningKey, unsigned_authorization
from conveyor.testing.services import RabbitEndpoint
from conveyor.testing.tap import EventTap

SERVICES = ("deployer", "version-db", "notifier", "firewall-agent")
LISTENERS = {"dev-web-1": "dev", "qa-web-1": "qa", "qa-web-2": "qa"}  # node → env
SOURCE = "dev-web-1"
LOG_DIR = Path(".demo")
NODES_DIR = LOG_DIR / "nodes"
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
DEMO_TOKEN = secrets.token_urlsafe(18)  # a reader token for this demo run only
DEPLOYER_TOKEN = secrets.token_urlsafe(18)  # lets the dev listener store its changesets
SIGNING_KEY = SigningKey.generate()  # this demo run's deployment server key; the QA listeners trust it
console = Console()


@dataclass
class Running:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    extra: dict[str, str] = field(default_factory=dict)


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


def listener_env(node: str, store_url: str) -> dict[str, str]:
    prefix = "CONVEYOR_CHANGELOG_LISTENER_"
    root = (NODES_DIR / node / "web").resolve()
    package: dict[str, object] = {
        "name": "web",
        "root": str(root),
        "role": "source" if node == SOURCE else "target",
    }
    if node != SOURCE:
        package["health_check"] = {"command": ["test", "-s", str(root / "current" / "index.html")]}
    return {
        f"{prefix}ENV": LISTENERS[node],
        f"{prefix}NODE": node,
        f"{prefix}PACKAGES": json.dumps([package]),
        f"{prefix}STATE_DIR": str((NODES_DIR / node / "state").resolve()),
        f"{prefix}ARTIFACT_STORE_URL": store_url,
        f"{prefix}ARTIFACT_STORE_TOKEN": DEPLOYER_TOKEN if node == SOURCE else DEMO_TOKEN,
        f"{prefix}TRUSTED_KEYS_FILE": str((NODES_DIR / "trusted-keys").resolve()),
        f"{prefix}SERVICE_MANAGER": "none",  # the demo's package is static files: nothing to restart
        f"{prefix}QUIET_PERIOD_S": "0.5",
        f"{prefix}RESCAN_INTERVAL_S": "5",
        f"{prefix}HEARTBEAT_INTERVAL_S": "5",
    }


def start(name: str, port: int, extra: dict[str, str] | None = None) -> Running:
    service = name.split(" ", maxsplit=1)[0]
    prefix = f"CONVEYOR_{service.upper().replace('-', '_')}_"
    env = {
        **os.environ,
        f"{prefix}HTTP_PORT": str(port),
        f"{prefix}NODE": "demo-node-1",
        f"{prefix}STATE_DIR": str((LOG_DIR / "state" / service).resolve()),
        # version-db on the embedded default (SQLite), kept with the demo's logs
        f"{prefix}DATABASE_URL": f"sqlite+aiosqlite:///{(LOG_DIR / 'version-db.sqlite3').resolve()}",
        f"{prefix}ARTIFACTS_DIR": str((LOG_DIR / "artifacts").resolve()),
        f"{prefix}API_TOKENS": json.dumps({"reader": [DEMO_TOKEN], "deployer": [DEPLOYER_TOKEN]}),
        **(extra or {}),
    }
    log = (LOG_DIR / f"{name.replace(' ', '-')}.log").open("wb")
    script = Path(sys.executable).parent / f"conveyor-{service}"
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
            service.process.wait()


async def send_change(store_url: str, text: str) -> bool:
    """Edit the dev package, wait for its changeset, send it to both QA nodes, show the replies."""
    async with (
        EventTap(DEFAULT_ENVS["dev"], ["changeset.created"]) as dev,
        EventTap(DEFAULT_ENVS["qa"], ["changeset.applied", "changeset.failed"]) as qa,
    ):
        (NODES_DIR / SOURCE / "web" / "index.html").write_text(text)
        created = (await dev.expect(ChangesetCreated, timeout=60)).payload
        console.print(
            f"dev-web-1 committed [bold]{created.version[:12]}[/] and stored changeset "
            f"{created.changeset_id[:12]} ({created.archive_size} bytes: {created.files_added} added, "
            f"{created.files_modified} modified)"
        )
        bus = Bus(env="qa", url=DEFAULT_ENVS["qa"], service="deployer", settings=BusSettings())
        await bus.connect()
        try:
            sent = []
            for node in (n for n, env in LISTENERS.items() if env == "qa"):
                command = ChangesetApply(
                    deployment_id=uuid4(),
                    node=node,
                    changeset_id=created.changeset_id,
                    package=created.package,
                    parent_version=created.parent_version,
                    version=created.version,
                    archive_url=f"{store_url}/artifacts/{created.changeset_id}",
                    authorization=unsigned_authorization(),  # signed below
                )
                envelope = SIGNING_KEY.sign(bus.wrap(command), role="deployer", ttl_s=300)
                await bus.publish(envelope)
                sent.append(envelope)
        finally:
            await bus.close()
        table = Table("node", "outcome", "version", "steps (ms)")
        ok = True
        for envelope in sent:
            reply = (await qa.caused_by(envelope, timeout=60)).payload
            if isinstance(reply, ChangesetApplied):
                steps = ", ".join(f"{k} {v * 1000:.0f}" for k, v in reply.steps.items())
                table.add_row(reply.node, "[green]applied[/]", reply.version[:12], steps)
            else:
                assert isinstance(reply, ChangesetFailed)
                ok = False
                table.add_row(reply.node, f"[red]failed at {reply.stage}[/]", reply.version[:12], reply.error)
        console.print(table)
    return ok


def show_versions(version_db_port: int) -> None:
    response = httpx.get(
        f"http://127.0.0.1:{version_db_port}/nodes",
        params={"env": "qa"},
        headers={"Authorization": f"Bearer {DEMO_TOKEN}"},
        timeout=10,
    )
    table = Table("node (version-db)", "web")
    for node in response.json():
        table.add_row(node["name"], (node["versions"].get("web") or "-")[:12])
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="stop the services after showing their health")
    parser.add_argument("--management-url", default="http://127.0.0.1:15672")
    parser.add_argument("--base-port", type=int, default=8100, help="services listen on this port and up")
    args = parser.parse_args()

    configure_logging(service="demo", level="warning", fmt="console")  # the demo's own bus: quiet
    ensure_vhosts(args.management_url)
    LOG_DIR.mkdir(exist_ok=True)
    shutil.rmtree(NODES_DIR, ignore_errors=True)  # every demo starts from an empty package
    (NODES_DIR / SOURCE / "web").mkdir(parents=True)
    (NODES_DIR / "trusted-keys").write_text(SIGNING_KEY.public_key_text() + "\n")
    store_url = f"http://127.0.0.1:{args.base_port + 1}"
    names = [*SERVICES, *(f"changelog-listener {node}" for node in LISTENERS)]
    services = [
        start(
            name,
            args.base_port + offset,
            listener_env(name.split(" ")[1], store_url) if " " in name else None,
        )
        for offset, name in enumerate(names)
    ]
    try:
        healthy = show(services, wait_until_healthy(services, timeout=30))
        if not healthy:
            return 1
        console.print("\n[bold]A change travels from dev to QA[/] (the demo sends the apply commands)")
        travelled = asyncio.run(send_change(store_url, "<h1>hello from dev</h1>\n"))
        travelled = travelled and asyncio.run(send_change(store_url, "<h1>hello again</h1>\n"))
        time.sleep(0.5)  # version-db records the replies as they come
        show_versions(args.base_port + 1)
        console.print(
            "qa-web-1 serves: "
            + (NODES_DIR / "qa-web-1" / "web" / "current" / "index.html").read_text().strip()
        )
        if args.once:
            return 0 if travelled else 1
        console.print(
            "Health at http://127.0.0.1:<port>/healthz, logs in .demo/. Try, in another shell:\n"
            "  uv run conveyor events tail --env dev\n"
            f"  echo hi > {NODES_DIR / SOURCE / 'web' / 'new.txt'}   # a new changeset on dev\n"
            f"  uv run conveyor changeset releases --root {NODES_DIR / 'qa-web-1' / 'web'}\n"
            f"  CONVEYOR_VERSION_DB_URL={store_url} CONVEYOR_TOKEN={DEMO_TOKEN} uv run conveyor versions"
        )
        console.print("Press Ctrl-C to stop every service.")
        signal.sigwait(_STOP_SIGNALS)
        return 0 if travelled else 1
    finally:
        stop(services)
        console.print(
            "stopped: " + ", ".join(f"{s.name} ({s.process.returncode})" for s in services), soft_wrap=True
        )


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    sys.exit(main())
