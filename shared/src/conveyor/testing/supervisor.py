"""A real ``supervisord`` for tests, owned by the test, with dummy HTTP services to manage.

Code that restarts services with ``supervisorctl`` (the changelog listener) can be tested against a real
process manager without systemd, containers or root::

    supervisor = Supervisor(tmp_path / "supervisor")
    supervisor.add_program("web", [sys.executable, str(release / "serve.py"), "--port", str(port)])
    with supervisor:
        supervisor.wait_state("web", "RUNNING")
        ...  # the code under test, given supervisor.config_path, runs `supervisorctl -c <it> restart web`
        assert supervisor.pid("web") != old_pid

``supervisord`` runs in the foreground (``-n``) as a child of the test in its own process group, with its
configuration, socket, pid file and every log inside the given directory (the socket goes to a short
directory under ``/tmp`` when the path would be too long for a unix socket). :meth:`Supervisor.stop` shuts
it down with its programs and kills whatever is left.

:data:`DUMMY_SERVICE_SOURCE` is a stdlib-only HTTP server to write into a release directory as ``serve.py``:
it serves the ``VERSION`` of the release it was started from, and reports itself unhealthy while a file
``UNHEALTHY`` exists in that release.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

__all__ = [
    "DUMMY_SERVICE_SOURCE",
    "Supervisor",
    "SupervisorError",
]

# sun_path is 108 bytes on Linux (104 on the BSDs), including the terminating NUL.
_MAX_SOCKET_PATH = 100
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# supervisord's config parser treats ";" or "#" after whitespace as the start of a comment.
_INLINE_COMMENT = re.compile(r"\s[;#]")
_POLL_S = 0.05


class SupervisorError(RuntimeError):
    """supervisord did not start, or it refused a request (an unknown program, for one)."""


@dataclass(frozen=True)
class _Program:
    name: str
    command: list[str]
    directory: Path | None
    environment: dict[str, str]
    autostart: bool
    startsecs: int
    stopwaitsecs: int


class Supervisor:
    """One ``supervisord`` with its programs, all its files in ``directory``.

    Add programs, then :meth:`start` (or enter the context); :meth:`stop` (or leaving the context) shuts it
    down. :meth:`ctl` runs ``supervisorctl`` against it, as the code under test would with
    :attr:`config_path`.
    """

    def __init__(self, directory: Path, *, include: Sequence[Path] = ()) -> None:
        """``include``: further configuration files supervisord reads (``[include] files =``)."""
        self.directory = Path(directory).absolute()
        self.include = [Path(path).absolute() for path in include]
        self._programs: dict[str, _Program] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None  # a short directory of our own, when ``directory`` is too long
        self._socket_path = self.directory / "supervisor.sock"

    # -- configuration -------------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        """The ``supervisord.conf`` written by :meth:`start`; ``supervisorctl -c`` takes it."""
        return self.directory / "supervisord.conf"

    @property
    def socket_path(self) -> Path:
        """The unix socket supervisord listens on (meaningful once started)."""
        return self._socket_path

    @property
    def supervisord_pid(self) -> int | None:
        """The pid of supervisord while it runs, else ``None``."""
        if self._process is None or self._process.poll() is not None:
            return None
        return self._process.pid

    def add_program(
        self,
        name: str,
        command: list[str],
        *,
        directory: Path | None = None,
        environment: dict[str, str] | None = None,
        autostart: bool = True,
        startsecs: int = 1,
        stopwaitsecs: int = 5,
    ) -> None:
        """Declare ``[program:name]``; only before :meth:`start`.

        ``command`` is an argument list (quoted for supervisord here); ``environment`` is added to the
        environment supervisord itself inherited from the test. Each program logs to
        ``<directory>/<name>.out.log`` and ``<name>.err.log``, and is stopped and killed as a process group.
        """
        if self._process is not None:
            raise RuntimeError("add programs before starting supervisord")
        if not _NAME.fullmatch(name):
            raise ValueError(f"program name {name!r} must match {_NAME.pattern}")
        if name in self._programs:
            raise ValueError(f"program {name!r} is already declared")
        if not command:
            raise ValueError("command must not be empty")
        for key in environment or {}:
            if not _ENV_KEY.fullmatch(key):
                raise ValueError(f"environment variable name {key!r} must match {_ENV_KEY.pattern}")
        program = _Program(
            name,
            list(command),
            None if directory is None else Path(directory).absolute(),
            dict(environment or {}),
            autostart,
            startsecs,
            stopwaitsecs,
        )
        self._program_section(program)  # refuses what supervisord would misread, now rather than at start
        self._programs[name] = program

    def log_path(self, name: str, stream: str = "out") -> Path:
        """Where program ``name`` writes its stdout (``stream="out"``) or stderr (``"err"``)."""
        if stream not in {"out", "err"}:
            raise ValueError("stream is 'out' or 'err'")
        return self.directory / f"{name}.{stream}.log"

    def _config(self) -> str:
        here = self.directory
        lines = [
            "; written by conveyor.testing.supervisor",
            "[unix_http_server]",
            f"file={_value(str(self._socket_path))}",
            "chmod=0700",
            "",
            "[supervisord]",
            f"logfile={_value(str(here / 'supervisord.log'))}",
            f"pidfile={_value(str(here / 'supervisord.pid'))}",
            f"childlogdir={_value(str(here))}",
            f"directory={_value(str(here))}",
            "loglevel=info",
            "nodaemon=true",
            "minfds=64",
            "minprocs=16",
            "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory=supervisor.rpcinterface:make_main_rpcinterface",
            "",
            "[supervisorctl]",
            f"serverurl=unix://{_value(str(self._socket_path))}",
            "",
        ]
        for program in self._programs.values():
            lines += [*self._program_section(program), ""]
        if self.include:
            lines += ["[include]", "files = " + " ".join(_value(str(path)) for path in self.include), ""]
        return "\n".join(lines)

    def _program_section(self, program: _Program) -> list[str]:
        lines = [
            f"[program:{program.name}]",
            f"command={_value(shlex.join(program.command))}",
            f"autostart={str(program.autostart).lower()}",
            "autorestart=unexpected",
            f"startsecs={program.startsecs}",
            "startretries=3",
            f"stopwaitsecs={program.stopwaitsecs}",
            "stopsignal=TERM",
            "stopasgroup=true",
            "killasgroup=true",
            f"stdout_logfile={_value(str(self.log_path(program.name, 'out')))}",
            f"stderr_logfile={_value(str(self.log_path(program.name, 'err')))}",
            "stdout_logfile_backups=0",
            "stderr_logfile_backups=0",
        ]
        if program.directory is not None:
            lines.append(f"directory={_value(str(program.directory))}")
        if program.environment:
            pairs = ",".join(f"{key}={_env_value(v)}" for key, v in program.environment.items())
            lines.append(f"environment={_value(pairs)}")
        return lines

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        """Write the configuration, run supervisord, and return once it answers ``supervisorctl``.

        Programs may still be ``STARTING`` then; :meth:`wait_state` waits for them.
        """
        if self._process is not None:
            raise RuntimeError("supervisord is already started")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._socket_path = self.directory / "supervisor.sock"
        if len(os.fsencode(self._socket_path)) > _MAX_SOCKET_PATH:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="sv-", dir="/tmp"))
            self._socket_path = self._socket_dir / "s.sock"
        self.config_path.write_text(self._config(), encoding="utf-8")
        output = self.directory / "supervisord.out"
        with output.open("wb") as out:
            self._process = subprocess.Popen(  # noqa: S603 - our own supervisord, our own config
                [str(_executable("supervisord")), "-c", str(self.config_path), "-n"],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_answering(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_answering(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while True:
            if self._process.poll() is not None:
                raise SupervisorError(
                    f"supervisord exited with {self._process.returncode}:\n{self._output_tail()}"
                )
            try:
                if self._rpc("supervisor.getPID") != self._process.pid:
                    last = "another supervisord answers on the socket"
                elif self._rpc("supervisor.getState")["statename"] == "RUNNING":
                    break
            except (OSError, xmlrpc.client.Error, http.client.HTTPException) as error:
                last = repr(error)
            if time.monotonic() > deadline:
                raise SupervisorError(
                    f"supervisord did not answer within {timeout}s ({last}):\n{self._output_tail()}"
                )
            time.sleep(_POLL_S)
        # supervisorctl itself must reach it through the configuration the code under test will be given.
        answer = self.ctl("pid", timeout=max(deadline - time.monotonic(), 5.0))
        if answer.returncode != 0 or answer.stdout.strip() != str(self._process.pid):
            raise SupervisorError(
                f"supervisorctl pid answered {answer.returncode}: {answer.stdout!r} {answer.stderr!r}"
            )

    def stop(self, timeout: float | None = None) -> None:
        """Shut supervisord down with its programs; kill what is left after ``timeout``. Idempotent.

        ``timeout`` defaults to the longest ``stopwaitsecs`` plus a margin.
        """
        process = self._process
        if process is None:
            return
        if timeout is None:
            timeout = max((p.stopwaitsecs for p in self._programs.values()), default=0) + 5.0
        # supervisord's programs lead process groups of their own, which a killed supervisord would orphan
        program_pids = set(_children(process.pid))
        killed = False
        try:
            if process.poll() is None:
                try:
                    infos = self._rpc("supervisor.getAllProcessInfo", timeout=1.0)
                    program_pids.update(int(info["pid"]) for info in infos if int(info["pid"]) > 0)
                    self._rpc("supervisor.shutdown", timeout=1.0)
                except (OSError, xmlrpc.client.Error, http.client.HTTPException):
                    _signal_group(process.pid, signal.SIGTERM)  # supervisord shuts down on SIGTERM too
                deadline = time.monotonic() + timeout
                while process.poll() is None:
                    if time.monotonic() > deadline:
                        _signal_group(process.pid, signal.SIGKILL)
                        killed = True
                        break
                    # supervisord notices its programs' exits only when its poll() wakes up, else once a
                    # second: a request on its socket wakes it.
                    self._poke()
                    time.sleep(_POLL_S)
            process.wait()
            if killed:  # else supervisord stopped its programs, each with its process group
                _signal_group(process.pid, signal.SIGKILL)
                for pid in program_pids:
                    _signal_group(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
                while any(_running(pid) for pid in program_pids) and time.monotonic() < deadline:
                    time.sleep(_POLL_S / 5)
        finally:
            self._process = None
            if self._socket_dir is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None

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

    # -- control -------------------------------------------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``supervisorctl -c <config_path> <args>``; the result whatever its exit status."""
        return subprocess.run(  # noqa: S603 - arguments from the test, as for any supervisorctl run
            [str(_executable("supervisorctl")), "-c", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def status(self, name: str) -> str:
        """The state of program ``name``: ``RUNNING``, ``STARTING``, ``STOPPED``, ``BACKOFF``, ``FATAL``…"""
        return str(self._process_info(name)["statename"])

    def pid(self, name: str) -> int | None:
        """The pid of program ``name`` while it has a process, else ``None``."""
        pid = int(self._process_info(name)["pid"])
        return pid or None

    def wait_state(self, name: str, state: str, timeout: float = 10.0) -> None:
        """Wait until program ``name`` is in ``state``; :class:`TimeoutError` with its logs otherwise."""
        deadline = time.monotonic() + timeout
        while (current := self.status(name)) != state:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"program {name!r} is {current}, not {state}, after {timeout}s\n"
                    f"--- stdout\n{_tail(self.log_path(name, 'out'))}\n"
                    f"--- stderr\n{_tail(self.log_path(name, 'err'))}"
                )
            time.sleep(_POLL_S)

    def _process_info(self, name: str) -> dict[str, Any]:
        try:
            return cast(dict[str, Any], self._rpc("supervisor.getProcessInfo", name))
        except xmlrpc.client.Fault as fault:
            raise SupervisorError(f"program {name!r}: {fault.faultString}") from fault

    def _rpc(self, method: str, *args: object, timeout: float = 10.0) -> Any:
        """Call supervisord's XML-RPC interface over its unix socket (faster than a supervisorctl run)."""
        if self._process is None:
            raise SupervisorError("supervisord is not started")
        transport = _UnixTransport(str(self._socket_path), timeout=timeout)
        with xmlrpc.client.ServerProxy("http://localhost/RPC2", transport=transport) as proxy:
            return getattr(proxy, method)(*args)

    def _poke(self) -> None:
        with contextlib.suppress(OSError, xmlrpc.client.Error, http.client.HTTPException):
            self._rpc("supervisor.getState", timeout=0.5)

    def _output_tail(self) -> str:
        return "\n".join(
            _tail(self.directory / name) for name in ("supervisord.out", "supervisord.log")
        ).strip()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _UnixTransport(xmlrpc.client.Transport):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__()
        self._path = path
        self._timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        # Kept where the base class keeps it, so that closing the proxy closes the connection.
        if self._connection[1] is None:
            self._connection = (host, _UnixConnection(self._path, self._timeout))
        return cast(http.client.HTTPConnection, self._connection[1])


def _executable(name: str) -> Path:
    """The supervisor script installed next to this interpreter (the venv's), else on ``PATH``."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return beside
    found = shutil.which(name)
    if found is None:
        raise SupervisorError(f"{name} is not installed (the 'supervisor' package provides it)")
    return Path(found)


def _value(text: str) -> str:
    """``text`` as a supervisord configuration value: ``%`` escaped, and nothing the parser would mangle."""
    if "\n" in text or "\r" in text:
        raise ValueError(f"{text!r}: supervisord configuration values cannot span lines")
    if _INLINE_COMMENT.search(text):
        raise ValueError(f"{text!r}: supervisord would take a ';' or '#' after whitespace for a comment")
    if text != text.strip():
        raise ValueError(f"{text!r}: supervisord strips leading and trailing whitespace")
    return text.replace("%", "%%")


def _env_value(text: str) -> str:
    """An environment value quoted for supervisord's ``KEY=value,...`` parser (which has no escapes)."""
    if text[:1] in {"'", '"'} or text[-1:] in {"'", '"'}:
        raise ValueError(f"{text!r}: supervisord strips quotes at either end of an environment value")
    if '"' not in text:
        return f'"{text}"'
    if "'" not in text:
        return f"'{text}'"
    raise ValueError(f"{text!r}: supervisord cannot take both kinds of quote in an environment value")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _children(pid: int) -> list[int]:
    """The pids of ``pid``'s children, from ``/proc`` (none where there is no ``/proc``)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="ascii", errors="replace").rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if len(fields) > 1 and fields[1] == str(pid):
            children.append(int(stat.parent.name))
    return children


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is no zombie (where there is no ``/proc``: whether it exists)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"({path.name}: nothing)"
    return "\n".join(text.splitlines()[-lines:])


DUMMY_SERVICE_SOURCE = '''\
"""A dummy service for tests: serves the VERSION of the release it was started from.

Run as ``python serve.py --port N``. ``GET /`` and ``GET /version`` answer the text of the file VERSION
beside this script, read once at start-up from the release directory this script really lives in (a
``current`` symlink switched later does not change it); ``GET /healthz`` answers 200 "ok", or 500 while a
file UNHEALTHY exists in that release directory.
"""

import argparse
import http.server
import sys
from pathlib import Path

RELEASE = Path(__file__).resolve().parent
VERSION = (RELEASE / "VERSION").read_text(encoding="utf-8").strip()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path in ("/", "/version"):
            self.answer(200, VERSION)
        elif path == "/healthz":
            if (RELEASE / "UNHEALTHY").exists():
                self.answer(500, "unhealthy")
            else:
                self.answer(200, "ok")
        else:
            self.answer(404, "not found")

    def answer(self, status, text):
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"serving {VERSION} from {RELEASE} on {args.host}:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
'''
"""Source of a stdlib-only HTTP service, to write into a release directory as ``serve.py`` beside a
``VERSION`` file; run as ``python serve.py --port N`` (binds 127.0.0.1)."""
