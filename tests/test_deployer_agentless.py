"""Agentless nodes (``agent: none``): real sshd per node; the deployer ships each archive over SFTP and
runs ``conveyor changeset apply`` there. Host keys are trusted on confirmation; a stopped sshd makes a
node unreachable until a retry; a changed host key is refused, reported, and nothing reaches the node."""

from __future__ import annotations

import asyncio
import json
import pwd
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conveyor.contracts.catalogue import NodeHostKeyChanged
from conveyor.testing.services import RabbitEndpoint
from conveyor.testing.sshd import SSHD_PATH, SshNode, client_key
from conveyor.testing.tap import EventTap

from .deploy_world import PACKAGE, READER_TOKEN, SOURCE, Estate, build_estate, first_release

pytestmark = pytest.mark.rabbitmq

CTL_ACCOUNT = f"cva-{secrets.token_hex(5)}"


@pytest.fixture(scope="module")
def estate(
    rabbit: RabbitEndpoint, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Estate, dict[str, SshNode]]]:
    if not SSHD_PATH.is_file():
        pytest.fail(f"{SSHD_PATH} is missing: install the OpenSSH server (apt-get install openssh-server)")
    estate, vhosts = build_estate(rabbit, tmp_path_factory.mktemp("agentless"), {"dev": [SOURCE]})
    _, public = client_key(estate.tmp / "deployer-ssh")
    nodes = {name: SshNode(estate.tmp / name, name, home_keys=True) for name in ("qa-a1", "qa-a2")}
    for node in nodes.values():
        node.authorize(public)
        node.start()
    estate.extra_nodes["qa"] = [
        {
            "name": node.name,
            "address": node.address,
            "ssh_port": node.port,
            "ssh_user": "root",
            "agent": "none",
            "packages": {PACKAGE: []},
            "release_roots": {PACKAGE: str(node.root / PACKAGE)},
        }
        for node in nodes.values()
    ]
    estate.deployer_env = {
        "CONVEYOR_DEPLOYER_CTL_ACCOUNT": CTL_ACCOUNT,
        "CONVEYOR_DEPLOYER_CTL_REMOTE": "true",
    }
    try:
        estate.supervisor.start()
        estate.start_version_db()
        estate.start_deployer()
        estate.start_listener(estate.nodes[SOURCE])
        yield estate, nodes
    finally:
        estate.stop(estate.nodes[SOURCE].process)
        estate.stop(estate.deployer)
        estate.stop(estate.version_db)
        estate.supervisor.stop()
        for node in nodes.values():
            node.stop()
        subprocess.run(["userdel", CTL_ACCOUNT], capture_output=True, check=False)  # after a failed test
        for vhost in vhosts:
            rabbit.delete_vhost(vhost)


def version_on(node: SshNode) -> str | None:
    marker = node.root / PACKAGE / "current" / "VERSION"
    return marker.read_text() if marker.exists() else None


async def promote(estate: Estate, **options: Any) -> dict[str, Any]:
    body = {"package": PACKAGE, "to_env": "qa", "wave_size": "100%", **options}
    response = await asyncio.to_thread(estate.api, "POST", "/promotions", body=body)
    assert response.status_code == 201, response.text
    return await estate.wait_final(response.json()["id"])


async def test_agentless_nodes_are_trusted_deployed_over_ssh_retried_and_refused_on_a_changed_key(
    estate: tuple[Estate, dict[str, SshNode]],
) -> None:
    world, nodes = estate
    shown = await asyncio.to_thread(world.api, "GET", "/nodes/host-keys?env=qa")
    keys = {r["node"]: r for r in shown.json()}
    assert {n: r["state"] for n, r in keys.items()} == {"qa-a1": "unknown", "qa-a2": "unknown"}
    for name, row in keys.items():
        assert row["presented"] == nodes[name].host_key_fingerprint
        refused = await asyncio.to_thread(
            world.api, "POST", f"/nodes/{name}/trust", user="ada", body={"fingerprint": row["presented"]}
        )
        assert refused.status_code == 403  # trusting a host is an admin's call
        trusted = await asyncio.to_thread(
            world.api, "POST", f"/nodes/{name}/trust", user="admin", body={"fingerprint": row["presented"]}
        )
        assert trusted.status_code == 200, trusted.text

    await world.ship(first_release(world))
    first = await promote(world)
    assert first["state"] == "succeeded", first
    assert [version_on(n) for n in nodes.values()] == ["1", "1"]

    nodes["qa-a2"].stop()
    await world.ship({"VERSION": "2"})
    second = await promote(world, max_failures="1")
    assert second["state"] == "succeeded", second
    assert second["nodes"]["qa-a2"]["state"] == "unreachable"
    assert version_on(nodes["qa-a1"]) == "2"
    assert version_on(nodes["qa-a2"]) == "1"
    nodes["qa-a2"].start()
    retried = await asyncio.to_thread(world.api, "POST", f"/promotions/{second['id']}/retry")
    assert retried.status_code == 200, retried.text
    second = await world.wait_final(second["id"])
    assert second["state"] == "succeeded", second
    assert version_on(nodes["qa-a2"]) == "2"

    releases_before = sorted(p.name for p in (nodes["qa-a1"].root / PACKAGE / "releases").iterdir())
    nodes["qa-a1"].regenerate_host_key()
    async with EventTap(world.urls["qa"], ["node.#"]) as tap:
        await world.ship({"VERSION": "3"})
        third = await promote(world, max_failures="1")
        report = await tap.expect(NodeHostKeyChanged, timeout=10)
    assert third["nodes"]["qa-a1"]["state"] == "failed"
    assert "host key changed" in third["nodes"]["qa-a1"]["error"]
    assert report.payload.node == "qa-a1"
    assert report.payload.presented_fingerprint == nodes["qa-a1"].host_key_fingerprint
    assert sorted(p.name for p in (nodes["qa-a1"].root / PACKAGE / "releases").iterdir()) == releases_before
    assert version_on(nodes["qa-a1"]) == "2"  # nothing reached it
    assert version_on(nodes["qa-a2"]) == "3"
    keys = {
        r["node"]: r for r in (await asyncio.to_thread(world.api, "GET", "/nodes/host-keys?env=qa")).json()
    }
    assert keys["qa-a1"]["state"] == "changed"


def audit(world: Estate, action: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{world.store_url}/audit",
        params={"action": action},
        headers={"Authorization": f"Bearer {READER_TOKEN}"},
        timeout=10,
    )
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_the_system_control_user_is_provisioned_checked_audited_and_removed_through_the_cli(
    estate: tuple[Estate, dict[str, SshNode]],
) -> None:
    world, nodes = estate
    node = nodes["qa-a2"]
    keys = {
        r["node"]: r for r in (await asyncio.to_thread(world.api, "GET", "/nodes/host-keys?env=qa")).json()
    }
    if keys["qa-a2"]["state"] != "trusted":
        body = {"fingerprint": node.host_key_fingerprint, "replace": True}
        trusted = await asyncio.to_thread(world.api, "POST", "/nodes/qa-a2/trust", user="admin", body=body)
        assert trusted.status_code == 200, trusted.text

    refused = await asyncio.to_thread(world.cli, "nodes", "provision-ctl-user", "--env", "qa", user="ada")
    assert refused.returncode != 0  # an admin's call
    assert "403" in refused.stdout + refused.stderr or "admin" in refused.stdout + refused.stderr

    done = await asyncio.to_thread(
        world.cli, "nodes", "provision-ctl-user", "--env", "qa", "--node", "qa-a2", "--json"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [row] = json.loads(done.stdout)
    assert row["node"] == "qa-a2"
    assert row["error"] is None
    assert row["self_test_passed"] is True
    assert "account" in row["changed"]
    assert any(r["check"] == "ssh: sh -c id" and r["ok"] for r in row["self_test"])  # CTL_REMOTE
    assert await asyncio.to_thread(pwd.getpwnam, CTL_ACCOUNT)
    shown = await asyncio.to_thread(
        world.cli, "nodes", "provision-ctl-user", "--env", "qa", "--node", "qa-a2"
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "nothing (already as planned)" in shown.stdout
    assert "self-test" in shown.stdout

    checked = (await asyncio.to_thread(world.api, "GET", "/nodes/check?env=qa")).json()
    ctl = {r["node"]: r["ctl_user"] for r in checked}
    assert ctl["qa-a2"] == {"account": CTL_ACCOUNT, "present": True, "self_test": "passed", "failures": []}

    removed = await asyncio.to_thread(
        world.cli, "nodes", "remove-ctl-user", "--env", "qa", "--node", "qa-a2", "--json"
    )
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "account" in json.loads(removed.stdout)[0]["changed"]
    with pytest.raises(KeyError):
        await asyncio.to_thread(pwd.getpwnam, CTL_ACCOUNT)

    # both are in version-db's audit log, with who did it
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        provisioned = await asyncio.to_thread(audit, world, "node.ctl_user_provisioned")
        removals = await asyncio.to_thread(audit, world, "node.ctl_user_removed")
        if len(provisioned) >= 2 and removals:
            break
        assert asyncio.get_running_loop().time() < deadline, (provisioned, removals)
        await asyncio.sleep(0.2)
    assert {(r["actor"], r["target"], r["outcome"]) for r in provisioned} == {
        ("admin", f"{CTL_ACCOUNT}@qa-a2", "provisioned"),
        ("admin", f"{CTL_ACCOUNT}@qa-a2", "unchanged"),
    }
    assert (removals[0]["actor"], removals[0]["outcome"]) == ("admin", "removed")
