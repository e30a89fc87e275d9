"""The HTTP API on SQLite and MariaDB: roles, refusals audited, and what each endpoint reports."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import httpx
import pytest
from pydantic import SecretStr

from conveyor.contracts import (
    DeploymentNodeFailed,
    DeploymentRequested,
    DeploymentStarted,
    DeploymentSucceeded,
    DriftDetected,
    Envelope,
    NodeHeartbeat,
    NodeOutcome,
)
from conveyor_version_db.app import create_app
from conveyor_version_db.config import Settings
from conveyor_version_db.service import record

READER, DEPLOYER = "reader-token-0123456789", "deployer-token-0123456789"


@pytest.fixture
async def client(database_url: str, amqp_url: str, tmp_path: Any) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        envs={"dev": amqp_url, "qa": amqp_url, "prod": amqp_url},
        database_url=SecretStr(database_url),
        artifacts_dir=tmp_path / "artifacts",
        api_tokens={"reader": [SecretStr(READER)], "deployer": [SecretStr(DEPLOYER)]},
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://vdb", headers={"Authorization": f"Bearer {READER}"}
        ) as http:
            http.app = app  # type: ignore[attr-defined]
            yield http


async def feed(client: httpx.AsyncClient, *envelopes: Envelope[Any]) -> None:
    sessions = client.app.state.sessions  # type: ignore[attr-defined]
    for envelope in envelopes:
        async with sessions() as session, session.begin():
            await record(session, envelope)


def promotion(
    package: str, version: str, to_env: str, *, nodes: list[str], fail: str | None = None
) -> list[Any]:
    deployment = uuid4()
    requested = Envelope.wrap(
        DeploymentRequested(
            deployment_id=deployment,
            package=package,
            version=version,
            from_env=None,
            to_env=to_env,
            requested_by="ada",
        ),
        env=to_env,
        source="deployer",
        actor="ada",
    )
    started = requested.follow_up(
        DeploymentStarted(
            deployment_id=deployment,
            package=package,
            version=version,
            to_env=to_env,
            waves=[nodes],
            failure_budget=0,
        ),
        source="deployer",
    )
    outcome = dict.fromkeys(nodes, NodeOutcome.SUCCEEDED)
    events: list[Any] = [requested, started]
    if fail:
        outcome[fail] = NodeOutcome.FAILED
        events.append(
            started.follow_up(
                DeploymentNodeFailed(
                    deployment_id=deployment,
                    package=package,
                    version=version,
                    node=fail,
                    wave=0,
                    outcome=NodeOutcome.FAILED,
                    error="health check failed",
                ),
                source="deployer",
            )
        )
    finished = (
        DeploymentSucceeded(
            deployment_id=deployment,
            package=package,
            version=version,
            to_env=to_env,
            nodes=outcome,
            duration_s=1,
        )
        if not fail
        else None
    )
    if finished is not None:
        events.append(started.follow_up(finished, source="deployer"))
    return events


async def test_tokens_and_roles_and_refusals_are_audited(client: httpx.AsyncClient) -> None:
    assert (await client.get("/versions", headers={"Authorization": ""})).status_code == 401
    unknown = await client.get("/versions", headers={"Authorization": "Bearer nope"})
    assert unknown.status_code == 401
    assert unknown.headers["www-authenticate"] == "Bearer"
    body = b"PK\x05\x06" + b"\x00" * 18
    digest = hashlib.sha256(body).hexdigest()
    forbidden = await client.put(f"/artifacts/{digest}", content=body)
    assert forbidden.status_code == 403
    assert "needs a deployer token" in forbidden.json()["detail"]
    stored = await client.put(
        f"/artifacts/{digest}", content=body, headers={"Authorization": f"Bearer {DEPLOYER}"}
    )
    assert stored.status_code == 201
    assert (await client.get(f"/artifacts/{digest}")).content == body  # readers may read

    audit = (await client.get("/audit", params={"action": "api.refused"})).json()
    assert audit["total"] == 3
    reasons = sorted(item["detail"]["reason"] for item in audit["items"])
    assert reasons == ["no bearer token", "role reader is not deployer", "unknown token"]
    assert all(READER not in str(item) and "nope" not in str(item) for item in audit["items"])


async def test_matrix_history_diff_deployments_nodes(client: httpx.AsyncClient) -> None:
    await feed(
        client,
        *promotion("web", "v1", "dev", nodes=["dev-1"]),
        *promotion("web", "v2", "dev", nodes=["dev-1"]),
        *promotion("web", "v1", "qa", nodes=["qa-1", "qa-2"]),
        *promotion("api", "v7", "dev", nodes=["dev-1"]),
        *promotion("web", "v2", "qa", nodes=["qa-1", "qa-2"], fail="qa-2"),
        Envelope.wrap(
            DriftDetected(node="qa-1", package="web", expected_version="v1", modified=["conf/app.ini"]),
            env="qa",
            source="listener",
        ),
        Envelope.wrap(
            NodeHeartbeat(
                node="qa-1",
                agent="changelog-listener",
                agent_version="0.1.0",
                started_at=datetime.now(UTC),
                packages={"web": "v1"},
            ),
            env="qa",
            source="listener",
        ),
    )
    matrix = (await client.get("/versions")).json()
    assert matrix["envs"] == ["dev", "qa", "prod"]
    assert {r["package"]: r["versions"] for r in matrix["packages"]} == {
        "api": {"dev": "v7", "qa": None, "prod": None},
        "web": {"dev": "v2", "qa": "v1", "prod": None},
    }
    only_qa = (await client.get("/versions", params={"env": "qa", "package": "web"})).json()
    assert only_qa == {"envs": ["qa"], "packages": [{"package": "web", "versions": {"qa": "v1"}}]}

    diff = (await client.get("/diff", params={"from": "dev", "to": "qa"})).json()
    assert diff["packages"] == [
        {"package": "api", "from_version": "v7", "to_version": None, "versions_only_in_from": ["v7"]},
        {"package": "web", "from_version": "v2", "to_version": "v1", "versions_only_in_from": ["v2"]},
    ]
    assert (await client.get("/diff", params={"from": "dev", "to": "staging"})).status_code == 404

    page = (await client.get("/deployments", params={"limit": 2})).json()
    assert page["total"] == 5
    assert len(page["items"]) == 2
    assert page["next_offset"] == 2
    rest = (await client.get("/deployments", params={"limit": 2, "offset": 4})).json()
    assert len(rest["items"]) == 1
    assert rest["next_offset"] is None
    failed = (await client.get("/deployments", params={"env": "qa", "state": "started"})).json()
    assert [d["version"] for d in failed["items"]] == ["v2"]
    detail = (await client.get(f"/deployments/{failed['items'][0]['id']}")).json()
    assert {(n["node"], n["state"]) for n in detail["nodes"]} == {("qa-1", "pending"), ("qa-2", "failed")}
    assert (await client.get(f"/deployments/{uuid4()}")).status_code == 404

    history = (await client.get("/packages/web/history")).json()
    assert [d["version"] for d in history["deployments"]] == ["v2", "v1", "v2", "v1"]
    assert (await client.get("/packages/nope/history")).status_code == 404

    nodes = {n["name"]: n for n in (await client.get("/nodes", params={"env": "qa"})).json()}
    assert set(nodes) == {"qa-1", "qa-2"}
    assert nodes["qa-1"]["versions"] == {"web": "v1"}
    assert nodes["qa-1"]["agent_versions"] == {"changelog-listener": "0.1.0"}
    assert nodes["qa-1"]["drift"][0]["files"]["modified"] == ["conf/app.ini"]

    audit = (await client.get("/audit", params={"actor": "ada", "limit": 100})).json()
    assert {e["outcome"] for e in audit["items"]} == {"requested", "succeeded"}
    assert (await client.get("/docs")).status_code == 200
    assert "/deployments/{deployment_id}" in (await client.get("/openapi.json")).json()["paths"]
