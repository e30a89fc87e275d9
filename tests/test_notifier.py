"""The notifier end to end: a real notifier process on real RabbitMQ, delivering to a real SMTP server
(aiosmtpd) and a real HTTP server (webhooks through Apprise's json:// scheme) started by the test; its
delivery log read through its API. The tests of this module share one notifier and run in file order."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from aiosmtpd.controller import Controller

from conveyor.bus import Bus
from conveyor.contracts import Envelope, Payload
from conveyor.contracts.examples import EXAMPLES
from conveyor.settings import BusSettings
from conveyor.testing.services import RabbitEndpoint, free_port

from .test_services import wait_healthy

pytestmark = pytest.mark.rabbitmq


@dataclass
class Hooks:
    """The HTTP server Apprise posts to: /hook answers 200, /fail 500, /slow never in time."""

    port: int
    received: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def posts(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.received.get(path, []))


def serve_hooks() -> tuple[Hooks, ThreadingHTTPServer]:
    hooks = Hooks(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with hooks.lock:
                hooks.received.setdefault(self.path, []).append(json.loads(body or b"{}"))
            if self.path == "/slow":
                time.sleep(3)
            status = 500 if self.path == "/fail" else 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            del args

    server = ThreadingHTTPServer(("127.0.0.1", hooks.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return hooks, server


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        del server, session
        self.messages.append(message_from_bytes(envelope.content))
        return "250 Message accepted"


RULES = """
receivers:
  hook: {{kind: apprise, urls: ["json://127.0.0.1:{port}/hook"], retries: 1, timeout_s: 5}}
  broken: {{kind: apprise, urls: ["json://127.0.0.1:{port}/fail"], retries: 2, timeout_s: 5}}
  slow: {{kind: apprise, urls: ["json://127.0.0.1:{port}/slow"], retries: 1, timeout_s: 1}}
  mail: {{kind: email, to: [oncall@example.com], subject_prefix: "[conveyor-test]"}}
  log: {{kind: log}}
default_receiver: log
fallback_receiver: mail
rules:
  - name: deployments
    match: {{type: ["deployment.node.*"], env: [qa]}}
    receivers: [hook]
    group_wait_s: 2
    group_interval_s: 60
  - name: prod-failures
    match: {{type: ["deployment.failed"], env: [prod]}}
    receivers: [mail]
    group_wait_s: 0
  - name: broken-hook
    match: {{type: ["drift.detected"]}}
    receivers: [broken]
    group_wait_s: 0
  - name: slow-hook
    match: {{type: ["node.host_key_changed"]}}
    receivers: [slow]
    group_wait_s: 0
  - name: held
    match: {{type: ["changeset.created"]}}
    receivers: [hook]
    group_wait_s: 3
  - name: prod-web-changesets
    match: {{type: ["changeset.failed"], env: [prod], node: ["prod-web-*"]}}
    receivers: [hook]
    group_wait_s: 0
    escalate_after_s: 2
    escalate_to: [mail]
  - name: prod-db-changesets
    match: {{type: ["changeset.failed"], env: [prod], node: ["prod-db-*"]}}
    receivers: [hook]
    group_wait_s: 0
    escalate_after_s: 6
    escalate_to: [mail]
  - name: versions
    match: {{type: ["version.*"]}}
    receivers: [hook]
    group_wait_s: 0
"""

USERS = {
    "ada": {"token": "token-ada", "role": "responder"},
    "rita": {"token": "token-rita", "role": "reader"},
}


@dataclass
class World:
    tmp: Path
    urls: dict[str, str]
    port: int
    hooks: Hooks
    mailbox: Mailbox
    smtp_port: int
    process: subprocess.Popen[bytes] | None = None

    def env(self, rules: Path) -> dict[str, str]:
        p = "CONVEYOR_NOTIFIER_"
        return {
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            f"{p}ENVS": json.dumps(self.urls),
            f"{p}HTTP_PORT": str(self.port),
            f"{p}LOG_FORMAT": "json",
            f"{p}STATE_DIR": str(self.tmp / "state"),
            f"{p}RULES_FILE": str(rules),
            f"{p}SMTP_PORT": str(self.smtp_port),
            f"{p}RETRY_BASE_S": "0.2",
            f"{p}LINK_BASE": "http://deployer.example:8100",
            f"{p}BUS__RETRY_DELAYS_S": "[0.2, 0.5]",
            f"{p}BUS__RECONNECT_INTERVAL_S": "0.3",
            f"{p}USERS": json.dumps(USERS),
        }

    def start(self) -> None:
        with (self.tmp / "notifier.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "conveyor-notifier")],
                env=self.env(self.tmp / "rules.yaml"),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_healthy(self.port, self.process, timeout=30)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)

    def api(self, path: str, *, method: str = "GET", token: str = "token-ada", body: Any = None) -> Any:
        response = httpx.request(
            method,
            f"http://127.0.0.1:{self.port}{path}",
            headers={"Authorization": f"Bearer {token}"},
            json=body,
            timeout=10,
        )
        response.raise_for_status()
        return response.json()

    def cli(self, *args: str) -> Any:
        """``conveyor ARGS --json`` as ada; its JSON answer."""
        done = subprocess.run(
            [str(Path(sys.executable).parent / "conveyor"), *args, "--json"],
            env={
                "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                "CONVEYOR_NOTIFIER_URL": f"http://127.0.0.1:{self.port}",
                "CONVEYOR_NOTIFIER_TOKEN": "token-ada",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    async def publish(self, env: str, *payloads: Payload, correlation_id: Any = None) -> list[Envelope[Any]]:
        bus = Bus(env=env, url=self.urls[env], service="test", settings=BusSettings())
        await bus.connect()
        try:
            sent = []
            for payload in payloads:
                envelope = bus.wrap(
                    payload, actor="ada", **({"correlation_id": correlation_id} if correlation_id else {})
                )
                await bus.publish(envelope)
                sent.append(envelope)
            return sent
        finally:
            await bus.close()


@pytest.fixture(scope="module")
def world(rabbit: RabbitEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("notifier")
    vhosts = {env: f"notifier-{env}-{uuid4().hex[:8]}" for env in ("dev", "qa", "prod")}
    for vhost in vhosts.values():
        rabbit.create_vhost(vhost)
    hooks, server = serve_hooks()
    mailbox = Mailbox()
    smtp_port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    w = World(tmp, {e: rabbit.url_for(v) for e, v in vhosts.items()}, free_port(), hooks, mailbox, smtp_port)
    (tmp / "rules.yaml").write_text(RULES.format(port=hooks.port))
    try:
        w.start()
        yield w
    finally:
        w.stop()
        controller.stop()
        server.shutdown()
        server.server_close()
        for vhost in vhosts.values():
            rabbit.delete_vhost(vhost)


async def until(check: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


def example(message_type: str, **changes: Any) -> Payload:
    payload = EXAMPLES[message_type]
    return payload.model_copy(update=changes)


# -- the tests -------------------------------------------------------------------------------------


async def test_twenty_node_events_of_one_deployment_make_one_message(world: World) -> None:
    deployment = uuid4()
    events = [
        example("deployment.node.succeeded", node=f"qa-web-{i}", deployment_id=deployment)
        for i in range(1, 19)
    ] + [example("deployment.node.failed", node=f"qa-web-{i}", deployment_id=deployment) for i in (19, 20)]
    await world.publish("qa", *events, correlation_id=deployment)
    await until(lambda: world.hooks.posts("/hook"), "no message reached the webhook")
    await asyncio.sleep(1)  # nothing more may come for this group
    [post] = world.hooks.posts("/hook")
    for i in range(1, 21):
        assert f"qa-web-{i}" in post["message"], post
    sent = [n for n in world.api("/notifications") if n["receiver"] == "hook" and n["state"] == "sent"]
    assert len(sent) == 1
    assert len(sent[0]["events"]) == 20


async def test_an_email_reaches_the_smtp_server(world: World) -> None:
    await world.publish("prod", example("deployment.failed"))
    await until(lambda: world.mailbox.messages, "no email arrived")
    [mail] = world.mailbox.messages
    assert mail["To"] == "oncall@example.com"
    assert mail["Subject"].startswith("[conveyor-test]")
    assert "prod" in mail["Subject"]
    body = mail.get_payload(decode=True)
    assert isinstance(body, bytes)
    assert b"http://deployer.example:8100" in body
    world.mailbox.messages.clear()


async def test_a_duplicate_delivery_sends_nothing_twice(world: World) -> None:
    before = len(world.hooks.posts("/hook"))
    [envelope] = await world.publish("dev", example("changeset.created"))
    await until(lambda: len(world.hooks.posts("/hook")) == before + 1, "not sent", timeout=20)
    bus = Bus(env="dev", url=world.urls["dev"], service="test", settings=BusSettings())
    await bus.connect()
    try:
        await bus.publish(envelope)  # the very same message again
    finally:
        await bus.close()
    await asyncio.sleep(4)  # longer than the rule's group wait
    assert len(world.hooks.posts("/hook")) == before + 1


async def test_failing_receivers_are_retried_then_the_fallback_gets_the_message(world: World) -> None:
    await world.publish("qa", example("drift.detected"), example("node.host_key_changed"))
    await until(
        lambda: len(world.mailbox.messages) >= 2, "the fallback did not get both messages", timeout=40
    )
    assert len(world.hooks.posts("/fail")) == 3  # the first try and two retries
    assert len(world.hooks.posts("/slow")) == 2  # the first try and one retry, each cut at the timeout
    notes = [m.get_payload(decode=True) for m in world.mailbox.messages]
    assert any(
        b"could not be delivered to broken after 3 attempt(s)" in n for n in notes if isinstance(n, bytes)
    )
    assert any(
        b"could not be delivered to slow after 2 attempt(s)" in n for n in notes if isinstance(n, bytes)
    )
    log = world.api("/deliveries?limit=200")
    broken = [d for d in log if d["receiver"] == "broken"]
    assert [d["outcome"] for d in sorted(broken, key=lambda d: d["attempt"])] == [
        "failed",
        "failed",
        "gave_up",
    ]
    assert any(d["receiver"] == "mail" and d["outcome"] == "sent" for d in log)
    world.mailbox.messages.clear()


async def test_a_notifier_killed_before_sending_sends_once_after_restart(world: World) -> None:
    before = len(world.hooks.posts("/hook"))
    [envelope] = await world.publish("dev", example("changeset.created", message="held back"))
    await until(
        lambda: any(str(envelope.id) in n["events"] for n in world.api("/notifications?state=waiting")),
        "the event never became a waiting notification",
        timeout=20,
    )
    world.stop(signal.SIGKILL)  # received and committed, not yet sent (the rule waits 3 s)
    world.start()
    await until(lambda: len(world.hooks.posts("/hook")) == before + 1, "not sent after the restart")
    await asyncio.sleep(4)
    assert len(world.hooks.posts("/hook")) == before + 1


async def test_the_same_report_twice_within_the_window_is_sent_once(world: World) -> None:
    """Two events with different message ids and correlation ids but the same facts: one message."""
    [first] = await world.publish("qa", example("version.blocked", reason="bad build 17"))
    await until(lambda: _posts_saying(world, "bad build 17"), "the first report was not sent")
    [again] = await world.publish("qa", example("version.blocked", reason="bad build 17"))
    await until(lambda: _received(world, again), "the second report never arrived")
    assert world.api(f"/events/{again.id}")["outcome"] == "duplicate"
    [other] = await world.publish("qa", example("version.blocked", reason="bad build 18"))
    await until(lambda: _received(world, other), "the third report never arrived")
    assert world.api(f"/events/{first.id}")["outcome"] == "routed"
    assert world.api(f"/events/{again.id}")["notifications"] == []
    await until(lambda: _posts_saying(world, "bad build 18"), "the third report was not sent")
    assert len(_posts_saying(world, "bad build 17")) == 1


def _received(world: World, envelope: Envelope[Any]) -> bool:
    response = httpx.get(
        f"http://127.0.0.1:{world.port}/events/{envelope.id}",
        headers={"Authorization": "Bearer token-rita"},
        timeout=10,
    )
    return response.status_code == 200


def _posts_saying(world: World, text: str) -> list[dict[str, Any]]:
    return [p for p in world.hooks.posts("/hook") if text in p.get("message", "") + p.get("title", "")]


def _mails_saying(world: World, text: str) -> list[Message]:
    return [m for m in world.mailbox.messages if text in str(m["Subject"]) + _body(m)]


def _body(mail: Message) -> str:
    payload = mail.get_payload(decode=True)
    return payload.decode() if isinstance(payload, bytes) else ""


def _alert_of(world: World, node: str) -> dict[str, Any] | None:
    return next((a for a in world.api("/alerts?state=all&env=prod") if f"node={node}" in a["key"]), None)


async def test_an_unacknowledged_alert_escalates_and_its_resolution_reaches_everyone(world: World) -> None:
    await world.publish("prod", example("changeset.failed", node="prod-web-1", deployment_id=None))
    await until(lambda: _alert_of(world, "prod-web-1"), "the failure opened no alert")
    alert = _alert_of(world, "prod-web-1")
    assert alert is not None
    assert alert["state"] == "open"
    assert alert["receivers"] == ["hook"]
    assert alert["escalate_to"] == ["mail"]
    await until(lambda: _mails_saying(world, "ESCALATED"), "the alert did not escalate", timeout=20)
    [escalation] = _mails_saying(world, "ESCALATED")
    assert "prod-web-1" in _body(escalation)
    assert f"conveyor alerts ack {alert['id']}" in _body(escalation)

    await world.publish("prod", example("changeset.applied", node="prod-web-1", deployment_id=None))
    await until(lambda: _mails_saying(world, "resolved:"), "the resolution was not mailed")
    await until(
        lambda: [p for p in _posts_saying(world, "resolved:") if "prod-web-1" in p["message"]],
        "the resolution did not reach the webhook",
    )
    shown = world.api(f"/alerts/{alert['id']}")
    assert shown["state"] == "resolved"
    assert shown["escalated_at"] is not None
    kinds = sorted((n["kind"], n["receiver"], n["state"]) for n in shown["notifications"])
    assert kinds == [
        ("escalation", "mail", "sent"),
        ("resolution", "hook", "sent"),
        ("resolution", "mail", "sent"),
    ]
    world.mailbox.messages.clear()


async def test_an_acknowledged_alert_does_not_escalate(world: World) -> None:
    await world.publish("prod", example("changeset.failed", node="prod-db-1", deployment_id=None))
    await until(lambda: _alert_of(world, "prod-db-1"), "the failure opened no alert")
    alert = _alert_of(world, "prod-db-1")
    assert alert is not None
    acked = world.cli("alerts", "ack", str(alert["id"]), "--comment", "restoring the replica")
    assert acked["state"] == "acknowledged"
    assert acked["acknowledged_by"] == "ada"
    assert acked["escalation_due_at"] is None
    listed = world.cli("alerts", "list", "--env", "prod")
    assert any(a["id"] == alert["id"] and a["state"] == "acknowledged" for a in listed)
    # Past the time it was due to escalate (6 s after opening), nothing was escalated.
    due = datetime.fromisoformat(alert["escalation_due_at"])
    await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 2)
    assert not [m for m in _mails_saying(world, "ESCALATED") if "prod-db-1" in _body(m)]
    assert world.api(f"/alerts/{alert['id']}")["escalated_at"] is None


def test_the_api_wants_a_token_and_the_right_role(world: World) -> None:
    base = f"http://127.0.0.1:{world.port}"
    assert httpx.get(f"{base}/alerts", timeout=10).status_code == 401
    assert (
        httpx.get(f"{base}/alerts", headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    )
    reader = {"Authorization": "Bearer token-rita"}
    assert httpx.get(f"{base}/alerts", headers=reader, timeout=10).status_code == 200
    refused = httpx.post(f"{base}/alerts/1/ack", headers=reader, json={}, timeout=10)
    assert refused.status_code == 403
    assert "rita is a reader" in refused.json()["detail"]
    bad = world.api  # a responder, but a matcher that is not a fact
    with pytest.raises(httpx.HTTPStatusError) as caught:
        bad("/silences", method="POST", body={"matchers": {"colour": "red"}, "duration_s": 60, "reason": "x"})
    assert caught.value.response.status_code == 422
    assert "'colour' is not a fact" in caught.value.response.json()["detail"]


async def test_a_silence_holds_notifications_back_and_records_them(world: World) -> None:
    silence = world.cli(
        "silence",
        "add",
        "--match",
        "type=version.unblocked",
        "--env",
        "dev",
        "--for",
        "2h",
        "--reason",
        "noisy",
    )
    assert silence["state"] == "active"
    assert silence["matchers"] == {"type": "version.unblocked", "env": "dev"}
    [held] = await world.publish("dev", example("version.unblocked", reason="held back by the silence"))
    [passed] = await world.publish("qa", example("version.unblocked", reason="qa is not silenced"))
    await until(lambda: _posts_saying(world, "qa is not silenced"), "the qa event was not sent")
    await until(
        lambda: any(str(held.id) in n["events"] for n in world.api("/notifications?state=silenced")),
        "the silenced event was not recorded as silenced",
    )
    assert not _posts_saying(world, "held back by the silence")
    [notification] = [n for n in world.api("/notifications?state=silenced") if str(held.id) in n["events"]]
    assert notification["silenced_by"] == silence["id"]
    [record] = [d for d in world.api("/deliveries?limit=500") if d["notification_id"] == notification["id"]]
    assert record["outcome"] == "silenced"
    assert record["detail"] == f"silence #{silence['id']} by ada: noisy"
    assert any(s["id"] == silence["id"] for s in world.cli("silence", "list"))
    del passed

    ended = world.cli("silence", "expire", str(silence["id"]))
    assert ended["state"] == "expired"
    assert ended["expired_by"] == "ada"
    assert all(s["id"] != silence["id"] for s in world.cli("silence", "list"))
    await world.publish("dev", example("version.unblocked", reason="after the silence"))
    await until(lambda: _posts_saying(world, "after the silence"), "sent nothing once the silence ended")


def test_a_rules_file_with_an_error_keeps_the_notifier_from_starting(world: World, tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text(RULES.format(port=1).replace("receivers: [mail]", "receivers: [pagerr]"))
    done = subprocess.run(
        [str(Path(sys.executable).parent / "conveyor-notifier")],
        env=world.env(bad) | {"CONVEYOR_NOTIFIER_HTTP_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "rule prod-failures" in done.stderr
    assert "pagerr" in done.stderr
