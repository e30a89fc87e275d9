"""The central package index, end to end: every package built, a private index (pypiserver) started on
loopback with upload authentication, everything published with the dependencies' wheels, then a fresh
virtual environment that installs conveyor-changelog-listener from that index alone and runs it
against the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conveyor.signing import SigningKey
from conveyor.testing.services import RabbitEndpoint, free_port
from conveyor.testing.sshd import SshNode, client_key
from conveyor.testing.supervisor import Supervisor
from conveyor_deployer import __version__ as deployer_version
from conveyor_deployer.bootstrap import AgentPlan, bootstrap
from conveyor_deployer.config import Settings
from conveyor_deployer.inventory import Inventory
from conveyor_deployer.nodes import NodeAccess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import repo

pytestmark = pytest.mark.rabbitmq


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An index on loopback: uploads as 'publisher', downloads for anyone."""
    with repo.running(
        tmp_path_factory.mktemp("index"), "publisher", "s3cret-upload", port=free_port()
    ) as url:
        yield url


def test_an_upload_without_the_password_is_refused(index: str, tmp_path: Path) -> None:
    [wheel] = [p for p in repo.build(tmp_path / "dist") if p.name.startswith("conveyor_firewall_agent")][:1]
    with pytest.raises(repo.RepoError, match=r"upload to http://127\.0\.0\.1:\d+ failed"):
        repo.upload([wheel], index, "publisher", "wrong")
    assert "conveyor-firewall-agent" not in httpx.get(f"{index}/simple/", timeout=5).text


def test_a_node_installs_the_listener_from_the_index_alone_and_runs_it(
    index: str, tmp_path: Path, rabbit: RabbitEndpoint
) -> None:
    own = repo.build(tmp_path / "dist")
    assert {p.name.split("-")[0] for p in own} == {
        "conveyor",
        "conveyor_version_db",
        "conveyor_deployer",
        "conveyor_notifier",
        "conveyor_changelog_listener",
        "conveyor_firewall_agent",
    }
    versions = {p.name.split("-")[1].removesuffix(".tar.gz") for p in own}
    assert len(versions) == 1  # one version for the whole repository
    repo.upload(own, index, "publisher", "s3cret-upload")
    wheels = repo.dependency_wheels(tmp_path / "deps", ("conveyor-changelog-listener",))
    repo.upload(wheels, index, "publisher", "s3cret-upload")
    repo.upload(own, index, "publisher", "s3cret-upload")  # again: what is there is skipped

    node = tmp_path / "node-venv"
    venv.create(node, with_pip=True)
    isolated = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_CACHE_DIR": "1",
    }
    install = subprocess.run(
        [
            *(str(node / "bin" / "pip"), "install", "--isolated"),
            *("--index-url", f"{index}/simple/", "conveyor-changelog-listener"),
        ],
        env=isolated,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    listener = node / "bin" / "conveyor-changelog-listener"
    shown = subprocess.run(
        [str(listener), "--help"], env=isolated, capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0, shown.stderr
    assert "CONVEYOR_CHANGELOG_LISTENER_ENVS" in shown.stdout

    port = free_port()
    with rabbit.private_vhost("index") as vhost:
        env = isolated | {
            "CONVEYOR_CHANGELOG_LISTENER_ENVS": f'{{"dev": "{rabbit.url_for(vhost)}"}}',
            "CONVEYOR_CHANGELOG_LISTENER_ENV": "dev",
            "CONVEYOR_CHANGELOG_LISTENER_NODE": "index-node-1",
            "CONVEYOR_CHANGELOG_LISTENER_HTTP_PORT": str(port),
            "CONVEYOR_CHANGELOG_LISTENER_STATE_DIR": str(tmp_path / "state"),
        }
        process = subprocess.Popen([str(listener)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            health: dict[str, object] = {}
            while time.monotonic() < deadline and process.poll() is None:
                try:
                    health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()
                except httpx.HTTPError:
                    health = {}
                if health.get("status") == "ok":
                    break
                time.sleep(0.2)
            assert health.get("status") == "ok", health
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output.decode()[-3000:]


async def test_bootstrap_installs_the_agents_from_the_index_instead_of_uploading_wheels(
    index: str, tmp_path: Path, amqp_url: str
) -> None:
    """After the test above published everything: a node bootstrapped over SSH gets the listener of
    the deployer's version from the index; a second bootstrap installs nothing."""
    key_path, key_line = client_key(tmp_path / "deployer")
    root = tmp_path / "node-root"
    prefix, include = root / "opt" / "conveyor", root / "etc" / "supervisor" / "conveyor.conf"
    with SshNode(tmp_path / "ssh", "qa-web-1") as host:
        host.authorize(key_line)
        inventory = Inventory.model_validate(
            {
                "environments": [
                    {
                        "name": "qa",
                        "clusters": [
                            {
                                "name": "web",
                                "nodes": [
                                    {
                                        "name": host.name,
                                        "address": host.address,
                                        "ssh_port": host.port,
                                        "ssh_user": "root",
                                        "service_manager": "supervisord",
                                    }
                                ],
                            }
                        ],
                    }
                ]
            }
        )
        settings = Settings(
            known_hosts_file=tmp_path / "known_hosts", ssh_key_file=key_path, state_dir=tmp_path
        )
        access = NodeAccess(settings, inventory, lambda env, payload, actor=None: None)
        node = inventory.node(host.name)[1]
        supervisor = Supervisor(tmp_path / "supervisor", include=[include])
        plan = AgentPlan(
            envs={"qa": amqp_url},
            artifact_store_url="http://127.0.0.1:8101",
            trusted_keys=[SigningKey.generate().public_key_text()],
            prefix=str(prefix),
            python=sys.executable,
            listener_http_port=free_port(),
            install_firewall_agent=False,
            supervisor_conf=str(supervisor.config_path),
            supervisor_include=str(include),
            supervisorctl=str(Path(sys.executable).parent / "supervisorctl"),
            index_url=f"{index}/simple/",
            from_index=deployer_version,
            pip_env={"PIP_NO_CACHE_DIR": "1", "PIP_CONFIG_FILE": os.devnull},
        )
        with supervisor:
            try:
                await access.trust(node.name, host.host_key_fingerprint, replace=False)
                first = await bootstrap(access, node, "qa", wheels=[], plan=plan)
                assert first.error is None, first.error
                assert first.changed[:2] == ["venv", "install"]
                assert not (prefix / "wheels").exists() or not any((prefix / "wheels").iterdir())
                assert (
                    f"conveyor-changelog-listener=={deployer_version}"
                    in (prefix / "installed.txt").read_text()
                )
                assert index not in (prefix / "installed.txt").read_text()
                supervisor.wait_state("conveyor-changelog-listener", "RUNNING", timeout=30)
                again = await bootstrap(access, node, "qa", wheels=[], plan=plan)
                assert again.error is None, again.error
                assert again.changed == []
            finally:
                await access.close()
