"""conveyor.testing.supervisor: a real supervisord running the dummy services, restarted by supervisorctl."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conveyor.testing.services import free_port
from conveyor.testing.supervisor import DUMMY_SERVICE_SOURCE, Supervisor, SupervisorError


def release(directory: Path, version: str) -> Path:
    directory.mkdir(parents=True)
    (directory / "serve.py").write_text(DUMMY_SERVICE_SOURCE, encoding="utf-8")
    (directory / "VERSION").write_text(version + "\n", encoding="utf-8")
    return directory


def serve(script: Path, port: int) -> list[str]:
    return [sys.executable, str(script), "--port", str(port)]


def wait_answer(url: str, status: int, text: str, timeout: float = 10.0) -> None:
    """Poll ``url`` until it answers ``status`` with ``text``."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            response = httpx.get(url, timeout=1.0)
            if (response.status_code, response.text) == (status, text):
                return
            last = f"{response.status_code} {response.text!r}"
        except httpx.TransportError as error:
            last = repr(error)
        assert time.monotonic() < deadline, f"{url} answered {last}, not {status} {text!r}"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@dataclass
class Service:
    name: str
    port: int
    release: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def two_services(tmp_path: Path) -> Iterator[tuple[Supervisor, Service, Service]]:
    """``alpha`` 1.0.0 and ``beta`` 2.0.0, running under a supervisord of this test."""
    alpha = Service("alpha", free_port(), release(tmp_path / "alpha", "1.0.0"))
    beta = Service("beta", free_port(), release(tmp_path / "beta", "2.0.0"))
    supervisor = Supervisor(tmp_path / "sv")
    for service in (alpha, beta):
        supervisor.add_program(service.name, serve(service.release / "serve.py", service.port))
    with supervisor:
        for service in (alpha, beta):
            supervisor.wait_state(service.name, "RUNNING")
        yield supervisor, alpha, beta


def test_each_service_serves_its_version_and_a_restart_serves_the_new_one(
    two_services: tuple[Supervisor, Service, Service],
) -> None:
    supervisor, alpha, beta = two_services
    for service, version in ((alpha, "1.0.0"), (beta, "2.0.0")):
        wait_answer(service.url + "/version", 200, version)
        wait_answer(service.url + "/", 200, version)
        wait_answer(service.url + "/healthz", 200, "ok")

    before, beta_pid = supervisor.pid("alpha"), supervisor.pid("beta")
    assert before is not None
    assert beta_pid is not None
    (alpha.release / "VERSION").write_text("1.1.0\n", encoding="utf-8")
    # read at start-up: the running process keeps serving its version until restarted
    assert httpx.get(alpha.url + "/version").text == "1.0.0"

    result = supervisor.ctl("restart", "alpha")

    assert result.returncode == 0, result
    assert supervisor.status("alpha") == "RUNNING"
    after = supervisor.pid("alpha")
    assert after is not None
    assert after != before
    assert not alive(before)
    wait_answer(alpha.url + "/version", 200, "1.1.0")
    assert supervisor.pid("beta") == beta_pid
    assert httpx.get(beta.url + "/version").text == "2.0.0"


def test_unhealthy_file_turns_healthz_to_500(two_services: tuple[Supervisor, Service, Service]) -> None:
    _, alpha, beta = two_services
    wait_answer(alpha.url + "/healthz", 200, "ok")

    (alpha.release / "UNHEALTHY").touch()

    wait_answer(alpha.url + "/healthz", 500, "unhealthy")
    wait_answer(alpha.url + "/version", 200, "1.0.0")
    wait_answer(beta.url + "/healthz", 200, "ok")
    (alpha.release / "UNHEALTHY").unlink()
    wait_answer(alpha.url + "/healthz", 200, "ok")


def test_a_switched_current_symlink_is_picked_up_only_on_restart(tmp_path: Path) -> None:
    """How deployments look: supervisord runs ``current/serve.py``; ``current`` moves to a new release."""
    releases = tmp_path / "releases"
    release(releases / "1.0.0", "1.0.0")
    release(releases / "2.0.0", "2.0.0")
    current = tmp_path / "current"
    current.symlink_to(releases / "1.0.0")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    supervisor = Supervisor(tmp_path / "sv")
    supervisor.add_program("web", serve(current / "serve.py", port), directory=current)
    with supervisor:
        supervisor.wait_state("web", "RUNNING")
        wait_answer(url + "/version", 200, "1.0.0")

        switch = tmp_path / "current.new"
        switch.symlink_to(releases / "2.0.0")
        switch.replace(current)
        (releases / "2.0.0" / "UNHEALTHY").touch()  # about the new release: the running one is still fine
        wait_answer(url + "/healthz", 200, "ok")
        assert httpx.get(url + "/version").text == "1.0.0"

        assert supervisor.ctl("restart", "web").returncode == 0
        wait_answer(url + "/version", 200, "2.0.0")
        wait_answer(url + "/healthz", 500, "unhealthy")


def test_programs_not_autostarted_status_pid_and_environment(tmp_path: Path) -> None:
    port = free_port()
    script = release(tmp_path / "web", "3.0.0") / "serve.py"
    supervisor = Supervisor(tmp_path / "sv")
    supervisor.add_program(
        "web",
        serve(script, port),
        autostart=False,
        startsecs=0,
        environment={"GREETING": "hello, 100% world", "QUOTED": 'say "hi";#not'},
    )
    with supervisor:
        assert supervisor.config_path.is_file()
        assert supervisor.status("web") == "STOPPED"
        assert supervisor.pid("web") is None
        with pytest.raises(SupervisorError, match="nope"):
            supervisor.status("nope")

        assert supervisor.ctl("start", "web").returncode == 0
        supervisor.wait_state("web", "RUNNING")
        pid = supervisor.pid("web")
        assert pid is not None
        wait_answer(f"http://127.0.0.1:{port}/version", 200, "3.0.0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"GREETING=hello, 100% world" in environ
        assert b'QUOTED=say "hi";#not' in environ

        status = supervisor.ctl("status", "web")
        assert status.returncode == 0
        assert "RUNNING" in status.stdout
        assert supervisor.ctl("stop", "web").returncode == 0
        assert supervisor.status("web") == "STOPPED"
        assert not alive(pid)


def test_stop_leaves_no_process_and_is_idempotent(two_services: tuple[Supervisor, Service, Service]) -> None:
    supervisor, alpha, _ = two_services
    supervisord = supervisor.supervisord_pid
    programs = [supervisor.pid("alpha"), supervisor.pid("beta")]
    assert supervisord is not None
    assert None not in programs

    supervisor.stop()
    supervisor.stop()

    assert supervisor.supervisord_pid is None
    assert not alive(supervisord)
    assert not any(alive(pid) for pid in programs if pid is not None)
    assert not supervisor.socket_path.exists()
    assert supervisor.ctl("status").returncode != 0
    with pytest.raises(httpx.TransportError):
        httpx.get(alpha.url + "/version", timeout=1.0)


def test_stop_kills_a_supervisord_that_does_not_answer(
    two_services: tuple[Supervisor, Service, Service],
) -> None:
    supervisor, _, _ = two_services
    supervisord = supervisor.supervisord_pid
    programs = [supervisor.pid("alpha"), supervisor.pid("beta")]
    assert supervisord is not None
    os.kill(supervisord, signal.SIGSTOP)

    started = time.monotonic()
    supervisor.stop(timeout=0.5)

    assert time.monotonic() - started < 5
    assert not alive(supervisord)
    assert not any(alive(pid) for pid in programs if pid is not None)


def test_a_long_directory_gets_a_short_socket(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path / ("d" * 60) / ("e" * 60))
    with supervisor:
        socket_dir = supervisor.socket_path.parent
        assert len(str(supervisor.socket_path)) < 100
        assert socket_dir != supervisor.directory
        answer = supervisor.ctl("pid")
        assert answer.returncode == 0
        assert answer.stdout.strip() == str(supervisor.supervisord_pid)
    assert not socket_dir.exists()


def test_a_supervisord_that_cannot_start_is_reported(tmp_path: Path) -> None:
    with Supervisor(tmp_path / "sv") as first:
        second = Supervisor(tmp_path / "sv")  # the same socket: the second supervisord gives up
        with pytest.raises(SupervisorError, match="exited"):
            second.start()
        assert second.supervisord_pid is None
        assert first.supervisord_pid is not None


def test_unsupported_configuration_is_refused_early(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    with pytest.raises(ValueError, match="program name"):
        supervisor.add_program("a:b", ["true"])
    supervisor.add_program("a", ["true"])
    with pytest.raises(ValueError, match="already"):
        supervisor.add_program("a", ["true"])
    with pytest.raises(ValueError, match="quote"):
        supervisor.add_program("b", ["true"], environment={"X": "both ' and \""})
    with pytest.raises(ValueError, match="comment"):
        supervisor.add_program("b", ["true"], environment={"X": "x ; y"})
    with pytest.raises(ValueError, match="lines"):
        supervisor.add_program("b", ["true"], environment={"X": "two\nlines"})
    with pytest.raises(ValueError, match="lines"):
        supervisor.add_program("b", ["true"], directory=tmp_path / "two\nlines")
    supervisor.add_program("b", ["echo", "100%", "x;y", "#z"], environment={"X": "a, b=c"})
