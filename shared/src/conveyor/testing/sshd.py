"""A real OpenSSH server for tests, owned by the test: a "node" the deployer reaches over SSH.

Code that runs commands on nodes and uploads files to them (the deployer) can be tested against real
``sshd`` processes on 127.0.0.1, without containers or a network::

    private_key, public_line = client_key(tmp_path / "client")
    with SshNode(tmp_path / "node-1", "node-1") as node:
        node.authorize(public_line)
        ...  # connect to node.address:node.port as node.user with private_key
        node.regenerate_host_key()  # the node now presents another host key (sshd restarted)
        node.stop()  # the node is down: connections are refused, open ones are cut

Each node is one ``sshd -D -e -f <directory>/sshd_config`` in the foreground, a child of the test in its own
process group, with its host key, configuration, pid file, ``authorized_keys`` and log (``sshd.log``, every
connection's messages included) inside its directory, so nothing in ``/etc/ssh`` or ``~/.ssh`` is read or
written. :attr:`SshNode.root` is a directory that stands for the node's file system root, for the tests'
applications to install into (the SSH session itself sees the real file system).

sshd must run as root (it refuses to serve other users otherwise) and wants its privilege separation
directory ``/run/sshd``, created here when missing. The node's login user is root unless ``user`` names
another existing account; that account must be able to read the node's ``authorized_keys`` (sshd reads it
as that user), so every directory above the node's directory must be searchable by it (pytest's
``tmp_path`` under ``/tmp/pytest-of-root`` is not).
"""

from __future__ import annotations

import contextlib
import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "SSHD_PATH",
    "SshNode",
    "SshdError",
    "client_key",
    "sshd_executable",
]

SSHD_PATH = Path("/usr/sbin/sshd")
"""Where Debian and most distributions install sshd (it must be started by an absolute path)."""

_PRIVSEP_DIR = Path("/run/sshd")
_ADDRESS = "127.0.0.1"
_POLL_S = 0.02
_BIND_ATTEMPTS = 5  # another process may take the free port chosen before sshd binds it


class SshdError(RuntimeError):
    """sshd or ssh-keygen is missing, sshd did not start, or did not stop."""


def sshd_executable() -> Path:
    """The absolute path of sshd; :class:`SshdError` saying how to install it when there is none."""
    if SSHD_PATH.is_file():
        return SSHD_PATH
    found = shutil.which("sshd", path=os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/sbin"]))
    if found is None:
        raise SshdError(
            f"{SSHD_PATH} is missing: tests of SSH access need the OpenSSH server "
            "(apt-get install openssh-server)"
        )
    return Path(found).absolute()


def _ssh_keygen(*args: str) -> str:
    executable = shutil.which("ssh-keygen")
    if executable is None:
        raise SshdError("ssh-keygen is missing (apt-get install openssh-client)")
    done = subprocess.run(  # noqa: S603 - our own arguments
        [executable, *args], capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise SshdError(f"ssh-keygen {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _generate_ed25519(path: Path, comment: str) -> None:
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    _ssh_keygen("-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))


def client_key(directory: Path, name: str = "id_ed25519") -> tuple[Path, str]:
    """Generate an ed25519 client key pair (no passphrase) as ``directory/name`` and ``name.pub``.

    Returns the private key's path and the public key line, for :meth:`SshNode.authorize`.
    """
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    private = directory / name
    _generate_ed25519(private, f"conveyor-test-{name}")
    return private, private.with_name(name + ".pub").read_text(encoding="ascii").strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((_ADDRESS, 0))
        return int(s.getsockname()[1])


class SshNode:
    """One sshd on 127.0.0.1, all its files in ``directory``; started by :meth:`start` or the context.

    The host key and the port are chosen at construction, so :attr:`port` and
    :attr:`host_key_fingerprint` are known before the node starts (the port changes at the first start
    only if another process took it meanwhile); :meth:`restart` keeps both, :meth:`regenerate_host_key`
    changes the key. ``user`` (default: whoever runs the test) is the account clients log in as;
    ``home_keys`` also lets other accounts in by the keys in their own ``~/.ssh/authorized_keys``.
    """

    def __init__(
        self, directory: Path, name: str, *, user: str | None = None, home_keys: bool = False
    ) -> None:
        self.directory = Path(directory).absolute()
        self.home_keys = home_keys
        """Also accept keys from each account's own ``~/.ssh/authorized_keys`` (as a real node does), for
        tests of accounts that the code under test provisions; the node's own file comes first."""
        self.name = name
        self.user = user or getpass.getuser()
        try:
            pwd.getpwnam(self.user)
        except KeyError:
            raise ValueError(f"user {self.user!r} does not exist on this machine") from None
        self._sshd = sshd_executable()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        self.root.mkdir(exist_ok=True)
        self.authorized_keys_path.touch()
        self.authorized_keys_path.chmod(0o644)  # sshd reads it as the login user
        self._port = _free_port()
        self._port_used = False  # whether sshd ever listened on it: then restarts must keep it
        self._fingerprint: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._generate_host_key()

    # -- what the node is ----------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return _ADDRESS

    @property
    def port(self) -> int:
        return self._port

    @property
    def root(self) -> Path:
        """A directory standing for the node's file system root, for the tests' applications."""
        return self.directory / "root"

    @property
    def host_key_path(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def host_key_line(self) -> str:
        """The public host key, ``ssh-ed25519 AAAA… comment``."""
        return self.host_key_path.with_name(self.host_key_path.name + ".pub").read_text("ascii").strip()

    @property
    def host_key_fingerprint(self) -> str:
        """``SHA256:…``, as ``ssh-keygen -lf`` prints the host key's fingerprint."""
        if self._fingerprint is None:
            printed = _ssh_keygen(
                "-l", "-f", str(self.host_key_path.with_name(self.host_key_path.name + ".pub"))
            )
            self._fingerprint = printed.split()[1]
        return self._fingerprint

    @property
    def authorized_keys_path(self) -> Path:
        return self.directory / "authorized_keys"

    @property
    def config_path(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def log_path(self) -> Path:
        """sshd's log (``-e``, level VERBOSE), kept across restarts: connections, authentications…"""
        return self.directory / "sshd.log"

    @property
    def pid(self) -> int | None:
        """The pid of the listening sshd while it runs, else ``None``."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    @property
    def running(self) -> bool:
        return self.pid is not None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # -- configuration -------------------------------------------------------------------------------------

    def authorize(self, public_key_line: str) -> None:
        """Let the holder of this key log in (effective at once, even while sshd runs)."""
        line = public_key_line.strip()
        if not line or "\n" in line:
            raise ValueError("one public key line, as in an authorized_keys file")
        with self.authorized_keys_path.open("a", encoding="ascii") as keys:
            keys.write(line + "\n")

    def _generate_host_key(self) -> None:
        _generate_ed25519(self.host_key_path, f"{self.name}-host")
        self._fingerprint = None

    def regenerate_host_key(self) -> None:
        """Give the node a new host key, restarting sshd if it runs (a reinstalled or impostor node)."""
        running = self.running
        if running:
            self.stop()
        self._generate_host_key()
        if running:
            self.start()

    def _config(self) -> str:
        here = self.directory
        return "\n".join(
            [
                "# written by conveyor.testing.sshd",
                f"ListenAddress {_ADDRESS}",
                f"Port {self._port}",
                f"HostKey {here / self.host_key_path.name}",
                f"PidFile {here / 'sshd.pid'}",
                f"AuthorizedKeysFile {self.authorized_keys_path}"
                + (" .ssh/authorized_keys" if self.home_keys else ""),
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "PrintMotd no",
                "LogLevel VERBOSE",
                "MaxStartups 100:30:200",
                "MaxSessions 100",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Run sshd; return once it logged that it listens and answered a connection on its port.

        That readiness probe shows in :attr:`log_path` as one connection closed before identification.
        """
        if self._process is not None:
            raise RuntimeError(f"sshd of node {self.name} is already started")
        _ensure_privsep_dir()
        for _ in range(_BIND_ATTEMPTS):
            self.config_path.write_text(self._config(), encoding="utf-8")
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(  # noqa: S603 - our own sshd, our own config
                    [str(self._sshd), "-D", "-e", "-f", str(self.config_path)],
                    cwd=self.directory,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                if self._wait_listening(offset, timeout):
                    self._port_used = True
                    return
            except BaseException:
                self.stop()
                raise
            # The port was taken before sshd bound it: take another, unless clients already know this one.
            self.stop()
            if self._port_used:
                raise SshdError(f"node {self.name}: port {self._port} is taken\n{self._log_tail(offset)}")
            self._port = _free_port()
        raise SshdError(f"node {self.name}: sshd found no free port in {_BIND_ATTEMPTS} attempts")

    def _wait_listening(self, offset: int, timeout: float) -> bool:
        """Whether sshd listens (``False``: it could not bind its port); :class:`SshdError` if it failed."""
        assert self._process is not None
        deadline = time.monotonic() + timeout
        listening = f"Server listening on {_ADDRESS} port {self._port}."
        while True:
            log = self._log_from(offset)
            if listening in log and _answers(self._port):
                return True
            if self._process.poll() is not None:
                if "Address already in use" in log:
                    return False
                raise SshdError(
                    f"sshd of node {self.name} exited with {self._process.returncode}:\n{log[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise SshdError(
                    f"sshd of node {self.name} did not listen on port {self._port} within {timeout}s:\n"
                    f"{log[-3000:]}"
                )
            time.sleep(_POLL_S)

    def _log_from(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self, offset: int = 0) -> str:
        return self._log_from(offset)[-3000:]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sshd and every connection it serves, with their commands: the node is down. Idempotent.

        SIGTERM first, SIGKILL for what is left after ``timeout``. Each connection's sshd and each
        command lead sessions of their own, which killing sshd's process group would miss: they are
        found through ``/proc`` while the listener is held with SIGSTOP, so it accepts nothing meanwhile.
        """
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                _signal(process.pid, signal.SIGSTOP)
                pids = _descendants(process.pid)
                _signal_group(process.pid, signal.SIGTERM)
                _signal(process.pid, signal.SIGCONT)
                for pid in pids:
                    _signal_group(pid, signal.SIGTERM)
                    _signal(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while process.poll() is None or any(_running(pid) for pid in pids):
                    if time.monotonic() > deadline:
                        break
                    pids |= {child for pid in list(pids) for child in _descendants(pid)}
                    time.sleep(_POLL_S)
                pids |= {child for pid in list(pids) for child in _descendants(pid)}
                for pid in [process.pid, *pids]:
                    _signal_group(pid, signal.SIGKILL)
                    _signal(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
                while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
                    time.sleep(_POLL_S)
            process.wait(timeout=5.0)
        except subprocess.TimeoutExpired as error:
            raise SshdError(f"sshd of node {self.name} (pid {process.pid}) did not stop") from error
        finally:
            self._process = None

    def restart(self, timeout: float = 10.0) -> None:
        """Stop sshd (cutting every connection) and start it again, on the same port with the same key."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> Self:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<SshNode {self.name} {self.user}@{_ADDRESS}:{self._port} {state}>"


def _ensure_privsep_dir() -> None:
    """sshd refuses to start without ``/run/sshd`` (owned by root, not group or world writable)."""
    if _PRIVSEP_DIR.is_dir():
        return
    try:
        _PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    except OSError as error:
        raise SshdError(f"sshd needs {_PRIVSEP_DIR}, which cannot be created: {error}") from error


def _answers(port: int) -> bool:
    """Whether an SSH server answers on ``port`` with its identification (``SSH-2.0-…``).

    sshd has logged the connection ("Connection from …") by the time it sends its identification, so a
    started node's log already holds this probe's connection: only its closing is logged later.
    """
    try:
        with socket.create_connection((_ADDRESS, port), timeout=2.0) as probe:
            banner = b""
            while b"\n" not in banner and len(banner) < 256:
                chunk = probe.recv(256)
                if not chunk:
                    break
                banner += chunk
            return banner.startswith(b"SSH-")
    except OSError:
        return False


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _parents() -> dict[int, int]:
    """pid → parent pid of every process, from ``/proc``."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="ascii", errors="replace").rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if len(fields) > 1:
            parents[int(stat.parent.name)] = int(fields[1])
    return parents


def _descendants(pid: int) -> set[int]:
    """The pids of ``pid``'s children, their children, and so on."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is no zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
