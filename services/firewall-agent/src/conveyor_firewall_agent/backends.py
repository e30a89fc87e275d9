"""The firewall backends: save, open and restore a node's firewall with the tool that manages it.

One :class:`Backend` per way a Linux node's firewall is managed — ``nftables``, ``iptables-nft``,
``iptables-legacy``, ``ufw``, ``firewalld`` — each driving the real tool through a :class:`Runner`
(an asyncio subprocess, optionally inside a network namespace, with ``LC_ALL=C`` so that outputs are
the same everywhere). :func:`detect` picks the backend holding the node's rules. Every backend does:

- ``snapshot()``: the exact current state as opaque bytes, which the agent writes to disk before it opens
  anything; ``restore(snapshot)`` puts that state back, whatever was changed meanwhile.
- ``open()``: everything is accepted on the filter hooks; NAT and other non-filter rules stay.
- ``listing()``: the tool's own listing without counters, to show the state and to prove a restore exact.

How each one does it:

- **nftables** — snapshot: ``nft list ruleset`` (counters included, so a restore puts their values back),
  refused unless ``nft -c`` can read it back. Open: one ``nft -f -`` transaction that flushes every base
  chain of type ``filter`` (any family, any hook, found in ``nft -j list ruleset``) and sets its policy to
  ``accept``; nat and route chains, sets and maps stay. Restore: one ``nft -f -`` transaction of
  ``flush ruleset`` and the saved ruleset.
- **iptables-nft**, **iptables-legacy** — always the variant's own binaries (``iptables-nft-save``…),
  never the ``iptables`` alternative. Snapshot: JSON ``{"v4": iptables-X-save -c, "v6": ip6tables-X-save
  -c}``. Open: per family that has a filter table, one ``iptables-X-restore`` (without ``--noflush``) of a
  ``*filter`` table whose built-in chains accept and hold no rules (its user chains go with it); the other
  tables stay. Restore: per family, one ``iptables-X-restore --counters`` of the saved output, plus an
  empty table (built-in chains accepting) for each table that appeared since: iptables cannot delete a
  table, but nothing added to it remains. v4 and v6 are two transactions, one after the other.
- **ufw** — snapshot: JSON ``{"enabled", "status", "files"}``: ``ufw status verbose`` and the text of
  ufw's configuration files (``/etc/ufw/*.rules``, ``ufw.conf``, ``/etc/default/ufw``), because ufw keeps
  its rules there and a rule added while open must not survive the restore. Open: ``ufw disable``.
  Restore: the files written back, then ``ufw --force enable`` (or ``ufw reload`` if it is enabled
  already) when it was enabled, ``ufw disable`` otherwise; a status other than the saved one is an error.
- **firewalld** — see :class:`Firewalld`: runtime rich rules accepting everything, removed again at the
  restore (``firewall-cmd --reload`` when other runtime changes were made meanwhile).

Every failure is a :class:`FirewallError` naming the backend, the command line and its error output.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import os
import shlex
import shutil
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, cast

from conveyor.contracts.catalogue import FirewallBackend

__all__ = [
    "BACKENDS",
    "Backend",
    "CommandResult",
    "FirewallError",
    "Firewalld",
    "IptablesLegacy",
    "IptablesNft",
    "Nftables",
    "Runner",
    "Ufw",
    "detect",
    "install_hint",
]

_T = TypeVar("_T")

_PACKAGES = {
    "nft": "nftables",
    "ufw": "ufw",
    "firewall-cmd": "firewalld",
    "ip": "iproute2",
    **{
        f"{family}-{variant}{suffix}": "iptables"
        for family in ("iptables", "ip6tables")
        for variant in ("nft", "legacy")
        for suffix in ("", "-save", "-restore")
    },
    "iptables": "iptables",
}


def install_hint(tool: str) -> str:
    """How to get ``tool`` on Debian, for error messages."""
    package = _PACKAGES.get(tool)
    return f"apt-get install {package}" if package else "install it"


class FirewallError(Exception):
    """A firewall command failed, timed out or is missing, or a backend cannot do what was asked."""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Runner:
    """Runs the firewall tools: directly, or as ``ip netns exec NETNS argv…`` when ``netns`` is set."""

    netns: str | None = None
    timeout_s: float = 30.0

    def installed(self, tool: str) -> bool:
        """Whether ``tool`` is on the PATH (a namespace shares the host's file system)."""
        return shutil.which(tool) is not None

    async def run(self, *argv: str, input: bytes | None = None, check: bool = True) -> CommandResult:
        """Run ``argv``, feeding it ``input``; :class:`FirewallError` when the tool is missing, when it
        runs longer than ``timeout_s`` (it is killed) or, with ``check``, when it exits non-zero."""
        line = shlex.join(argv)
        where = f" in network namespace {self.netns}" if self.netns else ""
        if not self.installed(argv[0]):
            raise FirewallError(
                f"{argv[0]} is not installed, so `{line}` cannot run ({install_hint(argv[0])})"
            )
        full = ("ip", "netns", "exec", self.netns, *argv) if self.netns else argv
        try:
            process = await asyncio.create_subprocess_exec(
                *full,
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "LC_ALL": "C"},
            )
        except FileNotFoundError:
            raise FirewallError(f"{full[0]} is not installed ({install_hint(full[0])})") from None
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(input), self.timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):  # it may have ended just then
                process.kill()
            await process.wait()
            raise FirewallError(
                f"`{line}`{where} did not finish within {self.timeout_s:g} s and was killed"
            ) from None
        except BaseException:  # cancelled: the command must not outlive its caller
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
        assert process.returncode is not None
        result = CommandResult(
            process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
        )
        if check and result.returncode != 0:
            said = (result.stderr.strip() or result.stdout.strip() or "no error output")[-2000:]
            raise FirewallError(f"`{line}`{where} exited with {result.returncode}: {said}")
        return result


class Backend(abc.ABC):
    """One way of managing a node's firewall; see the module for what each operation means."""

    name: ClassVar[FirewallBackend]
    tools: ClassVar[tuple[str, ...]]
    """The commands it needs, all of them."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def run(self, *argv: str, input: bytes | None = None, check: bool = True) -> CommandResult:
        """:meth:`Runner.run`, its errors prefixed with the backend's name."""
        try:
            return await self.runner.run(*argv, input=input, check=check)
        except FirewallError as error:
            raise FirewallError(f"{self.name}: {error}") from None

    async def unavailable(self) -> str | None:
        """Why the backend cannot be used here (a missing tool…), or None when it can."""
        for tool in self.tools:
            if not self.runner.installed(tool):
                return f"{tool} is not installed ({install_hint(tool)})"
        return None

    async def available(self) -> bool:
        """Its tools are installed (and, for ufw and firewalld, answer)."""
        return await self.unavailable() is None

    @abc.abstractmethod
    async def in_use(self) -> bool:
        """Whether this backend holds the node's current firewall rules (False if its tools are missing)."""

    @abc.abstractmethod
    async def snapshot(self) -> bytes:
        """The exact current state, enough for :meth:`restore`."""

    @abc.abstractmethod
    async def listing(self) -> str:
        """The tool's own listing of the current state, without counters."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Accept everything on the filter hooks; NAT and other non-filter rules stay."""

    @abc.abstractmethod
    async def restore(self, snapshot: bytes) -> None:
        """Put back exactly what :meth:`snapshot` saved."""


def _load_json(backend: str, snapshot: bytes) -> dict[str, Any]:
    try:
        loaded = json.loads(snapshot)
    except ValueError as error:
        raise FirewallError(
            f"{backend}: the saved firewall is not this backend's snapshot: {error}"
        ) from None
    if not isinstance(loaded, dict):
        raise FirewallError(f"{backend}: the saved firewall is not this backend's snapshot (not an object)")
    return loaded


# -- nftables ----------------------------------------------------------------------------------------------


class Nftables(Backend):
    name = "nftables"
    tools = ("nft",)

    async def in_use(self) -> bool:
        if not self.runner.installed("nft"):
            return False
        return any("table" in item for item in await _nft_objects(self))

    async def snapshot(self) -> bytes:
        ruleset = (await self.run("nft", "list", "ruleset")).stdout
        check = await self.run("nft", "-c", "-f", "-", input=_nft_restore_script(ruleset), check=False)
        if check.returncode != 0:
            raise FirewallError(
                "nftables: nft cannot read back its own listing of the current ruleset (`nft -c -f -` "
                "refused it), so it could not be restored; nothing was changed: "
                f"{check.stderr.strip()[-2000:]}"
            )
        return ruleset.encode()

    async def listing(self) -> str:
        return (await self.run("nft", "-s", "list", "ruleset")).stdout

    async def open(self) -> None:
        chains = [
            item["chain"]
            for item in await _nft_objects(self)
            if isinstance(item.get("chain"), dict) and item["chain"].get("type") == "filter"
        ]
        script = "".join(
            f"flush chain {c['family']} {c['table']} {c['name']}\n"
            f"chain {c['family']} {c['table']} {c['name']} {{ policy accept; }}\n"
            for c in chains
            if "hook" in c
        )
        if script:
            await self.run("nft", "-f", "-", input=script.encode())

    async def restore(self, snapshot: bytes) -> None:
        await self.run("nft", "-f", "-", input=_nft_restore_script(snapshot.decode()))


async def _nft_objects(backend: Backend) -> list[dict[str, Any]]:
    """``nft -j list ruleset``: one dict per object ({"table": {...}}, {"chain": {...}}…)."""
    listed = (await backend.run("nft", "-j", "list", "ruleset")).stdout
    try:
        objects = json.loads(listed)["nftables"]
    except (ValueError, KeyError, TypeError) as error:
        raise FirewallError(f"{backend.name}: `nft -j list ruleset` printed no ruleset ({error})") from None
    return [item for item in objects if isinstance(item, dict)]


def _nft_restore_script(ruleset: str) -> bytes:
    return f"flush ruleset\n{ruleset}".encode()


# -- iptables ----------------------------------------------------------------------------------------------

_FAMILIES = (("v4", "iptables"), ("v6", "ip6tables"))
_IPTABLES_TABLES = frozenset({"filter", "nat", "mangle", "raw", "security"})
_OPEN_FILTER = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"


def _save_tables(save: str) -> list[str]:
    """The tables an ``iptables-save`` output holds, in its order."""
    return [line[1:].strip() for line in save.splitlines() if line.startswith("*")]


def _save_has_rules(save: str) -> bool:
    """Whether an ``iptables-save`` output holds a rule, a user chain or a policy other than ACCEPT."""
    for line in save.splitlines():
        if line.startswith(("-A ", "[")):
            return True
        if line.startswith(":"):
            fields = line[1:].split()
            if len(fields) >= 2 and fields[1] != "ACCEPT":
                return True
    return False


def _empty_tables(save: str, tables: Iterable[str]) -> str:
    """``iptables-restore`` input emptying ``tables`` of ``save``: built-in chains accept, no user chain."""
    wanted = set(tables)
    script: list[str] = []
    table: str | None = None
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            if table in wanted:
                script.append(f"*{table}")
        elif table in wanted and line.startswith(":"):
            chain, policy = [*line[1:].split(), "-"][:2]
            if policy != "-":
                script.append(f":{chain} ACCEPT [0:0]")
        elif table in wanted and line.strip() == "COMMIT":
            script.append("COMMIT")
    return "".join(f"{line}\n" for line in script)


class _Iptables(Backend):
    variant: ClassVar[str]

    def _tool(self, family: str, suffix: str = "") -> str:
        return f"{family}-{self.variant}{suffix}"

    def _wait(self) -> tuple[str, ...]:
        """Legacy iptables takes a host-wide lock (/run/xtables.lock): wait for it instead of failing."""
        return ("-w", str(max(1, int(self.runner.timeout_s) - 1))) if self.variant == "legacy" else ()

    async def _save(self, family: str, *, counters: bool) -> str:
        return (await self.run(self._tool(family, "-save"), *(["-c"] if counters else []))).stdout

    async def _saves(self, *, counters: bool) -> dict[str, str]:
        return {key: await self._save(family, counters=counters) for key, family in _FAMILIES}

    async def _restore(self, family: str, text: str, *, counters: bool = False) -> None:
        options = (*self._wait(), *(["--counters"] if counters else []))
        await self.run(self._tool(family, "-restore"), *options, input=text.encode())

    async def _has_rules(self) -> bool:
        if not all(self.runner.installed(self._tool(family, "-save")) for _, family in _FAMILIES):
            return False
        return any(_save_has_rules(save) for save in (await self._saves(counters=False)).values())

    async def snapshot(self) -> bytes:
        saves = await self._saves(counters=True)
        for save in saves.values():
            for line in save.splitlines():
                # iptables-nft's note that a table holds what iptables cannot express: not restorable.
                if line.startswith("# Table `"):
                    raise FirewallError(
                        f"{self.name}: {line[2:]} — the ruleset is not iptables' alone; use the nftables "
                        "backend; nothing was changed"
                    )
        return json.dumps(saves, sort_keys=True).encode()

    async def listing(self) -> str:
        parts: list[str] = []
        for _, family in _FAMILIES:
            tool = self._tool(family)
            for table in _save_tables(await self._save(family, counters=False)):
                listed = (await self.run(tool, *self._wait(), "-t", table, "-S")).stdout
                parts.append(f"# {tool} -t {table} -S\n{listed}")
        return "".join(parts)

    async def open(self) -> None:
        for _, family in _FAMILIES:
            if "filter" in _save_tables(await self._save(family, counters=False)):
                await self._restore(family, _OPEN_FILTER)

    async def restore(self, snapshot: bytes) -> None:
        saved = _load_json(self.name, snapshot)
        for key, family in _FAMILIES:
            text = saved.get(key)
            if not isinstance(text, str):
                raise FirewallError(f"{self.name}: the saved firewall has no {key} ruleset")
            current = await self._save(family, counters=False)
            added = [table for table in _save_tables(current) if table not in _save_tables(text)]
            script = text + _empty_tables(current, added)
            if _save_tables(script):
                await self._restore(family, script, counters=True)


class IptablesNft(_Iptables):
    name = "iptables-nft"
    variant = "nft"
    tools = tuple(f"{f}-nft{s}" for f in ("iptables", "ip6tables") for s in ("", "-save", "-restore"))

    async def in_use(self) -> bool:
        """It has rules, and nft (when installed) shows only tables iptables-nft makes."""
        if not await self._has_rules():
            return False
        if not self.runner.installed("nft"):
            return True
        return _only_iptables_tables(await _nft_objects(self))


def _only_iptables_tables(objects: list[dict[str, Any]]) -> bool:
    """Whether an nft ruleset consists of iptables-nft's tables only: ip/ip6 tables of iptables' names
    whose base chains are its built-in chains (``INPUT`` on the input hook…), no sets or other objects."""
    for item in objects:
        if "table" in item:
            table = item["table"]
            if table.get("family") not in ("ip", "ip6") or table.get("name") not in _IPTABLES_TABLES:
                return False
        elif "chain" in item:
            chain = item["chain"]
            if "hook" in chain and chain.get("name") != str(chain["hook"]).upper():
                return False
        elif not {"metainfo", "rule"} & item.keys():
            return False
    return True


class IptablesLegacy(_Iptables):
    name = "iptables-legacy"
    variant = "legacy"
    tools = tuple(f"{f}-legacy{s}" for f in ("iptables", "ip6tables") for s in ("", "-save", "-restore"))

    async def in_use(self) -> bool:
        return await self._has_rules()


# -- ufw ---------------------------------------------------------------------------------------------------

_UFW_FILES = (
    "/etc/ufw/ufw.conf",
    "/etc/default/ufw",
    "/etc/ufw/user.rules",
    "/etc/ufw/user6.rules",
    "/etc/ufw/before.rules",
    "/etc/ufw/before6.rules",
    "/etc/ufw/after.rules",
    "/etc/ufw/after6.rules",
)


class Ufw(Backend):
    name = "ufw"
    tools = ("ufw",)

    async def unavailable(self) -> str | None:
        missing = await super().unavailable()
        if missing is not None:
            return missing
        status = await self.run("ufw", "status", check=False)
        if status.returncode != 0:
            return f"`ufw status` exited with {status.returncode}: {status.stderr.strip()[-500:]}"
        return None

    async def _status(self) -> str:
        return (await self.run("ufw", "status", "verbose")).stdout

    @staticmethod
    def _active(status: str) -> bool:
        return status.startswith("Status: active")

    async def in_use(self) -> bool:
        if not self.runner.installed("ufw"):
            return False
        status = await self.run("ufw", "status", check=False)  # a ufw that cannot answer holds nothing
        return status.returncode == 0 and self._active(status.stdout)

    async def snapshot(self) -> bytes:
        status = await self._status()
        files: dict[str, str] = {}
        for path in _UFW_FILES:  # one a distribution does not have is neither saved nor restored
            read = await self.run("cat", path, check=False)
            if read.returncode == 0:
                files[path] = read.stdout
        return json.dumps({"enabled": self._active(status), "status": status, "files": files}).encode()

    async def _iptables(self) -> _Iptables:
        """The iptables variant ufw drives: the one ``iptables`` (what ufw runs) is."""
        version = (await self.run("iptables", "-V")).stdout
        return IptablesNft(self.runner) if "nf_tables" in version else IptablesLegacy(self.runner)

    async def listing(self) -> str:
        return await self._status() + await (await self._iptables()).listing()

    async def open(self) -> None:
        await self.run("ufw", "disable")

    async def restore(self, snapshot: bytes) -> None:
        saved = _load_json(self.name, snapshot)
        files, status = saved.get("files"), saved.get("status")
        if not isinstance(files, dict) or not isinstance(status, str):
            raise FirewallError("ufw: the saved firewall has no ufw files or status")
        for path, text in files.items():
            await self.run("sh", "-c", 'cat > "$1"', "sh", str(path), input=str(text).encode())
        if saved.get("enabled"):
            active = self._active(await self._status())
            await (self.run("ufw", "reload") if active else self.run("ufw", "--force", "enable"))
        else:
            await self.run("ufw", "disable")
        now = await self._status()
        if now != status:
            raise FirewallError(
                f"ufw: after the restore `ufw status verbose` says\n{now}\nnot, as saved,\n{status}"
            )


# -- firewalld ---------------------------------------------------------------------------------------------

_OPEN_RICH_RULES = (
    'rule priority="-32768" family="ipv4" accept',
    'rule priority="-32768" family="ipv6" accept',
)
"""Accept every packet a zone (or policy) sees, before anything else it does; as firewall-cmd prints them."""


class Firewalld(Backend):
    """firewalld, through ``firewall-cmd`` (so firewalld must be running).

    firewalld offers no switch that accepts everything (panic mode is the opposite, and zone targets can
    only be changed in the permanent configuration, which the agent must not touch). Open adds, in the
    runtime configuration only, two rich rules at the lowest priority accepting every IPv4 and IPv6
    packet to every zone and every policy, and turns panic mode off; masquerading and forward ports stay.
    Traffic forwarded between two zones that no policy covers stays as firewalld decides (no runtime-only
    way exists to add a policy); packets to the node and within a zone are accepted.

    The snapshot holds the listing (default zone, every zone and policy, panic mode) and each zone's and
    policy's rich rules. Restore removes the rules open added (those the snapshot did not already have)
    and sets panic mode back; if the listing still differs (someone changed the runtime configuration
    while open), ``firewall-cmd --reload`` puts back the permanent configuration, and a listing that
    still differs is an error: the saved state had runtime-only changes, which nothing can restore.
    """

    name = "firewalld"
    tools = ("firewall-cmd",)

    async def _running(self) -> bool:
        state = await self.run("firewall-cmd", "--state", check=False)
        return state.stdout.strip() == "running"

    async def unavailable(self) -> str | None:
        missing = await super().unavailable()
        if missing is not None:
            return missing
        if not await self._running():
            return "firewalld is not running (`firewall-cmd --state` does not say running)"
        return None

    async def in_use(self) -> bool:
        return self.runner.installed("firewall-cmd") and await self._running()

    async def _firewall_cmd(self, *argv: str, check: bool = True) -> str:
        return (await self.run("firewall-cmd", *argv, check=check)).stdout

    async def _state(self) -> _FirewalldState:
        default, zones, policies, panic = await _gather(
            self._firewall_cmd("--get-default-zone"),
            self._firewall_cmd("--list-all-zones"),
            self._firewall_cmd("--list-all-policies"),
            self._firewall_cmd("--query-panic", check=False),  # exits 1 when it says "no"
        )
        return _FirewalldState(default, panic, zones, policies)

    async def listing(self) -> str:
        return (await self._state()).listing

    async def snapshot(self) -> bytes:
        state = await self._state()
        saved = {"listing": state.listing, "panic": state.panic, "rich_rules": state.rich_rules()}
        return json.dumps(saved, sort_keys=True).encode()

    async def open(self) -> None:
        state = await self._state()
        if state.panic:
            await self.run("firewall-cmd", "--panic-off")
        changes = {
            option: [f"--add-rich-rule={rule}" for rule in _OPEN_RICH_RULES if rule not in rules]
            for option, rules in state.rich_rules().items()
        }
        await _gather(*(self._firewall_cmd(option, *adds) for option, adds in changes.items() if adds))

    async def restore(self, snapshot: bytes) -> None:
        saved = _load_json(self.name, snapshot)
        kept, listing = saved.get("rich_rules"), saved.get("listing")
        if not isinstance(kept, dict) or not isinstance(listing, str):
            raise FirewallError("firewalld: the saved firewall has no listing or rich rules")
        state = await self._state()
        changes = {
            option: [
                f"--remove-rich-rule={r}"
                for r in _OPEN_RICH_RULES
                if r in rules and r not in kept.get(option, [])
            ]
            for option, rules in state.rich_rules().items()
        }
        await _gather(
            *(self._firewall_cmd(option, *removes) for option, removes in changes.items() if removes)
        )
        for reload in (False, True):
            if reload:  # changed while open: back to the permanent configuration
                await self.run("firewall-cmd", "--reload")
            if saved.get("panic") and not (await self._state()).panic:
                await self.run("firewall-cmd", "--panic-on")
            if await self.listing() == listing:
                return
        raise FirewallError(
            "firewalld: the runtime configuration differs from the saved one even after "
            "`firewall-cmd --reload` (the saved state had runtime-only changes, or the permanent "
            "configuration was changed while open); compare `firewall-cmd --list-all-zones`"
        )


@dataclass(frozen=True)
class _FirewalldState:
    """What firewall-cmd says of the runtime configuration."""

    default_zone: str
    panic_answer: str
    zones: str
    policies: str

    @property
    def panic(self) -> bool:
        return self.panic_answer.strip() == "yes"

    @property
    def listing(self) -> str:
        return f"default zone: {self.default_zone}panic: {self.panic_answer}{self.zones}{self.policies}"

    def rich_rules(self) -> dict[str, list[str]]:
        """Each zone's and policy's rich rules, keyed by the option naming it (``--zone=public``), read
        from the listings: a name at the start of a line, ``  rich rules:``, then one rule a line after a
        tab (firewall-cmd has no machine-readable output)."""
        rules: dict[str, list[str]] = {}
        for option, listing in (("--zone", self.zones), ("--policy", self.policies)):
            current: list[str] | None = None
            in_rich = False
            for line in listing.splitlines():
                if line and not line[0].isspace():
                    current = rules.setdefault(f"{option}={line.split()[0]}", [])
                    in_rich = False
                elif line.startswith("  "):
                    in_rich = line.strip().startswith("rich rules:")
                elif line.startswith("\t") and in_rich and current is not None:
                    current.append(line.strip())
        return rules


async def _gather(*calls: Awaitable[_T]) -> list[_T]:
    """Run ``calls`` concurrently (each firewall-cmd spends most of its time starting Python), all to
    their end; the first error, if any, is raised once all are done."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return cast(list[_T], results)


# -- choosing one ------------------------------------------------------------------------------------------

BACKENDS: dict[FirewallBackend, type[Backend]] = {
    "nftables": Nftables,
    "iptables-nft": IptablesNft,
    "iptables-legacy": IptablesLegacy,
    "ufw": Ufw,
    "firewalld": Firewalld,
}


async def detect(runner: Runner, override: FirewallBackend | None = None) -> Backend:
    """The backend of the node's firewall: ``override`` if given (:class:`FirewallError` when it cannot
    be used), else the first of a running firewalld, an active ufw, iptables-legacy with rules,
    iptables-nft with rules (and nothing else in nft's ruleset), nft installed, iptables-nft installed."""
    if override is not None:
        backend = BACKENDS[override](runner)
        why = await backend.unavailable()
        if why is not None:
            raise FirewallError(f"the configured firewall backend {override} cannot be used here: {why}")
        return backend
    holding: tuple[type[Backend], ...] = (Firewalld, Ufw, IptablesLegacy, IptablesNft)
    for backend_type in holding:
        if await (candidate := backend_type(runner)).in_use():
            return candidate
    for backend_type in (Nftables, IptablesNft):
        if await (candidate := backend_type(runner)).available():
            return candidate
    raise FirewallError(
        "no firewall backend found: looked for a running firewalld, an active ufw, iptables-legacy rules, "
        "iptables-nft rules, nft and iptables-nft; install nftables (apt-get install nftables)"
    )
