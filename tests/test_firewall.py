"""Firewall control end to end, inside network namespaces made by the tests (never the host's firewall):
one namespace per firewall configuration (nftables, iptables-nft, iptables-legacy, ufw, firewalld), a
firewall agent per node acting on it, the deployer with its policy and signing key, version-db keeping
the audit records, RabbitMQ between them, and ``conveyor firewall`` / ``conveyor audit verify`` as the
operators use them. The tests of this module share one estate and run in file order."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from uuid import uuid4

import httpx
import pytest

from conveyor.bus import Bus
from conveyor.bus.topology import persistent_message
from conveyor.contracts import Envelope
from conveyor.contracts.catalogue import FirewallDisable, FirewallEnable, FirewallEnabled, FirewallRejected
from conveyor.settings import BusSettings
from conveyor.signing import SigningKey, unsigned_authorization
from conveyor.testing.firewalls import BLOCKED, FIREWALLS, Firewall, require
from conveyor.testing.netns import NodeNamespaces
from conveyor.testing.services import RabbitEndpoint, free_port
from conveyor.testing.sshd import SSHD_PATH, SshNode, client_key
from conveyor.testing.tap import EventTap
from conveyor_firewall_agent.backends import Runner, detect

from .deploy_world import READER_TOKEN, Estate, build_estate
from .test_services import wait_healthy

pytestmark = pytest.mark.rabbitmq

POLICY = {
    "qa": {"roles": ["deployer", "admin"], "max_lease_s": 600},
    "prod": {"roles": ["deployer", "admin"], "max_lease_s": 300, "approvals": 1},
}
AGENT_USER = f"fw-agents-{secrets.token_hex(4)}"
AGENT_PASSWORD = secrets.token_hex(12)


@dataclass
class FirewallNode:
    name: str
    env: str
    firewall: Firewall
    namespaces: NodeNamespaces
    state: Path
    port: int
    bus_socket: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def audit_file(self) -> Path:
        return self.state / "audit.jsonl"

    async def listing(self) -> str:
        backend = await detect(Runner(netns=self.namespaces.node), self.firewall.backend)
        return await backend.listing()

    def reachable(self) -> bool:
        return self.namespaces.reachable(BLOCKED)


@dataclass
class World:
    estate: Estate
    rabbit: RabbitEndpoint
    ssh: SshNode
    nodes: dict[str, FirewallNode]
    vhosts: dict[str, str]

    def agent_env(self, node: FirewallNode) -> dict[str, str]:
        p = "CONVEYOR_FIREWALL_AGENT_"
        urls = {
            env: self.rabbit.url_for(vhost).replace(
                f"{self.rabbit.user}:{self.rabbit.password}@", f"{AGENT_USER}:{AGENT_PASSWORD}@"
            )
            for env, vhost in self.vhosts.items()
        }
        return {
            "PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/sbin:/bin",
            "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={node.bus_socket}",  # firewalld's, in its namespace
            f"{p}ENVS": json.dumps(urls),
            f"{p}ENV": node.env,
            f"{p}NODE": node.name,
            f"{p}HTTP_PORT": str(node.port),
            f"{p}LOG_FORMAT": "json",
            f"{p}STATE_DIR": str(node.state),
            f"{p}TRUSTED_KEYS_FILE": str(self.estate.trusted_path),
            f"{p}NETNS": node.namespaces.node,
            f"{p}BUS__RETRY_DELAYS_S": "[0.2, 0.5]",
            f"{p}BUS__RECONNECT_INTERVAL_S": "0.3",
        }

    def start_agent(self, node: FirewallNode) -> None:
        node.process = self.estate._spawn(
            "conveyor-firewall-agent", self.agent_env(node), f"agent-{node.name}.log"
        )
        wait_healthy(node.port, node.process, timeout=30)

    def kill_agent(self, node: FirewallNode) -> None:
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()

    def cli(self, *args: str, user: str = "ada") -> subprocess.CompletedProcess[str]:
        return self.estate.cli(*args, user=user)

    def request(self, user: str, **body: Any) -> dict[str, Any]:
        response = self.estate.api("POST", "/firewall/requests", user=user, body=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def audit(self, node: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        for action in ("firewall.disabled", "firewall.enabled", "firewall.rejected"):
            response = httpx.get(
                f"{self.estate.store_url}/audit",
                params={"action": action, "target": node, "limit": 500},
                headers={"Authorization": f"Bearer {READER_TOKEN}"},
                timeout=10,
            )
            response.raise_for_status()
            items += response.json()["items"]
        return items


def _agent_user(rabbit: RabbitEndpoint, vhosts: list[str], *, allowed: bool) -> None:
    """The agents' own broker user; without permissions (and its connections closed) the broker is out
    of their reach while everything else goes on."""
    with rabbit.admin() as admin:
        admin.put(
            f"/api/users/{AGENT_USER}", json={"password": AGENT_PASSWORD, "tags": ""}
        ).raise_for_status()
        for vhost in vhosts:
            path = f"/api/permissions/{quote(vhost, safe='')}/{AGENT_USER}"
            if allowed:
                admin.put(path, json={"configure": ".*", "write": ".*", "read": ".*"}).raise_for_status()
            else:
                admin.delete(path)
        if not allowed:
            for connection in admin.get("/api/connections").json():
                if connection.get("user") == AGENT_USER:
                    admin.delete(f"/api/connections/{quote(connection['name'], safe='')}")


@pytest.fixture(scope="module")
def world(rabbit: RabbitEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if not SSHD_PATH.is_file():
        pytest.fail(f"{SSHD_PATH} is missing: install the OpenSSH server (apt-get install openssh-server)")
    tmp = tmp_path_factory.mktemp("firewall")
    estate, vhost_list = build_estate(rabbit, tmp, {})
    vhosts = dict(zip(("dev", "qa", "prod"), vhost_list, strict=True))
    _agent_user(rabbit, vhost_list, allowed=True)
    _, public = client_key(tmp / "deployer-ssh")
    ssh = SshNode(tmp / "sshd", "firewall-nodes")  # the deployer reads the agents' audit logs through it
    ssh.authorize(public)
    layout = [(f"qa-{f.backend}", "qa", f) for f in FIREWALLS] + [("prod-fw-1", "prod", FIREWALLS[0])]
    nodes: dict[str, FirewallNode] = {}
    try:
        ssh.start()
        for name, env, firewall in layout:
            require(*firewall.tools)
            namespaces = NodeNamespaces().__enter__()
            node_tmp = tmp / name
            node_tmp.mkdir()
            node = FirewallNode(
                name,
                env,
                firewall,
                namespaces,
                node_tmp / "state",
                free_port(),
                node_tmp / "system_bus_socket",
            )
            nodes[name] = node
            firewall.setup(namespaces, node_tmp)
            namespaces.spawn_in_node(*_listener())  # the service the firewall protects
        for name, env, _ in layout:
            estate.extra_nodes.setdefault(env, []).append(
                {
                    "name": name,
                    "address": ssh.address,
                    "ssh_port": ssh.port,
                    "ssh_user": "root",
                    "labels": {"fw": "yes"},
                }
            )
        estate.deployer_env = {
            "CONVEYOR_DEPLOYER_FIREWALL_POLICY": json.dumps(POLICY),
            "CONVEYOR_DEPLOYER_FIREWALL_REPLY_TIMEOUT_S": "30",  # firewalld reloads slowly under load
            "CONVEYOR_DEPLOYER_FIREWALL_AUDIT_FILE": str(tmp / "{node}" / "state" / "audit.jsonl"),
        }
        if "qa-firewalld" in nodes:  # the test's own firewall-cmd calls (listings) ask that node's bus
            os.environ["DBUS_SYSTEM_BUS_ADDRESS"] = f"unix:path={nodes['qa-firewalld'].bus_socket}"
        estate.start_version_db()
        estate.start_deployer()
        w = World(estate, rabbit, ssh, nodes, vhosts)
        for node in nodes.values():
            w.start_agent(node)
        for node in nodes.values():
            _wait_listening(node)
        yield w
    finally:
        os.environ.pop("DBUS_SYSTEM_BUS_ADDRESS", None)
        for node in nodes.values():
            estate.stop(node.process)
            node.namespaces.close()
        estate.stop(estate.deployer)
        estate.stop(estate.version_db)
        ssh.stop()
        with rabbit.admin() as admin:
            admin.delete(f"/api/users/{AGENT_USER}")
        for vhost in vhost_list:
            rabbit.delete_vhost(vhost)


def _listener() -> list[str]:
    source = (
        "import socket\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('0.0.0.0', {BLOCKED}))\ns.listen(64)\n"
        "while True:\n    c, _ = s.accept()\n    c.sendall(b'conveyor-listener\\n')\n    c.close()\n"
    )
    return [sys.executable, "-I", "-S", "-c", source]


def _wait_listening(node: FirewallNode) -> None:
    deadline = time.monotonic() + 10
    while node.namespaces.run_in_node(
        "python3", "-c", f"import socket; socket.create_connection(('127.0.0.1', {BLOCKED}), 1)", check=False
    ).returncode:
        assert time.monotonic() < deadline, f"the listener in {node.name} did not start"
        time.sleep(0.05)


async def until(check: Any, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


def rows(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    data = json.loads(result.stdout)
    return {row["node"]: row for row in data["results"]}


# -- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", [f.backend for f in FIREWALLS])
async def test_disable_opens_and_enable_restores_exactly_on_every_configuration(
    world: World, backend: str
) -> None:
    node = world.nodes[f"qa-{backend}"]
    before = await node.listing()
    assert not await asyncio.to_thread(node.reachable)

    done = await asyncio.to_thread(
        world.cli,
        "firewall",
        "disable",
        "--servers",
        node.name,
        "--for",
        "10m",
        "--reason",
        "debug",
        "--json",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    row = rows(done)[node.name]
    assert row["result"] == "disabled", row
    assert row["backend"] == backend
    assert await asyncio.to_thread(node.reachable)

    status = (await asyncio.to_thread(world.estate.api, "GET", "/firewall/status?env=qa")).json()
    shown = {r["node"]: r for r in status}[node.name]
    assert (shown["state"], shown["backend"], shown["actor"], shown["reason"]) == (
        "disabled",
        backend,
        "ada",
        "debug",
    )

    again = await asyncio.to_thread(
        world.cli, "firewall", "enable", "--servers", node.name, "--reason", "done", "--json"
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert rows(again)[node.name]["result"] == "enabled"
    assert not await asyncio.to_thread(node.reachable)
    assert await node.listing() == before

    noop = await asyncio.to_thread(
        world.cli, "firewall", "enable", "--servers", node.name, "--reason", "x", "--json"
    )
    assert rows(noop)[node.name]["result"] == "already enabled"

    # and when a lease ends, the node restores it by itself
    short = await asyncio.to_thread(
        world.cli, "firewall", "disable", "--servers", node.name, "--for", "6s", "--reason", "brief", "--json"
    )
    assert rows(short)[node.name]["result"] == "disabled", short.stdout
    assert await asyncio.to_thread(node.reachable)
    await until(lambda: not node.reachable(), "not restored when the lease ended", timeout=15)
    assert await node.listing() == before


async def test_the_lease_ends_on_the_node_with_the_broker_and_the_deployer_gone(world: World) -> None:
    node = world.nodes["qa-nftables"]
    before = await node.listing()
    done = await asyncio.to_thread(
        world.cli, "firewall", "disable", "--servers", node.name, "--for", "6s", "--reason", "short", "--json"
    )
    assert rows(done)[node.name]["result"] == "disabled", done.stdout
    expires = datetime.fromisoformat(rows(done)[node.name]["lease_expires_at"])
    assert await asyncio.to_thread(node.reachable)
    world.estate.stop(world.estate.deployer)
    await asyncio.to_thread(_agent_user, world.rabbit, list(world.vhosts.values()), allowed=False)
    try:
        await until(
            lambda: not node.reachable(), "the firewall was not restored at the lease's end", timeout=15
        )
        assert datetime.now(UTC) >= expires
        assert await node.listing() == before
    finally:
        await asyncio.to_thread(_agent_user, world.rabbit, list(world.vhosts.values()), allowed=True)
        world.estate.start_deployer()
    # the agent's report reaches version-db and the deployer once the broker is back
    await until(
        lambda: any(
            r["outcome"] == "enabled" and r["detail"].get("trigger") == "lease_expired"
            for r in world.audit(node.name)
        ),
        "version-db never heard of the expiry",
        timeout=30,
    )


async def test_an_agent_killed_during_a_lease_restores_at_start_after_the_expiry(world: World) -> None:
    node = world.nodes["qa-iptables-nft"]
    before = await node.listing()
    done = await asyncio.to_thread(
        world.cli, "firewall", "disable", "--servers", node.name, "--for", "6s", "--reason", "crash", "--json"
    )
    assert rows(done)[node.name]["result"] == "disabled", done.stdout
    expires = datetime.fromisoformat(rows(done)[node.name]["lease_expires_at"])
    world.kill_agent(node)
    # nobody restores it while the agent is down
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.5)
    assert await asyncio.to_thread(node.reachable)
    async with EventTap(world.estate.urls["qa"], ["firewall.#"]) as tap:
        await asyncio.to_thread(world.start_agent, node)
        restored = await tap.expect(FirewallEnabled, lambda e: e.payload.node == node.name, timeout=20)
    assert restored.payload.trigger == "agent_start"
    assert not await asyncio.to_thread(node.reachable)
    assert await node.listing() == before


async def test_a_second_disable_extends_only_up_to_the_policy_maximum(world: World) -> None:
    node = world.nodes["qa-iptables-legacy"]
    first = world.request("ada", action="disable", servers=[node.name], lease_s=300, reason="first")
    assert first["results"][0]["result"] == "disabled", first
    second = world.request("grace", action="disable", servers=[node.name], lease_s=600, reason="more")
    assert second["results"][0]["result"] == "already disabled, lease extended (capped at the maximum)"
    start = datetime.fromisoformat(first["results"][0]["lease_expires_at"]) - timedelta(seconds=300)
    capped = datetime.fromisoformat(second["results"][0]["lease_expires_at"])
    assert abs((capped - start).total_seconds() - 600) < 2  # the first disable plus qa's maximum
    world.request("grace", action="enable", servers=[node.name], reason="done")
    assert not await asyncio.to_thread(node.reachable)


async def test_prod_needs_a_second_person(world: World) -> None:
    node = world.nodes["prod-fw-1"]
    asked = world.request("ada", action="disable", servers=[node.name], lease_s=60, reason="incident 42")
    assert asked["state"] == "awaiting_approval"
    assert not await asyncio.to_thread(node.reachable)
    own = await asyncio.to_thread(
        world.estate.api, "POST", f"/firewall/requests/{asked['id']}/approve", user="ada"
    )
    assert own.status_code == 403
    viewer = await asyncio.to_thread(
        world.estate.api, "POST", f"/firewall/requests/{asked['id']}/approve", user="viewer"
    )
    assert viewer.status_code == 403
    approved = await asyncio.to_thread(world.cli, "firewall", "approve", asked["id"], "--json", user="grace")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    assert rows(approved)[node.name]["result"] == "disabled"
    assert await asyncio.to_thread(node.reachable)
    world.request("ada", action="enable", servers=[node.name], reason="over")
    assert not await asyncio.to_thread(node.reachable)


async def test_the_policy_refuses_and_audits_without_touching_any_node(world: World) -> None:
    node = world.nodes["qa-nftables"]
    before = await node.listing()
    reader = await asyncio.to_thread(
        world.cli,
        "firewall",
        "disable",
        "--servers",
        node.name,
        "--for",
        "1m",
        "--reason",
        "r",
        user="viewer",
    )
    assert reader.returncode == 1
    assert "role reader may not change firewalls in qa" in reader.stdout
    too_long = await asyncio.to_thread(
        world.cli, "firewall", "disable", "--servers", node.name, "--for", "2h", "--reason", "r", "--json"
    )
    assert too_long.returncode == 1
    assert "longer than qa allows (600s)" in rows(too_long)[node.name]["detail"]
    dry = await asyncio.to_thread(
        world.cli,
        "firewall",
        "disable",
        "--env",
        "qa",
        "--label",
        "fw=yes",
        "--for",
        "1m",
        "--reason",
        "r",
        "--dry-run",
    )
    assert dry.returncode == 0, dry.stdout
    assert dry.stdout.count("would disable") == len([n for n in world.nodes.values() if n.env == "qa"])
    assert not await asyncio.to_thread(node.reachable)
    assert await node.listing() == before
    await until(
        lambda: (
            sum(1 for r in world.audit(node.name) if r["detail"].get("reason", "").startswith("policy:")) >= 2
        ),
        "the refusals are not in version-db's audit log",
    )


async def test_forged_expired_replayed_misaddressed_unpermitted_and_overlong_commands_are_refused(
    world: World,
) -> None:
    node = world.nodes["qa-ufw"]
    before = await node.listing()
    key = SigningKey.load(world.estate.key_path)
    bus = Bus(env="qa", url=world.estate.urls["qa"], service="deployer", settings=BusSettings())
    await bus.connect()

    def disable(target: str = node.name, lease_s: int = 60) -> Envelope[Any]:
        command = FirewallDisable(
            request_id=uuid4(),
            node=target,
            lease_s=lease_s,
            reason="test",
            policy_max_s=600,
            authorization=unsigned_authorization(),
        )
        return bus.wrap(command, actor="mallory")

    async def send(envelope: Envelope[Any]) -> Envelope[Any]:
        message = persistent_message(
            envelope.to_json(),
            message_id=str(envelope.id),
            message_type=envelope.type,
            correlation_id=str(envelope.correlation_id),
            app_id=envelope.source,
        )
        verb = envelope.type.split(".")[1]
        await bus.publish_raw("conveyor.commands", f"firewall.{verb}.{node.name}", message)  # node's queue
        return await tap.caused_by(envelope, timeout=20)

    signed = key.sign(disable(), role="deployer", ttl_s=30)
    tampered = signed.model_copy(update={"payload": signed.payload.model_copy(update={"lease_s": 599})})
    cases = {
        "unknown_key": SigningKey.generate().sign(disable(), role="deployer", ttl_s=30),
        "forged": tampered,
        "expired": key.sign(
            disable(), role="deployer", ttl_s=5, now=datetime.now(UTC) - timedelta(minutes=5)
        ),
        "wrong_node": key.sign(disable(target="qa-nftables"), role="deployer", ttl_s=30),
        "role": key.sign(disable(), role="reader", ttl_s=30),
        "lease_too_long": key.sign(disable(lease_s=900), role="deployer", ttl_s=30),
    }
    enable = FirewallEnable(
        request_id=uuid4(), node=node.name, reason="t", authorization=unsigned_authorization()
    )
    once = key.sign(bus.wrap(enable), role="deployer", ttl_s=30)
    refusals: dict[str, str] = {}
    try:
        async with EventTap(world.estate.urls["qa"], ["firewall.#"]) as tap:
            for name, envelope in cases.items():
                reply = (await send(envelope)).payload
                assert isinstance(reply, FirewallRejected), (name, reply)
                refusals[name] = reply.reason
            # a replay: a command carried out once, sent again under a new message id
            assert isinstance((await send(once)).payload, FirewallEnabled)
            reply = (await send(once.model_copy(update={"id": uuid4()}))).payload
            assert isinstance(reply, FirewallRejected)
            refusals["replayed"] = reply.reason
    finally:
        await bus.close()
    for name, reason in refusals.items():
        assert reason.startswith(f"{name}:"), (name, reason)
    assert await node.listing() == before
    assert not await asyncio.to_thread(node.reachable)
    records = [json.loads(line)["record"] for line in node.audit_file.read_text().splitlines()]
    rejected = [r for r in records if r["outcome"] == "rejected"]
    assert len(rejected) == len(refusals)
    assert {r["actor"] for r in rejected} >= {"mallory"}


async def test_a_servers_file_reports_unknown_names_and_acts_on_each_server_once(
    world: World, tmp_path: Path
) -> None:
    names = [world.nodes["qa-nftables"].name, world.nodes["qa-iptables-nft"].name]
    servers = tmp_path / "servers.txt"
    servers.write_text(f"# maintenance list\n{names[0]}\n\nqa-ghost\n{names[1]}\n{names[0]}  # again\n\n")
    done = await asyncio.to_thread(
        world.cli,
        "firewall",
        "disable",
        "--servers-file",
        str(servers),
        "--for",
        "1m",
        "--reason",
        "list",
        "--json",
    )
    result = json.loads(done.stdout)
    assert result["unknown"] == ["qa-ghost"]
    assert [r["node"] for r in result["results"]] == names
    assert all(r["result"] == "disabled" for r in result["results"])
    table = await asyncio.to_thread(
        world.cli, "firewall", "enable", "--servers-file", str(servers), "--reason", "list done"
    )
    assert table.returncode == 1  # an unknown name: not every target reached the state
    assert "qa-ghost" in table.stdout
    assert "unknown" in table.stdout
    for name in names:
        assert not await asyncio.to_thread(world.nodes[name].reachable)
        lines = world.nodes[name].audit_file.read_text().splitlines()
        request_ids = [json.loads(line)["record"].get("request_id") for line in lines]
        assert request_ids.count(result["id"]) == 1


async def test_audit_verify_finds_a_removed_or_altered_record(world: World) -> None:
    node = world.nodes["qa-nftables"]
    fingerprint = world.ssh.host_key_fingerprint
    trusted = await asyncio.to_thread(
        world.estate.api, "POST", f"/nodes/{node.name}/trust", user="admin", body={"fingerprint": fingerprint}
    )
    assert trusted.status_code in (200, 409), trusted.text
    await until(
        lambda: len(world.audit(node.name)) >= sum(1 for _ in node.audit_file.read_text().splitlines()),
        "version-db has not caught up with the node's audit log",
    )
    intact = await asyncio.to_thread(world.cli, "audit", "verify", "--node", node.name)
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert "intact" in intact.stdout
    original = node.audit_file.read_text()
    lines = original.splitlines(keepends=True)
    try:
        altered = json.loads(lines[1])
        altered["record"]["actor"] = "someone-else"
        node.audit_file.write_text("".join([lines[0], json.dumps(altered) + "\n", *lines[2:]]))
        found = await asyncio.to_thread(world.cli, "audit", "verify", "--node", node.name)
        assert found.returncode == 1
        assert "record 2 was altered" in found.stdout
        node.audit_file.write_text("".join([lines[0], *lines[2:]]))
        found = await asyncio.to_thread(world.cli, "audit", "verify", "--node", node.name, "--json")
        report = json.loads(found.stdout)
        assert not report["intact"]
        assert any("record 2 removed" in p for p in report["problems"]), report
        node.audit_file.write_text("".join(lines[:-1]))  # the last record cut off: only version-db knows
        report = json.loads(
            (await asyncio.to_thread(world.cli, "audit", "verify", "--node", node.name, "--json")).stdout
        )
        assert any(p.startswith(f"record {len(lines)} is missing") for p in report["problems"]), report
    finally:
        node.audit_file.write_text(original)
