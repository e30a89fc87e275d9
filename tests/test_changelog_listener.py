"""The changelog listener end to end: six real listener processes (two nodes in each of dev, qa
and prod), a real version-db with its artifact store, real RabbitMQ vhosts, supervisord running
the dummy services. The target listeners restart them through a system-control user that the
deployer's code provisions over a real sshd (real useradd, visudo, sudo), as on a node.

The test plays the deployer: it sends ``changeset.apply`` to nodes and reads their replies.
The tests of this module share one set of processes and run in file order.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit
from uuid import uuid4

import asyncssh
import httpx
import pytest

from conveyor.bus import Bus
from conveyor.changeset import ReleaseRoot, build_changeset, sha256_file
from conveyor.contracts import (
    ChangesetApplied,
    ChangesetApply,
    ChangesetCreated,
    ChangesetFailed,
    DriftDetected,
    Envelope,
    NodeHeartbeat,
)
from conveyor.contracts.common import CommandAuthorization
from conveyor.pkgvcs import Package
from conveyor.settings import BusSettings
from conveyor.signing import SigningKey
from conveyor.testing.services import RabbitEndpoint, free_port
from conveyor.testing.sshd import SshNode, client_key
from conveyor.testing.supervisor import DUMMY_SERVICE_SOURCE, Supervisor
from conveyor.testing.tap import EventTap
from conveyor_deployer.config import Settings as DeployerSettings
from conveyor_deployer.ctlcheck import provision as provision_ctl_user
from conveyor_deployer.ctlcheck import remove as remove_ctl_user
from conveyor_deployer.ctluser import CtlPlan
from conveyor_deployer.inventory import Inventory
from conveyor_deployer.nodes import NodeAccess

from .test_services import wait_healthy

SUPERVISORCTL = str(Path(sys.executable).parent / "supervisorctl")

pytestmark = pytest.mark.rabbitmq

ENVS = ("dev", "qa", "prod")
NODES = {"dev": ("dev-1", "dev-2"), "qa": ("qa-1", "qa-2"), "prod": ("prod-1", "prod-2")}
SOURCE = "dev-1"
DEPLOYER_TOKEN = "deployer-" + secrets.token_hex(8)
READER_TOKEN = "reader-" + secrets.token_hex(8)
PACKAGE = "web"


@dataclass
class Node:
    name: str
    env: str
    port: int  # the listener's HTTP port
    app_port: int  # the dummy service's port (targets)
    root: Path
    state: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def unit(self) -> str:
        return f"{PACKAGE}-{self.name}"


@dataclass
class World:
    tmp: Path
    urls: dict[str, str]
    version_db_port: int
    supervisor: Supervisor
    ctl_account: str
    nodes: dict[str, Node] = field(default_factory=dict)
    version_db: subprocess.Popen[bytes] | None = None

    @property
    def store_url(self) -> str:
        return f"http://127.0.0.1:{self.version_db_port}"

    @property
    def source(self) -> Node:
        return self.nodes[SOURCE]

    def listener_env(self, node: Node) -> dict[str, str]:
        prefix = "CONVEYOR_CHANGELOG_LISTENER_"
        if node.name == SOURCE:
            package: dict[str, Any] = {"name": PACKAGE, "root": str(node.root), "role": "source"}
        else:
            package = {
                "name": PACKAGE,
                "root": str(node.root),
                "role": "target",
                "units": [node.unit],
                "health_check": {
                    "url": f"http://127.0.0.1:{node.app_port}/healthz",
                    "timeout_s": 10,
                    "interval_s": 0.1,
                },
            }
        return {
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            f"{prefix}ENVS": json.dumps(self.urls),
            f"{prefix}ENV": node.env,
            f"{prefix}NODE": node.name,
            f"{prefix}HTTP_PORT": str(node.port),
            f"{prefix}LOG_FORMAT": "json",
            f"{prefix}PACKAGES": json.dumps([package]),
            f"{prefix}STATE_DIR": str(node.state),
            f"{prefix}ARTIFACT_STORE_URL": self.store_url,
            f"{prefix}ARTIFACT_STORE_TOKEN": DEPLOYER_TOKEN if node.name == SOURCE else READER_TOKEN,
            f"{prefix}ARTIFACT_RETRY_DELAYS_S": "[0.2, 0.4, 0.8, 1, 1, 1, 1, 1, 1, 1, 1, 1]",
            f"{prefix}TRUSTED_KEYS_FILE": str(self.tmp / "trusted-keys"),
            f"{prefix}SERVICE_MANAGER": "supervisord",
            f"{prefix}SUPERVISORCTL_CONFIG": str(self.supervisor.config_path),
            f"{prefix}SUPERVISORCTL": SUPERVISORCTL,
            f"{prefix}CONTROL_USER": self.ctl_account,
            f"{prefix}QUIET_PERIOD_S": "0.3",
            f"{prefix}RESCAN_INTERVAL_S": "1",
            f"{prefix}HEARTBEAT_INTERVAL_S": "1",
            f"{prefix}BUS__RETRY_DELAYS_S": "[0.2, 0.5]",
            f"{prefix}BUS__RECONNECT_INTERVAL_S": "0.3",
        }

    def start_listener(self, node: Node) -> None:
        node.log = self.tmp / f"listener-{node.name}.log"
        script = Path(sys.executable).parent / "conveyor-changelog-listener"
        with node.log.open("ab") as output:
            node.process = subprocess.Popen(
                [str(script)], env=self.listener_env(node), stdout=output, stderr=subprocess.STDOUT
            )
        wait_healthy(node.port, node.process, timeout=30)

    def kill_listener(self, node: Node) -> None:
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()

    def start_version_db(self) -> None:
        prefix = "CONVEYOR_VERSION_DB_"
        env = {
            "PATH": "/usr/bin:/bin",
            f"{prefix}ENVS": json.dumps(self.urls),
            f"{prefix}HTTP_PORT": str(self.version_db_port),
            f"{prefix}DATABASE_URL": f"sqlite+aiosqlite:///{self.tmp / 'version-db.sqlite3'}",
            f"{prefix}ARTIFACTS_DIR": str(self.tmp / "artifacts"),
            f"{prefix}API_TOKENS": json.dumps({"deployer": [DEPLOYER_TOKEN], "reader": [READER_TOKEN]}),
            f"{prefix}LOG_FORMAT": "json",
        }
        with (self.tmp / "version-db.log").open("ab") as output:
            self.version_db = subprocess.Popen(
                [str(Path(sys.executable).parent / "conveyor-version-db")],
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        wait_healthy(self.version_db_port, self.version_db, timeout=30)

    def stop_version_db(self) -> None:
        assert self.version_db is not None
        self.version_db.send_signal(signal.SIGTERM)
        self.version_db.wait(timeout=30)

    def serving(self, node: Node) -> str:
        return httpx.get(f"http://127.0.0.1:{node.app_port}/version", timeout=5).text

    def release(self, node: Node) -> ReleaseRoot:
        return ReleaseRoot(node.root)

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(
            f"{self.store_url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {READER_TOKEN}"},
            timeout=10,
        )
        response.raise_for_status()
        return response.json()

    async def upload(self, path: Path) -> str:
        sha = sha256_file(path)
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {DEPLOYER_TOKEN}"}) as client:
            response = await client.put(
                f"{self.store_url}/artifacts/{sha}", content=await asyncio.to_thread(path.read_bytes)
            )
        assert response.status_code in (200, 201), response.text
        return sha


@pytest.fixture(scope="module")
def world(rabbit: RabbitEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("listener")
    suffix = secrets.token_hex(4)
    vhosts = {env: f"listener-{env}-{suffix}" for env in ENVS}
    for name in vhosts.values():
        rabbit.create_vhost(name)
    supervisor = Supervisor(tmp / "supervisor")
    key = SigningKey.generate()
    key.save(tmp / "signing.key")
    (tmp / "trusted-keys").write_text(key.public_key_text() + "\n")
    world = World(
        tmp=tmp,
        urls={env: rabbit.url_for(vhost) for env, vhost in vhosts.items()},
        version_db_port=free_port(),
        supervisor=supervisor,
        ctl_account=f"cvl-{suffix}",
    )
    add_nodes(world)
    ssh = SshNode(tmp / "sshd", "this-host")
    try:
        ssh.start()
        asyncio.run(ctl_user(world, ssh, remove_it=False))
        supervisor.start()
        world.start_version_db()
        for node in world.nodes.values():
            world.start_listener(node)
        yield world
    finally:
        for node in world.nodes.values():
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in world.nodes.values():
            if node.process is not None:
                try:
                    node.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()
        if world.version_db is not None and world.version_db.poll() is None:
            world.stop_version_db()
        supervisor.stop()
        asyncio.run(ctl_user(world, ssh, remove_it=True))
        ssh.stop()
        for name in vhosts.values():
            rabbit.delete_vhost(name)


async def ctl_user(world: World, ssh: SshNode, *, remove_it: bool) -> None:
    """Provision (or remove) the system-control user for every target's unit, over SSH, as the deployer
    does; sudo logs what the account runs to ``sudo.log``."""
    key, line = client_key(world.tmp / "deployer-key")
    ssh.authorize(line)
    node = {
        "name": "this-host",
        "address": ssh.address,
        "ssh_port": ssh.port,
        "ssh_user": "root",
        "service_manager": "supervisord",
        "packages": {PACKAGE: [n.unit for n in world.nodes.values() if n.name != SOURCE]},
    }
    inventory = Inventory.model_validate(
        {"environments": [{"name": "dev", "clusters": [{"name": "all", "nodes": [node]}]}]}
    )
    settings = DeployerSettings(
        known_hosts_file=world.tmp / "known_hosts", ssh_key_file=key, state_dir=world.tmp / "deployer"
    )
    access = NodeAccess(settings, inventory, lambda env, payload, actor=None: None)
    access.known_hosts.trust(
        ssh.address, ssh.port, asyncssh.import_public_key(ssh.host_key_line), replace=True
    )
    plan = CtlPlan(
        account=world.ctl_account,
        supervisorctl=SUPERVISORCTL,
        supervisor_conf=str(world.supervisor.config_path),
        sudo_defaults=(f"logfile={world.tmp / 'sudo.log'}", "loglinelen=0"),
    )
    try:
        if remove_it:
            [report] = await remove_ctl_user(access, "dev", plan)
            assert report.error is None, report.error
        else:
            [report] = await provision_ctl_user(access, "dev", plan)
            assert report.error is None, report.error
            assert report.self_test_passed, [row for row in report.self_test if not row["ok"]]
    finally:
        await access.close()


def add_nodes(world: World) -> None:
    for env, names in NODES.items():
        for name in names:
            node = Node(
                name=name,
                env=env,
                port=free_port(),
                app_port=free_port(),
                root=world.tmp / name / PACKAGE,
                state=world.tmp / name / "state",
            )
            world.nodes[name] = node
            if name != SOURCE:
                world.supervisor.add_program(
                    node.unit,
                    [sys.executable, str(node.root / "current" / "serve.py"), "--port", str(node.app_port)],
                    autostart=False,
                    startsecs=0,
                )


# -- helpers ---------------------------------------------------------------------------------------


def write_source(world: World, files: Mapping[str, str | None]) -> None:
    root = world.source.root
    for relative, text in files.items():
        path = root / relative
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


async def ship(world: World, files: Mapping[str, str | None]) -> ChangesetCreated:
    """Change the dev source package and wait for the listener's changeset.created."""
    async with EventTap(world.urls["dev"], ["changeset.created"]) as tap:
        write_source(world, files)
        await tap.expect(ChangesetCreated, timeout=30)
        deadline = time.monotonic() + 30
        written = {
            path.encode(): hashlib.sha256(text.encode()).hexdigest() for path, text in files.items() if text
        }
        while True:  # a big change may be committed in more than one quiet period: wait for the last
            package = Package(world.source.root)
            head = package.head()
            created = [e for e in tap.of(ChangesetCreated) if e.payload.version == head]
            # ...and one that holds what was written: a file rewritten with the same size in the same
            # clock tick as the listener's scan of it looks unchanged to a stat cache
            holds = head is not None and all(
                (entry := package.version(head)[1].get(path)) is not None and entry.sha256 == digest
                for path, digest in written.items()
            )
            if created and holds and not package.status():
                return created[-1].payload
            assert time.monotonic() < deadline, "the source never settled"
            await asyncio.sleep(0.1)


async def changeset_between(world: World, parent: str | None, version: str) -> str:
    """What a deployer does for a node that skipped versions: a changeset from its version."""
    built = build_changeset(
        Package(world.source.root), parent=parent, version=version, directory=world.tmp / "built"
    )
    return await world.upload(built.path)


def apply_command(
    world: World, node: Node, changeset_id: str, parent: str | None, version: str, *, ttl_s: float = 300
) -> ChangesetApply:
    return ChangesetApply(
        deployment_id=uuid4(),
        node=node.name,
        changeset_id=changeset_id,
        package=PACKAGE,
        parent_version=parent,
        version=version,
        archive_url=f"{world.store_url}/artifacts/{changeset_id}",
        authorization=CommandAuthorization(
            role="deployer",
            expires_at=datetime.now(UTC) + timedelta(seconds=ttl_s),
            nonce=secrets.token_hex(16),
            key_id="test",
            signature="unsigned-in-this-test",
        ),
    )


def sign(world: World, envelope: Envelope[ChangesetApply]) -> Envelope[ChangesetApply]:
    """As the deployer does: every changeset.apply is signed, and the listeners verify it."""
    return SigningKey.load(world.tmp / "signing.key").sign(envelope, role="deployer", ttl_s=300)


async def send(world: World, env: str, command: ChangesetApply) -> Envelope[ChangesetApply]:
    bus = Bus(env=env, url=world.urls[env], service="deployer", settings=BusSettings())
    await bus.connect()
    try:
        envelope: Envelope[ChangesetApply] = sign(world, bus.wrap(command))
        await bus.publish(envelope)
        return envelope
    finally:
        await bus.close()


async def apply(
    world: World, nodes: list[Node], changeset_id: str, parent: str | None, version: str
) -> dict[str, ChangesetApplied | ChangesetFailed]:
    """Send changeset.apply to each node and wait for every reply."""
    env = nodes[0].env
    async with EventTap(world.urls[env], ["changeset.applied", "changeset.failed"]) as tap:
        sent = [await send(world, env, apply_command(world, n, changeset_id, parent, version)) for n in nodes]
        replies: dict[str, ChangesetApplied | ChangesetFailed] = {}
        for envelope in sent:
            reply = await reply_to(tap, envelope)
            replies[envelope.payload.node] = reply
    return replies


async def reply_to(
    tap: EventTap, command: Envelope[ChangesetApply], timeout: float = 60
) -> ChangesetApplied | ChangesetFailed:
    deadline = time.monotonic() + timeout
    while True:
        for envelope in tap.seen:
            if envelope.causation_id == command.id and isinstance(
                envelope.payload, ChangesetApplied | ChangesetFailed
            ):
                return envelope.payload
        assert time.monotonic() < deadline, f"no reply to {command.payload.node}; seen {tap.seen}"
        await asyncio.sleep(0.05)


def assert_release_whole(world: World, node: Node) -> str:
    """The node's current release holds exactly the files of the version it claims."""
    releases = world.release(node)
    version = releases.current()
    assert version is not None
    package = releases.package()
    assert package.head() == version
    assert not package.status(), f"{node.name}: {package.status().entries()}"
    return version


# -- the tests -----------------------------------------------------------------------------------


async def test_a_dev_change_becomes_a_changeset_applied_on_both_qa_nodes(world: World) -> None:
    qa = [world.nodes["qa-1"], world.nodes["qa-2"]]
    first = await ship(world, {"serve.py": DUMMY_SERVICE_SOURCE, "VERSION": "1", "static/app.css": "a{}"})
    assert first.parent_version is None
    assert first.files_added == 3

    replies = await apply(world, qa, first.changeset_id, None, first.version)
    assert all(isinstance(r, ChangesetApplied) for r in replies.values()), replies
    assert [world.serving(n) for n in qa] == ["1", "1"]

    second = await ship(world, {"VERSION": "2", "static/app.css": None, "static/new.css": "b{}"})
    assert second.parent_version == first.version
    assert (second.files_added, second.files_modified, second.files_deleted) == (1, 1, 1)
    pids = [world.supervisor.pid(n.unit) for n in qa]

    replies = await apply(world, qa, second.changeset_id, first.version, second.version)
    for node in qa:
        reply = replies[node.name]
        assert isinstance(reply, ChangesetApplied), reply
        assert reply.previous_version == first.version
        assert {"download", "verify", "stage", "switch", "restart", "health_check"} <= reply.steps.keys()
        assert world.serving(node) == "2"
        assert world.supervisor.pid(node.unit) not in pids  # restarted
        assert assert_release_whole(world, node) == second.version
    # ... through the system-control user's sudo rules, not as root
    sudo_log = (world.tmp / "sudo.log").read_text()
    for node in qa:
        assert f"{world.ctl_account} : " in sudo_log
        assert f"COMMAND={SUPERVISORCTL} -c {world.supervisor.config_path} restart {node.unit}" in sudo_log
        assert not (node.root / "current" / "static" / "app.css").exists()

    # version-db recorded the new version per node (from the replies and heartbeats)
    deadline = time.monotonic() + 20
    while True:
        rows = {n["name"]: n["versions"].get(PACKAGE) for n in world.api("/nodes", env="qa")}
        if rows.get("qa-1") == rows.get("qa-2") == second.version:
            break
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.2)
    # the other environments' listeners run too: dev-2 takes the same changesets
    dev2 = world.nodes["dev-2"]
    assert isinstance(
        (await apply(world, [dev2], first.changeset_id, None, first.version))["dev-2"], ChangesetApplied
    )
    reply = (await apply(world, [dev2], second.changeset_id, first.version, second.version))["dev-2"]
    assert isinstance(reply, ChangesetApplied)
    assert world.serving(dev2) == "2"


async def test_heartbeats_carry_the_running_versions(world: World) -> None:
    async with EventTap(world.urls["qa"], ["node.heartbeat"]) as tap:
        beat = await tap.expect(NodeHeartbeat, lambda e: e.payload.node == "qa-1", timeout=10)
    assert beat.payload.packages == {PACKAGE: world.release(world.nodes["qa-1"]).current()}
    assert beat.payload.agent == "changelog-listener"


async def test_the_same_command_delivered_twice_applies_once(world: World) -> None:
    node = world.nodes["prod-1"]
    head = Package(world.source.root).head()
    assert head is not None
    changeset = await changeset_between(world, None, head)
    command = apply_command(world, node, changeset, None, head)
    async with EventTap(world.urls["prod"], ["changeset.*"]) as tap:
        bus = Bus(env="prod", url=world.urls["prod"], service="deployer", settings=BusSettings())
        await bus.connect()
        try:
            envelope = sign(world, bus.wrap(command))
            await bus.publish(envelope)
            first = await reply_to(tap, envelope)
            assert isinstance(first, ChangesetApplied)
            switches = len(world.release(node).history())
            restarted = world.supervisor.pid(node.unit)
            await bus.publish(envelope)  # the same message id again: the listener remembers it
            world.kill_listener(node)  # ... and after a restart its journal does
            world.start_listener(node)
            await bus.publish(envelope)
            await tap.expect(ChangesetApplied, lambda e: e.causation_id == envelope.id, count=2)
        finally:
            await bus.close()
    replies = tap.of(ChangesetApplied, lambda e: e.causation_id == envelope.id)
    assert len(replies) == 2  # the answer again from the journal, and never a second apply
    assert replies[0].id == replies[1].id
    assert len(world.release(node).history()) == switches
    assert world.supervisor.pid(node.unit) == restarted


async def test_a_failing_health_check_switches_the_node_back(world: World) -> None:
    node = world.nodes["qa-1"]
    before = world.release(node).current()
    bad = await ship(world, {"VERSION": "3", "UNHEALTHY": "yes"})
    reply = (await apply(world, [node], bad.changeset_id, bad.parent_version, bad.version))[node.name]
    assert isinstance(reply, ChangesetFailed), reply
    assert reply.stage == "health_check"
    assert reply.switched_back
    assert reply.running_version == before
    assert world.release(node).current() == before
    assert world.release(node).state(bad.version) == "bad"
    assert world.serving(node) == "2"  # restarted on the previous release, serving again

    fixed = await ship(world, {"VERSION": "4", "UNHEALTHY": None})
    changeset = await changeset_between(world, before, fixed.version)
    reply = (await apply(world, [node], changeset, before, fixed.version))[node.name]
    assert isinstance(reply, ChangesetApplied), reply
    assert world.serving(node) == "4"


async def test_a_hand_edited_node_refuses_the_changeset_and_reports_drift(world: World) -> None:
    node = world.nodes["qa-2"]
    running = world.release(node).current()
    assert running is not None
    head = Package(world.source.root).head()
    assert head is not None
    assert head != running
    changeset = await changeset_between(world, running, head)
    async with EventTap(world.urls["qa"], ["drift.detected"]) as tap:
        edited = node.root / "current" / "static" / "new.css"
        original = edited.read_text()
        edited.write_text("b{color:red}")  # someone fixed it by hand on the server
        drift = await tap.expect(DriftDetected, lambda e: e.payload.node == node.name, timeout=15)
        assert drift.payload.modified == ["static/new.css"]
        assert drift.payload.expected_version == running

        reply = (await apply(world, [node], changeset, running, head))[node.name]
        assert isinstance(reply, ChangesetFailed), reply
        assert reply.stage == "parent_mismatch"
        assert "static/new.css" in reply.error
        assert not reply.switched_back
        assert reply.running_version == running
        await asyncio.sleep(2.5)  # more scans: the same drift is not reported again
        assert len(tap.of(DriftDetected, lambda e: e.payload.node == node.name)) == 1

    edited.write_text(original)
    reply = (await apply(world, [node], changeset, running, head))[node.name]
    assert isinstance(reply, ChangesetApplied), reply
    assert world.serving(node) == "4"


async def test_a_hostile_archive_is_refused_and_the_release_untouched(world: World) -> None:
    node = world.nodes["prod-2"]
    running = world.release(node).current()
    head = Package(world.source.root).head()
    assert head is not None
    good = world.tmp / "hostile-base.zip"
    hostile = world.tmp / "hostile.zip"
    built = build_changeset(Package(world.source.root), parent=None, version=head, directory=world.tmp / "h")
    good.write_bytes(built.path.read_bytes())
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(hostile, "w") as out:
        for info in source.infolist():
            out.writestr(info, source.read(info))
        out.writestr("files/../../escaped.txt", b"pwned")
    changeset = await world.upload(hostile)
    reply = (await apply(world, [node], changeset, None, head))[node.name]
    assert isinstance(reply, ChangesetFailed), reply
    assert reply.stage == "verify"
    assert "escaped.txt" in reply.error
    assert world.release(node).current() == running
    assert not (node.root.parent / "escaped.txt").exists()
    assert not list((node.root / "releases").glob(".staging-*"))


async def test_an_artifact_store_outage_delays_the_apply_but_loses_nothing(world: World) -> None:
    node = world.nodes["prod-2"]
    head = Package(world.source.root).head()
    assert head is not None
    changeset = await changeset_between(world, world.release(node).current(), head)
    command = apply_command(world, node, changeset, world.release(node).current(), head)
    world.stop_version_db()
    try:
        async with EventTap(world.urls["prod"], ["changeset.*"]) as tap:
            envelope = await send(world, "prod", command)
            await asyncio.sleep(1.5)  # the listener is retrying the download meanwhile
            assert not tap.of(ChangesetApplied)
            assert not tap.of(ChangesetFailed)
            world.start_version_db()
            reply = await reply_to(tap, envelope)
    finally:
        if world.version_db is None or world.version_db.poll() is not None:
            world.start_version_db()
    assert isinstance(reply, ChangesetApplied), reply
    assert assert_release_whole(world, node) == head


def close_listener_connections(rabbit: RabbitEndpoint, vhost: str) -> int:
    with rabbit.admin() as admin:
        connections = admin.get(f"/api/vhosts/{quote(vhost, safe='')}/connections").json()
        names = [
            c["name"]
            for c in connections
            if c.get("client_properties", {}).get("connection_name", "").startswith("changelog-listener@")
        ]
        for name in names:
            admin.delete(f"/api/connections/{quote(name, safe='')}", headers={"X-Reason": "test: outage"})
    return len(names)


async def test_broker_connections_lost_mid_change_lose_no_event(world: World, rabbit: RabbitEndpoint) -> None:
    vhost = urlsplit(world.urls["dev"]).path.lstrip("/")
    async with EventTap(world.urls["dev"], ["changeset.created"]) as tap:
        write_source(world, {"outage.txt": "written while the broker drops the listener"})
        closed = 0
        deadline = time.monotonic() + 2.0  # longer than the quiet period: the announcement falls in it
        while time.monotonic() < deadline:
            closed += await asyncio.to_thread(close_listener_connections, rabbit, vhost)
            await asyncio.sleep(0.05)
        assert closed >= 2
        created = await tap.expect(ChangesetCreated, timeout=30)
    assert created.payload.version == Package(world.source.root).head()
    assert created.payload.files_added == 1


async def test_sigterm_during_an_apply_lets_it_finish(world: World) -> None:
    node = world.nodes["qa-1"]
    releases = world.release(node)
    base = releases.current()
    assert base is not None
    write_source(world, {f"bulk/{i:04d}.txt": f"{i}\n" * 200 for i in range(3000)})
    head = (await ship(world, {"VERSION": "5"})).version
    changeset = await changeset_between(world, base, head)
    async with EventTap(world.urls["qa"], ["changeset.*"]) as tap:
        envelope = await send(world, "qa", apply_command(world, node, changeset, base, head))
        await _moment(node, "staging", head)
        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(node.process.wait, 60) == 0
        assert not list((node.root / "releases").glob(".staging-*"))  # finished, not abandoned
        reply = await reply_to(tap, envelope)  # sent before the process exited
        world.start_listener(node)
    assert isinstance(reply, ChangesetApplied), reply
    assert assert_release_whole(world, node) == head
    assert world.serving(node) == "5"


async def _moment(node: Node, moment: str, head: str) -> None:
    """Wait for the point of the apply at which to kill the listener."""
    releases = node.root / "releases"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if moment == "staging" and any(p.name.startswith(".staging-") for p in releases.iterdir()):
            return
        if moment == "switched" and os.readlink(node.root / "current") == f"releases/{head}":
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"the apply never reached {moment}")


@pytest.mark.parametrize("moment", ["staging", "switched", "random-1", "random-2"])
async def test_a_listener_killed_during_an_apply_ends_on_one_whole_release(world: World, moment: str) -> None:
    node = world.nodes["dev-2"]
    releases = world.release(node)
    head = Package(world.source.root).head()
    assert head is not None
    base = next(e["version"] for e in reversed(releases.history()) if e["version"] != head)
    if releases.current() != base:
        world.kill_listener(node)  # put the node back on the base release, listener down
        releases.switch_to(base)
        world.start_listener(node)
    changeset = await changeset_between(world, base, head)
    async with EventTap(world.urls["dev"], ["changeset.*"]) as tap:
        envelope = await send(world, "dev", apply_command(world, node, changeset, base, head))
        if moment.startswith("random"):
            await asyncio.sleep(random.Random(moment).uniform(0.0, 1.5))
        else:
            await _moment(node, moment, head)
        world.kill_listener(node)
        assert releases.current() in (base, head)
        world.start_listener(node)  # the unacked command comes back to it
        reply = await reply_to(tap, envelope)
    assert isinstance(reply, ChangesetApplied), reply
    assert assert_release_whole(world, node) == head
    assert not list((node.root / "releases").glob(".staging-*"))
    assert world.serving(node) == "5"
    assert os.readlink(node.root / "current") == f"releases/{head}"
