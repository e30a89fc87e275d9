"""``make demo``: start Conveyor against the local broker and promote a change dev → qa → prod.

Empties the ``dev``, ``qa`` and ``prod`` vhosts (deleted and created again), starts the
services (version-db on SQLite, the deployer with a demo inventory and
signing key) and four changelog listeners — ``dev-web-1`` watching the source
package ``.demo/nodes/dev-web-1/web``, ``qa-web-1``, ``qa-web-2`` and
``prod-web-1`` holding its releases — and prints their health. Then: an edit
on dev becomes a version; ada promotes it to qa, then to prod, which needs a
second person (ada's own approval is refused, grace approves); a second edit
goes to qa and is rolled back, which blocks it. Last, grace opens the firewall
of ``qa-web-1`` for a few seconds: the node's firewall is nftables in a network
namespace the demo makes (run as root with nftables installed; otherwise that
part is skipped and the firewall agent answers for no node), and its agent
restores it when the lease ends. At the end, what the notifier told: every message of its log
receiver, and the email that reached on-call through an SMTP server the demo runs on loopback, and
``conveyor rabbit status`` for the local broker's three vhosts.
Everything keeps running until Ctrl-C (``--once`` stops right after).
"""

from __future__ import annotations

import argparse
import contextlib
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
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import yaml
from demo_notify import notifier_env, show_notifications, smtp_sink
from demo_rabbit import rabbit_env, show_rabbit_status
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from conveyor.cli.deploy import render
from conveyor.observability import configure_logging
from conveyor.pkgvcs import Package
from conveyor.runtime import Health
from conveyor.settings import DEFAULT_ENVS
from conveyor.signing import SigningKey
from conveyor.testing.firewalls import BLOCKED, FirewallSetupError, require, setup_nftables
from conveyor.testing.netns import NamespaceError, NodeNamespaces
from conveyor.testing.services import RabbitEndpoint

SERVICES = ("deployer", "version-db", "notifier", "firewall-agent")
LISTENERS = {"dev-web-1": "dev", "qa-web-1": "qa", "qa-web-2": "qa", "prod-web-1": "prod"}  # node → env
USERS = {name: secrets.token_urlsafe(18) for name in ("ada", "grace")}  # the demo's two engineers
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


def reset_vhosts(management_url: str) -> None:
    """The demo's dev, qa and prod vhosts, emptied: queues left by an earlier run hold its messages."""
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
        vhost = unquote(urlsplit(url).path.lstrip("/"))
        rabbit.delete_vhost(vhost)
        rabbit.create_vhost(vhost)


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
        # the deployer: the demo's inventory, its users, its signing key, the artifact store
        f"{prefix}INVENTORY_FILE": str((LOG_DIR / "inventory.yaml").resolve()),
        f"{prefix}USERS": json.dumps({n: {"token": t, "role": "deployer"} for n, t in USERS.items()}),
        f"{prefix}SIGNING_KEY_FILE": str((LOG_DIR / "signing.key").resolve()),
        f"{prefix}ARTIFACT_STORE_TOKEN": DEPLOYER_TOKEN,
        f"{prefix}HEARTBEAT_STALE_S": "15",
        f"{prefix}NODE_TIMEOUT_S": "60",
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


INVENTORY = {
    "environments": [
        {"name": "dev", "clusters": []},  # the source: versions are made there
        {
            "name": "qa",
            "clusters": [
                {
                    "name": "web",
                    "nodes": [
                        {
                            "name": n,
                            "address": "127.0.0.1",
                            "labels": {"role": "web"},
                            "packages": {"web": []},
                        }
                        for n in ("qa-web-1", "qa-web-2")
                    ],
                }
            ],
        },
        {
            "name": "prod",
            "approval": True,
            "clusters": [
                {
                    "name": "web",
                    "nodes": [{"name": "prod-web-1", "address": "127.0.0.1", "packages": {"web": []}}],
                }
            ],
        },
    ]
}


class Deployer:
    """The deployer's API, as the demo's engineers use it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, user: str, body: object = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {USERS[user]}"}
        return httpx.request(method, f"{self.url}{path}", json=body, headers=headers, timeout=30)

    def ask(self, method: str, path: str, user: str, body: object = None) -> dict[str, Any]:
        """A request that must succeed; the demo stops, saying why, if it does not."""
        response = self.call(method, path, user, body)
        if response.is_error:
            raise SystemExit(f"error: {method} {path} as {user}: {response.status_code} {response.text}")
        answer: dict[str, Any] = response.json()
        return answer

    def ask_list(self, method: str, path: str, user: str) -> list[dict[str, Any]]:
        response = self.call(method, path, user)
        if response.is_error:
            raise SystemExit(f"error: {method} {path} as {user}: {response.status_code} {response.text}")
        answer: list[dict[str, Any]] = response.json()
        return answer

    def final(self, promotion_id: str, timeout: float = 120) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while True:
            promotion: dict[str, object] = self.call("GET", f"/promotions/{promotion_id}", "ada").json()
            if promotion["state"] in ("succeeded", "failed") or time.monotonic() > deadline:
                return promotion
            time.sleep(0.2)

    def wait_alive(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.call("GET", "/nodes", "ada").json()
            if rows and all(r["alive"] for r in rows):
                return
            time.sleep(0.2)


def edit(text: str, timeout: float = 60) -> str:
    """Edit the dev package; the version once the deployer has it."""
    root = NODES_DIR / SOURCE / "web"
    (root / "index.html").write_text(text)
    mirror = LOG_DIR / "state" / "deployer" / "mirror" / "packages" / "web" / "releases"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head = Package(root).head() if (root / ".conveyor" / "HEAD").exists() else None
        if head and (mirror / head / ".conveyor" / "HEAD").exists() and not Package(root).status():
            console.print(f"dev-web-1 committed [bold]{head[:12]}[/] and shipped its changeset")
            return head
        time.sleep(0.1)
    raise SystemExit("error: the change never reached the deployer (see .demo/*.log)")


FIREWALL_NODE = "qa-web-1"
LEASE_S = 5


def firewall_node(stack: contextlib.ExitStack) -> NodeNamespaces | None:
    """qa-web-1's firewall: nftables with a default-drop input policy in a network namespace of the demo's
    own, a service on a port it blocks; None (and why) when this machine cannot have it."""
    try:
        require("nft")
        namespaces = stack.enter_context(NodeNamespaces())
        setup_nftables(namespaces, LOG_DIR)
        stack.enter_context(namespaces.listen_tcp(BLOCKED))
    except (FirewallSetupError, NamespaceError) as exc:
        console.print(f"[yellow]the firewall part is skipped:[/] {exc}")
        return None
    return namespaces


def firewall_story(deployer: Deployer, namespaces: NodeNamespaces) -> bool:
    """grace opens qa-web-1's firewall for a few seconds; its agent restores it when the lease ends."""
    from conveyor.cli.firewall import _show  # noqa: PLC0415 - the CLI's own table

    def state() -> str:
        return "reachable" if namespaces.reachable(BLOCKED) else "blocked"

    console.print(
        f"\n[bold]grace opens {FIREWALL_NODE}'s firewall for {LEASE_S} s[/] (port {BLOCKED}: {state()})"
    )
    body = {
        "action": "disable",
        "servers": [FIREWALL_NODE],
        "lease_s": LEASE_S,
        "reason": "demo: look at the service from outside",
    }
    answer = deployer.ask("POST", "/firewall/requests", "grace", body)
    ok = _show(answer, "disable") == 0
    opened = state()
    console.print(f"port {BLOCKED} from outside: {opened}")
    deadline = time.monotonic() + LEASE_S + 20
    while time.monotonic() < deadline:
        rows = {r["node"]: r for r in deployer.ask_list("GET", "/firewall/status?env=qa", "ada")}
        if rows[FIREWALL_NODE]["state"] == "enabled":
            break
        time.sleep(0.2)
    row = rows[FIREWALL_NODE]
    closed = state()
    console.print(
        f"the lease ended: {FIREWALL_NODE} restored its firewall ({row['reason']}); port {BLOCKED}: {closed}"
    )
    return ok and opened == "reachable" and row["state"] == "enabled" and closed == "blocked"


def story(deployer: Deployer) -> bool:
    """The demo's engineers at work; True if everything went as it should."""
    ok = True
    deployer.wait_alive()
    edit("<h1>hello from dev</h1>\n")

    console.print("\n[bold]ada promotes it to qa[/]: canary first, then the rest")
    qa = deployer.ask("POST", "/promotions", "ada", {"package": "web", "to_env": "qa", "wave_size": "50%"})
    qa = deployer.final(str(qa["id"]))
    console.print(render(qa))
    ok = ok and qa["state"] == "succeeded"

    console.print("\n[bold]ada promotes it to prod[/], which needs a second person")
    prod = deployer.ask("POST", "/promotions", "ada", {"package": "web", "to_env": "prod"})
    console.print(f"promotion {prod['id']} is {prod['state']}")
    own = deployer.call("POST", f"/promotions/{prod['id']}/approve", "ada")
    console.print(f"ada approves her own promotion: {own.status_code} {own.json()['detail']}")
    ok = ok and own.status_code == 403
    deployer.ask("POST", f"/promotions/{prod['id']}/approve", "grace")
    prod = deployer.final(str(prod["id"]))
    console.print(render(prod))
    ok = ok and prod["state"] == "succeeded"

    console.print("\n[bold]A second change goes to qa, and grace rolls it back[/]")
    bad = edit("<h1>hello, broken</h1>\n")
    again = deployer.call(
        "POST", "/promotions", "ada", {"package": "web", "to_env": "qa", "wave_size": "100%"}
    )
    ok = ok and deployer.final(str(again.json()["id"]))["state"] == "succeeded"
    console.print("qa-web-1 serves: " + served("qa-web-1"))
    back = deployer.call(
        "POST", "/rollbacks", "grace", {"package": "web", "env": "qa", "reason": "demo"}
    ).json()
    back = deployer.final(str(back["id"]))
    console.print(render(back))
    ok = ok and back["state"] == "succeeded"
    blocked = deployer.ask("GET", "/blocked", "ada")
    console.print(f"blocked now: web {bad[:12]} ({blocked['web'][bad]['reason']})")
    refused = deployer.call("POST", "/promotions", "ada", {"package": "web", "to_env": "qa", "version": bad})
    console.print(f"promoting it again: {refused.status_code} {refused.json()['detail']}")
    ok = ok and refused.status_code == 409
    for node in ("qa-web-1", "qa-web-2", "prod-web-1"):
        console.print(f"{node} serves: {served(node)}")
    return ok


def served(node: str) -> str:
    return (NODES_DIR / node / "web" / "current" / "index.html").read_text().strip()


def show_versions(version_db_port: int) -> None:
    response = httpx.get(
        f"http://127.0.0.1:{version_db_port}/nodes",
        headers={"Authorization": f"Bearer {DEMO_TOKEN}"},
        timeout=10,
    )
    table = Table("env", "node (version-db)", "web")
    for node in response.json():
        table.add_row(node["env"], node["name"], (node["versions"].get("web") or "-")[:12])
    console.print(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="stop the services after showing their health")
    parser.add_argument("--management-url", default="http://127.0.0.1:15672")
    parser.add_argument("--base-port", type=int, default=8100, help="services listen on this port and up")
    args = parser.parse_args()

    configure_logging(service="demo", level="warning", fmt="console")  # the demo's own bus: quiet
    reset_vhosts(args.management_url)
    shutil.rmtree(LOG_DIR, ignore_errors=True)  # every demo starts afresh: empty package, no history
    (NODES_DIR / SOURCE / "web").mkdir(parents=True)
    (NODES_DIR / "trusted-keys").write_text(SIGNING_KEY.public_key_text() + "\n")
    SIGNING_KEY.save(LOG_DIR / "signing.key")
    (LOG_DIR / "inventory.yaml").write_text(yaml.safe_dump(INVENTORY))
    store_url = f"http://127.0.0.1:{args.base_port + 1}"
    names = [*SERVICES, *(f"changelog-listener {node}" for node in LISTENERS)]
    stack = contextlib.ExitStack()
    namespaces = firewall_node(stack)
    mailbox, smtp_port = stack.enter_context(smtp_sink())
    deployer_url = f"http://127.0.0.1:{args.base_port}"
    notifier_url = f"http://127.0.0.1:{args.base_port + names.index('notifier')}"
    extras: dict[str, dict[str, str]] = {
        "deployer": {
            "CONVEYOR_DEPLOYER_ARTIFACT_STORE_URL": store_url,
            **rabbit_env(LOG_DIR, args.management_url, "guest", "guest"),
        },
        "notifier": notifier_env(LOG_DIR, smtp_port=smtp_port, users=USERS, deployer_url=deployer_url),
    }
    if namespaces is not None:  # the agent acts on the namespace's firewall, never this machine's
        extras["firewall-agent"] = {
            "CONVEYOR_FIREWALL_AGENT_NODE": FIREWALL_NODE,
            "CONVEYOR_FIREWALL_AGENT_ENV": "qa",
            "CONVEYOR_FIREWALL_AGENT_NETNS": namespaces.node,
            "CONVEYOR_FIREWALL_AGENT_TRUSTED_KEYS_FILE": str((NODES_DIR / "trusted-keys").resolve()),
        }
    services = [
        start(
            name,
            args.base_port + offset,
            listener_env(name.split(" ")[1], store_url) if " " in name else extras.get(name),
        )
        for offset, name in enumerate(names)
    ]
    try:
        healthy = show(services, wait_until_healthy(services, timeout=30))
        if not healthy:
            return 1
        travelled = story(Deployer(deployer_url))
        if namespaces is not None:
            travelled = firewall_story(Deployer(deployer_url), namespaces) and travelled
        time.sleep(0.5)  # version-db records the last replies as they come
        show_versions(args.base_port + 1)
        told = show_notifications(console, notifier_url, USERS["grace"], mailbox)
        watched = show_rabbit_status(deployer_url, USERS["grace"])
        travelled = told and watched and travelled
        if args.once:
            return 0 if travelled else 1
        console.print(
            "Health at http://127.0.0.1:<port>/healthz, logs in .demo/. Try, in another shell:\n"
            "  uv run conveyor events tail --env dev\n"
            f"  echo hi > {NODES_DIR / SOURCE / 'web' / 'new.txt'}   # a new changeset on dev\n"
            f"  uv run conveyor changeset releases --root {NODES_DIR / 'qa-web-1' / 'web'}\n"
            f"  CONVEYOR_VERSION_DB_URL={store_url} CONVEYOR_TOKEN={DEMO_TOKEN} uv run conveyor versions\n"
            f"  CONVEYOR_DEPLOYER_URL=http://127.0.0.1:{args.base_port} "
            f"CONVEYOR_DEPLOYER_TOKEN={USERS['ada']} uv run conveyor promote web --to qa --watch\n"
            f"  CONVEYOR_NOTIFIER_URL={notifier_url} CONVEYOR_NOTIFIER_TOKEN={USERS['grace']} "
            "uv run conveyor alerts list"
        )
        console.print("Press Ctrl-C to stop every service.")
        signal.sigwait(_STOP_SIGNALS)
        return 0 if travelled else 1
    finally:
        stop(services)
        stack.close()
        console.print(
            "stopped: " + ", ".join(f"{s.name} ({s.process.returncode})" for s in services), soft_wrap=True
        )


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    sys.exit(main())
