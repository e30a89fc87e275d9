"""The packaged templates against every catalogue example, groups, kinds, overrides and template bugs."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from conveyor.contracts import Envelope
from conveyor.contracts import catalogue as c
from conveyor.contracts.examples import EXAMPLES
from conveyor_notifier.model import EventFacts, Severity, facts_of, severity_of
from conveyor_notifier.templates import SUBJECT_MAX, TemplateRenderError, Templates, node_results

LINK_BASE = "https://deploy.example:8100"


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates(link_base=LINK_BASE + "/")


def facts(payload: Any, *, env: str = "qa", actor: str | None = "ada") -> EventFacts:
    return facts_of(Envelope.wrap(payload, env=env, source="test", actor=actor))


def deployment_events(count: int, failing: set[int]) -> list[EventFacts]:
    """One deployment's node events: node i fails when i is in ``failing``."""
    deployment = uuid4()
    started = Envelope.wrap(
        c.DeploymentStarted(
            deployment_id=deployment,
            package="web",
            version="v42",
            to_env="prod",
            waves=[[f"prod-web-{i}" for i in range(1, count + 1)]],
            failure_budget=1,
        ),
        env="prod",
        source="deployer",
        actor="ada",
    )
    events = []
    for i in range(1, count + 1):
        payload: c.DeploymentNodeFailed | c.DeploymentNodeSucceeded
        if i in failing:
            payload = c.DeploymentNodeFailed(
                deployment_id=deployment,
                package="web",
                version="v42",
                node=f"prod-web-{i}",
                wave=0,
                outcome=c.NodeOutcome.FAILED,
                error=f"health_check: node {i} answered 503\nTraceback (most recent call last): ...",
            )
        else:
            payload = c.DeploymentNodeSucceeded(
                deployment_id=deployment,
                package="web",
                version="v42",
                node=f"prod-web-{i}",
                wave=0,
                duration_s=4.2,
            )
        events.append(facts_of(started.follow_up(payload, source="deployer")))
    return events


@pytest.mark.parametrize("message_type", sorted(EXAMPLES))
def test_every_catalogue_example_renders(templates: Templates, message_type: str) -> None:
    message = templates.render([facts(EXAMPLES[message_type])])

    assert message.subject.startswith("[qa] ")
    assert "\n" not in message.subject
    assert len(message.subject) <= SUBJECT_MAX
    assert message.body.strip()
    assert "MEUCIQDexamplesignaturebase64" not in message.body  # a command's signature stays out


def test_a_deployment_of_twenty_nodes_is_one_message_listing_every_node(templates: Templates) -> None:
    events = deployment_events(20, failing={4, 11, 18})

    message = templates.render(events)

    assert message.subject == "[prod] deployment web v42: 17 of 20 nodes succeeded; 3 failed"
    rows = [line.split() for line in message.body.splitlines() if line.startswith("  prod-web-")]
    assert sorted(row[0] for row in rows) == sorted(f"prod-web-{i}" for i in range(1, 21))
    outcomes = {row[0]: row[1] for row in rows}
    assert {node for node, outcome in outcomes.items() if outcome == "failed"} == {
        "prod-web-4",
        "prod-web-11",
        "prod-web-18",
    }
    assert "health_check: node 11 answered 503" in message.body
    assert "Traceback" not in message.body  # only the error's first line
    assert message.link == f"{LINK_BASE}/promotions/{events[0].payload['deployment_id']}"


def test_a_failed_deployment_tells_the_final_outcome_of_each_node(templates: Templates) -> None:
    message = templates.render([facts(EXAMPLES["deployment.failed"])])

    assert (
        message.subject == "[qa] deployment failed: web v42 (3 nodes: 1 failed, 1 rolled back, 1 unreachable)"
    )
    assert message.severity is Severity.CRITICAL
    assert "2 of 3 nodes failed; the failure budget is 1." in message.body
    assert "  qa-web-3  unreachable" in message.body


@pytest.mark.parametrize(
    ("kind", "prefix"),
    [
        ("new", "[qa] "),
        ("follow_up", "update: [qa] "),
        ("escalation", "ESCALATED: [qa] "),
        ("resolution", "resolved: [qa] "),
        ("fallback", "[qa] "),
    ],
)
def test_the_kind_prefixes_the_subject(templates: Templates, kind: Any, prefix: str) -> None:
    opened = facts(EXAMPLES["firewall.disabled"])
    same_day = opened.occurred_at.replace(hour=10, minute=0, second=0, microsecond=0)
    lease = {**opened.payload, "lease_expires_at": same_day.isoformat()}
    message = templates.render([replace(opened, payload=lease)], kind=kind)

    assert message.subject == f"{prefix}firewall opened on qa-web-1 by ada until 10:00 UTC"
    assert message.kind == kind


def test_a_note_goes_before_the_body(templates: Templates) -> None:
    event = facts(EXAMPLES["drift.detected"])
    plain = templates.render([event])

    message = templates.render([event], kind="fallback", note="Sent here because mail to ops failed.")

    assert message.body == "Sent here because mail to ops failed.\n\n" + plain.body


def test_a_long_subject_is_cut_to_one_line_of_120_characters(templates: Templates) -> None:
    reason = "the signature " + "is really quite expired " * 10 + "\nsecond line"
    event = facts(c.FirewallRejected(request_id=uuid4(), node="qa-web-1", command="disable", reason=reason))

    message = templates.render([event], kind="escalation")

    assert len(message.subject) <= SUBJECT_MAX
    assert message.subject.startswith("ESCALATED: [qa] firewall disable refused on qa-web-1: the signature")
    assert message.subject.endswith("…")


def test_rabbitmq_events_are_read_from_their_payload(templates: Templates) -> None:
    payload = {
        "check": "memory_alarm",
        "node": "rabbit@mq-1",
        "subject": None,
        "detail": "rabbit@mq-1 uses 0.9 GB of its 0.8 GB memory limit",
        "value": 900_000_000,
        "threshold": 800_000_000,
    }
    event = EventFacts(
        message_id=str(uuid4()),
        type="rabbitmq.alarm",
        env="prod",
        occurred_at=datetime(2026, 11, 26, 9, 30, tzinfo=UTC),
        source="rabbitmq-watch",
        actor=None,
        correlation_id=str(uuid4()),
        severity=severity_of("rabbitmq.alarm", "prod", payload),
        payload=payload,
    )

    message = templates.render([event])

    assert message.subject == "[prod] RabbitMQ alarm: memory alarm on rabbit@mq-1"
    assert message.severity is Severity.CRITICAL
    assert message.body.startswith("rabbit@mq-1 uses 0.9 GB of its 0.8 GB memory limit")
    assert "threshold: 800000000" in message.body
    assert message.link is None


def test_links_follow_the_event(templates: Templates) -> None:
    assert templates.render([facts(EXAMPLES["node.host_key_changed"])]).link == f"{LINK_BASE}/nodes/host-keys"
    firewall = templates.render([facts(EXAMPLES["firewall.rejected"])]).link
    assert firewall == f"{LINK_BASE}/firewall/requests/{EXAMPLES['firewall.rejected'].request_id}"  # type: ignore[attr-defined]
    assert Templates().render([facts(EXAMPLES["deployment.failed"])]).link is None


def test_an_operator_template_wins_over_the_packaged_one(tmp_path: Path) -> None:
    (tmp_path / "firewall.j2").write_text(
        "Subject: {{ env }}: firewall of {{ node }}\n\nAsk {{ who }} why: {{ payload.reason }}\n"
    )
    (tmp_path / "drift.detected.j2").write_text(
        '{% extends "packaged/drift.detected.j2" %}\n'
        "{% block summary %}Call the on-call engineer.\n{% endblock %}\n"
    )
    templates = Templates(tmp_path)

    firewall = templates.render([facts(EXAMPLES["firewall.disabled"])])
    drift = templates.render([facts(EXAMPLES["drift.detected"])])
    changeset = templates.render([facts(EXAMPLES["changeset.failed"])])

    assert firewall.subject == "qa: firewall of qa-web-1"
    assert firewall.body == "Ask ada why: INC-4711: trace dropped packets\n"
    assert drift.subject.startswith("[qa] drift on qa-web-1")
    assert drift.body.startswith("Call the on-call engineer.\n")
    assert changeset.subject.startswith("[qa] web v42 failed on qa-web-2")  # still the packaged one


def test_an_undefined_name_is_an_error_naming_the_template_and_line(tmp_path: Path) -> None:
    (tmp_path / "drift.detected.j2").write_text("Subject: drift\n\nfiles: {{ payload.files_changed }}\n")
    templates = Templates(tmp_path)

    with pytest.raises(TemplateRenderError) as raised:
        templates.render([facts(EXAMPLES["drift.detected"])])

    assert f"{tmp_path / 'drift.detected.j2'}, line 3" in str(raised.value)
    assert "files_changed" in str(raised.value)


def test_a_syntax_error_names_the_template_and_line(tmp_path: Path) -> None:
    (tmp_path / "default.j2").write_text("Subject: x\n\n{% if %}\n")

    with pytest.raises(TemplateRenderError, match=r"default\.j2, line 3"):
        Templates(tmp_path).render([facts(EXAMPLES["version.blocked"])])


def test_a_template_without_a_subject_line_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "default.j2").write_text("Just a body\n")

    with pytest.raises(TemplateRenderError, match=r"must begin with a 'Subject: \.\.\.' line"):
        Templates(tmp_path).render([facts(EXAMPLES["version.blocked"])])


def test_a_missing_templates_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        Templates(tmp_path / "nowhere")


def test_the_final_outcome_wins_and_keeps_the_detail() -> None:
    events = deployment_events(3, failing={2})
    deployment = events[0].payload["deployment_id"]
    final = c.DeploymentFailed(
        deployment_id=deployment,
        package="web",
        version="v42",
        to_env="prod",
        reason="1 of 3 nodes failed; the failure budget is 0",
        nodes={
            "prod-web-1": c.NodeOutcome.ROLLED_BACK,
            "prod-web-2": c.NodeOutcome.FAILED,
            "prod-web-3": c.NodeOutcome.ROLLED_BACK,
        },
        rolled_back=True,
        duration_s=12.0,
    )

    rows = node_results([*events, facts(final, env="prod")])

    assert [(r.node, r.outcome) for r in rows] == [
        ("prod-web-1", "rolled_back"),
        ("prod-web-2", "failed"),
        ("prod-web-3", "rolled_back"),
    ]
    assert rows[1].detail == "health_check: node 2 answered 503"
    assert rows[0].detail == "4.2 s"  # from when it had succeeded


def test_a_whole_deployment_in_one_group_renders(templates: Templates) -> None:
    """requested, approved, started, the nodes' outcomes, the listeners' changesets and the end: one
    correlation id, so one group, and the template of its first event (deployment.requested)."""
    story = [
        facts(EXAMPLES[t]) for t in ("deployment.requested", "deployment.approved", "deployment.started")
    ]
    nodes = deployment_events(3, failing=set())
    end = facts(EXAMPLES["deployment.succeeded"])
    message = templates.render([*story, facts(EXAMPLES["changeset.applied"]), *nodes, end])

    assert message.subject.startswith("[qa] deployment succeeded: web")
    assert "Reason:" in message.body
    assert "From:" in message.body
    assert "prod-web-3" in message.body
