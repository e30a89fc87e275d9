"""Two network namespaces joined by a cable, for tests of firewalls: a "node" and a "client" that reaches it.

Code that changes a node's firewall (the firewall agent's backends) is tested with the real tools against
the firewall of a network namespace the test owns, never the host's::

    with NodeNamespaces() as ns:
        ns.run_in_node("nft", "-f", "/path/to/ruleset")       # inside the node namespace only
        with ns.listen_tcp(8080):
            assert not ns.reachable(8080)                     # from the client namespace
            ...                                               # open the node's firewall
            assert ns.reachable(8080)

Each instance makes two namespaces with names of its own (``cvn-<hex>`` and ``cvc-<hex>``, random, so
tests in parallel processes never meet), joined by a veth pair made inside them (``eth0`` on both sides;
no interface ever appears in the host's namespace) with addresses in a private /30 of ``10.200.0.0/13``,
and loopback up on both. Everything is undone on exit, after a failure too: the processes started in the
namespaces (by their ids), the namespaces, and ``/etc/netns/<node>``.

``/etc/netns/<node>/`` is iproute2's convention for per-namespace configuration: ``ip netns exec`` bind
mounts each entry found there over the same name in ``/etc`` for the command it runs. Tools that keep
their configuration in ``/etc`` (ufw in ``/etc/ufw`` and ``/etc/default/ufw``, firewalld in
``/etc/firewalld``) get a copy of their own with :meth:`NodeNamespaces.copy_etc`, so they never write the
host's. Needs root and iproute2 (``ip``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

__all__ = ["ETC_NETNS", "NamespaceError", "NodeNamespaces", "Probe"]

ETC_NETNS = Path("/etc/netns")
"""Where ``ip netns exec`` looks for a namespace's own configuration files."""

Probe = Literal["answered", "refused", "unreachable", "timeout"]
"""What a TCP connection attempt met: the listener's greeting, a reset, an ICMP error, or silence."""

_POLL_S = 0.02
_STOP_S = 5.0

# Run with the interpreter running the tests, isolated (-I) and without site (-S): it starts in ~10 ms.
_LISTENER = """
import socket, sys
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(sys.argv[1])))
server.listen(64)
while True:
    connection, _ = server.accept()
    with connection:
        connection.sendall(b"conveyor-listener\\n")
"""
_GREETING = "conveyor-listener"

_PROBE = """
import errno, socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=timeout) as connection:
        print("answered" if connection.recv(64).decode(errors="replace").strip() == sys.argv[4] else "other")
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as error:
    print("unreachable" if error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else f"error {error}")
"""


class NamespaceError(RuntimeError):
    """A namespace could not be made, a command in it failed, or a listener did not start."""


class NodeNamespaces:
    """A "node" and a "client" network namespace joined by a veth pair; see the module."""

    def __init__(self) -> None:
        token = secrets.token_hex(4)
        self.node = f"cvn-{token}"
        self.client = f"cvc-{token}"
        # A /30 inside 10.200.0.0/13 from the same random value: the namespaces are private, so addresses
        # could repeat, but distinct ones keep parallel tests' logs and packet captures apart.
        value = int(token, 16)
        network = f"10.{200 + (value >> 16) % 8}.{(value >> 8) & 0xFF}"
        self.node_address = f"{network}.{(value & 0xFC) + 1}"
        self.client_address = f"{network}.{(value & 0xFC) + 2}"
        self.interface = "eth0"
        """The veth end's name in each namespace."""
        self._processes: list[subprocess.Popen[bytes]] = []
        self._created: list[str] = []
        self._ip = shutil.which("ip") or "ip"  # by its path: a test may empty PATH meanwhile

    @property
    def etc_dir(self) -> Path:
        """``/etc/netns/<node>``: its entries replace the same names in ``/etc`` for the node's commands."""
        return ETC_NETNS / self.node

    # -- lifecycle -----------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self._create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _create(self) -> None:
        if os.geteuid() != 0:
            raise NamespaceError("network namespaces need root: run the tests as root")
        if shutil.which("ip") is None:
            raise NamespaceError("ip is missing: install iproute2 (apt-get install iproute2)")
        for name in (self.node, self.client):
            self._ip_checked("netns", "add", name)
            self._created.append(name)
        peer = ("peer", "name", self.interface, "netns", self.client)
        self._ip_checked("-n", self.node, "link", "add", self.interface, "type", "veth", *peer)
        for name, address in ((self.node, self.node_address), (self.client, self.client_address)):
            self._ip_checked("-n", name, "address", "add", f"{address}/30", "dev", self.interface)
            self._ip_checked("-n", name, "link", "set", self.interface, "up")
            self._ip_checked("-n", name, "link", "set", "lo", "up")

    def close(self) -> None:
        """Stop what runs in the namespaces, delete them and ``/etc/netns/<node>``. Idempotent."""
        errors: list[str] = []
        for process in reversed(self._processes):
            _stop(process)
        self._processes.clear()
        for name in reversed(self._created):
            for pid in self._ip_run("netns", "pids", name).stdout.split():
                # Started inside a namespace this instance made: a child of some command of the test.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            done = self._ip_run("netns", "delete", name)
            if done.returncode != 0:
                errors.append(f"ip netns delete {name}: {done.stderr.strip()}")
        self._created.clear()
        if self.etc_dir.exists():
            shutil.rmtree(self.etc_dir)
        with contextlib.suppress(OSError):  # another test's directory may be there: then it stays
            ETC_NETNS.rmdir()
        if errors:
            raise NamespaceError("; ".join(errors))

    # -- commands ------------------------------------------------------------------------------------------

    def run_in_node(
        self, *argv: str, input: str | None = None, check: bool = True, timeout_s: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the node namespace; :class:`NamespaceError` on failure when ``check``."""
        return self._run_in(self.node, argv, input=input, check=check, timeout_s=timeout_s)

    def run_in_client(
        self, *argv: str, input: str | None = None, check: bool = True, timeout_s: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the client namespace; :class:`NamespaceError` on failure when ``check``."""
        return self._run_in(self.client, argv, input=input, check=check, timeout_s=timeout_s)

    def spawn_in_node(
        self, *argv: str, env: Mapping[str, str] | None = None, output: IO[bytes] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the background inside the node namespace, stopped (SIGTERM, then SIGKILL)
        when the namespaces close; ``output`` takes its stdout and stderr (default: discarded)."""
        process = subprocess.Popen(  # noqa: S603 - the test's own command
            [self._ip, "netns", "exec", self.node, *argv],
            stdin=subprocess.DEVNULL,
            stdout=output if output is not None else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if output is not None else subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
        self._processes.append(process)
        return process

    def copy_etc(self, name: str) -> Path:
        """Give the node namespace its own copy of ``/etc/<name>`` (a file or a directory); its path."""
        source = Path("/etc") / name
        target = self.etc_dir / name
        if not source.exists():
            raise NamespaceError(f"{source} does not exist, so the node namespace cannot have its own copy")
        self.etc_dir.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)
        return target

    # -- TCP -----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def listen_tcp(self, port: int, *, timeout_s: float = 5.0) -> Iterator[None]:
        """A TCP listener on ``port`` of every address of the node, answering each connection with a
        greeting; ready (accepting, checked by connecting from inside the node) when the block starts."""
        process = self.spawn_in_node(sys.executable, "-I", "-S", "-c", _LISTENER, str(port))
        try:
            deadline = time.monotonic() + timeout_s
            while self._probe(self.node, "127.0.0.1", port, 1.0) != "answered":
                if process.poll() is not None:
                    raise NamespaceError(f"the TCP listener on port {port} exited with {process.returncode}")
                if time.monotonic() > deadline:
                    raise NamespaceError(f"the TCP listener on port {port} did not accept in {timeout_s} s")
                time.sleep(_POLL_S)
            yield
        finally:
            _stop(process)
            self._processes.remove(process)

    def probe(self, port: int, timeout_s: float = 1.0) -> Probe:
        """Connect from the client namespace to the node's ``port``: what the connection met."""
        outcome = self._probe(self.client, self.node_address, port, timeout_s)
        if outcome not in ("answered", "refused", "unreachable", "timeout"):
            raise NamespaceError(f"connecting to {self.node_address}:{port} from the client: {outcome}")
        return outcome  # type: ignore[return-value]  # checked just above

    def reachable(self, port: int, timeout_s: float = 1.0) -> bool:
        """Whether the listener on the node's ``port`` answers a connection from the client namespace
        (False when the connection is dropped, refused or rejected)."""
        return self.probe(port, timeout_s) == "answered"

    # -- plumbing ------------------------------------------------------------------------------------------

    def _ip_run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self._ip, *args], capture_output=True, text=True, check=False)  # noqa: S603

    def _ip_checked(self, *args: str) -> None:
        done = self._ip_run(*args)
        if done.returncode != 0:
            raise NamespaceError(f"ip {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")

    def _run_in(
        self, namespace: str, argv: tuple[str, ...], *, input: str | None, check: bool, timeout_s: float
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(  # noqa: S603 - the test's own command
            [self._ip, "netns", "exec", namespace, *argv],
            input=input,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_s,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and done.returncode != 0:
            raise NamespaceError(
                f"{' '.join(argv)} in namespace {namespace} failed ({done.returncode}): "
                f"{(done.stderr or done.stdout).strip()}"
            )
        return done

    def _probe(self, namespace: str, host: str, port: int, timeout_s: float) -> str:
        argv = (sys.executable, "-I", "-S", "-c", _PROBE, host, str(port), str(timeout_s), _GREETING)
        return self._run_in(namespace, argv, input=None, check=True, timeout_s=timeout_s + 10).stdout.strip()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(_STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()
