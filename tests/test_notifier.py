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
"""


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

    def api(self, path: str) -> Any:
        response = httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10)
        response.raise_for_status()
        return response.json()

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
