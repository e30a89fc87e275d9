"""The system-control user: an account on each node that may control the node's services and nothing else.

``provision(access, node, env, plan)`` makes the account on ``node`` (of ``env``) as the plan says, over the
deployer's SSH access (the SSH user must be root), changing only what differs:

- the account (``plan.account``, default ``conveyor-ctl``): a system account with its own group and no
  other, its password field ``*`` (no password can ever match), its home a root-owned directory holding
  no secrets; its shell is ``/bin/sh`` only when remote use is configured (sshd runs forced commands
  through it), ``nologin`` otherwise. An account of that name that Conveyor did not make (its comment
  says so) is refused, never taken over.
- ``/etc/sudoers.d/<account>``: ``NOPASSWD`` rules for exactly ``systemctl --no-pager VERB UNIT``
  (start, stop, restart, reload, status) or ``supervisorctl -c CONF VERB PROGRAM`` (start, stop, restart,
  status) for the units the inventory lists for the node, spelled out one command line each: no ``*``
  (in sudoers it matches spaces too), no way to pass other arguments, the environment reset and no
  variable settable (no ``SYSTEMD_PAGER``, ``EDITOR``…). The file is staged under a name sudo ignores,
  checked with ``visudo -cf``, renamed over the old one (mode 0440, root's), and the whole configuration
  checked again with ``visudo -c``, the previous file put back if that fails: a bad rule never reaches
  sudo, and never locks anyone out of it.
- with ``plan.remote_key``: ``~<account>/.ssh/authorized_keys`` (root's, 0644) holding that key with
  ``restrict`` and a forced command, ``/usr/local/lib/conveyor/ctl-<account>``, which accepts only
  ``VERB UNIT`` and runs it through sudo; without it, neither exists.
- with ``plan.polkit`` on a systemd node that has ``/etc/polkit-1/rules.d``: a rule allowing the account
  ``org.freedesktop.systemd1.manage-units`` for the same units and verbs, an alternative to sudo.

Unit names and every other value written into these files are checked before anything is done on the
node. ``remove`` takes all of it away again. The outcome is a :class:`CtlReport` (never raised for the
node's sake); :mod:`conveyor_deployer.ctlcheck` tests what the account can and cannot do.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.observability import get_logger
from conveyor_deployer.inventory import Node
from conveyor_deployer.nodes import NodeAccess
from conveyor_deployer.ssh import CommandFailed, SshError, SshTarget

__all__ = [
    "COMMENT",
    "CtlError",
    "CtlPlan",
    "CtlReport",
    "allowed_commands",
    "check_units",
    "node_units",
    "provision_node",
    "remove_node",
    "render_forced_command",
    "render_polkit",
    "render_sudoers",
    "tool_argv",
    "verbs_for",
]

log = get_logger(__name__)

COMMENT = "Conveyor system-control account"
"""The account's GECOS comment: how provisioning knows an account is its own."""
_HEADER = "written by `conveyor nodes provision-ctl-user`; edits are replaced at the next run"

_ACCOUNT = re.compile(r"[a-z_][a-z0-9_-]{0,30}")
_UNIT = re.compile(r"[A-Za-z0-9][A-Za-z0-9@._:-]{0,254}")
_PATH = re.compile(r"/[A-Za-z0-9._/@+-]*")
_KEY = re.compile(
    r"(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa) [A-Za-z0-9+/]+={0,3}( [\x21-\x7e ]{0,200})?"
)
_DEFAULT = re.compile(r"[A-Za-z_!][A-Za-z0-9_]*( ?[-+]?= ?[\x20-\x7e]*)?")
SYSTEMD_VERBS = ("start", "stop", "restart", "reload", "status")
SUPERVISOR_VERBS = ("start", "stop", "restart", "status")
_PAGERS = (
    "PAGER SYSTEMD_PAGER SYSTEMD_PAGERSECURE SYSTEMD_LESS LESS LESSOPEN LESSCLOSE "
    "EDITOR VISUAL SYSTEMD_EDITOR SUDO_EDITOR"
)
_SECURE_PATH = "/usr/sbin\\:/usr/bin\\:/sbin\\:/bin"
_UNIT_SUFFIXES = (".service", ".socket", ".target", ".timer", ".path", ".mount", ".slice", ".scope")


class CtlError(Exception):
    """Why the account could not be brought to the plan on a node (or the plan itself is wrong)."""


@dataclass(frozen=True)
class CtlPlan:
    """How the account looks on every node; the node gives its units and service manager."""

    account: str = "conveyor-ctl"
    remote_key: str | None = None
    """An OpenSSH public key line allowed to log in as the account (forced command); None: no login."""
    polkit: bool = False
    """Also install a polkit rule (systemd nodes with ``/etc/polkit-1/rules.d``)."""
    sudo_defaults: Sequence[str] = ()
    """Extra ``Defaults:<account>`` settings (``log_output``, ``timestamp_timeout=0``…)."""
    systemctl: str = "/usr/bin/systemctl"
    supervisorctl: str = "/usr/bin/supervisorctl"
    supervisor_conf: str | None = "/etc/supervisor/supervisord.conf"
    libexec_dir: str = "/usr/local/lib/conveyor"
    home_parent: str = "/var/lib"

    def __post_init__(self) -> None:
        if not _ACCOUNT.fullmatch(self.account):
            raise CtlError(f"account {self.account!r}: not a valid user name ([a-z_][a-z0-9_-]{{0,30}})")
        if self.account == "root":
            raise CtlError("account: root cannot be the system-control user")
        for name in ("systemctl", "supervisorctl", "supervisor_conf", "libexec_dir", "home_parent"):
            value = getattr(self, name)
            if value is not None and (not _PATH.fullmatch(value) or "/../" in value + "/"):
                raise CtlError(f"{name} {value!r}: must be an absolute path of [A-Za-z0-9._/@+-]")
        if self.remote_key is not None and not _KEY.fullmatch(self.remote_key):
            raise CtlError("remote_key: not an OpenSSH public key line (type, base64, optional comment)")
        for line in self.sudo_defaults:
            if not _DEFAULT.fullmatch(line):
                raise CtlError(f"sudo_defaults: {line!r} is not one sudoers setting")

    @property
    def home(self) -> str:
        return f"{self.home_parent}/{self.account}"

    @property
    def sudoers_file(self) -> str:
        return f"/etc/sudoers.d/{self.account}"

    @property
    def forced_command(self) -> str:
        return f"{self.libexec_dir}/ctl-{self.account}"

    @property
    def authorized_keys(self) -> str:
        return f"{self.home}/.ssh/authorized_keys"

    @property
    def polkit_file(self) -> str:
        return f"/etc/polkit-1/rules.d/60-{self.account}.rules"


@dataclass
class CtlReport:
    """What provisioning (or removal) did on one node; ``error``: why it did not finish."""

    node: str
    changed: list[str] = field(default_factory=list)
    unchanged: bool = False
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    self_test: list[dict[str, Any]] = field(default_factory=list)
    """The self-test's rows (:mod:`conveyor_deployer.ctlcheck`), after provisioning."""

    @property
    def self_test_passed(self) -> bool | None:
        return all(row["ok"] for row in self.self_test) if self.self_test else None


# -- what the rules allow ----------------------------------------------------------------------------------


def check_units(node: str, units: Sequence[str]) -> list[str]:
    """The units, each checked (``CtlError`` naming the node and the unit), without repeats, in order."""
    for unit in units:
        if not _UNIT.fullmatch(unit) or ".." in unit:
            raise CtlError(
                f"node {node}: unit {unit!r} is not a unit name (letters, digits, @ . _ : -, not starting "
                "with a sign, no '..'); nothing was written on the node"
            )
    return list(dict.fromkeys(units))


def node_units(node: Node) -> list[str]:
    return check_units(node.name, [unit for units in node.packages.values() for unit in units])


def verbs_for(node: Node) -> tuple[str, ...]:
    return SUPERVISOR_VERBS if node.service_manager == "supervisord" else SYSTEMD_VERBS


def tool_argv(node: Node, plan: CtlPlan) -> list[str]:
    """The command before the verb: ``systemctl --no-pager`` or ``supervisorctl -c CONF``."""
    if node.service_manager == "supervisord":
        return [plan.supervisorctl, *(["-c", plan.supervisor_conf] if plan.supervisor_conf else [])]
    return [plan.systemctl, "--no-pager"]


def allowed_commands(node: Node, plan: CtlPlan) -> list[list[str]]:
    """Every command line the account may run as root: the tool, each verb, each unit of the node."""
    return [[*tool_argv(node, plan), verb, unit] for unit in node_units(node) for verb in verbs_for(node)]


def _sudo_word(word: str) -> str:
    return re.sub(r"([\\,:=])", r"\\\1", word)


def render_sudoers(node: Node, plan: CtlPlan) -> str:
    account = plan.account
    commands = [" ".join(_sudo_word(w) for w in argv) for argv in allowed_commands(node, plan)]
    lines = [
        f"# {_HEADER}.",
        f"# {account} may {', '.join(verbs_for(node))} the units of node {node.name}, nothing else.",
        f"Defaults:{account} env_reset, !setenv, secure_path={_SECURE_PATH}",
        f'Defaults:{account} env_delete += "{_PAGERS}"',
        *(f"Defaults:{account} {line}" for line in plan.sudo_defaults),
    ]
    if commands:
        body = ", \\\n    ".join(commands)
        lines.append(f"{account} ALL=(root) NOPASSWD: \\\n    {body}")
    else:
        lines.append(f"# node {node.name} lists no units: {account} may run nothing as root.")
    return "\n".join(lines) + "\n"


def render_forced_command(node: Node, plan: CtlPlan) -> str:
    verbs = verbs_for(node)
    tool = " ".join(shlex.quote(w) for w in tool_argv(node, plan))
    return f"""#!/bin/sh
# {_HEADER}.
# The forced command of {plan.account}'s SSH key: "VERB UNIT" runs `{tool} VERB UNIT` through
# sudo, whose rules allow only the node's units; anything else is refused (exit 126).
set -f
IFS=' '
request=${{SSH_ORIGINAL_COMMAND-}}
refuse() {{
    logger -p authpriv.notice -t {plan.account} "refused: $request" 2>/dev/null
    echo "{plan.account}: refused: $1; send \\"VERB UNIT\\" with VERB one of: {" ".join(verbs)}" >&2
    exit 126
}}
case $request in
    *[!A-Za-z0-9@._:\\ -]*) refuse "characters other than letters, digits, @ . _ : - and spaces" ;;
esac
set -- $request
[ "$#" -eq 2 ] || refuse "not two words"
case $1 in
    {"|".join(verbs)}) ;;
    *) refuse "verb '$1'" ;;
esac
case $2 in
    -* | *..*) refuse "unit '$2'" ;;
esac
logger -p authpriv.info -t {plan.account} "$1 $2" 2>/dev/null
exec sudo -n {tool} "$1" "$2"
"""


def render_polkit(node: Node, plan: CtlPlan) -> str:
    """polkit's rule for the same units and verbs (status needs none); unit names as systemd gives them."""
    allowed: dict[str, list[str]] = {}
    for unit in node_units(node):
        full = unit if unit.endswith(_UNIT_SUFFIXES) else f"{unit}.service"
        allowed[full] = [v for v in SYSTEMD_VERBS if v != "status"]
    return f"""// {_HEADER}.
// {plan.account} may start, stop, restart and reload the units of node {node.name} through systemd's
// D-Bus API, nothing else (an alternative to its sudo rules).
polkit.addRule(function (action, subject) {{
    if (action.id !== "org.freedesktop.systemd1.manage-units" ||
            subject.user !== {json.dumps(plan.account)}) {{
        return polkit.Result.NOT_HANDLED;
    }}
    var allowed = {json.dumps(allowed, sort_keys=True)};
    var unit = action.lookup("unit");
    var verb = action.lookup("verb");
    if (Object.prototype.hasOwnProperty.call(allowed, unit) && allowed[unit].indexOf(verb) >= 0) {{
        return polkit.Result.YES;
    }}
    return polkit.Result.NOT_HANDLED;
}});
"""


def authorized_keys_line(node: Node, plan: CtlPlan) -> str:
    assert plan.remote_key is not None
    return f'restrict,command="{plan.forced_command}" {plan.remote_key}\n'


# -- on the node -------------------------------------------------------------------------------------------

_PROBE = r"""
set -u
echo "uid=$(id -u)"
if command -v sudo >/dev/null 2>&1; then echo "sudo=$(sudo -V 2>/dev/null | head -n 1)"; fi
if command -v visudo >/dev/null 2>&1; then echo "visudo=yes"; fi
for s in /usr/sbin/nologin /sbin/nologin /bin/false; do [ -x "$s" ] && { echo "nologin=$s"; break; }; done
echo "passwd=$(getent passwd "$A" || true)"
echo "shadow=$(getent shadow "$A" | cut -d: -f2)"
echo "groups=$(id -Gn "$A" 2>/dev/null || true)"
[ -d /etc/polkit-1/rules.d ] && echo "polkit=yes"
for f in "$@"; do
    if [ -f "$f" ]; then echo "file=$(stat -c '%U:%G:%a' "$f") $(sha256sum < "$f" | cut -d' ' -f1) $f"; fi
done
for d in "$H" "$H/.ssh"; do [ -d "$d" ] && echo "dir=$(stat -c '%U:%G:%a' "$d") $d"; done
true
"""

_INSTALL_SUDOERS = r"""
set -eu
chown root:root "$S" && chmod 0440 "$S"
if ! out=$(visudo -cf "$S" 2>&1); then rm -f "$S"; echo "$out" >&2; exit 3; fi
[ -f "$F" ] && cp -p "$F" "$P"
mv -f "$S" "$F"
if ! out=$(visudo -c 2>&1); then
    if [ -f "$P" ]; then mv -f "$P" "$F"; else rm -f "$F"; fi
    echo "$out" >&2; exit 4
fi
rm -f "$P"
"""


_END_PROCESSES = r"""
i=0
while pgrep -u "$A" >/dev/null 2>&1 && [ "$i" -lt 50 ]; do
    pkill -KILL -u "$A" 2>/dev/null
    sleep 0.1
    i=$((i + 1))
done
"""


@dataclass
class _State:
    uid: str = ""
    sudo: str = ""
    visudo: bool = False
    nologin: str = "/usr/sbin/nologin"
    passwd: list[str] = field(default_factory=list)
    shadow: str = ""
    groups: list[str] = field(default_factory=list)
    polkit: bool = False
    files: dict[str, tuple[str, str]] = field(default_factory=dict)  # path → (owner:group:mode, sha256)
    dirs: dict[str, str] = field(default_factory=dict)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class _Node:
    def __init__(self, access: NodeAccess, node: Node, plan: CtlPlan, report: CtlReport) -> None:
        self.access = access
        self.node = node
        self.plan = plan
        self.report = report
        self.target: SshTarget = access.target(node)

    async def sh(self, script: str, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        assigns = " ".join(f"{k}={shlex.quote(v)}" for k, v in (env or {}).items())
        line = f"{assigns} sh -c {shlex.quote(script)} sh {' '.join(shlex.quote(a) for a in args)}"
        result = await self.access.pool.run(self.target, line.strip(), check=check)
        return result.stdout

    async def probe(self) -> _State:
        plan = self.plan
        paths = [plan.sudoers_file, plan.forced_command, plan.authorized_keys, plan.polkit_file]
        out = await self.sh(_PROBE, *paths, env={"A": plan.account, "H": plan.home})
        state = _State()
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key == "uid":
                state.uid = value
            elif key == "sudo":
                state.sudo = value
            elif key == "visudo":
                state.visudo = True
            elif key == "nologin":
                state.nologin = value
            elif key == "passwd":
                state.passwd = value.split(":") if value else []
            elif key == "shadow":
                state.shadow = value
            elif key == "groups":
                state.groups = value.split()
            elif key == "polkit":
                state.polkit = True
            elif key == "file":
                perms, digest, path = value.split(" ", 2)
                state.files[path] = (perms, digest)
            elif key == "dir":
                perms, path = value.split(" ", 1)
                state.dirs[path] = perms
        if state.uid != "0":
            raise CtlError(
                f"node {self.node.name}: the SSH user {self.target.user} is not root (uid {state.uid}); "
                "the account and its sudo rules can only be managed as root"
            )
        return state

    async def put(self, path: str, content: str, mode: int) -> None:
        with tempfile.TemporaryDirectory(prefix="conveyor-ctl-") as local:
            source = Path(local) / "file"
            source.write_text(content)
            await self.access.pool.put(self.target, source, path, mode=mode)
        await self.sh('chown root:root "$1"', path)

    def changed(self, what: str) -> None:
        self.report.changed.append(what)


async def _provision(work: _Node) -> None:
    plan, node = work.plan, work.node
    sudoers = render_sudoers(node, plan)  # checks the units before anything is done on the node
    state = await work.probe()
    if not state.sudo or not state.visudo:
        raise CtlError(f"node {node.name}: sudo (with visudo) is not installed; install the sudo package")
    shell = "/bin/sh" if plan.remote_key else state.nologin
    if not state.passwd:
        await work.sh(
            'useradd --system --user-group --home-dir "$H" --no-create-home --shell "$S" --comment "$C" "$A"'
            ' && usermod -p "*" "$A"',
            env={"A": plan.account, "H": plan.home, "S": shell, "C": COMMENT},
        )
        work.changed("account")
    else:
        if len(state.passwd) < 7 or state.passwd[4] != COMMENT:
            raise CtlError(
                f"node {node.name}: an account {plan.account} exists that Conveyor did not make (its comment "
                f"is {state.passwd[4] if len(state.passwd) > 4 else ''!r}); choose another CTL_ACCOUNT or "
                "remove that account"
            )
        if state.passwd[5] != plan.home or state.passwd[6] != shell:
            await work.sh('usermod -d "$H" -s "$S" "$A"', env={"A": plan.account, "H": plan.home, "S": shell})
            work.changed("account shell and home")
        if not (state.shadow == "*" or state.shadow.startswith("!")):
            await work.sh('usermod -p "*" "$A"', env={"A": plan.account})
            work.changed("password locked")
        if [g for g in state.groups if g != plan.account]:
            await work.sh('usermod -G "" "$A"', env={"A": plan.account})
            work.changed("other groups left")
    if state.dirs.get(plan.home) != "root:root:755" or state.dirs.get(f"{plan.home}/.ssh") != "root:root:755":
        await work.sh('install -d -o root -g root -m 0755 "$H" "$H/.ssh"', env={"H": plan.home})
        work.changed("home")
    await _sudoers(work, state, sudoers)
    await _remote(work, state)
    await _polkit(work, state)


def _same(state: _State, path: str, content: str, perms: str) -> bool:
    return state.files.get(path) == (perms, _sha256(content))


async def _sudoers(work: _Node, state: _State, sudoers: str) -> None:
    plan = work.plan
    if _same(state, plan.sudoers_file, sudoers, "root:root:440"):
        return
    staged = f"/etc/sudoers.d/.{plan.account}.staged"  # sudo's includedir skips names with a dot
    await work.put(staged, sudoers, 0o440)
    try:
        await work.sh(
            _INSTALL_SUDOERS,
            env={"S": staged, "F": plan.sudoers_file, "P": f"/etc/sudoers.d/.{plan.account}.previous"},
        )
    except CommandFailed as exc:
        checked = "visudo -cf" if exc.result.exit_status == 3 else "visudo -c"
        raise CtlError(
            f"node {work.node.name}: {checked} refused the sudo rules, so they were not installed and the "
            f"node keeps its previous sudo configuration: {exc.result.stderr.strip()[-1000:]}"
        ) from None
    work.changed("sudo rules")


async def _remote(work: _Node, state: _State) -> None:
    plan, node = work.plan, work.node
    if plan.remote_key is None:
        gone = [p for p in (plan.authorized_keys, plan.forced_command) if p in state.files]
        if gone:
            await work.sh('rm -f "$@"', *gone)
            work.changed("remote login removed")
        return
    script = render_forced_command(node, plan)
    if not _same(state, plan.forced_command, script, "root:root:755"):
        await work.sh('install -d -o root -g root -m 0755 "$1"', plan.libexec_dir)
        await work.put(plan.forced_command, script, 0o755)
        work.changed("forced command")
    keys = authorized_keys_line(node, plan)
    if not _same(state, plan.authorized_keys, keys, "root:root:644"):
        await work.put(plan.authorized_keys, keys, 0o644)
        work.changed("authorized key")


async def _polkit(work: _Node, state: _State) -> None:
    plan, node = work.plan, work.node
    wanted = plan.polkit and node.service_manager == "systemd"
    if not wanted or not state.polkit:
        if plan.polkit_file in state.files:
            await work.sh('rm -f "$1"', plan.polkit_file)
            work.changed("polkit rule removed")
        if wanted:
            work.report.skipped.append("polkit rule: polkit is not installed (no /etc/polkit-1/rules.d)")
        elif plan.polkit:
            work.report.skipped.append("polkit rule: the node's service manager is not systemd")
        return
    rule = render_polkit(node, plan)
    if not _same(state, plan.polkit_file, rule, "root:root:644"):
        await work.put(plan.polkit_file, rule, 0o644)
        work.changed("polkit rule")


async def _remove(work: _Node) -> None:
    plan = work.plan
    state = await work.probe()
    if state.passwd and (len(state.passwd) < 5 or state.passwd[4] != COMMENT):
        raise CtlError(
            f"node {work.node.name}: the account {plan.account} was not made by Conveyor; left as it is"
        )
    files = (plan.sudoers_file, plan.forced_command, plan.authorized_keys, plan.polkit_file)
    present = [p for p in files if p in state.files]
    if present:
        await work.sh('rm -f "$@"', *present)
        if plan.sudoers_file in present:
            work.changed("sudo rules")
        if plan.authorized_keys in present or plan.forced_command in present:
            work.changed("remote login")
        if plan.polkit_file in present:
            work.changed("polkit rule")
    if state.passwd:
        # Its processes (a sudo call under way, a session) end first, or userdel refuses.
        await work.sh(_END_PROCESSES + 'userdel "$A"', env={"A": plan.account})
        work.changed("account")
    if plan.home in state.dirs:
        await work.sh('rmdir "$H/.ssh" 2>/dev/null; rmdir "$H"', env={"H": plan.home})
        work.changed("home")


async def _run(access: NodeAccess, node: Node, env: str, plan: CtlPlan, action: str) -> CtlReport:
    report = CtlReport(node.name)
    work = _Node(access, node, plan, report)
    try:
        await (_provision(work) if action == "provisioned" else _remove(work))
    except (CtlError, SshError) as exc:
        report.error = str(exc)
    report.unchanged = report.error is None and not report.changed
    fields = {"node": node.name, "env": env, "account": plan.account, "changed": report.changed}
    if report.error is None:
        log.info(f"ctl_user_{action}", unchanged=report.unchanged, **fields)
    else:
        log.warning(f"ctl_user_{action[:-2]}_failed", error=report.error[:2000], **fields)
    return report


async def provision_node(access: NodeAccess, node: Node, env: str, plan: CtlPlan) -> CtlReport:
    """Bring the account on ``node`` to ``plan``; changes only what differs (see the module)."""
    return await _run(access, node, env, plan, "provisioned")


async def remove_node(access: NodeAccess, node: Node, env: str, plan: CtlPlan) -> CtlReport:
    """Take the account, its rules, keys, forced command and polkit rule off ``node``."""
    return await _run(access, node, env, plan, "removed")
