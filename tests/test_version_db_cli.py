"""End to end: events on the broker → the version-db process → `conveyor versions/history/diff/audit`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import httpx

from conveyor.bus import Bus
from conveyor.contracts import DeploymentRequested, DeploymentSucceeded, Envelope, NodeOutcome
from conveyor.testing.services import free_port

from .test_services import running, wait_healthy

CONVEYOR = str(Path(sys.executable).parent / "conveyor")
TOKEN = "e2e-reader-token-0123456789"


def cli(*args: str, url: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "COLUMNS": "200", "CONVEYOR_VERSION_DB_URL": url}
    if token:
        env["CONVEYOR_TOKEN"] = token
    return subprocess.run([CONVEYOR, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


async def publish_promotions(amqp_url: str) -> None:
    bus = Bus(env="qa", url=amqp_url, service="deployer")
    await bus.connect()
    try:
        for env, version in (("dev", "v2"), ("qa", "v1")):
            deployment = uuid4()
            requested = Envelope.wrap(
                DeploymentRequested(
                    deployment_id=deployment,
                    package="web",
                    version=version,
                    from_env=None,
                    to_env=env,
                    requested_by="ada",
                ),
                env="qa",
                source="deployer",
                actor="ada",
            )
            done = requested.follow_up(
                DeploymentSucceeded(
                    deployment_id=deployment,
                    package="web",
                    version=version,
                    to_env=env,
                    nodes={f"{env}-1": NodeOutcome.SUCCEEDED},
                    duration_s=2.0,
                ),
                source="deployer",
            )
            await bus.publish(requested)
            await bus.publish(done)
    finally:
        await bus.close()


def test_cli_reads_what_the_service_recorded(amqp_url: str, tmp_path: Path) -> None:
    port = free_port()
    extra = {
        "CONVEYOR_VERSION_DB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'vdb.sqlite3'}",
        "CONVEYOR_VERSION_DB_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "CONVEYOR_VERSION_DB_API_TOKENS": json.dumps({"reader": [TOKEN]}),
    }
    url = f"http://127.0.0.1:{port}"
    with running("version-db", amqp_url, port, tmp_path, extra=extra) as (process, _):
        wait_healthy(port, process)
        asyncio.run(publish_promotions(amqp_url))
        deadline = time.monotonic() + 30
        while True:  # until both deployments are recorded
            page = httpx.get(f"{url}/deployments", headers={"Authorization": f"Bearer {TOKEN}"}).json()
            if page["total"] == 2 and all(d["state"] == "succeeded" for d in page["items"]):
                break
            assert time.monotonic() < deadline, page
            time.sleep(0.2)

        matrix = json.loads(cli("versions", "--json", url=url).stdout)
        assert matrix["packages"] == [{"package": "web", "versions": {"dev": "v2", "qa": "v1"}}]
        table = cli("versions", url=url)
        assert table.returncode == 0
        assert "web" in table.stdout
        assert "v2" in table.stdout
        diff = json.loads(cli("diff", "dev", "qa", "--json", url=url).stdout)
        assert diff["packages"][0]["versions_only_in_from"] == ["v2"]
        history = json.loads(cli("history", "web", "--json", url=url).stdout)
        assert sorted(d["version"] for d in history["deployments"]) == ["v1", "v2"]
        audit = json.loads(cli("audit", "--actor", "ada", "--json", url=url).stdout)
        assert audit["total"] == 4

        refused = cli("versions", url=url, token=None)
        assert refused.returncode == 1
        assert "set CONVEYOR_TOKEN" in refused.stderr
        unknown = cli("history", "nope", url=url)
        assert unknown.returncode == 1
        assert "no package 'nope'" in unknown.stderr
    unreachable = cli("versions", url="http://127.0.0.1:1")
    assert unreachable.returncode == 1
    assert "cannot reach the version-db" in unreachable.stderr
