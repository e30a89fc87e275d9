"""The system-control user, provisioned over real SSH on this machine (a loopback sshd node is this host):
real useradd, visudo and sudo. Every test uses accounts of its own, removed afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.contracts import Payload
from conveyor.contracts.catalogue import NodeCtlUserProvisioned, NodeCtlUserRemoved
from conveyor.testing.sshd import SSHD_PATH, SshNode, client_key
from conveyor_deployer.config import Settings
from conveyor_deployer.ctlcheck import plan_from_settings, provision, remove, self_test, status
from conveyor_deployer.ctluser import COMMENT, CtlError, CtlPlan, render_polkit
from conveyor_deployer.inventory import Inventory, InventoryError, Node, load_inventory
from conveyor_deployer.nodes import NodeAccess

UNITS = ["web.service", "worker@1.service"]


@pytest.fixture(autouse=True)
def _needs_tools() -> None:
    if not SSHD_PATH.is_file():
        pytest.fail(f"{SSHD_PATH} is missing: install the OpenSSH server (apt-get install openssh-server)")
    for tool in ("sudo", "visudo", "useradd", "runuser"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: install it (apt-get install sudo passwd util-linux)")
    if os.geteuid() != 0:
        pytest.fail("these tests create accounts and sudo rules: run them as root")


def _account() -> str:
    return f"cvt-{uuid.uuid4().hex[:10]}"


def _gone(account: str) -> bool:
    try:
        pwd.getpwnam(account)
    except KeyError:
        return True
    return False


def _cleanup(account: str) -> None:
    """Whatever a failed test left behind on this machine."""
    for path in (
        f"/etc/sudoers.d/{account}",
        f"/etc/sudoers.d/.{account}.staged",
        f"/usr/local/lib/conveyor/ctl-{account}",
        f"/etc/polkit-1/rules.d/60-{account}.rules",
    ):
        Path(path).unlink(missing_ok=True)
    if not _gone(account):
        subprocess.run(["userdel", account], check=False, capture_output=True)
    shutil.rmtree(f"/var/lib/{account}", ignore_errors=True)


class World:
    def __init__(self, tmp_path: Path, node: SshNode, key: Path) -> None:
        self.tmp_path = tmp_path
        self.node = node
        self.key = key
        self.announced: list[tuple[str, Payload, str | None]] = []
        self.accounts: list[str] = []

    def account(self) -> str:
        name = _account()
        self.accounts.append(name)
        return name

    def access(self, units: list[str] | None = None, *, manager: str = "systemd") -> NodeAccess:
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
                                        "name": "qa-web-1",
                                        "address": self.node.address,
                                        "ssh_port": self.node.port,
                                        "ssh_user": "root",
                                        "packages": {"web": UNITS if units is None else units},
                                        "service_manager": manager,
                                    }
                                ],
                            }
                        ],
                    }
                ]
            }
        )
        settings = Settings(
            known_hosts_file=self.tmp_path / "known_hosts",
            ssh_key_file=self.key,
            state_dir=self.tmp_path / "s",
        )
        access = NodeAccess(settings, inventory, self._announce)
        access.known_hosts.trust(self.node.address, self.node.port, self._host_key(), replace=True)
        return access

    def _host_key(self) -> Any:
        import asyncssh

        return asyncssh.import_public_key(self.node.host_key_line)

    def _announce(self, env: str, payload: Payload, *, actor: str | None = None) -> None:
        self.announced.append((env, payload, actor))

    def plan(self, account: str, **kwargs: Any) -> CtlPlan:
        settings = Settings(
            ssh_key_file=self.key, ctl_account=account, ctl_remote=True, state_dir=self.tmp_path
        )
        base = plan_from_settings(settings)
        return CtlPlan(**{**base.__dict__, **kwargs})


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    key, line = client_key(tmp_path / "deployer")
    with SshNode(tmp_path / "node", "qa-web-1", home_keys=True) as node:
        node.authorize(line)
        w = World(tmp_path, node, key)
        yield w
    for account in w.accounts:
        _cleanup(account)


def sudo_as(user: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", user, "--"]
    if env:
        prefix += ["env", *(f"{k}={v}" for k, v in env.items())]
    return subprocess.run([*prefix, *argv], capture_output=True, text=True, check=False, timeout=30)


def allowed(user: str, *argv: str) -> bool:
    """sudo's own answer, as ``user``: may they run exactly this as root?"""
    return sudo_as(user, "sudo", "-n", "-l", *argv).returncode == 0


SYSTEMCTL = "/usr/bin/systemctl"


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_no_trace(account: str) -> None:
    """No account, group, rules, keys, forced command or home left."""
    assert _gone(account)
    assert subprocess.run(["getent", "group", account], capture_output=True, check=False).returncode == 2
    for path in (
        f"/etc/sudoers.d/{account}",
        f"/var/lib/{account}",
        f"/usr/local/lib/conveyor/ctl-{account}",
    ):
        assert not Path(path).exists(), path


def assert_account_and_rules(account: str, other: str) -> None:
    """The account as the system sees it, and what sudo lets it (and ``other``) do, by real calls."""
    # the account as the system sees it
    entry = pwd.getpwnam(account)
    assert entry.pw_gecos == COMMENT
    assert entry.pw_dir == f"/var/lib/{account}"
    assert entry.pw_shell == "/bin/sh"  # sshd runs the forced command through it
    shadow = subprocess.run(["getent", "shadow", account], capture_output=True, text=True, check=True)
    assert shadow.stdout.split(":")[1] == "*"
    drop_in = Path(f"/etc/sudoers.d/{account}")
    info = drop_in.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, 0, 0o440)
    assert "*" not in drop_in.read_text().split("NOPASSWD:")[1]
    subprocess.run(["visudo", "-cf", str(drop_in)], check=True, capture_output=True)

    # every allowed verb and unit, from sudo itself
    for unit in UNITS:
        for verb in ("start", "stop", "restart", "reload", "status"):
            assert allowed(account, SYSTEMCTL, "--no-pager", verb, unit), (verb, unit)
            assert not allowed(other, SYSTEMCTL, "--no-pager", verb, unit)
            assert not allowed("nobody", SYSTEMCTL, "--no-pager", verb, unit)
    # and every denial, as the account and as the other account
    denied = [
        [SYSTEMCTL, "--no-pager", "restart", "ssh.service"],
        [SYSTEMCTL, "--no-pager", "restart", "web.service", "ssh.service"],
        [SYSTEMCTL, "--no-pager", "restart", "web.service", "worker@1.service"],
        [SYSTEMCTL, "--no-pager", "edit", "web.service"],
        [SYSTEMCTL, "--no-pager", "link", "/etc/evil.service"],
        [SYSTEMCTL, "--no-pager", "enable", "web.service"],
        [SYSTEMCTL, "--no-pager", "mask", "web.service"],
        [SYSTEMCTL, "--no-pager", "set-environment", "A=1"],
        [SYSTEMCTL, "--no-pager", "restart", "web.service", "--force"],
        [SYSTEMCTL, "--no-pager", "-H", "evil", "restart", "web.service"],
        [SYSTEMCTL, "restart", "web.service"],
        [SYSTEMCTL, "status", "web.service"],
        ["/bin/sh"],
        ["/bin/sh", "-c", "id"],
        ["/bin/cat", "/etc/shadow"],
    ]
    for argv in denied:
        assert not allowed(account, *argv), argv
        assert not allowed(other, *argv), argv
    # really run, not only listed: refused by sudo before anything starts
    shadow_read = sudo_as(account, "sudo", "-n", "/bin/cat", "/etc/shadow")
    assert shadow_read.returncode == 1
    assert "root:" not in shadow_read.stdout
    assert sudo_as(account, "cat", "/etc/shadow").returncode != 0
    for run in (
        sudo_as(
            account,
            "sudo",
            "-n",
            "SYSTEMD_PAGER=/bin/sh",
            SYSTEMCTL,
            "--no-pager",
            "status",
            "web.service",
        ),
        sudo_as(
            account,
            "sudo",
            "-n",
            "--preserve-env=SYSTEMD_PAGER",
            SYSTEMCTL,
            "--no-pager",
            "status",
            "web.service",
            env={"SYSTEMD_PAGER": "/bin/sh"},
        ),
        sudo_as(
            account,
            "sudo",
            "-n",
            "-E",
            SYSTEMCTL,
            "--no-pager",
            "status",
            "web.service",
            env={"EDITOR": "sh"},
        ),
    ):
        assert run.returncode == 1
        assert "not allowed" in run.stderr, run.stderr
    # the other account can change nothing of it
    home = f"/var/lib/{account}"
    for path in (
        str(drop_in),
        "/etc/sudoers.d",
        "/etc/passwd",
        "/etc/shadow",
        home,
        f"{home}/.ssh",
        f"{home}/.ssh/authorized_keys",
        f"/usr/local/lib/conveyor/ctl-{account}",
    ):
        assert sudo_as(other, "test", "-w", path).returncode != 0, path
    assert sudo_as(other, "sh", "-c", f"echo x >> {drop_in}").returncode != 0
    assert sudo_as(other, "usermod", "-s", "/bin/bash", account).returncode != 0
    assert sudo_as(other, "sh", "-c", f"echo ssh-ed25519 AAAA >> {home}/.ssh/authorized_keys").returncode != 0
    assert pwd.getpwnam(account).pw_shell == "/bin/sh"


async def test_provision_self_test_idempotence_and_removal_leave_no_trace(world: World) -> None:
    account = world.account()
    other = world.account()  # a second, ordinary account (a login shell, not a system account)
    await asyncio.to_thread(
        subprocess.run, ["useradd", "--create-home", "--shell", "/bin/sh", other], check=True
    )
    access = world.access()
    plan = world.plan(account)
    try:
        [report] = await provision(access, "qa", plan, actor="ada", remote_check=True)
        assert report.error is None, report.error
        assert report.changed[:3] == ["account", "home", "sudo rules"]
        assert {"forced command", "authorized key"} <= set(report.changed)
        failed = [row for row in report.self_test if not row["ok"]]
        assert not failed, json.dumps(failed, indent=1)
        checks = {(row["who"], row["check"]) for row in report.self_test}
        for expected in (
            (account, "restart web.service"),
            (account, "status worker@1.service"),
            (account, "edit web.service"),
            (account, "a shell (/bin/sh)"),
            (account, "pager through sudo SYSTEMD_PAGER=/bin/sh"),
            ("nobody", f"write /etc/sudoers.d/{account}"),
            (f"{account} over SSH", "ssh: sh -c id"),
        ):
            assert expected in checks, expected
        assert len(report.self_test) >= 10 + 5 * len(UNITS)

        await asyncio.to_thread(assert_account_and_rules, account, other)

        # over SSH as the account: only VERB UNIT, through sudo
        home = f"/var/lib/{account}"
        authorized = await asyncio.to_thread(Path(home, ".ssh/authorized_keys").read_text)
        assert authorized.startswith(f'restrict,command="/usr/local/lib/conveyor/ctl-{account}" ssh-ed25519 ')

        # the audit record
        [(env, event, actor)] = [a for a in world.announced if isinstance(a[1], NodeCtlUserProvisioned)]
        assert (env, actor) == ("qa", "ada")
        assert isinstance(event, NodeCtlUserProvisioned)
        assert event.self_test_passed is True
        assert event.units == UNITS
        assert event.error is None

        # a second run changes nothing and says so
        [again] = await provision(access, "qa", plan, actor="ada")
        assert again.error is None
        assert again.unchanged
        assert again.changed == []
        assert again.self_test_passed is True

        # `nodes check` sees it
        node = access.inventory.node("qa-web-1")[1]
        assert await status(access, node, plan, remote=True) == {
            "account": account,
            "present": True,
            "self_test": "passed",
            "failures": [],
        }

        # removal: no account, group, rules, keys, forced command or home left
        [gone] = await remove(access, "qa", plan, actor="bob")
        assert gone.error is None
        assert set(gone.changed) == {"sudo rules", "remote login", "account", "home"}
        await asyncio.to_thread(assert_no_trace, account)
        [removed_event] = [a for a in world.announced if isinstance(a[1], NodeCtlUserRemoved)]
        assert removed_event[2] == "bob"
        [nothing] = await remove(access, "qa", plan)
        assert nothing.unchanged
        assert nothing.error is None
        assert (await status(access, node, plan))["present"] is False
    finally:
        await access.close()


async def test_a_rule_visudo_refuses_leaves_the_previous_configuration_working(world: World) -> None:
    account = world.account()
    access = world.access()
    good = world.plan(account, remote_key=None)
    try:
        [first] = await provision(access, "qa", good)
        assert first.error is None, first.error
        assert first.self_test_passed is True
        before = await asyncio.to_thread(_digest, f"/etc/sudoers.d/{account}")
        # a Defaults setting sudo does not know (a typo in the deployer's configuration)
        typo = world.plan(account, remote_key=None, sudo_defaults=("log_outptu",))
        [bad] = await provision(access, "qa", typo)
        assert bad.error is not None
        assert "visudo -cf refused" in bad.error, bad.error
        assert "previous sudo configuration" in bad.error
        assert await asyncio.to_thread(_digest, f"/etc/sudoers.d/{account}") == before
        assert not await asyncio.to_thread(Path(f"/etc/sudoers.d/.{account}.staged").exists)
        assert bad.self_test == []
        event = world.announced[-1][1]
        assert isinstance(event, NodeCtlUserProvisioned)
        assert event.error
        assert event.self_test_passed is None
        # sudo itself still works, and the account still has exactly its old rules
        await asyncio.to_thread(subprocess.run, ["visudo", "-c"], check=True, capture_output=True)
        assert await asyncio.to_thread(allowed, account, SYSTEMCTL, "--no-pager", "restart", "web.service")
        node = access.inventory.node("qa-web-1")[1]
        rows = await self_test(access, node, good)
        assert all(row.ok for row in rows), [row for row in rows if not row.ok]
        # without remote use there is no login: nologin, no keys, no forced command
        assert pwd.getpwnam(account).pw_shell.endswith(("nologin", "false"))
        assert not await asyncio.to_thread(Path(f"/var/lib/{account}/.ssh/authorized_keys").exists)
    finally:
        await access.close()


@pytest.mark.parametrize("unit", ["web service", "web.service;id", "../etc/passwd", "a..b", "", "-H", "web*"])
def test_a_malformed_unit_in_the_inventory_is_refused(tmp_path: Path, unit: str) -> None:
    path = tmp_path / "inventory.yaml"
    node = {"name": "qa-web-1", "address": "127.0.0.1", "packages": {"web": [unit]}}
    path.write_text(
        json.dumps({"environments": [{"name": "qa", "clusters": [{"name": "web", "nodes": [node]}]}]})
    )
    with pytest.raises(InventoryError, match=r"env qa, cluster web, node qa-web-1: packages\.web\.0"):
        load_inventory(path)


async def test_a_malformed_unit_is_refused_before_anything_is_written_on_a_node(world: World) -> None:
    account = world.account()
    access = world.access()
    # an inventory object that skipped validation (built in code): provisioning checks the units itself
    env, node = access.inventory.node("qa-web-1")
    bad = Node.model_construct(**{**dict(node), "packages": {"web": ["web.service", "ssh.service;reboot"]}})
    cluster = access.inventory.environments[0].clusters[0].model_construct(name="web", nodes=[bad])
    environment = access.inventory.environments[0].model_construct(name="qa", clusters=[cluster])
    access.inventory = Inventory.model_construct(environments=[environment])
    log_before = await asyncio.to_thread(world.node.log_path.read_text)
    try:
        with pytest.raises(CtlError, match=r"unit 'ssh.service;reboot'.*nothing was written"):
            await provision(access, env, world.plan(account))
        assert _gone(account)
        assert not await asyncio.to_thread(Path(f"/etc/sudoers.d/{account}").exists)
        assert await asyncio.to_thread(world.node.log_path.read_text) == log_before  # not even a connection
    finally:
        await access.close()


def test_the_polkit_rule_allows_exactly_the_units_and_verbs(tmp_path: Path) -> None:
    """polkit's JavaScript, run by node with polkit's two calls stubbed (no D-Bus or polkitd here)."""
    node_js = shutil.which("node")
    if node_js is None:
        pytest.fail("node (Node.js) is missing: apt-get install nodejs")
    node = Node(name="qa-web-1", address="x", packages={"web": ["web", "worker@1.service"]})
    rule = render_polkit(node, CtlPlan(account="conveyor-ctl"))
    cases = [
        ("conveyor-ctl", "org.freedesktop.systemd1.manage-units", "web.service", "restart", "YES"),
        ("conveyor-ctl", "org.freedesktop.systemd1.manage-units", "worker@1.service", "stop", "YES"),
        ("conveyor-ctl", "org.freedesktop.systemd1.manage-units", "web.service", "enable", "NOT_HANDLED"),
        ("conveyor-ctl", "org.freedesktop.systemd1.manage-units", "ssh.service", "restart", "NOT_HANDLED"),
        ("conveyor-ctl", "org.freedesktop.systemd1.manage-units", "__proto__", "restart", "NOT_HANDLED"),
        (
            "conveyor-ctl",
            "org.freedesktop.systemd1.manage-unit-files",
            "web.service",
            "restart",
            "NOT_HANDLED",
        ),
        ("mallory", "org.freedesktop.systemd1.manage-units", "web.service", "restart", "NOT_HANDLED"),
    ]
    script = tmp_path / "check.js"
    script.write_text(
        "const rules = [];\n"
        'const polkit = {addRule: (f) => rules.push(f), Result: {YES: "YES", NOT_HANDLED: "NOT_HANDLED"}};\n'
        + rule
        + f"\nconst cases = {json.dumps(cases)};\n"
        + "for (const [user, id, unit, verb] of cases) {\n"
        + "  const action = {id: id, lookup: (k) => ({unit: unit, verb: verb})[k]};\n"
        + "  console.log(rules[0](action, {user: user}));\n"
        + "}\n"
    )
    done = subprocess.run([node_js, str(script)], capture_output=True, text=True, check=True, timeout=30)
    assert done.stdout.split() == [case[4] for case in cases]


async def test_the_polkit_rule_is_installed_where_polkit_is_and_removed_when_turned_off(world: World) -> None:
    account = world.account()
    access = world.access()
    polkit_dir = Path("/etc/polkit-1")
    made = not await asyncio.to_thread(polkit_dir.exists)  # made here: removed again afterwards
    plan = world.plan(account, remote_key=None, polkit=True)
    rule = Path(plan.polkit_file)
    try:
        if made:  # no polkit on this machine: provisioning says it skipped the rule
            [skipped] = await provision(access, "qa", plan)
            assert skipped.error is None, skipped.error
            assert skipped.skipped == ["polkit rule: polkit is not installed (no /etc/polkit-1/rules.d)"]
        await asyncio.to_thread((polkit_dir / "rules.d").mkdir, parents=True, exist_ok=True)
        [first] = await provision(access, "qa", plan)
        assert first.error is None, first.error
        assert "polkit rule" in first.changed
        node = access.inventory.node("qa-web-1")[1]
        assert await asyncio.to_thread(rule.read_text) == render_polkit(node, plan)
        info = await asyncio.to_thread(rule.stat)
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, 0, 0o644)
        [again] = await provision(access, "qa", plan)
        assert again.unchanged
        [off] = await provision(access, "qa", world.plan(account, remote_key=None))
        assert off.changed == ["polkit rule removed"]
        assert not await asyncio.to_thread(rule.exists)
    finally:
        await remove(access, "qa", plan)
        await access.close()
        if made:
            await asyncio.to_thread(shutil.rmtree, polkit_dir, ignore_errors=True)
