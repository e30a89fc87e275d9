"""Bootstrapping nodes over SSH, against a real sshd node: the agents' wheels built from this repository,
installed into a virtual environment with pip, configured, and run by a real supervisord (or, for the
systemd flavour, by a stand-in systemctl that records what it is asked), idempotently."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conveyor.contracts import Payload
from conveyor.signing import SigningKey, TrustedKeys
from conveyor.testing.services import free_port
from conveyor.testing.sshd import SSHD_PATH, SshNode, client_key
from conveyor.testing.supervisor import Supervisor
from conveyor_deployer.bootstrap import (
    FIREWALL_AGENT,
    LISTENER,
    AgentPlan,
    BootstrapReport,
    bootstrap,
    trusted_key_lines,
)
from conveyor_deployer.config import Settings
from conveyor_deployer.ctlcheck import provision as provision_ctl_user
from conveyor_deployer.ctlcheck import remove as remove_ctl_user
from conveyor_deployer.ctluser import CtlPlan
from conveyor_deployer.inventory import Inventory, Node
from conveyor_deployer.nodes import NodeAccess

REPO = Path(__file__).resolve().parents[3]
PIP_CACHE = "/tmp/conveyor-pip-cache"  # shared across runs: dependencies are downloaded once


@pytest.fixture(autouse=True)
def _needs_sshd() -> None:
    if not SSHD_PATH.is_file():
        pytest.fail(f"{SSHD_PATH} is missing: install the OpenSSH server (apt-get install openssh-server)")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The wheels of the shared library and the two agents, built once for the module."""
    out = tmp_path_factory.mktemp("wheels")
    for package in ("conveyor", "conveyor-changelog-listener", "conveyor-firewall-agent"):
        done = subprocess.run(
            ["uv", "build", "--wheel", "--package", package, "--out-dir", str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert done.returncode == 0, f"uv build --package {package}: {done.stderr[-3000:]}"
    built = sorted(out.glob("*.whl"))
    assert len(built) == 3, built
    return built


@dataclasses.dataclass
class Deployer:
    key_path: Path
    node: SshNode


@pytest.fixture(scope="module")
def deployer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployer]:
    """One sshd node that accepts the deployer's key (logging in as root)."""
    directory = tmp_path_factory.mktemp("ssh")
    key_path, key_line = client_key(directory / "deployer")
    with SshNode(directory / "node", "qa-web-1") as node:
        node.authorize(key_line)
        yield Deployer(key_path, node)


def node_access(tmp_path: Path, deployer: Deployer, **node: Any) -> tuple[NodeAccess, Node]:
    definition = {
        "name": deployer.node.name,
        "address": deployer.node.address,
        "ssh_port": deployer.node.port,
        "ssh_user": "root",
        **node,
    }
    inventory = Inventory.model_validate(
        {"environments": [{"name": "qa", "clusters": [{"name": "web", "nodes": [definition]}]}]}
    )
    settings = Settings(
        known_hosts_file=tmp_path / "known_hosts",
        ssh_key_file=deployer.key_path,
        state_dir=tmp_path / "state",
    )
    announced: list[tuple[str, Payload]] = []
    access = NodeAccess(
        settings, inventory, lambda env, payload, actor=None: announced.append((env, payload))
    )
    return access, inventory.node(deployer.node.name)[1]


async def get(port: int, path: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


async def healthz(port: int) -> int:
    return (await get(port, "/healthz")).status_code


def env_values(path: Path) -> dict[str, str]:
    """The variables an environment file sets, as sh reads it (what the supervisord programs do)."""
    done = subprocess.run(
        ["/bin/sh", "-c", 'set -a; . "$1"; env -0', "sh", str(path)],
        capture_output=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    )
    pairs = (item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    return {key: value for key, value in pairs if key.startswith("CONVEYOR_")}


async def test_bootstrap_under_supervisord_runs_the_agents_changes_nothing_twice_and_rotates_keys(
    tmp_path: Path, deployer: Deployer, wheels: list[Path], amqp_url: str
) -> None:
    root = deployer.node.root / "supervised"
    prefix = root / "opt" / "conveyor"
    include = root / "etc" / "supervisor" / "conf.d" / "conveyor.conf"
    web_root = root / "srv" / "web"
    access, node = node_access(
        tmp_path,
        deployer,
        service_manager="supervisord",
        packages={"web": ["web"], "api": ["api", "api-worker"]},
        release_roots={"web": str(web_root)},
    )
    key, next_key = SigningKey.generate(), SigningKey.generate()
    supervisor = Supervisor(tmp_path / "supervisor", include=[include])
    plan = AgentPlan(
        envs={"qa": amqp_url, "prod": "amqp://nobody:secret@127.0.0.1:5672/prod"},
        artifact_store_url="http://127.0.0.1:8101",
        artifact_store_token="reader-token",
        trusted_keys=[key.public_key_text()],
        prefix=str(prefix),
        python=sys.executable,
        listener_http_port=free_port(),
        firewall_http_port=free_port(),
        supervisor_conf=str(supervisor.config_path),
        supervisor_include=str(include),
        supervisorctl=str(Path(sys.executable).parent / "supervisorctl"),
        pip_env={"PIP_CACHE_DIR": PIP_CACHE},
        control_user=f"cvb-{secrets.token_hex(5)}",
    )
    # the system-control user first, as `conveyor nodes bootstrap` does: the listener restarts through it
    assert plan.control_user is not None
    ctl_plan = CtlPlan(
        account=plan.control_user, supervisorctl=plan.supervisorctl, supervisor_conf=plan.supervisor_conf
    )
    with supervisor:
        try:
            await access.trust(node.name, deployer.node.host_key_fingerprint, replace=False)
            [ctl] = await provision_ctl_user(access, "qa", ctl_plan)
            assert ctl.error is None, ctl.error
            assert ctl.self_test_passed, [row for row in ctl.self_test if not row["ok"]]

            started = time.monotonic()
            first = await bootstrap(access, node, "qa", wheels=wheels, plan=plan)
            print(f"first bootstrap: {time.monotonic() - started:.1f}s")
            assert first.error is None, first.error
            assert first.changed == [
                "wheels",
                "venv",
                "install",
                "listener config",
                "trusted keys",
                "firewall config",
                "supervisor programs",
            ]
            assert sorted(first.started) == [LISTENER, FIREWALL_AGENT]
            assert not first.unchanged
            for agent in (LISTENER, FIREWALL_AGENT):
                supervisor.wait_state(agent, "RUNNING", timeout=30)
            assert await healthz(plan.listener_http_port) == 200
            assert await healthz(plan.firewall_http_port) == 200

            # the layout, and the listener's configuration as it runs with it
            assert sorted(p.name for p in (prefix / "wheels").iterdir()) == [w.name for w in wheels]
            assert (prefix / "installed.txt").read_text().count(".whl") == 3
            listener_env = prefix / "etc" / "changelog-listener.env"
            assert stat.S_IMODE(listener_env.stat().st_mode) == 0o600
            assert stat.S_IMODE((prefix / "etc" / "firewall-agent.env").stat().st_mode) == 0o600
            values = env_values(listener_env)
            assert values["CONVEYOR_CHANGELOG_LISTENER_ENVS"] == f'{{"qa": "{amqp_url}"}}'  # its env's only
            assert values["CONVEYOR_CHANGELOG_LISTENER_NODE"] == "qa-web-1"
            assert values["CONVEYOR_CHANGELOG_LISTENER_SUPERVISORCTL_CONFIG"] == str(supervisor.config_path)
            assert values["CONVEYOR_CHANGELOG_LISTENER_ARTIFACT_STORE_TOKEN"] == "reader-token"
            assert values["CONVEYOR_CHANGELOG_LISTENER_CONTROL_USER"] == plan.control_user
            assert values["CONVEYOR_CHANGELOG_LISTENER_SUPERVISORCTL"] == plan.supervisorctl
            packages = (await get(plan.listener_http_port, "/packages")).json()
            assert {p["name"]: (p["role"], p["root"]) for p in packages} == {
                "web": ("target", str(web_root)),
                "api": ("target", str(prefix / "releases" / "api")),
            }
            assert key.key_id in TrustedKeys.load(prefix / "etc" / "trusted-keys")
            log = (prefix / "log" / "changelog-listener.log").read_text()
            assert "no_trusted_keys" not in log
            pids = {agent: supervisor.pid(agent) for agent in (LISTENER, FIREWALL_AGENT)}

            # again: nothing to do, nothing restarted
            again = await bootstrap(access, node, "qa", wheels=wheels, plan=plan)
            assert again == BootstrapReport(node.name, changed=[], started=[], unchanged=True, error=None)
            assert {agent: supervisor.pid(agent) for agent in pids} == pids

            # a key rotation: both agents trust both keys and were restarted for it
            rotated = dataclasses.replace(
                plan, trusted_keys=[key.public_key_text(), next_key.public_key_text()]
            )
            rotation = await bootstrap(access, node, "qa", wheels=wheels, plan=rotated)
            assert rotation.error is None, rotation.error
            assert rotation.changed == ["trusted keys"]
            assert sorted(rotation.started) == [LISTENER, FIREWALL_AGENT]
            trusted = TrustedKeys.load(prefix / "etc" / "trusted-keys")
            assert {key.key_id, next_key.key_id} <= {k.key_id for k in trusted}
            for agent in (LISTENER, FIREWALL_AGENT):
                supervisor.wait_state(agent, "RUNNING", timeout=30)
                assert supervisor.pid(agent) != pids[agent]
            assert await healthz(plan.listener_http_port) == 200
            assert await healthz(plan.firewall_http_port) == 200
            firewall_env = env_values(prefix / "etc" / "firewall-agent.env")
            assert firewall_env["CONVEYOR_FIREWALL_AGENT_TRUSTED_KEYS_FILE"] == str(
                prefix / "etc" / "trusted-keys"
            )

            # an agent that stopped is started again, without anything else changing
            supervisor.ctl("stop", FIREWALL_AGENT)
            revived = await bootstrap(access, node, "qa", wheels=wheels, plan=rotated)
            assert (revived.error, revived.changed, revived.started) == (None, [], [FIREWALL_AGENT])
            assert supervisor.status(FIREWALL_AGENT) == "RUNNING"
        finally:
            await remove_ctl_user(access, "qa", ctl_plan)
            await access.close()


FAKE_SYSTEMCTL = """#!/bin/sh
# a stand-in for systemctl: records its arguments, keeps enabled/active flags as files
echo "$*" >> {calls}
state={state}
case "$1" in
    is-active) if [ -e "$state/active.$2" ]; then echo active; else echo inactive; exit 3; fi ;;
    is-enabled) if [ -e "$state/enabled.$2" ]; then echo enabled; else echo disabled; exit 1; fi ;;
    enable) touch "$state/enabled.$2" ;;
    start|restart) touch "$state/active.$2" ;;
    disable) [ "$2" = --now ] && shift; rm -f "$state/enabled.$2" "$state/active.$2" ;;
    daemon-reload) ;;
    *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


async def test_bootstrap_under_systemd_writes_units_and_restarts_only_what_changed(
    tmp_path: Path, deployer: Deployer
) -> None:
    root = deployer.node.root / "systemd"
    prefix = root / "opt" / "conveyor"
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    # the agents are installed already (a stand-in venv): bootstrap without wheels only configures
    (prefix / "venv" / "bin").mkdir(parents=True)
    (prefix / "venv" / "bin" / "python").symlink_to(sys.executable)
    state = tmp_path / "systemctl"
    state.mkdir()
    calls = tmp_path / "systemctl.calls"
    systemctl = tmp_path / "systemctl.sh"
    systemctl.write_text(FAKE_SYSTEMCTL.format(calls=calls, state=state))
    systemctl.chmod(0o755)
    access, node = node_access(tmp_path, deployer, packages={"web": ["web.service"]})
    key, next_key = SigningKey.generate(), SigningKey.generate()
    plan = AgentPlan(
        envs={"qa": "amqp://listener:secret@mq.qa.example:5672/qa"},
        artifact_store_url="http://deploy.example:8101",
        trusted_keys=[key.public_key_text()],
        prefix=str(prefix),
        systemctl=str(systemctl),
        systemd_dir=str(units),
        health_timeout_s=0,
    )

    def recorded() -> list[str]:
        lines = calls.read_text().splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return [line for line in lines if not line.startswith(("is-active", "is-enabled"))]

    try:
        await access.trust(node.name, deployer.node.host_key_fingerprint, replace=False)
        first = await bootstrap(access, node, "qa", wheels=[], plan=plan)
        assert first.error is None, first.error
        assert first.changed == [
            "listener config",
            "trusted keys",
            "firewall config",
            "listener unit",
            "firewall unit",
            f"{LISTENER} enabled",
            f"{FIREWALL_AGENT} enabled",
        ]
        assert first.started == [LISTENER, FIREWALL_AGENT]
        assert recorded() == [
            "daemon-reload",
            f"enable {LISTENER}.service",
            f"restart {LISTENER}.service",
            f"enable {FIREWALL_AGENT}.service",
            f"restart {FIREWALL_AGENT}.service",
        ]
        unit = (units / f"{LISTENER}.service").read_text()
        for line in (
            f"EnvironmentFile={prefix}/etc/changelog-listener.env",
            f"ExecStart={prefix}/venv/bin/{LISTENER}",
            "Restart=on-failure",
            "KillSignal=SIGTERM",
            "TimeoutStopSec=60",
            "WantedBy=multi-user.target",
        ):
            assert line in unit.splitlines()
        assert (
            f"ExecStart={prefix}/venv/bin/{FIREWALL_AGENT}"
            in (units / f"{FIREWALL_AGENT}.service").read_text()
        )

        # the listener's settings load from what was written (as systemd passes it, sh reads it alike)
        from conveyor_changelog_listener.config import Settings as ListenerSettings

        values = env_values(prefix / "etc" / "changelog-listener.env")
        with pytest.MonkeyPatch.context() as patch:
            for name, value in values.items():
                patch.setenv(name, value)
            listener = ListenerSettings()
        assert listener.node == "qa-web-1"
        assert listener.envs == {"qa": "amqp://listener:secret@mq.qa.example:5672/qa"}
        assert [(p.name, str(p.root), p.units) for p in listener.packages] == [
            ("web", f"{prefix}/releases/web", ["web.service"])
        ]
        assert listener.service_manager == "systemd"
        assert listener.trusted_keys_file == prefix / "etc" / "trusted-keys"
        assert listener.state_dir == prefix / "state" / "changelog-listener"

        again = await bootstrap(access, node, "qa", wheels=[], plan=plan)
        assert again.unchanged, again
        assert recorded() == []

        # stopped behind its back: started, nothing else
        (state / f"active.{LISTENER}.service").unlink()
        revived = await bootstrap(access, node, "qa", wheels=[], plan=plan)
        assert (revived.error, revived.changed, revived.started) == (None, [], [LISTENER])
        assert recorded() == [f"start {LISTENER}.service"]

        rotated = dataclasses.replace(plan, trusted_keys=[key.public_key_text(), next_key.public_key_text()])
        rotation = await bootstrap(access, node, "qa", wheels=[], plan=rotated)
        assert (rotation.error, rotation.changed) == (None, ["trusted keys"])
        assert sorted(rotation.started) == [LISTENER, FIREWALL_AGENT]
        assert sorted(recorded()) == sorted(
            [f"restart {FIREWALL_AGENT}.service", f"restart {LISTENER}.service"]
        )

        # the firewall agent is no longer wanted: disabled, stopped and its unit removed
        dropped = await bootstrap(
            access, node, "qa", wheels=[], plan=dataclasses.replace(rotated, install_firewall_agent=False)
        )
        assert (dropped.error, dropped.changed, dropped.started) == (None, [f"{FIREWALL_AGENT} removed"], [])
        assert recorded() == [f"disable --now {FIREWALL_AGENT}.service", "daemon-reload"]
        assert not (units / f"{FIREWALL_AGENT}.service").exists()
    finally:
        await access.close()


async def test_a_node_that_cannot_be_bootstrapped_is_reported_not_raised(
    tmp_path: Path, deployer: Deployer, wheels: list[Path]
) -> None:
    prefix = deployer.node.root / "untrusted" / "opt" / "conveyor"
    access, node = node_access(tmp_path, deployer)
    plan = AgentPlan(
        envs={"qa": "amqp://guest:guest@127.0.0.1:5672/qa"},
        artifact_store_url="http://127.0.0.1:8101",
        trusted_keys=[SigningKey.generate().public_key_text()],
        prefix=str(prefix),
        python=sys.executable,
    )
    try:
        # its host key was never trusted: nothing is sent to it
        untrusted = await bootstrap(access, node, "qa", wheels=wheels, plan=plan)
        assert untrusted.error is not None
        assert "not trusted" in untrusted.error
        assert not untrusted.unchanged
        assert not prefix.exists()

        await access.trust(node.name, deployer.node.host_key_fingerprint, replace=False)
        # no wheels and nothing installed yet: said so
        bare, concurrent = await asyncio.gather(
            bootstrap(access, node, "qa", wheels=[], plan=plan),
            bootstrap(access, node, "qa", wheels=[], plan=plan),
        )
        assert bare.error is not None
        assert "not installed" in bare.error
        # and one bootstrap of a node at a time
        assert concurrent.error is not None
        assert "being bootstrapped already" in concurrent.error
        # an env the plan has no broker for
        other = await bootstrap(access, node, "prod", wheels=wheels, plan=plan)
        assert other.error is not None
        assert "prod" in other.error
    finally:
        await access.close()


def test_the_plan_refuses_what_would_break_a_node() -> None:
    line = SigningKey.generate().public_key_text()
    base: dict[str, Any] = {
        "envs": {"qa": "amqp://x@h/qa"},
        "artifact_store_url": "http://h",
        "trusted_keys": [line],
    }
    AgentPlan(**base)
    with pytest.raises(ValueError, match="no key"):
        AgentPlan(**{**base, "trusted_keys": []})
    with pytest.raises(ValueError, match="trusted_keys"):
        AgentPlan(**{**base, "trusted_keys": ["ed25519:0123 nonsense"]})
    with pytest.raises(ValueError, match="prefix"):
        AgentPlan(**{**base, "prefix": "/opt/my conveyor"})
    with pytest.raises(ValueError, match="must differ"):
        AgentPlan(**{**base, "listener_http_port": 9000, "firewall_http_port": 9000})


def test_trusted_key_lines_follow_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    current, upcoming, previous = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    current.save(path)
    assert trusted_key_lines(path, command_ttl_s=900) == [current.public_key_text()]
    upcoming.save(tmp_path / "signing.key.next")
    assert trusted_key_lines(path, command_ttl_s=900) == [
        current.public_key_text(),
        upcoming.public_key_text(),
    ]
    (tmp_path / "signing.key.next").unlink()
    previous.save(tmp_path / "signing.key.previous")
    promoted = (tmp_path / "signing.key.previous").stat().st_mtime
    assert trusted_key_lines(path, command_ttl_s=900, now=promoted + 60) == [
        current.public_key_text(),
        previous.public_key_text(),
    ]
    assert trusted_key_lines(path, command_ttl_s=900, now=promoted + 901) == [current.public_key_text()]
