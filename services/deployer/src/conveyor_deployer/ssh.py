"""The deployer's SSH access to nodes: trusted host keys, pooled connections, commands, uploads, checks.

Host keys are always verified, against a store the deployer owns (:class:`KnownHosts`, a file in OpenSSH
``known_hosts`` format, never ``~/.ssh/known_hosts``). A node gets into it only by an explicit trust step::

    known_hosts = KnownHosts(settings.known_hosts_file)
    key, fingerprint = await known_hosts.fingerprint_of(node.address, node.ssh_port)
    # an administrator compares ``fingerprint`` with ``ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub``
    # on the node's console, then:
    known_hosts.trust(node.address, node.ssh_port, key)

:class:`SshPool` then runs commands and uploads files::

    pool = SshPool(known_hosts, settings.ssh_key_file, concurrency=settings.ssh_concurrency)
    target = SshTarget(node.name, node.address, node.ssh_port, node.ssh_user)
    result = await pool.run(target, ["systemctl", "is-active", "nginx"], check=False)
    await pool.put(target, Path("release.zip"), "/opt/conveyor/incoming/release.zip")
    report = await pool.check(target)
    await pool.close()

It keeps one connection per (user, address, port), opened when first needed and opened again after it
broke, and bounds the operations running at once, over all nodes (``concurrency``) and on each node
(``sessions_per_node``, below OpenSSH's default ``MaxSessions`` of 10).

Failures are exceptions deriving from :class:`SshError`, each one message naming the node and what to do:

* :class:`HostKeyUnknown`: the node was never trusted; nothing was sent to it.
* :class:`HostKeyChanged`: the node presented another key than the trusted one; the connection was
  dropped before authenticating, so nothing ran on it. Never retried, never accepted automatically.
* :class:`NodeUnreachable`: refused, timed out or reset, after the configured retries with their backoff;
  or the connection was lost while a command ran (then it is not retried: the command may have run).
* :class:`AuthenticationFailed`: the node does not accept the deployer's key.
* :class:`CommandFailed` (``check=True`` and a non-zero exit), :class:`CommandTimedOut`,
  :class:`TransferFailed`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import re
import shlex
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import asyncssh

from conveyor.observability import get_logger
from conveyor.pkgvcs.storage import atomic_write

__all__ = [
    "AGENTS",
    "DEFAULT_REMOTE_PYTHON",
    "AgentStatus",
    "AuthenticationFailed",
    "ClientKeyError",
    "CommandFailed",
    "CommandTimedOut",
    "HostKeyChanged",
    "HostKeyUnknown",
    "KnownHosts",
    "NodeCheck",
    "NodeUnreachable",
    "Result",
    "SshError",
    "SshPool",
    "SshTarget",
    "TransferFailed",
    "fingerprint",
    "host_pattern",
]

log = get_logger(__name__)

AGENTS = ("conveyor-changelog-listener", "conveyor-firewall-agent")
"""The Conveyor agents :meth:`SshPool.check` reports on (distribution names, also their commands)."""

DEFAULT_REMOTE_PYTHON = "/opt/conveyor/venv/bin/python"
"""The interpreter of the agents' virtual environment on a node, which knows their versions."""

DEFAULT_SSH_PORT = 22

# Which host key a node presents when it has several: the first of these it has. Connections to trusted
# nodes ask for the algorithm of the trusted key only.
_HOST_KEY_PREFERENCE = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
)
_KEEPALIVE_S = 15.0  # a silently dead connection is noticed after three unanswered keepalives
_CLEANUP_TIMEOUT_S = 5.0


# -- errors ------------------------------------------------------------------------------------------------


class SshError(Exception):
    """A node could not be reached, trusted, or could not do what was asked; ``str()`` says what to do."""

    def __init__(self, node: str, message: str) -> None:
        super().__init__(message)
        self.node = node


class HostKeyUnknown(SshError):
    """The node's host key is not in the deployer's store: it was never trusted."""

    def __init__(self, node: str) -> None:
        super().__init__(
            node,
            f"node {node}: its SSH host key is not trusted yet, so the deployer does not connect to it; "
            "compare its fingerprint with the one on the node's console and run "
            f"`conveyor nodes trust --node {node}`",
        )


class HostKeyChanged(SshError):
    """The node presented another host key than the trusted one: reinstalled, or an impostor."""

    def __init__(self, node: str, expected_fingerprint: str, presented_fingerprint: str) -> None:
        super().__init__(
            node,
            f"node {node}: its SSH host key changed (trusted {expected_fingerprint}, presented "
            f"{presented_fingerprint}); nothing was run on it. Either the node was reinstalled or someone "
            "is intercepting the connection: check the fingerprint on the node's console, and only if it "
            f"matches run `conveyor nodes trust --node {node} --replace`",
        )
        self.expected_fingerprint = expected_fingerprint
        self.presented_fingerprint = presented_fingerprint


class NodeUnreachable(SshError):
    """No SSH connection to the node (refused, timed out, reset), or it was lost during a command."""

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(
            node,
            f"node {node} is unreachable over SSH: {reason}; check that it is up, that sshd runs on it "
            "and that the network lets the deployer reach its SSH port",
        )
        self.reason = reason


class AuthenticationFailed(SshError):
    """The node does not accept the deployer's key for the target user."""

    def __init__(self, node: str, user: str, reason: str) -> None:
        super().__init__(
            node,
            f"node {node} refused the deployer's SSH key for user {user} ({reason}); add the deployer's "
            f"public key to that user's authorized_keys on the node",
        )
        self.user = user


class ClientKeyError(SshError):
    """The deployer's own private key cannot be read."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__("", f"the deployer's SSH key {path} cannot be read: {reason}")
        self.path = path


class CommandFailed(SshError):
    """A command run with ``check=True`` exited non-zero."""

    def __init__(self, node: str, command: str, result: Result) -> None:
        stderr = result.stderr.strip()
        detail = f": {stderr[-2000:]}" if stderr else " (nothing on stderr)"
        super().__init__(node, f"on node {node}, `{command}` exited with {result.exit_status}{detail}")
        self.command = command
        self.result = result


class CommandTimedOut(SshError):
    """A command did not finish in time; its session was closed."""

    def __init__(self, node: str, command: str, timeout_s: float) -> None:
        super().__init__(
            node,
            f"on node {node}, `{command}` did not finish within {timeout_s:g}s; its session was closed, "
            "what it did so far stays done",
        )
        self.command = command
        self.timeout_s = timeout_s


class TransferFailed(SshError):
    """An SFTP upload was refused by the node (missing directory, permissions, full disk…)."""

    def __init__(self, node: str, remote_path: str, reason: str) -> None:
        super().__init__(node, f"upload to {remote_path} on node {node} failed: {reason}")
        self.remote_path = remote_path


# -- known hosts -------------------------------------------------------------------------------------------


def host_pattern(address: str, port: int = DEFAULT_SSH_PORT) -> str:
    """How ``known_hosts`` names a host: ``address`` on port 22, ``[address]:port`` on any other."""
    return address if port == DEFAULT_SSH_PORT else f"[{address}]:{port}"


@dataclass(frozen=True)
class _Entry:
    patterns: str
    key: asyncssh.SSHKey


def fingerprint(key: asyncssh.SSHKey) -> str:
    """``SHA256:…``, as ``ssh-keygen -l`` prints it."""
    return _fingerprint(key)


def _fingerprint(key: asyncssh.SSHKey) -> str:
    return key.get_fingerprint("sha256")


def _openssh_line(key: asyncssh.SSHKey) -> str:
    """``algorithm base64`` of a public key, without its comment."""
    algorithm, blob = key.export_public_key("openssh").decode("ascii").split()[:2]
    return f"{algorithm} {blob}"


def _wildcard(pattern: str) -> re.Pattern[str]:
    """An OpenSSH host pattern: ``*`` and ``?`` are wildcards, everything else (``[``, ``]``…) is itself,
    and case does not matter."""
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.IGNORECASE)


def _matches(pattern_list: str, host: str) -> bool:
    """Whether a ``known_hosts`` pattern list (``a,[b]:2222,*.c,!d``, or one hashed ``|1|salt|hash``) names
    ``host`` (as :func:`host_pattern` spells it)."""
    if pattern_list.startswith("|1|"):
        try:
            salt, digest = (base64.b64decode(part) for part in pattern_list[3:].split("|", 1))
        except ValueError:
            return False
        return hmac.compare_digest(hmac.new(salt, host.encode(), hashlib.sha1).digest(), digest)
    matched = False
    for pattern in pattern_list.split(","):
        negated = pattern.startswith("!")
        if _wildcard(pattern[1:] if negated else pattern).fullmatch(host):
            if negated:
                return False
            matched = True
    return matched


class KnownHosts:
    """The host keys the deployer trusts, in a file in OpenSSH ``known_hosts`` format.

    Entries name hosts as ``address`` (port 22) or ``[address]:port``; hashed entries and wildcards written
    by hand are understood too, ``@cert-authority`` and ``@revoked`` lines are ignored (so they grant
    nothing). The file is read at each lookup, so a trust step takes effect for the next connection, and
    is replaced atomically when written.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _read(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []

    def _entries(self, lines: list[str]) -> Iterator[tuple[int, _Entry]]:
        for number, line in enumerate(lines):
            fields = line.split()
            if len(fields) < 3 or fields[0].startswith(("#", "@")):
                continue
            try:
                key = asyncssh.import_public_key(f"{fields[1]} {fields[2]}")
            except (asyncssh.KeyImportError, ValueError):
                log.warning("known_hosts_line_unreadable", path=str(self.path), line=number + 1)
                continue
            yield number, _Entry(fields[0], key)

    def keys(self, address: str, port: int = DEFAULT_SSH_PORT) -> list[asyncssh.SSHKey]:
        """Every key trusted for the host, in file order."""
        host = host_pattern(address, port)
        return [entry.key for _, entry in self._entries(self._read()) if _matches(entry.patterns, host)]

    def lookup(self, address: str, port: int = DEFAULT_SSH_PORT) -> asyncssh.SSHKey | None:
        """The key trusted for the host (the first, if several are), or ``None``."""
        keys = self.keys(address, port)
        return keys[0] if keys else None

    def trust(
        self,
        address: str,
        port: int,
        key: asyncssh.SSHKey | str,
        *,
        replace: bool = False,
        node: str | None = None,
    ) -> str:
        """Trust ``key`` (an SSH key, or a public key line) for the host; its ``SHA256:…`` fingerprint.

        Trusting the key already trusted changes nothing. If another key is trusted for the host,
        :class:`HostKeyChanged` (naming ``node``, else the host) unless ``replace``: then the entries
        naming exactly this host are dropped (a hand-written wildcard entry matching it stays).
        """
        if isinstance(key, str):
            key = asyncssh.import_public_key(key.strip())
        host = host_pattern(address, port)
        fingerprint = _fingerprint(key)
        lines = self._read()
        current = [entry.key for _, entry in self._entries(lines) if _matches(entry.patterns, host)]
        if key in current and (not replace or len(current) == 1):
            return fingerprint
        if current and not replace:
            raise HostKeyChanged(node or host, _fingerprint(current[0]), fingerprint)
        kept = self._without(lines, host)
        kept.append(f"{host} {_openssh_line(key)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, ("\n".join(kept) + "\n").encode("utf-8"))
        log.info("host_key_trusted", host=host, node=node, fingerprint=fingerprint, replaced=bool(current))
        return fingerprint

    def _without(self, lines: list[str], host: str) -> list[str]:
        """``lines`` without the entries naming exactly ``host``: its hashed entries are dropped, and it is
        taken out of pattern lists (a wildcard pattern matching it stays)."""
        drop: set[int] = set()
        lines = list(lines)
        for number, entry in self._entries(lines):
            if entry.patterns.startswith("|1|"):
                if _matches(entry.patterns, host):
                    drop.add(number)
                continue
            patterns = entry.patterns.split(",")
            others = [pattern for pattern in patterns if pattern != host]
            if not others:
                drop.add(number)
            elif len(others) < len(patterns):
                lines[number] = f"{','.join(others)} {lines[number].split(None, 1)[1]}"
        return [line for number, line in enumerate(lines) if number not in drop]

    def forget(self, address: str, port: int = DEFAULT_SSH_PORT) -> bool:
        """Stop trusting any key for the host (as :meth:`trust` with ``replace`` drops them); whether the
        store changed."""
        lines = self._read()
        kept = self._without(lines, host_pattern(address, port))
        if kept == lines:
            return False
        atomic_write(self.path, "".join(line + "\n" for line in kept).encode("utf-8"))
        return True

    async def fingerprint_of(
        self, address: str, port: int = DEFAULT_SSH_PORT, timeout: float = 10.0
    ) -> tuple[asyncssh.SSHKey, str]:
        """The host key the node presents and its ``SHA256:…`` fingerprint, trusting nothing.

        Only the key exchange is done: the deployer does not authenticate, nothing runs on the node.
        :class:`NodeUnreachable` when no SSH server answers in ``timeout`` seconds.
        """
        where = host_pattern(address, port)
        try:
            async with asyncio.timeout(timeout):
                key = await asyncssh.get_server_host_key(
                    address,
                    port,
                    config=None,
                    server_host_key_algs=list(_HOST_KEY_PREFERENCE),
                    options=asyncssh.SSHClientConnectionOptions(connect_timeout=timeout, gss_kex=False),
                )
        except TimeoutError as error:
            raise NodeUnreachable(where, f"no answer within {timeout:g}s") from error
        except (OSError, asyncssh.Error) as error:
            raise NodeUnreachable(where, _reason(error)) from error
        if key is None:
            raise NodeUnreachable(where, "the server presented no host key")
        return key, _fingerprint(key)


# -- the pool ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SshTarget:
    """Where a node's SSH server is and who to log in as; ``name`` is how messages call it."""

    name: str
    address: str
    port: int = DEFAULT_SSH_PORT
    user: str = "conveyor"

    @property
    def _key(self) -> tuple[str, str, int]:
        return (self.user, self.address, self.port)


@dataclass(frozen=True)
class Result:
    """A finished command: its exit status (``-N`` when killed by signal N), output, and how long it took
    from opening its session (on an open connection) to its exit."""

    exit_status: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


@dataclass(frozen=True)
class AgentStatus:
    """A Conveyor agent on a node: its installed version (``None``: not installed) and whether it runs."""

    version: str | None
    running: bool


@dataclass(frozen=True)
class NodeCheck:
    """What :meth:`SshPool.check` found on a node; ``None`` where a probe gave nothing usable."""

    node: str
    reachable: bool
    latency_ms: float | None = None
    os: str | None = None
    kernel: str | None = None
    disk_free_bytes: int | None = None
    disk_free_percent: float | None = None
    agents: Mapping[str, AgentStatus] = field(default_factory=dict)
    error: str | None = None


class _Client(asyncssh.SSHClient):
    """Notes the host key a node presents when it is not the trusted one, and when the connection ends."""

    def __init__(self) -> None:
        self.presented: asyncssh.SSHKey | None = None
        self.closed = False

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.presented = key  # called only for a key that is not among the trusted ones
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True


@dataclass
class _Slot:
    """One node's connection, the lock serialising its (re)opening, and its session bound."""

    lock: asyncio.Lock
    sessions: asyncio.Semaphore
    conn: asyncssh.SSHClientConnection | None = None
    client: _Client | None = None
    failures: int = 0  # opening failed this many times in all (waiters share a failure, not retry it)
    last_error: SshError | None = None

    def usable(self) -> asyncssh.SSHClientConnection | None:
        if self.conn is not None and self.client is not None and not self.client.closed:
            return self.conn
        return None


_CONNECTION_ERRORS = (OSError, asyncssh.DisconnectError, asyncssh.ChannelOpenError)
_S = TypeVar("_S")
_R = TypeVar("_R")


class SshPool:
    """SSH connections to nodes, reused, with bounded concurrency and verified host keys."""

    def __init__(
        self,
        known_hosts: KnownHosts,
        client_key_path: Path,
        *,
        concurrency: int = 20,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float = 60.0,
        retries: Sequence[float] = (0.5, 1.0, 2.0),
        sessions_per_node: int = 8,
        remote_python: str = DEFAULT_REMOTE_PYTHON,
        agents: Sequence[str] = AGENTS,
    ) -> None:
        """``retries`` are the pauses between connection attempts (so ``len(retries) + 1`` attempts);
        ``remote_python`` is the interpreter on the nodes :meth:`check` asks for the versions of
        ``agents`` (distribution names, which are also in the agents' command lines)."""
        if concurrency < 1 or sessions_per_node < 1:
            raise ValueError("concurrency and sessions_per_node must be at least 1")
        for agent in agents:
            if not _AGENT_NAME.fullmatch(agent):
                raise ValueError(f"agent name {agent!r} must match {_AGENT_NAME.pattern}")
        self.known_hosts = known_hosts
        self.client_key_path = Path(client_key_path)
        self.concurrency = concurrency
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.retries = tuple(retries)
        self.sessions_per_node = sessions_per_node
        self.remote_python = remote_python
        self.agents = tuple(agents)
        self._semaphore = asyncio.Semaphore(concurrency)
        self._slots: dict[tuple[str, str, int], _Slot] = {}
        self._client_key: asyncssh.SSHKey | None = None

    # -- connections ---------------------------------------------------------------------------------------

    def _slot(self, target: SshTarget) -> _Slot:
        slot = self._slots.get(target._key)
        if slot is None:
            slot = _Slot(asyncio.Lock(), asyncio.Semaphore(self.sessions_per_node))
            self._slots[target._key] = slot
        return slot

    def _load_client_key(self) -> asyncssh.SSHKey:
        if self._client_key is None:
            try:
                self._client_key = asyncssh.read_private_key(self.client_key_path)
            except (OSError, asyncssh.KeyImportError) as error:
                raise ClientKeyError(self.client_key_path, _reason(error)) from error
        return self._client_key

    async def _connection(self, target: SshTarget, slot: _Slot) -> asyncssh.SSHClientConnection:
        """The node's open connection, else a new one (after the retries, :class:`NodeUnreachable`)."""
        conn = slot.usable()
        if conn is not None:
            return conn
        failures = slot.failures
        async with slot.lock:
            conn = slot.usable()
            if conn is not None:
                return conn
            if slot.failures != failures and slot.last_error is not None:
                raise slot.last_error  # it failed while this operation waited: not again right away
            self._drop(slot)
            try:
                conn, client = await self._connect(target)
            except SshError as error:
                slot.failures += 1
                slot.last_error = error
                raise
            slot.conn, slot.client = conn, client
            return conn

    async def _connect(self, target: SshTarget) -> tuple[asyncssh.SSHClientConnection, _Client]:
        client_key = self._load_client_key()
        attempts = len(self.retries) + 1
        for attempt in range(attempts):
            trusted = self.known_hosts.keys(target.address, target.port)
            if not trusted:
                raise HostKeyUnknown(target.name)
            client = _Client()
            try:
                async with self._semaphore:
                    conn = await asyncssh.connect(
                        target.address,
                        target.port,
                        username=target.user,
                        client_factory=_constant(client),
                        known_hosts=(trusted, [], []),
                        server_host_key_algs=_host_key_algorithms(trusted),
                        client_keys=[client_key],
                        agent_path=None,
                        config=None,
                        preferred_auth="publickey",
                        gss_kex=False,
                        gss_auth=False,
                        x509_trusted_certs=None,
                        connect_timeout=self.connect_timeout_s,
                        keepalive_interval=_KEEPALIVE_S,
                        keepalive_count_max=3,
                        encoding="utf-8",
                        errors="replace",
                    )
            except asyncssh.HostKeyNotVerifiable as error:
                presented = client.presented
                raise HostKeyChanged(
                    target.name,
                    _fingerprint(trusted[0]),
                    _fingerprint(presented) if presented is not None else f"none acceptable ({error.reason})",
                ) from error
            except asyncssh.PermissionDenied as error:
                raise AuthenticationFailed(target.name, target.user, error.reason) from error
            except _CONNECTION_ERRORS as error:
                reason = _reason(error)
                if attempt + 1 < attempts:
                    log.info("ssh_connect_retry", node=target.name, attempt=attempt + 1, reason=reason)
                    await asyncio.sleep(self.retries[attempt])
                    continue
                raise NodeUnreachable(
                    target.name,
                    f"{reason} ({attempts} attempt{'s' if attempts > 1 else ''} to "
                    f"{target.user}@{host_pattern(target.address, target.port)})",
                ) from error
            log.debug("ssh_connected", node=target.name, attempt=attempt + 1)
            return conn, client
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _drop(self, slot: _Slot) -> None:
        if slot.conn is not None:
            slot.conn.abort()
        slot.conn = slot.client = None

    def connection(self, target: SshTarget) -> asyncssh.SSHClientConnection | None:
        """The open connection to the node, if there is one (for inspection; do not close it)."""
        slot = self._slots.get(target._key)
        return slot.usable() if slot is not None else None

    async def disconnect(self, target: SshTarget) -> None:
        """Close the connection to ``target`` (its user at its address), if one is open."""
        slot = self._slots.get(target._key)
        if slot is not None and slot.conn is not None:
            conn, slot.conn, slot.client = slot.conn, None, None
            conn.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), _CLEANUP_TIMEOUT_S)

    async def close(self) -> None:
        """Close every connection; the pool opens new ones if used again."""
        slots = list(self._slots.values())
        for slot in slots:
            if slot.conn is not None:
                slot.conn.close()
        for slot in slots:
            if slot.conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(slot.conn.wait_closed(), _CLEANUP_TIMEOUT_S)
            slot.conn = slot.client = None

    async def __aenter__(self) -> SshPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- operations ----------------------------------------------------------------------------------------

    async def _with_session(
        self,
        target: SshTarget,
        start: Callable[[asyncssh.SSHClientConnection], Awaitable[_S]],
        use: Callable[[_S, Callable[[], None]], Awaitable[_R]],
    ) -> _R:
        """Open a session on the node's connection (``start``) and ``use`` it, within the node's and the
        pool's bounds. ``use`` gets the session and a function dropping the connection after it broke.

        Opening is done once more on a new connection if the open one turned out stale: nothing ran on the
        node when opening fails, so that is safe. What ``use`` does is never repeated.
        """
        slot = self._slot(target)
        async with slot.sessions:
            for fresh in (False, True):
                conn = await self._connection(target, slot)

                def drop(conn: asyncssh.SSHClientConnection = conn) -> None:
                    if slot.conn is conn:
                        self._drop(slot)

                async with self._semaphore:
                    try:
                        async with asyncio.timeout(self.connect_timeout_s):
                            session = await start(conn)
                    except (*_CONNECTION_ERRORS, TimeoutError) as error:
                        drop()
                        if fresh:
                            raise NodeUnreachable(
                                target.name, f"cannot open a session: {_reason(error)}"
                            ) from error
                        log.info("ssh_connection_stale", node=target.name, reason=_reason(error))
                        continue
                    return await use(session, drop)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def run(
        self,
        target: SshTarget,
        command: str | Sequence[str],
        *,
        timeout: float | None = None,
        check: bool = True,
    ) -> Result:
        """Run ``command`` on the node (a shell command line, or an argument list quoted for the shell).

        ``timeout`` defaults to ``command_timeout_s``; past it the session is closed and
        :class:`CommandTimedOut` raised. With ``check``, a non-zero exit raises :class:`CommandFailed`.
        """
        line = command if isinstance(command, str) else shlex.join(command)
        limit = self.command_timeout_s if timeout is None else timeout

        started = time.monotonic()

        async def start(conn: asyncssh.SSHClientConnection) -> asyncssh.SSHClientProcess[str]:
            nonlocal started
            started = time.monotonic()  # the round trip counts from opening the session, once connected
            return await conn.create_process(line, stdin=asyncssh.DEVNULL)

        async def use(process: asyncssh.SSHClientProcess[str], drop: Callable[[], None]) -> Result:
            try:
                completed = await process.wait(timeout=limit)
            except asyncssh.TimeoutError as error:
                process.close()
                raise CommandTimedOut(target.name, line, limit) from error
            except _CONNECTION_ERRORS as error:
                drop()
                raise NodeUnreachable(
                    target.name,
                    f"the connection was lost while `{line}` ran ({_reason(error)}); "
                    "it may or may not have completed",
                ) from error
            duration = time.monotonic() - started
            if completed.returncode is None:
                drop()
                raise NodeUnreachable(
                    target.name,
                    f"`{line}` ended without an exit status; the node may have gone down meanwhile",
                )
            return Result(completed.returncode, _text(completed.stdout), _text(completed.stderr), duration)

        result = await self._with_session(target, start, use)
        if check and result.exit_status != 0:
            raise CommandFailed(target.name, line, result)
        return result

    async def put(
        self,
        target: SshTarget,
        local_path: Path,
        remote_path: str,
        *,
        mode: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """Upload a file over SFTP, atomically: to ``remote_path + '.part'``, then renamed over
        ``remote_path``, so the node never sees it half written. ``mode`` sets its permissions first.

        ``timeout`` (default ``command_timeout_s``) bounds the transfer; the ``.part`` file is removed
        when the upload fails. The remote directory must exist.
        """
        local_path = Path(local_path)
        if not local_path.is_file():
            raise FileNotFoundError(f"{local_path} is not a file")
        limit = self.command_timeout_s if timeout is None else timeout
        part = remote_path + ".part"

        async def start(conn: asyncssh.SSHClientConnection) -> asyncssh.SFTPClient:
            return await conn.start_sftp_client()

        async def use(sftp: asyncssh.SFTPClient, drop: Callable[[], None]) -> None:
            async with sftp:
                try:
                    async with asyncio.timeout(limit):
                        await sftp.put(str(local_path), part)
                        if mode is not None:
                            await sftp.chmod(part, mode)
                        await sftp.posix_rename(part, remote_path)
                except TimeoutError as error:
                    await _remove_quietly(sftp, part)
                    raise TransferFailed(target.name, remote_path, f"not done within {limit:g}s") from error
                except asyncssh.SFTPError as error:
                    await _remove_quietly(sftp, part)
                    raise TransferFailed(target.name, remote_path, _reason(error)) from error
                except _CONNECTION_ERRORS as error:
                    drop()
                    raise NodeUnreachable(
                        target.name, f"the connection was lost during the upload ({_reason(error)})"
                    ) from error

        await self._with_session(target, start, use)

    # -- checks --------------------------------------------------------------------------------------------

    async def check(self, target: SshTarget) -> NodeCheck:
        """Reach the node and report on it; never raises for the node's sake.

        An unreachable or untrusted node gives ``NodeCheck(reachable=False, error=...)``. Otherwise the
        latency is the round trip of a trivial command on the open connection, and every other fact comes
        from one script run in one more round trip; a probe that fails there leaves its field ``None``
        (agents: version ``None``, not running).
        """
        try:
            await self._connection(target, self._slot(target))
            latency = (await self.run(target, "true", check=False)).duration_s * 1000.0
        except SshError as error:
            return NodeCheck(target.name, reachable=False, error=str(error))
        try:
            probe = await self.run(target, _probe_command(self.remote_python, self.agents), check=False)
        except SshError as error:
            return NodeCheck(
                target.name,
                reachable=True,
                latency_ms=latency,
                agents={agent: AgentStatus(None, running=False) for agent in self.agents},
                error=str(error),
            )
        return _parse_probe(target.name, latency, probe, self.agents)


async def _remove_quietly(sftp: asyncssh.SFTPClient, path: str) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sftp.remove(path), _CLEANUP_TIMEOUT_S)


def _host_key_algorithms(trusted: Sequence[asyncssh.SSHKey]) -> list[str]:
    """The trusted keys' algorithms first, so that a node with several host keys presents a trusted one;
    then the others, so that a node without a key of a trusted type presents one (and the change is
    reported with its fingerprint) instead of the key exchange failing."""
    algorithms: list[str] = []
    for name in [
        *(alg.decode("ascii") for key in trusted for alg in key.sig_algorithms),
        *_HOST_KEY_PREFERENCE,
    ]:
        if name not in algorithms:
            algorithms.append(name)
    return algorithms


def _constant(client: _Client) -> Callable[[], _Client]:
    return lambda: client


def _text(data: object) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return str(data)


def _reason(error: BaseException) -> str:
    """A short account of what went wrong, for the messages."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, asyncssh.Error):
        return error.reason or type(error).__name__
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# -- the probe script of check() ---------------------------------------------------------------------------

# Agents are named in the script as "[c]onveyor-…": a pattern pgrep -f matches against the agents' command
# lines but not against the script's own (whose text it is), and which python un-brackets for the version.
_PROBE = r"""
py=%(python)s
os=$(sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null | head -n 1)
[ -n "$os" ] || os=$(sed -n 's/^PRETTY_NAME=//p' /usr/lib/os-release 2>/dev/null | head -n 1)
printf 'os\t%%s\n' "$os"
printf 'kernel\t%%s\n' "$(uname -r 2>/dev/null)"
printf 'df\t%%s\n' "$(df -Pk / 2>/dev/null | tail -n 1)"
for pattern in %(patterns)s; do
    version=$("$py" -c %(version_code)s "$pattern" 2>/dev/null | head -n 1)
    if pgrep -f "$pattern" >/dev/null 2>&1; then running=yes; else running=no; fi
    printf 'agent\t%%s\t%%s\t%%s\n' "$pattern" "$version" "$running"
done
exit 0
"""
# The version of the distribution the pattern names, its brackets (chr 91 and 93) dropped.
_VERSION_CODE = (
    "import importlib.metadata as m, sys; print(m.version(sys.argv[1].translate({91: None, 93: None})))"
)
_AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+!_-]*")


def _agent_pattern(agent: str) -> str:
    return f"[{agent[0]}]{agent[1:]}"


def _probe_command(python: str, agents: Sequence[str]) -> str:
    script = _PROBE % {
        "python": shlex.quote(python),
        "version_code": shlex.quote(_VERSION_CODE),
        "patterns": " ".join(shlex.quote(_agent_pattern(agent)) for agent in agents),
    }
    return "sh -c " + shlex.quote(script)  # whatever the login shell, the script is POSIX sh


def _parse_probe(node: str, latency_ms: float, probe: Result, names: Sequence[str]) -> NodeCheck:
    facts: dict[str, str] = {}
    agents = {agent: AgentStatus(None, running=False) for agent in names}
    by_pattern = {_agent_pattern(agent): agent for agent in names}
    for line in probe.stdout.splitlines():
        key, _, value = line.partition("\t")
        if key == "agent":
            pattern, _, rest = value.partition("\t")
            version, _, running = rest.partition("\t")
            if pattern in by_pattern:
                version = version.strip()
                agents[by_pattern[pattern]] = AgentStatus(
                    version if _VERSION.fullmatch(version) else None, running.strip() == "yes"
                )
        elif key in {"os", "kernel", "df"}:
            facts[key] = value.strip()
    free_bytes, free_percent = _parse_df(facts.get("df", ""))
    return NodeCheck(
        node,
        reachable=True,
        latency_ms=latency_ms,
        os=_unquote(facts.get("os", "")) or None,
        kernel=facts.get("kernel") or None,
        disk_free_bytes=free_bytes,
        disk_free_percent=free_percent,
        agents=agents,
        error=None if probe.exit_status == 0 else f"the probe exited with {probe.exit_status}",
    )


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    return value.replace('\\"', '"').replace("\\\\", "\\").strip()


def _parse_df(line: str) -> tuple[int | None, float | None]:
    """Free bytes and percent from ``df -Pk``'s line (``fs blocks used available capacity mount``).

    The percent is of the space usable by users (used + available), as df's capacity counts it.
    """
    fields = line.split()
    if len(fields) < 6:
        return None, None
    try:
        used, available = int(fields[-4]), int(fields[-3])
    except ValueError:
        return None, None
    if used < 0 or available < 0:
        return None, None
    usable = used + available
    return available * 1024, (round(100.0 * available / usable, 1) if usable else None)
