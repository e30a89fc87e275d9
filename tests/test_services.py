"""Every service as a real process: starts, declares its topology, is healthy, stops on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from conveyor.testing.services import RabbitEndpoint, free_port

SERVICES = {
    # service: (queue it must declare, binding it must have)
    "version-db": ("version-db.events", "changeset.created"),
    "notifier": ("notifier.events", "deployment.failed"),
    "deployer": ("deployer.events", "changeset.#"),
    "changelog-listener": ("listener.node-1.commands", "changeset.apply.node-1"),
    "firewall-agent": ("firewall-agent.node-1.commands", "firewall.*.node-1"),
}


@contextmanager
def running(
    service: str, url: str, port: int, tmp_path: Path, *, extra: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The service as a process; killed at the end if the test did not stop it."""
    process, log = start(service, url, port, tmp_path, extra=extra)
    try:
        yield process, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def start(
    service: str, url: str, port: int, tmp_path: Path, *, extra: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    prefix = f"CONVEYOR_{service.upper().replace('-', '_')}_"
    rules = tmp_path / "notifier-rules.yaml"  # the notifier refuses to start without rules
    rules.write_text("receivers: {log: {kind: log}}\ndefault_receiver: log\nrules: []\n")
    env = {
        f"{prefix}RULES_FILE": str(rules),
        # version-db keeps its database and archives in the test's directory
        f"{prefix}DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / (service + '.sqlite3')}",
        f"{prefix}ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        f"{prefix}STATE_DIR": str(tmp_path / "state"),
        **(extra or {}),
        "PATH": "/usr/bin:/bin",
        f"{prefix}ENVS": json.dumps({"qa": url}),
        f"{prefix}HTTP_PORT": str(port),
        f"{prefix}ENV": "qa",
        f"{prefix}NODE": "node-1",
        f"{prefix}LOG_FORMAT": "json",
    }
    log = tmp_path / f"{service}.log"
    script = Path(sys.executable).parent / f"conveyor-{service}"
    with log.open("wb") as output:
        process = subprocess.Popen([str(script)], env=env, stdout=output, stderr=subprocess.STDOUT)
    return process, log


def wait_healthy(port: int, process: subprocess.Popen[bytes], timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        assert process.poll() is None, f"service exited early with {process.returncode}"
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            if response.status_code == 200:
                return dict(response.json())
            last = response.text
        except httpx.TransportError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise AssertionError(f"not healthy within {timeout}s: {last}")


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_service_starts_reports_healthy_and_stops_cleanly_on_sigterm(
    service: str, rabbit: RabbitEndpoint, vhost: str, amqp_url: str, tmp_path: Path
) -> None:
    port = free_port()
    with running(service, amqp_url, port, tmp_path) as (process, log):
        health = wait_healthy(port, process)
        assert health["service"] == service
        assert health["status"] == "ok"
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
        assert "conveyor_handler_duration_seconds" in metrics.text

        queue, binding = SERVICES[service]
        with rabbit.admin() as admin:
            info = admin.get(f"/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}").json()
            bindings = admin.get(
                f"/api/queues/{quote(vhost, safe='')}/{quote(queue, safe='')}/bindings"
            ).json()
        assert info["durable"]
        assert info["arguments"]["x-queue-type"] == "quorum"
        assert binding in {b["routing_key"] for b in bindings}

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0

    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is structured JSON
    events = [r["event"] for r in records]
    assert "service_ready" in events
    assert events.index("service_stopping") < events.index("service_stopped")
    assert all(r["service"] == service for r in records)
    assert "guest:guest" not in log.read_text()  # the broker password is never logged


def test_service_waits_for_an_unreachable_broker_and_still_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    with running("deployer", "amqp://guest:guest@127.0.0.1:1/qa", port, tmp_path) as (process, log):
        deadline = time.monotonic() + 15
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "HTTP never came up"
                time.sleep(0.1)
        assert response.status_code == 503
        assert response.json()["brokers"]["qa"]["connected"] is False
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    assert "broker_unreachable" in log.read_text()


def test_invalid_configuration_is_one_clear_line_per_setting(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "conveyor-firewall-agent"
    result = subprocess.run(
        [str(script)],
        env={"CONVEYOR_FIREWALL_AGENT_HTTP_PORT": "eighty", "CONVEYOR_FIREWALL_AGENT_ENV": "staging"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "CONVEYOR_FIREWALL_AGENT_HTTP_PORT: Input should be a valid integer" in result.stderr
    assert "Traceback" not in result.stderr
