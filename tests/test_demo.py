"""The README's first command: the demo starts every service and shows them healthy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conveyor.testing.services import RabbitEndpoint

ROOT = Path(__file__).resolve().parents[1]
SERVICES = (
    "deployer",
    "version-db",
    "notifier",
    "firewall-agent",
    "changelog-listener dev-web-1",
    "changelog-listener qa-web-1",
    "changelog-listener qa-web-2",
)


def test_demo_starts_every_service_healthy_sends_a_change_to_qa_and_stops(
    rabbit: RabbitEndpoint, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "demo.py"),
            "--once",
            "--base-port",
            "18700",
            "--management-url",
            rabbit.management_url,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for service in SERVICES:
        assert f"│ {service}" in result.stdout
    assert result.stdout.count(" ok ") == len(SERVICES)
    # two edits on dev, each applied on both QA nodes, recorded by version-db, served by qa-web-1
    assert result.stdout.count("dev-web-1 committed") == 2
    assert result.stdout.count("│ applied │") == 4
    assert "failed at" not in result.stdout
    assert "qa-web-1 serves: <h1>hello again</h1>" in result.stdout
    release = tmp_path / ".demo" / "nodes" / "qa-web-2" / "web" / "current" / "index.html"
    assert release.read_text() == "<h1>hello again</h1>\n"
    stopped = ", ".join(f"{name} (0)" for name in SERVICES)
    assert f"stopped: {stopped}" in " ".join(result.stdout.split())
