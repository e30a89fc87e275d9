"""conveyor_deployer.ssh against real sshd nodes: trust, key changes, outages, reuse, limits, SFTP, checks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import importlib.metadata
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncssh
import pytest

from conveyor.testing.sshd import SSHD_PATH, SshNode, client_key
from conveyor_deployer.ssh import (
    AGENTS,
    AgentStatus,
    AuthenticationFailed,
    CommandFailed,
    CommandTimedOut,
    HostKeyChanged,
    HostKeyUnknown,
    KnownHosts,
    NodeUnreachable,
    Result,
    SshPool,
    SshTarget,
    TransferFailed,
    _parse_probe,  # the parser, fed what a node could print
    host_pattern,
)

FAST_RETRIES = (0.1, 0.2)


@pytest.fixture(autouse=True)
def _needs_sshd() -> None:
    """These tests need the OpenSSH server: without it they fail, saying so (they never skip)."""
    if not SSHD_PATH.is_file():
        pytest.fail(f"{SSHD_PATH} is missing: install the OpenSSH server (apt-get install openssh-server)")


@pytest.fixture
def deployer_key(tmp_path: Path) -> tuple[Path, str]:
    return client_key(tmp_path / "deployer")


NodeFactory = Callable[[str], SshNode]


@pytest.fixture
def make_node(tmp_path: Path, deployer_key: tuple[Path, str]) -> Iterator[NodeFactory]:
    """Started nodes accepting the deployer's key, stopped at the end of the test."""
    nodes: list[SshNode] = []

    def factory(name: str) -> SshNode:
        node = SshNode(tmp_path / name, name)
        nodes.append(node)
        node.authorize(deployer_key[1])
        node.start()
        return node

    yield factory
    for node in nodes:
        node.stop()


@pytest.fixture
def node(make_node: NodeFactory) -> SshNode:
    return make_node("node-1")


@pytest.fixture
def known_hosts(tmp_path: Path) -> KnownHosts:
    return KnownHosts(tmp_path / "state" / "known_hosts")


PoolFactory = Callable[..., SshPool]


@pytest.fixture
async def make_pool(known_hosts: KnownHosts, deployer_key: tuple[Path, str]) -> AsyncIterator[PoolFactory]:
    pools: list[SshPool] = []

    def factory(**options: object) -> SshPool:
        options = {"retries": FAST_RETRIES, "connect_timeout_s": 5.0, "command_timeout_s": 20.0, **options}
        pool = SshPool(known_hosts, deployer_key[0], **options)  # type: ignore[arg-type]
        pools.append(pool)
        return pool

    yield factory
    for pool in pools:
        await pool.close()


@pytest.fixture
def pool(make_pool: PoolFactory) -> SshPool:
    return make_pool()


def target(node: SshNode) -> SshTarget:
    return SshTarget(node.name, node.address, node.port, node.user)


def trust(known_hosts: KnownHosts, node: SshNode) -> None:
    known_hosts.trust(node.address, node.port, node.host_key_line, node=node.name)


def count(node: SshNode, text: str) -> int:
    return node.log().count(text)


# -- trust ---------------------------------------------------------------------------------------------------


async def test_trust_flow(node: SshNode, known_hosts: KnownHosts, pool: SshPool) -> None:
    key, fingerprint = await known_hosts.fingerprint_of(node.address, node.port, timeout=5)
    assert fingerprint == node.host_key_fingerprint
    assert fingerprint == key.get_fingerprint("sha256")
    assert known_hosts.lookup(node.address, node.port) is None
    assert count(node, "Accepted publickey") == 0  # fetching the key did not log in

    assert known_hosts.trust(node.address, node.port, key, node=node.name) == fingerprint

    trusted = known_hosts.lookup(node.address, node.port)
    assert trusted is not None
    assert trusted.get_fingerprint("sha256") == fingerprint
    line = known_hosts.path.read_text().strip()
    assert line == f"[127.0.0.1]:{node.port} {' '.join(node.host_key_line.split()[:2])}"
    result = await pool.run(target(node), "echo ok")
    assert (result.exit_status, result.stdout, result.stderr) == (0, "ok\n", "")
    assert result.duration_s > 0
    # trusting the same key again changes nothing
    assert known_hosts.trust(node.address, node.port, node.host_key_line) == fingerprint
    assert known_hosts.path.read_text().strip() == line


async def test_unknown_host_is_refused_without_contacting_it(node: SshNode, pool: SshPool) -> None:
    connections = count(node, "Connection from")  # (the node's readiness probe at start)
    with pytest.raises(
        HostKeyUnknown, match=r"node node-1: .*run `conveyor nodes trust --node node-1`"
    ) as caught:
        await pool.run(target(node), "echo ok")
    assert caught.value.node == "node-1"
    assert count(node, "Connection from") == connections
    check = await pool.check(target(node))
    assert not check.reachable
    assert check.error is not None
    assert "conveyor nodes trust --node node-1" in check.error


async def test_trust_refuses_another_key_unless_replacing(
    tmp_path: Path, node: SshNode, known_hosts: KnownHosts
) -> None:
    trust(known_hosts, node)
    other, _ = client_key(tmp_path / "other")
    other_key = asyncssh.read_public_key(str(other) + ".pub")
    with pytest.raises(HostKeyChanged) as caught:
        known_hosts.trust(node.address, node.port, other_key, node=node.name)
    assert caught.value.expected_fingerprint == node.host_key_fingerprint
    assert caught.value.presented_fingerprint == other_key.get_fingerprint("sha256")
    lookup = known_hosts.lookup(node.address, node.port)
    assert lookup is not None
    assert lookup.get_fingerprint("sha256") == node.host_key_fingerprint

    known_hosts.trust(node.address, node.port, other_key, replace=True)

    assert known_hosts.keys(node.address, node.port) == [other_key]
    assert known_hosts.forget(node.address, node.port)
    assert known_hosts.lookup(node.address, node.port) is None


def test_known_hosts_patterns(tmp_path: Path) -> None:
    node_key = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    other_key = asyncssh.generate_private_key("ssh-ed25519").convert_to_public()
    line = node_key.export_public_key().decode().split()
    salt = os.urandom(20)
    hashed = base64.b64encode(hmac.new(salt, b"10.0.0.9", hashlib.sha1).digest()).decode()
    store = KnownHosts(tmp_path / "known_hosts")
    store.path.write_text(
        "# comment\n"
        f"|1|{base64.b64encode(salt).decode()}|{hashed} {line[0]} {line[1]}\n"
        f"web-*,!web-9 {line[0]} {line[1]}\n"
        f"@revoked 10.0.0.7 {line[0]} {line[1]}\n"
        "10.0.0.8 ssh-ed25519 not-base64\n"
        f"db-1,10.0.0.5 {line[0]} {line[1]} a comment\n"
    )
    assert host_pattern("10.0.0.9") == "10.0.0.9"
    assert host_pattern("10.0.0.9", 2222) == "[10.0.0.9]:2222"
    assert store.lookup("10.0.0.9") == node_key
    assert store.lookup("10.0.0.9", 2222) is None  # a port is part of the host's name
    assert store.lookup("web-1") == node_key
    assert store.lookup("web-9") is None
    assert store.lookup("10.0.0.7") is None  # markers grant nothing
    assert store.lookup("10.0.0.8") is None
    with pytest.raises(HostKeyChanged, match="web-1"):
        store.trust("web-1", 22, other_key)
    store.trust("10.0.0.9", 22, other_key, replace=True)  # the hashed entry is replaced
    assert store.keys("10.0.0.9") == [other_key]
    assert "# comment" in store.path.read_text()
    assert store.lookup("10.0.0.5") == store.lookup("db-1") == node_key
    assert store.forget("10.0.0.5")
    assert not store.forget("10.0.0.5")
    assert store.lookup("10.0.0.5") is None
    assert store.lookup("db-1") == node_key
    assert f"db-1 {line[0]} {line[1]} a comment" in store.path.read_text().splitlines()


# -- host key changes, outages -------------------------------------------------------------------------------


async def test_changed_host_key_is_refused_before_anything_runs(
    tmp_path: Path, node: SshNode, known_hosts: KnownHosts, pool: SshPool
) -> None:
    trust(known_hosts, node)
    trusted = node.host_key_fingerprint
    await pool.run(target(node), "true")
    node.regenerate_host_key()  # sshd restarted with another key: the pool's connection is cut too
    marker = tmp_path / "executed"
    logins, connections = count(node, "Accepted publickey"), count(node, "Connection from")

    for _ in range(2):  # never accepted, however often asked
        with pytest.raises(HostKeyChanged) as caught:
            await pool.run(target(node), f"touch {marker}")
        assert caught.value.node == "node-1"
        assert caught.value.expected_fingerprint == trusted
        assert caught.value.presented_fingerprint == node.host_key_fingerprint != trusted
        assert "conveyor nodes trust --node node-1 --replace" in str(caught.value)

    assert not marker.exists()
    assert count(node, "Accepted publickey") == logins  # the deployer never even authenticated
    assert count(node, "Connection from") == connections + 2  # one attempt each: no retries
    lookup = known_hosts.lookup(node.address, node.port)
    assert lookup is not None
    assert lookup.get_fingerprint("sha256") == trusted  # the store is untouched


async def test_host_key_of_another_type_than_the_trusted_one(
    node: SshNode, known_hosts: KnownHosts, pool: SshPool
) -> None:
    """A node that no longer has a key of the trusted type shows its new key, it does not just hang up."""
    ecdsa = asyncssh.generate_private_key("ecdsa-sha2-nistp256").convert_to_public()
    known_hosts.trust(node.address, node.port, ecdsa)
    with pytest.raises(HostKeyChanged) as caught:
        await pool.run(target(node), "true")
    assert caught.value.expected_fingerprint == ecdsa.get_fingerprint("sha256")
    assert caught.value.presented_fingerprint == node.host_key_fingerprint


async def test_silent_server_times_out(known_hosts: KnownHosts, make_pool: PoolFactory) -> None:
    """A port that accepts TCP connections but never speaks SSH (a hung node) is unreachable in time."""
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:  # never accepts: the kernel does
        port = silent.getsockname()[1]
        known_hosts.trust("127.0.0.1", port, asyncssh.generate_private_key("ssh-ed25519").convert_to_public())
        pool = make_pool(connect_timeout_s=0.3, retries=(0.05,))
        started = time.monotonic()
        with pytest.raises(
            NodeUnreachable, match=r"node hung is unreachable over SSH: timed out \(2 attempts"
        ):
            await pool.run(SshTarget("hung", "127.0.0.1", port, "root"), "true")
        assert 0.6 <= time.monotonic() - started < 5


async def test_stopped_node_is_unreachable_after_the_retries(
    node: SshNode, known_hosts: KnownHosts, pool: SshPool
) -> None:
    trust(known_hosts, node)
    await pool.run(target(node), "true")
    node.stop()

    started = time.monotonic()
    with pytest.raises(NodeUnreachable) as caught:
        await pool.run(target(node), "true")
    elapsed = time.monotonic() - started

    assert caught.value.node == "node-1"
    message = str(caught.value)
    assert message.startswith("node node-1 is unreachable over SSH: connection refused (3 attempts")
    assert elapsed >= sum(FAST_RETRIES)  # backed off between the attempts
    check = await pool.check(target(node))
    assert not check.reachable
    assert check.error is not None
    assert "node-1" in check.error
    with pytest.raises(NodeUnreachable, match="connection refused"):
        await known_hosts.fingerprint_of(node.address, node.port, timeout=2)

    node.start()  # back: the pool connects again
    assert (await pool.run(target(node), "echo back")).stdout == "back\n"


async def test_unauthorized_deployer_key(
    tmp_path: Path, node: SshNode, known_hosts: KnownHosts, make_pool: PoolFactory
) -> None:
    trust(known_hosts, node)
    stranger, _ = client_key(tmp_path / "stranger")
    pool = SshPool(known_hosts, stranger, retries=FAST_RETRIES)
    try:
        with pytest.raises(AuthenticationFailed, match=rf"node node-1 refused .* for user {node.user}"):
            await pool.run(target(node), "true")
    finally:
        await pool.close()


# -- connections, concurrency --------------------------------------------------------------------------------


async def test_one_connection_per_node_reused(
    make_node: NodeFactory, known_hosts: KnownHosts, pool: SshPool
) -> None:
    a, b = make_node("a"), make_node("b")
    for node in (a, b):
        trust(known_hosts, node)
    await asyncio.gather(*(pool.run(target(node), "true") for node in (a, b) for _ in range(5)))
    first = pool.connection(target(a))
    assert first is not None
    assert (await pool.run(target(a), "echo again")).stdout == "again\n"
    assert pool.connection(target(a)) is first
    assert pool.connection(target(b)) is not first
    assert count(a, "Accepted publickey") == count(b, "Accepted publickey") == 1

    a.restart()  # the connection breaks: the next operation opens another one
    assert (await pool.run(target(a), "echo ok")).stdout == "ok\n"
    assert pool.connection(target(a)) is not first
    assert count(a, "Accepted publickey") == 2


async def test_concurrency_is_bounded(node: SshNode, known_hosts: KnownHosts, make_pool: PoolFactory) -> None:
    trust(known_hosts, node)
    pool = make_pool(concurrency=2)
    await pool.run(target(node), "true")  # connected

    started = time.monotonic()
    results = await asyncio.gather(*(pool.run(target(node), "sleep 0.3") for _ in range(6)))
    elapsed = time.monotonic() - started

    assert all(result.exit_status == 0 for result in results)
    assert elapsed >= 0.9, f"6 commands of 0.3 s, 2 at a time, took {elapsed:.2f} s"


# -- commands ------------------------------------------------------------------------------------------------


async def test_commands_status_quoting_and_timeout(
    node: SshNode, known_hosts: KnownHosts, pool: SshPool
) -> None:
    trust(known_hosts, node)
    t = target(node)
    assert (await pool.run(t, ["printf", "%s|", "a b", "it's", "$HOME"])).stdout == "a b|it's|$HOME|"
    failed = await pool.run(t, "echo oops >&2; exit 3", check=False)
    assert (failed.exit_status, failed.stdout, failed.stderr) == (3, "", "oops\n")
    with pytest.raises(CommandFailed, match=r"on node node-1, `echo oops >&2; exit 3` exited with 3: oops"):
        await pool.run(t, "echo oops >&2; exit 3")
    with pytest.raises(CommandTimedOut, match=r"on node node-1, `sleep 5` did not finish within 0.3s"):
        await pool.run(t, "sleep 5", timeout=0.3)
    assert (await pool.run(t, "echo still")).stdout == "still\n"  # the connection survived the timeout


# -- uploads -------------------------------------------------------------------------------------------------


async def test_put_lands_atomically(
    tmp_path: Path, node: SshNode, known_hosts: KnownHosts, pool: SshPool
) -> None:
    trust(known_hosts, node)
    incoming = node.root / "opt" / "conveyor" / "incoming"
    incoming.mkdir(parents=True)
    remote = incoming / "release.zip"
    remote.write_bytes(b"the previous release")
    local = tmp_path / "release.zip"
    content = os.urandom(8 * 1024 * 1024)
    local.write_bytes(content)

    seen: set[int] = set()
    done = asyncio.Event()

    async def watch() -> None:
        """What a reader on the node sees meanwhile: the old file or the new one, never a part."""
        while not done.is_set():
            seen.add(remote.stat().st_size)
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    await pool.put(target(node), local, str(remote), mode=0o640)
    done.set()
    await watcher

    assert remote.read_bytes() == content
    assert remote.stat().st_mode & 0o777 == 0o640
    assert not (incoming / "release.zip.part").exists()
    assert seen <= {len(b"the previous release"), len(content)}

    with pytest.raises(TransferFailed, match=r"upload to /nonexistent/dir/x on node node-1 failed"):
        await pool.put(target(node), local, "/nonexistent/dir/x")
    with pytest.raises(FileNotFoundError):
        await pool.put(target(node), tmp_path / "missing", str(remote))


# -- checks --------------------------------------------------------------------------------------------------


def local_process_with(text: str) -> bool:
    """Whether a process on this machine (which is also the nodes') has ``text`` in its command line."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


def os_pretty_name() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip('"')
    raise AssertionError("no PRETTY_NAME")


async def test_check_reports_the_node(node: SshNode, known_hosts: KnownHosts, pool: SshPool) -> None:
    trust(known_hosts, node)
    running_before = {agent: local_process_with(agent) for agent in AGENTS}
    check = await pool.check(target(node))
    running_after = {agent: local_process_with(agent) for agent in AGENTS}

    assert check.reachable, check.error
    assert check.error is None
    assert check.node == "node-1"
    assert check.latency_ms is not None
    assert 0 < check.latency_ms < 5000
    assert check.os == os_pretty_name()  # the node is this machine
    assert check.kernel == os.uname().release
    assert check.disk_free_bytes is not None
    assert check.disk_free_bytes > 0
    assert check.disk_free_percent is not None
    assert 0 < check.disk_free_percent <= 100
    assert set(check.agents) == set(AGENTS)
    for agent in AGENTS:
        assert check.agents[agent].version is None  # no /opt/conveyor/venv here
        if running_before[agent] == running_after[agent]:  # (other tests may run agents on this machine)
            assert check.agents[agent].running is running_before[agent]
        if not running_before[agent]:
            assert check.agents[agent].running is False or running_after[agent]


@pytest.fixture
def process_named() -> Iterator[Callable[[str], None]]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str) -> None:
        processes.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", name]))

    yield start
    for process in processes:
        process.kill()
        process.wait()


async def test_check_finds_agent_versions_and_processes(
    node: SshNode, known_hosts: KnownHosts, make_pool: PoolFactory, process_named: Callable[[str], None]
) -> None:
    trust(known_hosts, node)
    absent = f"conveyor-test-agent-{uuid.uuid4().hex[:8]}"
    running = f"conveyor-test-agent-{uuid.uuid4().hex[:8]}"
    # this test's interpreter stands for the agents' venv on the node: the listener is installed in it
    pool = make_pool(remote_python=sys.executable, agents=("conveyor-changelog-listener", absent, running))
    process_named(running)

    check = await pool.check(target(node))

    assert check.reachable, check.error
    assert check.agents["conveyor-changelog-listener"].version == importlib.metadata.version(
        "conveyor-changelog-listener"
    )
    assert check.agents[absent].version is None
    assert check.agents[absent].running is False  # the probe does not find itself
    assert check.agents[running].running is True
    assert check.agents[running].version is None  # a process, not an installed distribution


def test_probe_output_is_parsed_robustly() -> None:
    """Whatever a node prints, check() reports what it can and None for the rest; it never raises."""
    garbage = Result(
        2,
        "os\t\nkernel\nagent\t[c]onveyor-firewall-agent\tnot a version!\tyes\n"
        "df\tFilesystem 1024-blocks Used Available Capacity Mounted on\n\x00\t\t\n",
        "sh: 1: something failed\n",
        0.01,
    )
    check = _parse_probe("n", 1.0, garbage, AGENTS)
    assert check.reachable
    assert (check.os, check.kernel, check.disk_free_bytes, check.disk_free_percent) == (
        None,
        None,
        None,
        None,
    )
    assert check.agents["conveyor-firewall-agent"] == AgentStatus(None, running=True)
    assert check.agents["conveyor-changelog-listener"] == AgentStatus(None, running=False)
    assert check.error == "the probe exited with 2"

    good = Result(
        0,
        "os\t'Alpine Linux v3.20'\nkernel\t6.1.0-18-amd64\n"
        "df\t/dev/mapper/vg root 1000 250 750 25% /\n"
        "agent\t[c]onveyor-changelog-listener\t1.4.0rc1\tno\n",
        "",
        0.01,
    )
    check = _parse_probe("n", 1.0, good, AGENTS)
    assert (check.os, check.kernel) == ("Alpine Linux v3.20", "6.1.0-18-amd64")
    assert (check.disk_free_bytes, check.disk_free_percent) == (750 * 1024, 75.0)
    assert check.agents["conveyor-changelog-listener"] == AgentStatus("1.4.0rc1", running=False)
    assert check.error is None
