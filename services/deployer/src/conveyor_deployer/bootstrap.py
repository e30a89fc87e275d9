"""Bootstrapping a node over SSH: the agents installed, configured and run by the node's service manager.

``bootstrap(access, node, env, wheels=..., plan=...)`` makes a node run the Conveyor agents, and can be run
again at any time: it changes only what differs from the plan and restarts only what a change affects.
Everything goes over the deployer's :class:`~conveyor_deployer.ssh.SshPool` (host key verified; a changed
key is reported as ``node.host_key_changed`` and nothing is done). On the node, below ``plan.prefix``
(default ``/opt/conveyor``)::

    wheels/                      the wheels given, uploaded when their sha256 differs; others removed
    venv/                        python3 -m venv, the wheels installed into it with pip
    installed.txt                sha256 and name of the wheels installed (pip runs when it differs)
    etc/changelog-listener.env   CONVEYOR_CHANGELOG_LISTENER_* (mode 0600: broker password, token)
    etc/firewall-agent.env       CONVEYOR_FIREWALL_AGENT_*     (mode 0600)
    etc/trusted-keys             the deployment server's public key line(s)
    state/<agent>/               the agents' STATE_DIR
    releases/<package>/          release roots of the node's packages without one in the inventory
    log/<agent>.log              the agents' output under supervisord

and for the service manager, either ``/etc/systemd/system/conveyor-<agent>.service`` (``daemon-reload``,
``enable``, then ``restart`` when a change affects the agent, ``start`` when it is not running), or one
supervisord include file with a ``[program:conveyor-<agent>]`` per agent (``reread`` and ``update`` of
these programs when it changed, ``restart`` of an agent a change affects, ``start`` of one not running).

pip installs the agents' dependencies from the node's configured index (``plan.index_url`` or
``PIP_*`` variables in ``plan.pip_env`` point it elsewhere). With ``plan.from_index`` (a version), no
wheel is uploaded: the agents of that version and everything they need come from ``plan.index_url``,
Conveyor's central package index (``make repo`` / ``make publish``). With no wheels given, the installed
software is left as it is and only the configuration is brought up to date (a trusted-key rotation,
say).

Configuration files are written only when their sha256 differs from the plan's, through a temporary file
renamed over them (secrets through a 0700 staging directory, so they are never readable by others). After
starting or restarting agents, bootstrap waits for their ``/healthz`` (``plan.health_timeout_s``).

The outcome is a :class:`BootstrapReport` per node; failures (SSH, a command that failed, an agent that is
not healthy) land in its ``error``, never raised, so one node never stops the others
(:func:`bootstrap_env`).

The agents run as root for now (no ``User=``); the SSH user must be able to write the files and run
``systemctl``/``supervisorctl`` (root). With ``plan.control_user`` the listener restarts the packages'
units through that system-control user (``CONTROL_USER``; see :mod:`conveyor_deployer.ctluser`), which
``conveyor nodes bootstrap`` provisions before it bootstraps the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import posixpath
import re
import shlex
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.observability import get_logger
from conveyor.signing import PublicKey, SigningKey, TrustedKeys
from conveyor_deployer.inventory import AgentKind, Node
from conveyor_deployer.nodes import NodeAccess
from conveyor_deployer.ssh import Result, SshError, SshPool, SshTarget

__all__ = [
    "FIREWALL_AGENT",
    "LISTENER",
    "AgentPlan",
    "BootstrapError",
    "BootstrapReport",
    "bootstrap",
    "bootstrap_env",
    "trusted_key_lines",
]

log = get_logger(__name__)

LISTENER = "conveyor-changelog-listener"
FIREWALL_AGENT = "conveyor-firewall-agent"

# Paths written into service definitions and shell scripts: absolute, and nothing a shell, supervisord's
# parser (``;``/``#`` comments, ``%`` expansions) or systemd would read differently.
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/@+:=,-]*")
_WHEEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.whl")
_PIP_ENV_KEY = re.compile(r"[A-Z_][A-Z0-9_]*")
# The nodes (address, port, prefix) being bootstrapped by this process: two runs at once would trip over
# each other's staging files and supervisorctl/systemctl calls.
_RUNNING: set[tuple[str, int, str]] = set()
_HEADER = "written by `conveyor nodes bootstrap`; edits are replaced at the next bootstrap"


class BootstrapError(Exception):
    """The node could not be brought to the plan; the message says what failed and how it looks."""


@dataclass(frozen=True)
class AgentPlan:
    """Everything about the agents that does not depend on the node (the node gives name, env, packages
    and service manager)."""

    envs: Mapping[str, str]
    """env → the AMQP URL the node's agents use (the node gets only its own env's)."""
    artifact_store_url: str
    trusted_keys: Sequence[str]
    """Public key lines (``<key id> <base64>``) whose signed commands the listeners accept."""
    artifact_store_token: str | None = None
    prefix: str = "/opt/conveyor"
    python: str = "python3"
    """The node's interpreter that creates the virtual environment."""
    listener_http_port: int = 8103
    firewall_http_port: int = 8104
    install_firewall_agent: bool = True
    supervisor_conf: str = "/etc/supervisor/supervisord.conf"
    """Given to ``supervisorctl -c`` (by bootstrap, and by the listener restarting package units)."""
    supervisor_include: str = "/etc/supervisor/conf.d/conveyor.conf"
    """The file bootstrap owns, holding the agents' programs; supervisord.conf must include it."""
    supervisorctl: str = "supervisorctl"
    systemctl: str = "systemctl"
    systemd_dir: str = "/etc/systemd/system"
    index_url: str | None = None
    """pip's index for the agents' dependencies; ``None``: the node's pip configuration (PyPI)."""
    from_index: str | None = None
    """Install the agents of this version from ``index_url`` (Conveyor's central package index) instead
    of uploading wheels."""
    pip_env: Mapping[str, str] = field(default_factory=dict)
    """Environment of the pip runs on the node (``PIP_CACHE_DIR``, ``PIP_INDEX_URL``…)."""
    control_user: str | None = None
    """The system-control user the listener restarts units through (``None``: directly, as root); its
    sudo rules name ``systemctl``/``supervisorctl`` by these same paths."""
    install_timeout_s: float = 900.0
    health_timeout_s: float = 60.0
    """How long started agents have to answer ``/healthz`` with 200; 0: not checked."""

    def __post_init__(self) -> None:
        for name in ("prefix", "supervisor_conf", "supervisor_include", "systemd_dir"):
            _check_path(name, getattr(self, name))
        if not self.envs:
            raise ValueError("envs: no environment")
        trusted = TrustedKeys()
        for line in self.trusted_keys:
            try:
                trusted.add(PublicKey.parse(line))
            except ValueError as exc:
                raise ValueError(f"trusted_keys: {line!r}: {exc}") from None
        if not len(trusted):
            raise ValueError("trusted_keys: no key (the listeners would refuse every command)")
        for name in ("listener_http_port", "firewall_http_port"):
            if not 1 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name}: not a TCP port")
        if self.install_firewall_agent and self.listener_http_port == self.firewall_http_port:
            raise ValueError("listener_http_port and firewall_http_port must differ")
        for key in self.pip_env:
            if not _PIP_ENV_KEY.fullmatch(key):
                raise ValueError(f"pip_env: {key!r} is not an environment variable name")
        if self.install_timeout_s <= 0 or self.health_timeout_s < 0:
            raise ValueError("install_timeout_s must be positive and health_timeout_s not negative")

    @property
    def venv(self) -> str:
        return f"{self.prefix}/venv"

    def env_file(self, agent: str) -> str:
        return f"{self.prefix}/etc/{_short(agent)}.env"

    @property
    def trusted_keys_file(self) -> str:
        return f"{self.prefix}/etc/trusted-keys"

    def state_dir(self, agent: str) -> str:
        return f"{self.prefix}/state/{_short(agent)}"

    def log_file(self, agent: str) -> str:
        return f"{self.prefix}/log/{_short(agent)}.log"

    def unit_file(self, agent: str) -> str:
        return f"{self.systemd_dir}/{agent}.service"

    def port(self, agent: str) -> int:
        return self.listener_http_port if agent == LISTENER else self.firewall_http_port


@dataclass
class BootstrapReport:
    """What bootstrap did on one node.

    ``changed`` names what was brought to the plan, in order: ``wheels``, ``venv``, ``install`` (pip
    ran), ``listener config``, ``firewall config``, ``trusted keys``, ``listener unit``/``firewall unit``
    (systemd) or ``supervisor programs``, ``<agent> enabled``, ``<agent> removed``. ``started`` names the
    agents started or restarted. ``unchanged``: neither, and no error. ``error``: why the node is not (or
    not surely) as planned; what was done before it stays done, and running bootstrap again continues.
    """

    node: str
    changed: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    unchanged: bool = False
    error: str | None = None


def trusted_key_lines(signing_key_file: Path, *, command_ttl_s: float, now: float | None = None) -> list[str]:
    """The key lines nodes should trust, following ``conveyor keys rotate``: the signing key, the next
    key while a rotation is under way (``<file>.next``), and the previous key for ``command_ttl_s`` after
    ``--promote`` (``<file>.previous``, by its modification time), while commands it signed may still
    arrive. ``FileNotFoundError`` without a signing key; a missing next or previous key is skipped."""
    lines = [SigningKey.load(signing_key_file).public_key_text()]
    upcoming = signing_key_file.with_name(signing_key_file.name + ".next")
    previous = signing_key_file.with_name(signing_key_file.name + ".previous")
    if upcoming.exists():
        lines.append(SigningKey.load(upcoming).public_key_text())
    try:
        promoted_at = previous.stat().st_mtime
    except FileNotFoundError:
        promoted_at = None
    if promoted_at is not None and (time.time() if now is None else now) - promoted_at < command_ttl_s:
        lines.append(SigningKey.load(previous).public_key_text())
    return list(dict.fromkeys(lines))


async def bootstrap_env(
    access: NodeAccess,
    env: str,
    *,
    wheels: list[Path],
    plan: AgentPlan,
    node: str | None = None,
) -> list[BootstrapReport]:
    """:func:`bootstrap` on every node of ``env`` (or only ``node``), all at once (the pool bounds it)."""
    nodes = [n for e, n in access.inventory.all_nodes() if e == env and (node is None or n.name == node)]
    if node is not None and not nodes:
        raise KeyError(f"no node {node!r} in env {env!r}")
    return list(await asyncio.gather(*(bootstrap(access, n, env, wheels=wheels, plan=plan) for n in nodes)))


async def bootstrap(
    access: NodeAccess, node: Node, env: str, *, wheels: list[Path], plan: AgentPlan
) -> BootstrapReport:
    """Make ``node`` (of ``env``) run the agents as ``plan`` says, changing only what differs; never
    raises for the node's sake (see :class:`BootstrapReport`)."""
    report = BootstrapReport(node.name)
    started = time.monotonic()
    key = (node.address, node.ssh_port, plan.prefix)
    try:
        if key in _RUNNING:
            raise BootstrapError(f"node {node.name} is being bootstrapped already; try again when it is done")
        _RUNNING.add(key)
        try:
            with tempfile.TemporaryDirectory(prefix="conveyor-bootstrap-") as local:
                await _Bootstrap(
                    access, node, env=env, wheels=wheels, plan=plan, report=report, local=Path(local)
                ).run()
        finally:
            _RUNNING.discard(key)
    except (SshError, BootstrapError) as exc:
        report.error = str(exc)
    except OSError as exc:  # a local wheel that cannot be read
        report.error = f"{type(exc).__name__}: {exc}"
    report.unchanged = report.error is None and not report.changed and not report.started
    fields = {
        "node": node.name,
        "env": env,
        "changed": report.changed,
        "started": report.started,
        "duration_s": round(time.monotonic() - started, 3),
    }
    if report.error is None:
        log.info("node_bootstrapped", unchanged=report.unchanged, **fields)
    else:
        log.warning("node_bootstrap_failed", error=report.error[:2000], **fields)
    return report


# -- the work on one node ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wheel:
    path: Path
    name: str
    sha256: str


@dataclass
class _Probe:
    """What the node has: the sha256 of the files bootstrap manages, its wheels, whether the venv works."""

    files: dict[str, str] = field(default_factory=dict)
    wheels: dict[str, str] = field(default_factory=dict)
    venv_ok: bool = False


class _Bootstrap:
    def __init__(
        self,
        access: NodeAccess,
        node: Node,
        *,
        env: str,
        wheels: list[Path],
        plan: AgentPlan,
        report: BootstrapReport,
        local: Path,
    ) -> None:
        self.access = access
        self.node = node
        self.env = env
        self.wheel_paths = [Path(w) for w in wheels]
        self.plan = plan
        self.report = report
        self.local = local
        self.target: SshTarget = access.target(node)
        self.agents = ([LISTENER] if node.agent is AgentKind.LISTENER else []) + (
            [FIREWALL_AGENT] if plan.install_firewall_agent else []
        )
        self.restart: set[str] = set()  # agents a change affects
        self._uploads = 0

    @property
    def pool(self) -> SshPool:
        return self.access.pool

    def changed(self, what: str, *affected: str) -> None:
        self.report.changed.append(what)
        self.restart.update(affected)

    # -- remote commands -----------------------------------------------------------------------------------

    async def sh(self, script: str, *, check: bool = True, timeout: float | None = None) -> Result:
        """A POSIX sh script on the node, whatever the login shell."""
        return await self.pool.run(self.target, "sh -c " + shlex.quote(script), check=check, timeout=timeout)

    def _local_file(self, content: bytes) -> Path:
        self._uploads += 1
        local = self.local / f"upload-{self._uploads}"
        local.write_bytes(content)
        return local

    async def write(self, remote: str, content: bytes, mode: int) -> None:
        """``content`` into ``remote`` atomically, ``mode`` set before it appears there."""
        local = self._local_file(content)
        if mode & 0o077:  # readable by others anyway: uploaded beside it, renamed over it
            await self.pool.put(self.target, local, remote, mode=mode)
            return
        staged = f"{self.plan.prefix}/.staging/{posixpath.basename(remote)}"
        await self.pool.put(self.target, local, staged, mode=mode)
        await self.sh(f"mv -f {shlex.quote(staged)} {shlex.quote(remote)}")

    # -- the steps -----------------------------------------------------------------------------------------

    async def run(self) -> None:
        plan = self.plan
        if self.env not in plan.envs:
            raise BootstrapError(f"the plan has no AMQP URL for env {self.env!r} ({', '.join(plan.envs)})")
        wheels = [] if plan.from_index else await asyncio.to_thread(self._local_wheels)
        # The first connection checks the host key; a changed one is reported (node.host_key_changed).
        await self.access.run(self.node, ["true"])
        files = self._files()
        probe = await self._probe([*files, f"{plan.prefix}/installed.txt", *self._unit_paths()])
        if plan.from_index:
            await self._install_from_index(plan.from_index, probe)
        elif wheels:
            await self._install(wheels, probe)
        elif not probe.venv_ok:
            raise BootstrapError(
                f"the agents are not installed in {plan.venv} on node {self.node.name}; bootstrap it "
                "with the agents' wheels"
            )
        for path, (content, mode, what, agents) in files.items():
            if probe.files.get(path) != _sha256(content):
                await self.write(path, content, mode)
                self.changed(what, *agents)
        if self.node.service_manager == "supervisord":
            await self._supervisord()
        else:
            await self._systemd(probe)
        await self._wait_healthy()

    def _local_wheels(self) -> list[_Wheel]:
        wheels: dict[str, _Wheel] = {}
        for path in self.wheel_paths:
            if not _WHEEL_NAME.fullmatch(path.name):
                raise BootstrapError(f"{path}: not a wheel file name")
            if path.name in wheels:
                raise BootstrapError(f"two wheels named {path.name}")
            wheels[path.name] = _Wheel(path, path.name, hashlib.sha256(path.read_bytes()).hexdigest())
        return sorted(wheels.values(), key=lambda w: w.name)

    async def _probe(self, paths: Iterable[str]) -> _Probe:
        plan = self.plan
        q = shlex.quote
        directories = [
            f"{plan.prefix}/wheels",
            f"{plan.prefix}/etc",
            f"{plan.prefix}/log",
            *(plan.state_dir(agent) for agent in self.agents),
            *self._release_roots().values(),
        ]
        if self.node.service_manager == "supervisord":
            directories.append(posixpath.dirname(plan.supervisor_include))
        staging = f"{plan.prefix}/.staging"
        script = f"""
umask 022
mkdir -p {" ".join(q(d) for d in directories)} || exit 1
mkdir -p {q(staging)} && chmod 700 {q(staging)} && rm -f {q(staging)}/* || exit 1
for f in {" ".join(q(p) for p in paths)}; do
    if [ -f "$f" ]; then h=$(sha256sum < "$f") && printf 'file\\t%s\\t%s\\n' "${{h%% *}}" "$f"; fi
done
for w in {q(plan.prefix)}/wheels/*.whl; do
    if [ -f "$w" ]; then h=$(sha256sum < "$w") && printf 'wheel\\t%s\\t%s\\n' "${{h%% *}}" "${{w##*/}}"; fi
done
if {q(plan.venv)}/bin/python -c '' >/dev/null 2>&1; then echo venv; fi
exit 0
"""
        result = await self.sh(script)
        probe = _Probe()
        for line in result.stdout.splitlines():
            kind, _, rest = line.partition("\t")
            digest, _, name = rest.partition("\t")
            if kind == "file":
                probe.files[name] = digest
            elif kind == "wheel":
                probe.wheels[name] = digest
            elif kind == "venv":
                probe.venv_ok = True
        return probe

    async def _install_from_index(self, release: str, probe: _Probe) -> None:
        """The agents of ``release`` from the central package index, with everything they need."""
        plan = self.plan
        if not plan.index_url:
            raise BootstrapError(
                "installing the agents from the package index needs its URL (AGENT_INDEX_URL)"
            )
        q = shlex.quote
        packages = [f"conveyor-changelog-listener=={release}"]
        if plan.install_firewall_agent:
            packages.append(f"conveyor-firewall-agent=={release}")
        new_venv = not probe.venv_ok
        if new_venv:
            await self.sh(f"{q(plan.python)} -m venv --clear {q(plan.venv)}", timeout=plan.install_timeout_s)
            self.changed("venv")
        index = hashlib.sha256(plan.index_url.encode()).hexdigest()[:16]  # the URL may hold a password
        installed = "".join(f"index:{index}  {p}\n" for p in packages).encode()
        installed_path = f"{plan.prefix}/installed.txt"
        if not new_venv and probe.files.get(installed_path) == _sha256(installed):
            return
        environment = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", **plan.pip_env, "PIP_INDEX_URL": plan.index_url}
        pip_env = f"{plan.prefix}/.staging/pip.env"
        await self.pool.put(self.target, self._local_file(_env_file("", environment)), pip_env, mode=0o600)
        pip = f"set -a; . {q(pip_env)}; set +a; exec {q(plan.venv)}/bin/python -m pip install"
        try:
            await self.sh(f"{pip} {' '.join(map(q, packages))}", timeout=plan.install_timeout_s)
        finally:
            with contextlib.suppress(SshError):
                await self.pool.run(self.target, ["rm", "-f", pip_env], check=False)
        await self.write(installed_path, installed, 0o644)
        self.changed("install", *self.agents)

    async def _install(self, wheels: list[_Wheel], probe: _Probe) -> None:
        plan = self.plan
        q = shlex.quote
        wheel_dir = f"{plan.prefix}/wheels"
        uploaded = False
        for wheel in wheels:
            if probe.wheels.get(wheel.name) != wheel.sha256:
                await self.pool.put(
                    self.target,
                    wheel.path,
                    f"{wheel_dir}/{wheel.name}",
                    mode=0o644,
                    timeout=plan.install_timeout_s,
                )
                uploaded = True
        stale = sorted(set(probe.wheels) - {w.name for w in wheels})
        if stale:
            await self.sh("rm -f " + " ".join(q(f"{wheel_dir}/{name}") for name in stale))
        if uploaded or stale:
            self.changed("wheels")
        new_venv = not probe.venv_ok
        if new_venv:
            await self.sh(f"{q(plan.python)} -m venv --clear {q(plan.venv)}", timeout=plan.install_timeout_s)
            self.changed("venv")
        installed = "".join(f"{w.sha256}  {w.name}\n" for w in wheels).encode()
        installed_path = f"{plan.prefix}/installed.txt"
        if not new_venv and probe.files.get(installed_path) == _sha256(installed):
            return
        # pip's environment (an index URL may hold credentials) goes in a file of the 0700 staging
        # directory, not on command lines, which every user of the node sees.
        environment = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", **plan.pip_env}
        if plan.index_url:
            environment["PIP_INDEX_URL"] = plan.index_url
        pip_env = f"{plan.prefix}/.staging/pip.env"
        await self.pool.put(self.target, self._local_file(_env_file("", environment)), pip_env, mode=0o600)
        pip = f"set -a; . {q(pip_env)}; set +a; exec {q(plan.venv)}/bin/python -m pip install"
        paths = " ".join(q(f"{wheel_dir}/{w.name}") for w in wheels)
        try:
            # The wheels with their dependencies (the wheel directory first, then the index), then the
            # wheels themselves again: pip leaves an installed version alone even when the wheel was rebuilt.
            await self.sh(f"{pip} --find-links {q(wheel_dir)} {paths}", timeout=plan.install_timeout_s)
            await self.sh(
                f"{pip} --no-deps --no-index --force-reinstall {paths}", timeout=plan.install_timeout_s
            )
        finally:
            with contextlib.suppress(SshError):  # the staging directory is emptied at the next bootstrap
                await self.pool.run(self.target, ["rm", "-f", pip_env], check=False)
        await self.write(installed_path, installed, 0o644)
        self.changed("install", *self.agents)

    # -- what the files say --------------------------------------------------------------------------------

    def _release_roots(self) -> dict[str, str]:
        if self.node.agent is not AgentKind.LISTENER:
            return {}
        return {
            package: self.node.release_roots.get(package, f"{self.plan.prefix}/releases/{package}")
            for package in self.node.packages
        }

    def _files(self) -> dict[str, tuple[bytes, int, str, tuple[str, ...]]]:
        """remote path → (content, mode, what it is in the report, the agents a change restarts)."""
        plan = self.plan
        envs = json.dumps({self.env: plan.envs[self.env]})
        files: dict[str, tuple[bytes, int, str, tuple[str, ...]]] = {}
        if LISTENER in self.agents:
            roots = self._release_roots()
            packages = [
                {"name": package, "root": roots[package], "role": "target", "units": list(units)}
                for package, units in self.node.packages.items()
            ]
            values = {
                "ENVS": envs,
                "ENV": self.env,
                "NODE": self.node.name,
                "HTTP_PORT": str(plan.listener_http_port),
                "STATE_DIR": plan.state_dir(LISTENER),
                "PACKAGES": json.dumps(packages),
                "ARTIFACT_STORE_URL": plan.artifact_store_url,
                "TRUSTED_KEYS_FILE": plan.trusted_keys_file,
                "SERVICE_MANAGER": self.node.service_manager,
            }
            if plan.artifact_store_token:
                values["ARTIFACT_STORE_TOKEN"] = plan.artifact_store_token
            if self.node.service_manager == "supervisord":
                values["SUPERVISORCTL_CONFIG"] = plan.supervisor_conf
                values["SUPERVISORCTL"] = plan.supervisorctl
            else:
                values["SYSTEMCTL"] = plan.systemctl
            if plan.control_user is not None:
                values["CONTROL_USER"] = plan.control_user
            files[plan.env_file(LISTENER)] = (
                _env_file("CONVEYOR_CHANGELOG_LISTENER_", values),
                0o600,
                "listener config",
                (LISTENER,),
            )
        if self.agents:  # both agents verify their signed commands with these keys
            trusted = TrustedKeys(PublicKey.parse(line) for line in plan.trusted_keys)
            files[plan.trusted_keys_file] = (
                f"# {_HEADER}\n{trusted.to_text()}".encode(),
                0o644,
                "trusted keys",
                tuple(self.agents),
            )
        if FIREWALL_AGENT in self.agents:
            values = {
                "ENVS": envs,
                "ENV": self.env,
                "NODE": self.node.name,
                "HTTP_PORT": str(plan.firewall_http_port),
                "STATE_DIR": plan.state_dir(FIREWALL_AGENT),
                "TRUSTED_KEYS_FILE": plan.trusted_keys_file,
            }
            files[plan.env_file(FIREWALL_AGENT)] = (
                _env_file("CONVEYOR_FIREWALL_AGENT_", values),
                0o600,
                "firewall config",
                (FIREWALL_AGENT,),
            )
        return files

    def _unit_paths(self) -> list[str]:
        if self.node.service_manager == "supervisord":
            return [self.plan.supervisor_include]
        return [self.plan.unit_file(agent) for agent in (LISTENER, FIREWALL_AGENT)]

    # -- supervisord ---------------------------------------------------------------------------------------

    def _ctl(self, *args: str) -> list[str]:
        return [self.plan.supervisorctl, "-c", self.plan.supervisor_conf, *args]

    async def _supervisord(self) -> None:
        plan = self.plan
        wanted = {agent: _program(plan, agent) for agent in self.agents}
        content = f"; {_HEADER}\n\n" + "\n".join(wanted.values())
        include = content.encode()
        current = await self.pool.run(self.target, ["cat", plan.supervisor_include], check=False)
        before = _sections(current.stdout) if current.ok else {}
        updated: set[str] = set()
        if not current.ok or current.stdout != content:
            await self.write(plan.supervisor_include, include, 0o644)
            self.changed("supervisor programs")
            after = _sections(content)
            updated = {a for a in set(before) | set(after) if before.get(a) != after.get(a)}
            await self._update(sorted(updated))
        states = await self._states()
        unknown = [agent for agent in self.agents if agent not in states]
        if unknown and not updated:  # supervisord.conf was given its include since, say
            await self._update(unknown)
            states = await self._states()
            unknown = [agent for agent in self.agents if agent not in states]
        if unknown:
            raise BootstrapError(
                f"supervisord on node {self.node.name} does not know {', '.join(unknown)}: "
                f"{plan.supervisor_conf} must include {plan.supervisor_include} "
                f"([include] files = {plan.supervisor_include})"
            )
        for agent in self.agents:
            if agent in updated:  # update stopped and started it with its new program section
                self.report.started.append(agent)
            elif agent in self.restart or states[agent] != "RUNNING":
                verb = "restart" if agent in self.restart else "start"
                result = await self.pool.run(self.target, self._ctl(verb, agent), check=False)
                if not result.ok or "ERROR" in result.stdout.replace("ERROR (not running)", ""):
                    raise BootstrapError(
                        f"`supervisorctl {verb} {agent}` on node {self.node.name} failed "
                        f"({result.exit_status}): {(result.stdout + result.stderr).strip()[-1000:]}"
                        f"{await self._log_tail(agent)}"
                    )
                self.report.started.append(agent)

    async def _update(self, programs: list[str]) -> None:
        if not programs:
            return
        reread = await self.pool.run(self.target, self._ctl("reread"), check=False)
        if not reread.ok or "ERROR" in reread.stdout:
            raise BootstrapError(
                f"`supervisorctl reread` on node {self.node.name} failed ({reread.exit_status}): "
                f"{(reread.stdout + reread.stderr).strip()[-1000:]}"
            )
        # An unknown name only makes update exit 1 ("no such group"); _states() tells what is loaded.
        await self.pool.run(self.target, self._ctl("update", *programs), check=False)

    async def _states(self) -> dict[str, str]:
        """Agent → supervisord's state of it (``RUNNING``…); agents it does not know are left out."""
        result = await self.pool.run(self.target, self._ctl("status", *self.agents), check=False)
        states: dict[str, str] = {}
        for line in result.stdout.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in self.agents and "no such process" not in line:
                states[words[0]] = words[1]
        if not states and result.exit_status not in (0, 3, 4):  # 3: not all running; 4: unknown ones
            raise BootstrapError(
                f"`supervisorctl status` on node {self.node.name} failed ({result.exit_status}): "
                f"{(result.stdout + result.stderr).strip()[-1000:]}"
            )
        return states

    # -- systemd -------------------------------------------------------------------------------------------

    async def _systemd(self, probe: _Probe) -> None:
        plan = self.plan
        ctl = plan.systemctl
        reload = False
        for agent in (LISTENER, FIREWALL_AGENT):
            path = plan.unit_file(agent)
            if agent in self.agents:
                unit = _unit(plan, agent).encode()
                if probe.files.get(path) != _sha256(unit):
                    await self.write(path, unit, 0o644)
                    self.changed(f"{_label(agent)} unit", agent)
                    reload = True
            elif path in probe.files:  # no longer wanted here
                await self.pool.run(self.target, [ctl, "disable", "--now", f"{agent}.service"], check=False)
                await self.pool.run(self.target, ["rm", "-f", path])
                self.changed(f"{agent} removed")
                reload = True
        if reload:
            await self.pool.run(self.target, [ctl, "daemon-reload"])
        if not self.agents:
            return
        q = shlex.quote
        script = "".join(
            f"printf '%s\\t%s\\t%s\\n' {q(agent)} "
            f'"$({q(ctl)} is-active {q(agent)}.service 2>/dev/null)" '
            f'"$({q(ctl)} is-enabled {q(agent)}.service 2>/dev/null)"\n'
            for agent in self.agents
        )
        states: dict[str, tuple[str, str]] = {}
        for line in (await self.sh(script)).stdout.splitlines():
            agent, _, rest = line.partition("\t")
            active, _, enabled = rest.partition("\t")
            states[agent] = (active.strip(), enabled.strip())
        for agent in self.agents:
            active, enabled = states.get(agent, ("", ""))
            if enabled != "enabled":
                await self.pool.run(self.target, [ctl, "enable", f"{agent}.service"])
                self.changed(f"{agent} enabled")
            if agent in self.restart or active != "active":
                verb = "restart" if agent in self.restart else "start"
                result = await self.pool.run(self.target, [ctl, verb, f"{agent}.service"], check=False)
                if not result.ok:
                    raise BootstrapError(
                        f"`systemctl {verb} {agent}.service` on node {self.node.name} failed "
                        f"({result.exit_status}): {(result.stdout + result.stderr).strip()[-1000:]}"
                        f"{await self._log_tail(agent)}"
                    )
                self.report.started.append(agent)

    # -- health --------------------------------------------------------------------------------------------

    async def _wait_healthy(self) -> None:
        plan = self.plan
        if not self.report.started or plan.health_timeout_s <= 0:
            return
        ports = [str(x) for agent in self.report.started for x in (agent, plan.port(agent))]
        result = await self.pool.run(
            self.target,
            [f"{plan.venv}/bin/python", "-c", _HEALTH_SCRIPT, str(plan.health_timeout_s), *ports],
            check=False,
            timeout=plan.health_timeout_s + 30,
        )
        if result.ok:
            return
        problems = []
        for line in result.stdout.splitlines():
            agent, _, last = line.partition("\t")
            problems.append(
                f"{agent} did not answer /healthz with 200 within {plan.health_timeout_s:g}s ({last})"
            )
            problems.append(await self._log_tail(agent))
        detail = "; ".join(p for p in problems if p) or (result.stderr.strip()[-1000:] or "no detail")
        raise BootstrapError(f"on node {self.node.name}: {detail}")

    async def _log_tail(self, agent: str) -> str:
        """The agent's last output lines, for an error message ('' when there are none)."""
        if agent not in (LISTENER, FIREWALL_AGENT):
            return ""
        if self.node.service_manager == "supervisord":
            command = ["tail", "-n", "15", self.plan.log_file(agent)]
        else:
            command = ["journalctl", "--no-pager", "-n", "15", "-u", f"{agent}.service"]
        try:
            result = await self.pool.run(self.target, command, check=False, timeout=15)
        except SshError:
            return ""
        text = result.stdout.strip()[-2000:]
        return f"\n--- last output of {agent}:\n{text}" if text else ""


# -- rendering ---------------------------------------------------------------------------------------------


def _short(agent: str) -> str:
    return agent.removeprefix("conveyor-")


def _label(agent: str) -> str:
    return "listener" if agent == LISTENER else "firewall"


def _check_path(name: str, value: str) -> None:
    if not _SAFE_PATH.fullmatch(value) or "/../" in f"{value}/" or (value != "/" and value.endswith("/")):
        raise ValueError(
            f"{name}: {value!r} must be an absolute path of letters, digits and ._/@+:=,- "
            "(it goes into shell scripts and service definitions)"
        )


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _env_file(prefix: str, values: Mapping[str, str]) -> bytes:
    """``KEY='value'`` lines, read alike by systemd's EnvironmentFile= and by ``sh`` (``set -a; . file``)."""
    lines = [f"# {_HEADER}"]
    for key, value in values.items():
        if any(c in value for c in "'\n\r\0"):
            raise BootstrapError(
                f"{prefix}{key}: a value with a single quote or a line break cannot go into an "
                "environment file read by both systemd and sh"
            )
        lines.append(f"{prefix}{key}='{value}'")
    return ("\n".join(lines) + "\n").encode()


def _program(plan: AgentPlan, agent: str) -> str:
    """The agent's ``[program:…]`` section: its environment file sourced by sh, then the agent exec'd in
    its place (so supervisord signals the agent itself)."""
    script = f"set -a; . {plan.env_file(agent)}; exec {plan.venv}/bin/{agent}"
    command = shlex.join(["/bin/sh", "-c", script])
    return "\n".join(
        [
            f"[program:{agent}]",
            f"command={command}",
            "autostart=true",
            "autorestart=true",
            "startsecs=2",
            "startretries=5",
            "stopsignal=TERM",
            "stopwaitsecs=60",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={plan.log_file(agent)}",
            "stdout_logfile_maxbytes=50MB",
            "stdout_logfile_backups=5",
            "",
        ]
    )


def _sections(text: str) -> dict[str, str]:
    """The ``[program:name]`` sections of an include file bootstrap wrote: name → section text (up to
    the next section)."""
    sections: dict[str, str] = {}
    name: str | None = None
    for line in text.splitlines(keepends=True):
        if line.startswith("[program:") and line.rstrip().endswith("]"):
            name = line.rstrip()[len("[program:") : -1]
            sections[name] = ""
        if name is not None:
            sections[name] += line
    return sections


def _unit(plan: AgentPlan, agent: str) -> str:
    description = "Conveyor changelog listener" if agent == LISTENER else "Conveyor firewall agent"
    return "\n".join(
        [
            f"# {_HEADER}",
            "[Unit]",
            f"Description={description}",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            f"EnvironmentFile={plan.env_file(agent)}",
            f"ExecStart={plan.venv}/bin/{agent}",
            "KillSignal=SIGTERM",
            "TimeoutStopSec=60",
            "Restart=on-failure",
            "RestartSec=5",
            "",
            "[Install]",
            "WantedBy=multi-user.target",
            "",
        ]
    )


# Run by the agents' interpreter on the node: argv = timeout, then agent and port pairs. Exits 0 once every
# agent's /healthz answered 200, else 1 after the timeout with "agent<TAB>last answer" lines.
_HEALTH_SCRIPT = """
import sys, time, urllib.error, urllib.request
deadline = time.monotonic() + float(sys.argv[1])
pending = dict(zip(sys.argv[2::2], sys.argv[3::2]))
last = {}
while True:
    for agent, port in list(pending.items()):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
                if answer.status == 200:
                    del pending[agent]
                    continue
                last[agent] = f"HTTP {answer.status}"
        except urllib.error.HTTPError as error:
            last[agent] = f"HTTP {error.code}: {error.read()[:300].decode('utf-8', 'replace')}"
        except Exception as error:
            last[agent] = f"{type(error).__name__}: {error}"[:300]
    if not pending:
        sys.exit(0)
    if time.monotonic() > deadline:
        for agent in pending:
            print(f"{agent}\\t{last.get(agent, 'no answer')}")
        sys.exit(1)
    time.sleep(0.5)
"""
