"""The deployer end to end: promotions dev → qa → prod through real listeners, approvals, failure
budgets, unreachable nodes and retries, a deployer killed mid-promotion, signed commands, rollback
and blocked versions. The tests of this module share one estate and run in file order."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from conveyor.bus import Bus
from conveyor.contracts import ChangesetApplied, ChangesetApply, ChangesetFailed, Envelope
from conveyor.settings import BusSettings
from conveyor.signing import SigningKey, unsigned_authorization
from conveyor.testing.services import RabbitEndpoint
from conveyor.testing.tap import EventTap

from .deploy_world import PACKAGE, SOURCE, Estate, build_estate, first_release

pytestmark = pytest.mark.rabbitmq

LAYOUT = {"dev": [SOURCE, "dev-1"], "qa": ["qa-1", "qa-2", "qa-3"], "prod": ["prod-1", "prod-2"]}
TARGETS = [n for names in LAYOUT.values() for n in names if n != SOURCE]


@pytest.fixture(scope="module")
def estate(rabbit: RabbitEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Estate]:
    estate, vhosts = build_estate(rabbit, tmp_path_factory.mktemp("deploy"), LAYOUT)
    try:
        estate.supervisor.start()
        estate.start_version_db()
        estate.start_deployer()
        for node in estate.nodes.values():
            estate.start_listener(node)
        yield estate
    finally:
        for node in estate.nodes.values():
            estate.stop(node.process)
        estate.stop(estate.deployer)
        estate.stop(estate.version_db)
        estate.supervisor.stop()
        for vhost in vhosts:
            rabbit.delete_vhost(vhost)


async def promote(estate: Estate, to_env: str, *, user: str = "ada", **options: Any) -> dict[str, Any]:
    response = await asyncio.to_thread(
        estate.api, "POST", "/promotions", user=user, body={"package": PACKAGE, "to_env": to_env, **options}
    )
    assert response.status_code == 201, response.text
    promotion: dict[str, Any] = response.json()
    return promotion


async def promote_and_wait(estate: Estate, to_env: str, **options: Any) -> dict[str, Any]:
    promotion = await promote(estate, to_env, **options)
    return await estate.wait_final(promotion["id"])


def states(promotion: dict[str, Any]) -> dict[str, str]:
    return {name: run["state"] for name, run in promotion["nodes"].items()}


async def test_a_version_goes_dev_to_qa_to_prod_with_a_second_person_s_approval(estate: Estate) -> None:
    await estate.wait_alive(TARGETS)
    v1 = await estate.ship(first_release(estate))

    dev = await promote_and_wait(estate, "dev")
    assert dev["state"] == "succeeded", dev
    assert dev["version"] == v1
    assert estate.serving(estate.nodes["dev-1"]) == "1"

    qa = await promote_and_wait(estate, "qa", canary=1, wave_size="50%")
    assert qa["state"] == "succeeded", qa
    assert qa["waves"] == [["qa-1"], ["qa-2", "qa-3"]]
    assert [estate.serving(estate.nodes[n]) for n in ("qa-1", "qa-2", "qa-3")] == ["1", "1", "1"]

    prod = await promote(estate, "prod")
    assert prod["state"] == "awaiting_approval"
    own = await asyncio.to_thread(estate.api, "POST", f"/promotions/{prod['id']}/approve", user="ada")
    assert own.status_code == 403
    assert "second person" in own.json()["detail"]
    reader = await asyncio.to_thread(estate.api, "POST", f"/promotions/{prod['id']}/approve", user="viewer")
    assert reader.status_code == 403
    approved = await asyncio.to_thread(estate.api, "POST", f"/promotions/{prod['id']}/approve", user="grace")
    assert approved.status_code == 200, approved.text
    prod = await estate.wait_final(prod["id"])
    assert prod["state"] == "succeeded", prod
    assert prod["approved_by"] == "grace"
    assert [estate.serving(estate.nodes[n]) for n in ("prod-1", "prod-2")] == ["1", "1"]

    # version-db recorded the deployments
    deployments = await asyncio.to_thread(estate.records, "/deployments", package=PACKAGE)
    assert {d["to_env"] for d in deployments["items"]} >= {"dev", "qa", "prod"}


async def test_gates_refuse_a_version_not_yet_current_in_the_previous_environment(estate: Estate) -> None:
    v2 = await estate.ship({"VERSION": "2"})
    refused = await asyncio.to_thread(
        estate.api, "POST", "/promotions", body={"package": PACKAGE, "to_env": "qa", "version": v2}
    )
    assert refused.status_code == 409
    assert "not current in dev" in refused.json()["detail"]
    dev = await promote_and_wait(estate, "dev")
    assert dev["state"] == "succeeded", dev


async def test_a_failing_node_within_the_budget_is_rolled_back_and_the_promotion_succeeds(
    estate: Estate,
) -> None:
    bad = estate.nodes["qa-3"]
    before = estate.running(bad)
    bad.fail_flag.write_text("")
    try:
        qa = await promote_and_wait(estate, "qa", max_failures="1", wave_size="100%")
    finally:
        bad.fail_flag.unlink()
    assert qa["state"] == "succeeded", qa
    assert states(qa) == {"qa-1": "succeeded", "qa-2": "succeeded", "qa-3": "rolled_back"}
    assert "health_check" in qa["nodes"]["qa-3"]["error"]
    assert estate.running(bad) == before  # the listener switched it back
    assert estate.serving(bad) == "1"
    assert estate.serving(estate.nodes["qa-1"]) == "2"


async def test_failures_past_the_budget_roll_back_every_node_the_promotion_changed(estate: Estate) -> None:
    await estate.ship({"VERSION": "3"})
    assert (await promote_and_wait(estate, "dev"))["state"] == "succeeded"
    before = {n: estate.running(estate.nodes[n]) for n in ("qa-1", "qa-2", "qa-3")}
    for name in ("qa-2", "qa-3"):
        estate.nodes[name].fail_flag.write_text("")
    try:
        qa = await promote_and_wait(estate, "qa", canary=1, wave_size="100%", max_failures="1")
    finally:
        for name in ("qa-2", "qa-3"):
            estate.nodes[name].fail_flag.unlink()
    assert qa["state"] == "failed", qa
    assert qa["rolled_back"] is True
    assert states(qa) == {"qa-1": "rolled_back", "qa-2": "rolled_back", "qa-3": "rolled_back"}
    assert {n: estate.running(estate.nodes[n]) for n in before} == before  # all back where they were
    assert estate.serving(estate.nodes["qa-1"]) == "2"


async def test_an_unreachable_node_is_reported_and_a_retry_finishes_it(estate: Estate) -> None:
    down = estate.nodes["qa-2"]
    estate.stop(down.process)
    deadline = time.monotonic() + 15
    while any(r["alive"] for r in estate.api("GET", "/nodes").json() if r["name"] == down.name):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.2)
    qa = await promote_and_wait(estate, "qa", max_failures="1", wave_size="100%")
    assert qa["state"] == "succeeded", qa
    assert states(qa)["qa-2"] == "unreachable"

    estate.start_listener(down)
    await estate.wait_alive([down.name])
    retried = await asyncio.to_thread(estate.api, "POST", f"/promotions/{qa['id']}/retry")
    assert retried.status_code == 200, retried.text
    qa = await estate.wait_final(qa["id"])
    assert qa["state"] == "succeeded", qa
    assert set(states(qa).values()) == {"succeeded"}
    assert estate.serving(down) == "3"


async def test_a_deployer_killed_mid_promotion_finishes_it_after_a_restart(estate: Estate) -> None:
    await estate.ship({"VERSION": "4"})
    assert (await promote_and_wait(estate, "dev"))["state"] == "succeeded"
    qa = await promote(estate, "qa", canary=1, wave_size="1")
    deadline = time.monotonic() + 30
    while True:  # kill it once a command is out
        current = estate.api("GET", f"/promotions/{qa['id']}").json()
        if any(r["state"] != "pending" for r in current["nodes"].values()):
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    estate.stop(estate.deployer, signal.SIGKILL)
    estate.start_deployer()
    qa = await estate.wait_final(qa["id"])
    assert qa["state"] == "succeeded", qa
    assert set(states(qa).values()) == {"succeeded"}
    assert [estate.serving(estate.nodes[n]) for n in ("qa-1", "qa-2", "qa-3")] == ["4", "4", "4"]


def _command(estate: Estate, node: str, version: str) -> ChangesetApply:
    return ChangesetApply(
        deployment_id=uuid4(),
        node=node,
        changeset_id="0" * 64,
        package=PACKAGE,
        parent_version=version,
        version=version,
        archive_url=f"{estate.store_url}/artifacts/{'0' * 64}",
        authorization=unsigned_authorization(),
    )


async def test_forged_expired_replayed_and_misaddressed_commands_are_refused(
    estate: Estate, tmp_path: Path
) -> None:
    node = estate.nodes["qa-1"]
    version = estate.running(node)
    assert version is not None
    genuine = SigningKey.load(estate.key_path)
    stranger = SigningKey.generate()
    bus = Bus(env="qa", url=estate.urls["qa"], service="deployer", settings=BusSettings())
    await bus.connect()
    try:
        async with EventTap(estate.urls["qa"], ["changeset.failed", "changeset.applied"]) as tap:

            async def refused(envelope: Envelope[Any], routing_key: str | None = None) -> str:
                if routing_key is None:
                    await bus.publish(envelope)
                else:
                    from conveyor.bus.topology import persistent_message

                    message = persistent_message(
                        envelope.to_json(),
                        message_id=str(envelope.id),
                        message_type=envelope.type,
                        correlation_id=str(envelope.correlation_id),
                        app_id=envelope.source,
                    )
                    await bus.publish_raw("conveyor.commands", routing_key, message)
                reply = (await tap.caused_by(envelope, timeout=20)).payload
                assert isinstance(reply, ChangesetFailed), reply
                assert reply.stage == "authorization"
                return reply.error

            command = _command(estate, node.name, version)
            assert (await refused(bus.wrap(command))).startswith("unsigned:")
            stranger_signed = stranger.sign(bus.wrap(command), role="deployer", ttl_s=300)
            assert (await refused(stranger_signed)).startswith("unknown_key:")
            tampered = genuine.sign(bus.wrap(command), role="deployer", ttl_s=300)
            tampered = tampered.model_copy(
                update={"payload": tampered.payload.model_copy(update={"version": "f" * 64})}
            )
            assert (await refused(tampered)).startswith("forged:")
            expired = genuine.sign(
                bus.wrap(command), role="deployer", ttl_s=1, now=datetime.now(UTC) - timedelta(minutes=10)
            )
            assert (await refused(expired)).startswith("expired:")
            elsewhere = genuine.sign(
                bus.wrap(command.model_copy(update={"node": "qa-2"})), role="deployer", ttl_s=300
            )
            assert (await refused(elsewhere, routing_key=f"changeset.apply.{node.name}")).startswith(
                "wrong_node:"
            )
            once = genuine.sign(bus.wrap(command), role="deployer", ttl_s=300)
            await bus.publish(once)
            first = (await tap.caused_by(once, timeout=20)).payload
            assert isinstance(first, ChangesetApplied), first  # genuine: accepted (the node runs it already)
            replay = once.model_copy(update={"id": uuid4()})
            assert (await refused(replay)).startswith("replayed:")
    finally:
        await bus.close()
    assert estate.running(node) == version  # nothing of it was applied
    deadline = time.monotonic() + 20
    while True:  # every refusal is on record in version-db (as it consumes the replies)
        audit = await asyncio.to_thread(
            estate.records, "/audit", action="changeset.failed", env="qa", limit=100
        )
        refusals = [e for e in audit["items"] if e["detail"].get("stage") == "authorization"]
        if len(refusals) >= 6:
            break
        assert time.monotonic() < deadline, audit
        await asyncio.sleep(0.2)


async def test_a_rollback_blocks_the_version_until_it_is_unblocked(estate: Estate) -> None:
    bad = estate.running(estate.nodes["qa-1"])
    assert bad is not None
    response = await asyncio.to_thread(
        estate.api, "POST", "/rollbacks", body={"package": PACKAGE, "env": "qa"}
    )
    assert response.status_code == 201, response.text
    rollback = await estate.wait_final(response.json()["id"])
    assert rollback["state"] == "succeeded", rollback
    assert [estate.serving(estate.nodes[n]) for n in ("qa-1", "qa-2", "qa-3")] == ["3", "3", "3"]
    assert bad in estate.api("GET", "/blocked").json()[PACKAGE]

    again = await asyncio.to_thread(
        estate.api, "POST", "/promotions", body={"package": PACKAGE, "to_env": "qa", "version": bad}
    )
    assert again.status_code == 409
    assert "blocked" in again.json()["detail"]
    unblocked = await asyncio.to_thread(estate.api, "POST", f"/blocked/{PACKAGE}/{bad}/unblock", body={})
    assert unblocked.status_code == 200
    qa = await promote_and_wait(estate, "qa", version=bad, wave_size="100%")
    assert qa["state"] == "succeeded", qa
    assert estate.serving(estate.nodes["qa-1"]) == "4"
