"""The deployer's node access against real sshd nodes: fingerprints shown, trusted on confirmation,
a changed host key refused, reported once, and nothing run on the node."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.contracts import Payload
from conveyor.contracts.catalogue import NodeHostKeyChanged
from conveyor.testing.sshd import SSHD_PATH, SshNode, client_key
from conveyor_deployer.config import Settings
from conveyor_deployer.inventory import Inventory
from conveyor_deployer.nodes import NodeAccess, TrustRefused
from conveyor_deployer.ssh import HostKeyChanged


@pytest.fixture(autouse=True)
def _needs_sshd() -> None:
    if not SSHD_PATH.is_file():
        pytest.fail(f"{SSHD_PATH} is missing: install the OpenSSH server (apt-get install openssh-server)")


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, SshNode]]:
    key_path, key_line = client_key(tmp_path / "deployer")
    started = {}
    for name in ("qa-1", "qa-2"):
        node = SshNode(tmp_path / name, name)
        node.authorize(key_line)
        node.start()
        started[name] = node
    (tmp_path / "key-path").write_text(str(key_path))
    yield started
    for node in started.values():
        node.stop()


def access(tmp_path: Path, nodes: dict[str, SshNode], announced: list[tuple[str, Payload]]) -> NodeAccess:
    inventory = Inventory.model_validate(
        {
            "environments": [
                {
                    "name": "qa",
                    "clusters": [
                        {
                            "name": "web",
                            "nodes": [
                                {"name": n.name, "address": n.address, "ssh_port": n.port, "ssh_user": "root"}
                                for n in nodes.values()
                            ],
                        }
                    ],
                }
            ]
        }
    )
    settings = Settings(
        known_hosts_file=tmp_path / "known_hosts",
        ssh_key_file=Path((tmp_path / "key-path").read_text()),
        state_dir=tmp_path / "state",
    )
    return NodeAccess(settings, inventory, lambda env, payload: announced.append((env, payload)))


async def test_host_keys_are_trusted_only_as_confirmed_and_a_changed_key_is_refused_and_reported(
    tmp_path: Path, nodes: dict[str, SshNode]
) -> None:
    announced: list[tuple[str, Payload]] = []
    reach = access(tmp_path, nodes, announced)
    try:
        rows = {r["node"]: r for r in await reach.host_keys("qa")}
        assert {n: r["state"] for n, r in rows.items()} == {"qa-1": "unknown", "qa-2": "unknown"}
        assert rows["qa-1"]["presented"] == nodes["qa-1"].host_key_fingerprint

        # nothing is reached before a person confirmed the fingerprint
        unchecked = {r["node"]: r for r in await reach.check("qa")}
        assert not unchecked["qa-1"]["reachable"]
        assert "not trusted" in unchecked["qa-1"]["error"]
        with pytest.raises(TrustRefused):
            await reach.trust("qa-1", nodes["qa-2"].host_key_fingerprint, replace=False)
        for name, node in nodes.items():
            assert (
                await reach.trust(name, node.host_key_fingerprint, replace=False) == node.host_key_fingerprint
            )
        checked = {r["node"]: r for r in await reach.check("qa")}
        assert all(r["reachable"] for r in checked.values()), checked
        assert checked["qa-1"]["kernel"]
        assert checked["qa-1"]["disk_free_bytes"] > 0

        # the node comes back with another key: refused, reported once, nothing run on it
        nodes["qa-1"].regenerate_host_key()
        marker = tmp_path / "ran-on-qa-1"
        env, node = reach.inventory.node("qa-1")
        with pytest.raises(HostKeyChanged):
            await reach.run(node, ["touch", str(marker)])
        assert not marker.exists()
        rows = {r["node"]: r for r in await reach.host_keys("qa")}
        assert rows["qa-1"]["state"] == "changed"
        assert rows["qa-2"]["state"] == "trusted"
        checked = {r["node"]: r for r in await reach.check("qa")}
        assert not checked["qa-1"]["reachable"]
        assert checked["qa-1"]["host_key"] == "changed"
        reports = [p for _, p in announced if isinstance(p, NodeHostKeyChanged)]
        assert len(reports) == 1
        assert reports[0].node == "qa-1"
        assert reports[0].presented_fingerprint == nodes["qa-1"].host_key_fingerprint
        assert env == "qa"

        # a person checked the new key on the node's console: replacing it is explicit
        with pytest.raises(HostKeyChanged):
            await reach.trust("qa-1", nodes["qa-1"].host_key_fingerprint, replace=False)
        await reach.trust("qa-1", nodes["qa-1"].host_key_fingerprint, replace=True)
        assert (await reach.run(node, ["echo", "ok"])).strip() == "ok"
    finally:
        await reach.close()
