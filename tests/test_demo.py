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
    "changelog-listener prod-web-1",
)


def test_demo_promotes_a_change_dev_to_qa_to_prod_with_an_approval_and_rolls_one_back(
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
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for service in SERVICES:
        assert f"│ {service}" in result.stdout
    assert result.stdout.count(" ok ") == len(SERVICES)
    out = " ".join(result.stdout.split())
    assert result.stdout.count("dev-web-1 committed") == 2
    assert "→ qa succeeded" in out
    assert "→ prod succeeded budget 0, requested by ada, approved by grace" in out
    assert "ada approves her own promotion: 403" in out
    assert "qa-web-1 serves: <h1>hello, broken</h1>" in out  # the second change reached qa
    assert "promoting it again: 409" in out  # rolled back and blocked
    for node in ("qa-web-1", "qa-web-2", "prod-web-1"):
        assert f"{node} serves: <h1>hello from dev</h1>" in out
    # qa-web-1's firewall (nftables in the demo's namespace): opened for a lease, restored by its agent
    assert "grace opens qa-web-1's firewall for 5 s (port 8080: blocked)" in out
    assert "port 8080 from outside: reachable" in out
    assert "the lease ended: qa-web-1 restored its firewall (lease expired); port 8080: blocked" in out
    release = tmp_path / ".demo" / "nodes" / "qa-web-2" / "web" / "current" / "index.html"
    assert release.read_text() == "<h1>hello from dev</h1>\n"
    stopped = ", ".join(f"{name} (0)" for name in SERVICES)
    assert f"stopped: {stopped}" in out
