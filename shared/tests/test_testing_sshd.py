"""conveyor.testing.sshd: real sshd nodes on 127.0.0.1, reached with asyncssh, stopped without leftovers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from conveyor.testing.sshd import SSHD_PATH, SshNode, client_key


@pytest.fixture(autouse=True)
def _needs_sshd() -> None:
    """These tests need the OpenSSH server: without it they fail, saying so (they never skip)."""
    if not SSHD_PATH.is_file():
        pytest.fail(f"{SSHD_PATH} is missing: install the OpenSSH server (apt-get install openssh-server)")


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, str]:
    return client_key(tmp_path / "client")


@pytest.fixture
def node(tmp_path: Path, key: tuple[Path, str]) -> Iterator[SshNode]:
    with SshNode(tmp_path / "node-1", "node-1") as node:
        node.authorize(key[1])
        yield node


async def connect(node: SshNode, private_key: Path) -> asyncssh.SSHClientConnection:
    # known_hosts=None: this fixture test does not verify host keys (the deployer's code always does)
    return await asyncssh.connect(
        node.address,
        node.port,
        username=node.user,
        client_keys=[str(private_key)],
        known_hosts=None,
        config=None,
        agent_path=None,
        connect_timeout=5,
    )


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="ascii", errors="replace").rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


async def test_two_nodes_run_commands(tmp_path: Path, key: tuple[Path, str]) -> None:
    with SshNode(tmp_path / "a", "a") as a, SshNode(tmp_path / "b", "b") as b:
        assert a.port != b.port
        assert a.host_key_fingerprint != b.host_key_fingerprint
        assert a.address == b.address == "127.0.0.1"
        assert a.root.is_dir()
        for node in (a, b):
            node.authorize(key[1])
            async with await connect(node, key[0]) as conn:
                echo = await conn.run("echo ok", check=True)
                uname = await conn.run("uname -s", check=True)
            assert echo.stdout == "ok\n"
            assert uname.stdout == "Linux\n"
            assert node.host_key_fingerprint.startswith("SHA256:")
            assert "Accepted publickey for" in node.log()


async def test_unauthorized_key_is_refused(tmp_path: Path, node: SshNode) -> None:
    other, _ = client_key(tmp_path / "other")
    with pytest.raises(asyncssh.PermissionDenied):
        await connect(node, other)


async def test_stop_refuses_connections_and_leaves_nothing_running(
    node: SshNode, key: tuple[Path, str]
) -> None:
    conn = await connect(node, key[0])
    process = await conn.create_process("sleep 30")
    await asyncio.sleep(0)  # (the command starts on the node; it is found below by polling)
    listener = node.pid
    assert listener is not None
    for _ in range(200):
        pids = descendants(listener)
        if len(pids) >= 2:  # the connection's sshd and its command
            break
        await asyncio.sleep(0.02)
    assert len(pids) >= 2, f"no session under sshd {listener}"

    node.stop()

    assert node.pid is None
    assert not node.running
    assert not alive(listener)
    assert not any(alive(pid) for pid in pids), [pid for pid in pids if alive(pid)]
    await asyncio.wait_for(conn.wait_closed(), 5)  # the open connection was cut
    process.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((node.address, node.port), timeout=2).close()
    with pytest.raises(OSError, match=r"refused|Connect call failed"):
        await connect(node, key[0])
    node.stop()  # idempotent


async def test_restart_keeps_port_and_host_key(node: SshNode, key: tuple[Path, str]) -> None:
    port, fingerprint = node.port, node.host_key_fingerprint
    node.restart()
    assert (node.port, node.host_key_fingerprint) == (port, fingerprint)
    async with await connect(node, key[0]) as conn:
        assert (await conn.run("echo ok", check=True)).stdout == "ok\n"
        presented = conn.get_server_host_key()
    assert presented is not None
    assert presented.get_fingerprint("sha256") == fingerprint


async def test_regenerate_host_key_changes_the_fingerprint(node: SshNode, key: tuple[Path, str]) -> None:
    before = node.host_key_fingerprint
    presented = await asyncssh.get_server_host_key(node.address, node.port, config=None)
    assert presented is not None
    assert presented.get_fingerprint("sha256") == before

    node.regenerate_host_key()

    assert node.running
    after = node.host_key_fingerprint
    assert after != before
    assert after.startswith("SHA256:")
    presented = await asyncssh.get_server_host_key(node.address, node.port, config=None)
    assert presented is not None
    assert presented.get_fingerprint("sha256") == after
    async with await connect(node, key[0]) as conn:
        assert (await conn.run("echo ok", check=True)).stdout == "ok\n"


def test_authorize_takes_one_line(node: SshNode) -> None:
    with pytest.raises(ValueError, match="one public key line"):
        node.authorize("ssh-ed25519 AAAA a\nssh-ed25519 AAAA b")
