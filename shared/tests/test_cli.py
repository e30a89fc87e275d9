"""The ``conveyor`` command as a person runs it, against the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import httpx

from conveyor.bus import Bus, QueueSpec
from conveyor.contracts import NodeHeartbeat
from conveyor.testing.services import RabbitEndpoint

from .conftest import FAST
from .test_bus import drift

CONVEYOR = str(Path(sys.executable).parent / "conveyor")


def run(*args: str, envs: dict[str, str] | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {"PATH": os.environ["PATH"], "COLUMNS": "200", **env}
    if envs is not None:
        environment["CONVEYOR_ENVS"] = json.dumps(envs)
    return subprocess.run(
        [CONVEYOR, *args], env=environment, capture_output=True, text=True, timeout=60, check=False
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == "conveyor 0.1.0"


def test_env_list_in_promotion_order_without_passwords() -> None:
    envs = {
        "dev": "amqp://u:s3cret@h1:5672/dev",
        "qa": "amqp://u:s3cret@h2/qa",
        "prod": "amqps://u:p@h3:5671/",
    }
    result = run("env", "list", "--json", envs=envs)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["env"] for r in rows] == ["dev", "qa", "prod"]
    assert rows[0] == {"env": "dev", "url": "amqp://u:***@h1:5672/dev", "vhost": "dev"}
    assert rows[2]["vhost"] == "/"
    assert "s3cret" not in result.stdout


def test_bus_ping_reports_each_broker(amqp_url: str) -> None:
    envs = {
        "qa": amqp_url,
        "gone": "amqp://guest:guest@127.0.0.1:1/x",
        "novhost": amqp_url.rsplit("/", 1)[0] + "/no-such-vhost",
    }
    result = run("bus", "ping", "--json", envs=envs, CONVEYOR_CONNECT_TIMEOUT_S="3")
    assert result.returncode == 1  # not every broker is reachable
    rows = {r["env"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["qa"]["reachable"] is True
    assert rows["qa"]["latency_ms"] > 0
    assert rows["qa"]["topology"] is False  # nothing declared Conveyor's exchanges in this vhost yet
    assert rows["gone"]["reachable"] is False
    assert rows["gone"]["error"] == "connection refused (is RabbitMQ running and listening there?)"
    assert rows["novhost"]["reachable"] is False
    assert "no-such-vhost" in rows["novhost"]["error"]

    only = run("bus", "ping", "--env", "qa", envs=envs)
    assert only.returncode == 0
    assert "yes" in only.stdout
    unknown = run("bus", "ping", "--env", "staging", envs=envs)
    assert unknown.returncode == 2
    assert "unknown environment staging" in unknown.stderr


async def tail_is_listening(rabbit: RabbitEndpoint, vhost: str, tail: asyncio.subprocess.Process) -> None:
    """Poll the management API until the tail's private queue is bound to the events exchange."""
    url = f"/api/exchanges/{quote(vhost, safe='')}/conveyor.events/bindings/source"
    async with httpx.AsyncClient(
        base_url=rabbit.management_url, auth=(rabbit.user, rabbit.password)
    ) as admin:
        while tail.returncode is None:
            bindings = await admin.get(url)
            if bindings.status_code == 200 and bindings.json():
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"tail exited with {tail.returncode}")


async def test_events_tail_streams_matching_events(amqp_url: str, rabbit: RabbitEndpoint, vhost: str) -> None:
    bus = Bus(env="qa", url=amqp_url, service="test", settings=FAST)
    await bus.connect()
    tail = await asyncio.create_subprocess_exec(
        CONVEYOR,
        "events",
        "tail",
        "--env",
        "qa",
        "--type",
        "drift.*",
        "--json",
        "--limit",
        "2",
        env={"PATH": os.environ["PATH"], "CONVEYOR_ENVS": json.dumps({"qa": amqp_url})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(tail_is_listening(rabbit, vhost, tail), 20)
        first, second = bus.wrap(drift(1), actor="ada"), bus.wrap(drift(2))
        heartbeat = NodeHeartbeat(
            node="n1", agent="firewall-agent", agent_version="1", started_at=first.occurred_at
        )
        await bus.publish(bus.wrap(heartbeat))
        await bus.publish(first)
        await bus.publish(second)
        out, err = await asyncio.wait_for(tail.communicate(), 20)
    finally:
        if tail.returncode is None:
            tail.kill()
            await tail.wait()
        await bus.close()
    assert tail.returncode == 0, err.decode()
    shown = [json.loads(line) for line in out.decode().splitlines()]
    assert [s["id"] for s in shown] == [str(first.id), str(second.id)]  # the heartbeat was filtered out
    assert shown[0]["actor"] == "ada"
    assert shown[0]["payload"]["expected_version"] == "v1"


def test_events_tail_names_an_unknown_environment() -> None:
    result = run("events", "tail", "--env", "staging")
    assert result.returncode == 2
    assert "unknown environment 'staging'; known: dev, qa, prod" in result.stderr


def test_config_show_redacts_secrets() -> None:
    envs = json.dumps({"qa": "amqp://deployer:hunter2@rabbit-qa:5672/qa"})
    result = run(
        "config",
        "show",
        "--service",
        "deployer",
        "--json",
        CONVEYOR_DEPLOYER_ENVS=envs,
        CONVEYOR_DEPLOYER_BUS__PREFETCH="7",
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["envs"] == {"qa": "amqp://deployer:***@rabbit-qa:5672/qa"}
    assert shown["bus"]["prefetch"] == 7
    assert shown["http_port"] == 8100
    assert "hunter2" not in result.stdout

    table = run("config", "show", "--service", "deployer", CONVEYOR_DEPLOYER_ENVS=envs)
    assert "CONVEYOR_DEPLOYER_" in table.stdout
    assert "hunter2" not in table.stdout


def test_config_show_names_installed_services_when_one_is_unknown() -> None:
    result = run("config", "show", "--service", "deployr")
    assert result.returncode == 2
    assert "no service 'deployr' is installed" in result.stderr
    assert "deployer" in result.stderr


def test_declaring_a_queue_makes_ping_see_the_topology(amqp_url: str) -> None:
    async def declare() -> None:
        bus = Bus(env="qa", url=amqp_url, service="test", settings=FAST)
        await bus.connect()
        await bus.consumer(QueueSpec(name="x")).declare()
        await bus.close()

    asyncio.run(declare())
    result = run("bus", "ping", "--json", envs={"qa": amqp_url})
    assert json.loads(result.stdout)["topology"] is True
