"""The system-control user's self-test: what the account may do, and everything it and others may not.

Every row is a real call on the node, made as root over SSH and switched to the account (or to ``nobody``,
an ordinary account every system has) with ``runuser``:

- allowed: each verb and unit passes ``sudo -n -l`` (sudo's own answer to "may I run exactly this");
- denied for the account: another unit, two units in one command, ``edit``/``link``/``enable``/``mask``/
  ``set-environment`` (or supervisorctl's ``shutdown``/``reload``/``update``/``fg``/``signal``), an extra
  argument, the tool without ``--no-pager``/``-c``, a shell, ``cat /etc/shadow`` through sudo and
  reading it directly, a pager smuggled in through the environment (``--preserve-env`` and ``VAR=…``,
  which sudo must refuse before running anything);
- the account's password is locked and it belongs to no other group;
- denied for ``nobody``: every allowed command, and writing the drop-in, ``/etc/sudoers.d``, the account
  files (``/etc/passwd``, ``/etc/shadow``, ``/etc/group``), the account's home, keys and forced command;
- with remote use and the deployer's own key: over SSH as the account, ``status UNIT`` passes the forced
  command, a shell command or a chained one is refused by it, another unit is refused by sudo.

``sudo -l`` executes nothing, so checking a production node restarts nothing.
"""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import asdict, dataclass
from typing import Any

import asyncssh

from conveyor.contracts.catalogue import NodeCtlUserProvisioned, NodeCtlUserRemoved
from conveyor_deployer.config import Settings
from conveyor_deployer.ctluser import (
    CtlError,
    CtlPlan,
    CtlReport,
    allowed_commands,
    node_units,
    provision_node,
    remove_node,
    tool_argv,
)
from conveyor_deployer.inventory import Node
from conveyor_deployer.nodes import NodeAccess
from conveyor_deployer.ssh import SshError, SshTarget

__all__ = ["SelfTestRow", "plan_from_settings", "provision", "remove", "self_test", "status"]

OTHER_UNIT = "conveyor-selftest-other.service"
NOBODY = "nobody"
# What sudo says when its policy refuses (not when the command it ran failed).
REFUSALS = ("a password is required", "not allowed", "may not run", "is not in the sudoers")


@dataclass(frozen=True)
class SelfTestRow:
    check: str
    who: str
    expected: str  # allowed | denied
    result: str  # allowed | denied | error
    ok: bool
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Check:
    check: str
    who: str
    expected: str
    argv: list[str]
    refusal: str | None = None
    """Denied only if the output says this: sudo refused, not the command failing for its own reasons."""


def _checks(node: Node, plan: CtlPlan, *, written: list[str]) -> list[_Check]:
    account = plan.account
    tool = tool_argv(node, plan)
    units = node_units(node)
    allowed = allowed_commands(node, plan)
    other = OTHER_UNIT if OTHER_UNIT not in units else "conveyor-selftest-other-2.service"
    unit = units[0] if units else "app.service"
    second = units[1] if len(units) > 1 else other

    def sudo_l(who: str, argv: list[str]) -> list[str]:
        return ["runuser", "-u", who, "--", "sudo", "-n", "-l", *argv]

    checks = [
        _Check(" ".join(argv[len(tool) :]), account, "allowed", sudo_l(account, argv)) for argv in allowed
    ]
    denied: list[tuple[str, list[str]]] = [
        (f"restart {other} (not the node's)", [*tool, "restart", other]),
        (f"restart {unit} {second} (two units)", [*tool, "restart", unit, second]),
    ]
    if node.service_manager == "supervisord":
        verbs = [["shutdown"], ["reload"], ["update"], ["fg", unit], ["signal", "KILL", unit], ["tail", unit]]
        denied += [(" ".join(v), [*tool, *v]) for v in verbs]
        denied.append((f"restart {unit} without -c", [tool[0], "restart", unit]))
    else:
        verbs = [["edit", unit], ["link", "/etc/conveyor-selftest.service"], ["enable", unit], ["mask", unit]]
        verbs.append(["set-environment", "SYSTEMD_PAGER=/bin/sh"])
        denied += [(" ".join(v), [*tool, *v]) for v in verbs]
        denied.append((f"status {unit} without --no-pager (pager escape)", [tool[0], "status", unit]))
    denied += [
        (f"restart {unit} --force (extra argument)", [*tool, "restart", unit, "--force"]),
        ("a shell (/bin/sh)", ["/bin/sh"]),
        ("a shell (/bin/bash -i)", ["/bin/bash", "-i"]),
        ("sudo cat /etc/shadow", ["/bin/cat", "/etc/shadow"]),
    ]
    checks += [_Check(label, account, "denied", sudo_l(account, argv)) for label, argv in denied]
    status = [*tool, "status", unit]
    refused = "sudo: "
    checks += [
        _Check(
            "read /etc/shadow directly",
            account,
            "denied",
            ["runuser", "-u", account, "--", "cat", "/etc/shadow"],
        ),
        _Check(
            "pager through --preserve-env=SYSTEMD_PAGER",
            account,
            "denied",
            [
                "runuser",
                "-u",
                account,
                "--",
                "env",
                "SYSTEMD_PAGER=/bin/sh",
                "PAGER=/bin/sh",
                "sudo",
                "-n",
                "--preserve-env=SYSTEMD_PAGER,PAGER",
                *status,
            ],
            refused,
        ),
        _Check(
            "pager through sudo SYSTEMD_PAGER=/bin/sh",
            account,
            "denied",
            ["runuser", "-u", account, "--", "sudo", "-n", "SYSTEMD_PAGER=/bin/sh", *status],
            refused,
        ),
        _Check(
            "sudo -E (keep the environment)",
            account,
            "denied",
            ["runuser", "-u", account, "--", "env", "EDITOR=/bin/sh", "sudo", "-n", "-E", *status],
            refused,
        ),
        _Check(
            "password locked",
            account,
            "allowed",
            ["sh", "-c", 'passwd -S "$1" | grep -q "^$1 L "', "sh", account],
        ),
        _Check(
            "no other group", account, "allowed", ["sh", "-c", '[ "$(id -Gn "$1")" = "$1" ]', "sh", account]
        ),
    ]
    checks += [
        _Check(f"use rule: {' '.join(argv[len(tool) :])}", NOBODY, "denied", sudo_l(NOBODY, argv))
        for argv in allowed
    ]
    checks += [
        _Check(f"write {path}", NOBODY, "denied", ["runuser", "-u", NOBODY, "--", "test", "-w", path])
        for path in ["/etc/sudoers.d", "/etc/passwd", "/etc/shadow", "/etc/group", *written]
    ]
    return checks


_RUNNER = r"""
c() {
    i=$1; shift
    out=$("$@" 2>&1 </dev/null)
    rc=$?
    printf '%s\t%s\t%s\n' "$i" "$rc" "$(printf '%s' "$out" | tr '\t\n' '  ' | cut -c1-300)"
}
"""


def _grade(check: _Check, rc: int, output: str) -> SelfTestRow:
    if check.expected == "allowed" or check.refusal is None:
        result = "allowed" if rc == 0 else "denied"
    elif rc != 0 and check.refusal in output and any(r in output for r in REFUSALS):
        result = "denied"
    elif rc != 0:
        result = "error"  # it failed, but not because sudo refused it: the rule may not have held
    else:
        result = "allowed"
    return SelfTestRow(check.check, check.who, check.expected, result, result == check.expected, output[:300])


async def self_test(
    access: NodeAccess, node: Node, plan: CtlPlan, *, remote: bool = False
) -> list[SelfTestRow]:
    """Run every check on ``node``; ``remote``: also log in as the account with the deployer's key."""
    target = access.target(node)
    written = [plan.sudoers_file, plan.home, f"{plan.home}/.ssh"]
    if plan.remote_key is not None:
        written += [plan.authorized_keys, plan.forced_command, plan.libexec_dir]
    checks = _checks(node, plan, written=written)
    lines = [_RUNNER, f"getent passwd {shlex.quote(plan.account)} >/dev/null || {{ echo absent; exit 0; }}"]
    lines += [f"c {i} {shlex.join(check.argv)}" for i, check in enumerate(checks)]
    try:
        result = await access.pool.run(target, "sh -c " + shlex.quote("\n".join(lines)), check=False)
    except SshError as exc:
        return [SelfTestRow("reach the node", target.user, "allowed", "error", False, str(exc))]
    if result.stdout.strip() == "absent":
        return [SelfTestRow("account exists", plan.account, "allowed", "denied", False, "no such account")]
    seen: dict[int, tuple[int, str]] = {}
    for line in result.stdout.splitlines():
        index, _, rest = line.partition("\t")
        rc, _, output = rest.partition("\t")
        if index.isdigit() and rc.lstrip("-").isdigit():
            seen[int(index)] = (int(rc), output)
    rows = []
    for i, check in enumerate(checks):
        if i in seen:
            rows.append(_grade(check, *seen[i]))
        else:
            rows.append(
                SelfTestRow(check.check, check.who, check.expected, "error", False, result.stderr[-300:])
            )
    if remote and plan.remote_key is not None:
        rows += await _remote(access, node, plan)
    return rows


async def _remote(access: NodeAccess, node: Node, plan: CtlPlan) -> list[SelfTestRow]:
    target = SshTarget(node.name, node.address, node.ssh_port, plan.account)
    units = node_units(node)
    unit = units[0] if units else "app.service"
    cases = [(f"status {unit}", "allowed")] if units else []  # with no units, nothing is allowed
    cases += [
        (f"restart {OTHER_UNIT}", "denied"),
        ("sh -c id", "denied"),
        (f"status {unit}; id", "denied"),
        (f"restart {unit} {unit}", "denied"),
    ]
    try:
        return await _remote_cases(access, target, plan, cases)
    finally:  # no session of the account stays open (it would keep ``userdel`` from removing it)
        await access.pool.disconnect(target)


async def _remote_cases(
    access: NodeAccess, target: SshTarget, plan: CtlPlan, cases: list[tuple[str, str]]
) -> list[SelfTestRow]:
    rows = []
    for request, expected in cases:
        who = f"{plan.account} over SSH"
        try:
            result = await access.pool.run(target, request, check=False)
        except SshError as exc:
            rows.append(SelfTestRow(f"ssh: {request}", who, expected, "error", False, str(exc)[:300]))
            continue
        output = (result.stdout + result.stderr).strip()
        refused = result.exit_status == 126 or any(r in output for r in REFUSALS)
        got = "denied" if refused else "allowed"
        rows.append(SelfTestRow(f"ssh: {request}", who, expected, got, got == expected, output[:300]))
    return rows


def plan_from_settings(settings: Settings) -> CtlPlan:
    """The plan the deployer's configuration describes; with ``CTL_REMOTE`` the deployer's own SSH key is
    the one that may log in as the account. :class:`CtlError` for a bad setting or an unreadable key."""
    remote_key = None
    if settings.ctl_remote:
        try:
            key = asyncssh.read_private_key(settings.ssh_key_file)
        except (OSError, asyncssh.KeyImportError) as exc:
            raise CtlError(f"CTL_REMOTE: the deployer's SSH key {settings.ssh_key_file}: {exc}") from None
        kind, blob = key.export_public_key("openssh").decode().split()[0:2]
        remote_key = f"{kind} {blob} conveyor-deployer"
    return CtlPlan(
        account=settings.ctl_account,
        remote_key=remote_key,
        polkit=settings.ctl_polkit,
        sudo_defaults=tuple(settings.ctl_sudo_defaults),
        systemctl=settings.ctl_systemctl,
        supervisorctl=settings.ctl_supervisorctl,
        supervisor_conf=settings.supervisor_conf,
    )


def _targets(access: NodeAccess, env: str, node: str | None) -> list[Node]:
    nodes = [n for e, n in access.inventory.all_nodes() if e == env and (node is None or n.name == node)]
    if node is not None and not nodes:
        raise KeyError(f"no node {node!r} in env {env!r}")
    if not nodes:
        raise KeyError(f"no nodes in env {env!r}")
    for n in nodes:  # every node's units, before anything is done on any node
        node_units(n)
    return nodes


async def provision(
    access: NodeAccess,
    env: str,
    plan: CtlPlan,
    *,
    node: str | None = None,
    actor: str | None = None,
    remote_check: bool = False,
) -> list[CtlReport]:
    """Provision the account on every node of ``env`` (or ``node``), then self-test it; each node's
    outcome is audited (``node.ctl_user_provisioned``). ``KeyError`` for an unknown env or node,
    :class:`CtlError` for a unit name that cannot be written into rules (nothing done anywhere)."""

    async def one(n: Node) -> CtlReport:
        report = await provision_node(access, n, env, plan)
        if report.error is None:
            rows = await self_test(access, n, plan, remote=remote_check)
            report.self_test = [row.as_dict() for row in rows]
        access.announce(
            env,
            NodeCtlUserProvisioned(
                node=n.name,
                account=plan.account,
                units=node_units(n),
                changed=report.changed,
                error=report.error[:2000] if report.error else None,
                self_test_passed=report.self_test_passed,
                self_test_failures=[
                    f"{row['who']}: {row['check']}: expected {row['expected']}, got {row['result']}"[:2000]
                    for row in report.self_test
                    if not row["ok"]
                ],
            ),
            actor=actor,
        )
        return report

    return list(await asyncio.gather(*(one(n) for n in _targets(access, env, node))))


async def remove(
    access: NodeAccess, env: str, plan: CtlPlan, *, node: str | None = None, actor: str | None = None
) -> list[CtlReport]:
    """Remove the account from every node of ``env`` (or ``node``); audited (``node.ctl_user_removed``)."""

    async def one(n: Node) -> CtlReport:
        report = await remove_node(access, n, env, plan)
        access.announce(
            env,
            NodeCtlUserRemoved(
                node=n.name,
                account=plan.account,
                changed=report.changed,
                error=report.error[:2000] if report.error else None,
            ),
            actor=actor,
        )
        return report

    return list(await asyncio.gather(*(one(n) for n in _targets(access, env, node))))


async def status(access: NodeAccess, node: Node, plan: CtlPlan, *, remote: bool = False) -> dict[str, Any]:
    """For ``conveyor nodes check``: is the account there, and does its self-test pass."""
    try:
        rows = await self_test(access, node, plan, remote=remote)
    except CtlError as exc:
        return {"account": plan.account, "present": None, "self_test": "error", "failures": [str(exc)]}
    present = not (len(rows) == 1 and rows[0].check == "account exists")
    reached = not (len(rows) == 1 and rows[0].check == "reach the node")
    failures = [f"{r.who}: {r.check}: expected {r.expected}, got {r.result}" for r in rows if not r.ok]
    return {
        "account": plan.account,
        "present": present if reached else None,
        "self_test": ("passed" if not failures else "failed") if present and reached else None,
        "failures": failures if present else [],
    }
