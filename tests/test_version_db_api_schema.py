"""schemathesis against the running service's OpenAPI document: generated requests to every read
endpoint get a documented status, content type and body, and never a 5xx."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings

from conveyor.testing.services import free_port

from .test_services import running, wait_healthy

TOKEN = "schema-reader-token-0123456789"


def test_every_read_endpoint_keeps_its_contract(amqp_url: str, tmp_path: Path) -> None:
    port = free_port()
    extra = {"CONVEYOR_VERSION_DB_API_TOKENS": json.dumps({"reader": [TOKEN]})}
    with running("version-db", amqp_url, port, tmp_path, extra=extra) as (process, _):
        wait_healthy(port, process)
        schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json")
        checked = []
        for result in schema.get_all_operations():
            operation = result.ok()  # type: ignore[union-attr]  # an Err raises, naming the bad schema
            if operation.method.upper() != "GET" or operation.path.startswith("/artifacts"):
                continue

            # Derandomized: CI sees the same requests every run (flip it locally to explore).
            @settings(
                max_examples=60,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                database=None,
                derandomize=True,
            )
            @given(case=operation.as_strategy())
            def call(case: Any) -> None:
                case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})

            call()
            checked.append(operation.path)
    assert {"/versions", "/deployments", "/deployments/{deployment_id}", "/audit", "/nodes", "/diff"} <= set(
        checked
    )
