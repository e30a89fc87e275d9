"""The README's first command: the demo starts every service and shows them healthy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conveyor.testing.services import RabbitEndpoint

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("deployer", "version-db", "notifier", "changelog-listener", "firewall-agent")


def test_demo_starts_every_service_healthy_and_stops_them(rabbit: RabbitEndpoint, tmp_path: Path) -> None:
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
    assert (
        "stopped: deployer (0), version-db (0), notifier (0), changelog-listener (0), firewall-agent (0)"
        in result.stdout
    )
