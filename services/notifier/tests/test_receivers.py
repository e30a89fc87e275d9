"""The receivers against real servers: aiosmtpd for mail (plain, and STARTTLS with AUTH), a local HTTP
server for apprise's JSON and form webhooks, and structlog for the log receiver."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import structlog
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conveyor.testing.services import free_port
from conveyor_notifier.model import OutgoingMessage, Severity
from conveyor_notifier.receivers import (
    AppriseReceiver,
    DeliveryError,
    EmailReceiver,
    LogReceiver,
    SmtpSettings,
    mask,
)

# Apprise loads its plugins on first use; its PGP support imports the standard library's deprecated
# imghdr (a DeprecationWarning on Python 3.11 and 3.12, ignored outside tests).
pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")

MESSAGE = OutgoingMessage(
    subject="[prod] deployment failed: web v42 (20 nodes: 3 failed)",
    body="3 of 20 nodes failed; the failure budget is 2.\n\n  prod-web-4  failed  health_check: 503 — ü\n",
    link="https://deploy.example/promotions/1",
    severity=Severity.CRITICAL,
)


# -- SMTP ------------------------------------------------------------------------


@dataclass
class Mailbox:
    """An aiosmtpd handler keeping what it receives; recipients named ``reject@`` or ``later@`` are
    refused with 550 and 451."""

    received: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_RCPT(  # noqa: N802 -- the hook names are aiosmtpd's
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if address.startswith("reject@"):
            return "550 5.1.1 no such mailbox"
        if address.startswith("later@"):
            return "451 4.3.0 try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        mail = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(mail, EmailMessage)
        self.received.append(mail)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


@pytest.fixture
def plain_smtp() -> Iterator[tuple[int, Mailbox]]:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, mailbox
    finally:
        controller.stop()


def self_signed(directory: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


def accept_ada(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    valid = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"ada",
        b"s3cret",
    )
    # handled=False: aiosmtpd then answers 535 itself (True would leave the client waiting)
    return AuthResult(success=valid, handled=False)


@pytest.fixture
def tls_smtp(tmp_path: Path) -> Iterator[tuple[int, Mailbox]]:
    mailbox = Mailbox()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=self_signed(tmp_path),
        require_starttls=True,
        authenticator=accept_ada,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield controller.port, mailbox
    finally:
        controller.stop()


async def tls_closed() -> None:
    """Let the loop finish closing the client's TLS connection (aiosmtplib returns while the TLS
    shutdown is still in flight); a loop closed before that leaves the socket open."""
    await asyncio.sleep(0.2)


def email_receiver(port: int, *, to: list[str] | None = None, **smtp: Any) -> EmailReceiver:
    settings = SmtpSettings(host="127.0.0.1", port=port, sender="conveyor@deploy.example", **smtp)
    return EmailReceiver("ops-mail", to=to or ["ops@example.com", "lead@example.com"], smtp=settings)


async def test_email_is_sent_with_its_headers_and_body(plain_smtp: tuple[int, Mailbox]) -> None:
    port, mailbox = plain_smtp
    receiver = EmailReceiver(
        "ops-mail",
        to=["ops@example.com"],
        cc=["lead@example.com"],
        smtp=SmtpSettings(host="127.0.0.1", port=port, sender="conveyor@deploy.example"),
    )

    done = await receiver.send(MESSAGE)

    assert done == "250 OK to 2 recipients"
    [mail] = mailbox.received
    assert mail["From"] == "conveyor@deploy.example"
    assert mail["To"] == "ops@example.com"
    assert mail["Cc"] == "lead@example.com"
    assert mail["Subject"] == "[conveyor] " + MESSAGE.subject
    assert mail["Message-ID"].endswith("@deploy.example>")
    assert mail["Date"].datetime.tzinfo is not None
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content_charset() == "utf-8"
    assert mail.get_content().replace("\r\n", "\n") == MESSAGE.body
    assert mailbox.envelopes == [("conveyor@deploy.example", ["ops@example.com", "lead@example.com"])]


async def test_a_refused_recipient_among_others_is_reported(plain_smtp: tuple[int, Mailbox]) -> None:
    port, mailbox = plain_smtp

    done = await email_receiver(port, to=["ops@example.com", "reject@example.com"]).send(MESSAGE)

    assert done.startswith("250 OK to 1 recipient of 2; refused: reject@example.com (550")
    assert mailbox.envelopes[0][1] == ["ops@example.com"]


@pytest.mark.parametrize(
    ("address", "retryable"), [("reject@example.com", False), ("later@example.com", True)]
)
async def test_refused_recipients_fail_by_the_reply_code(
    plain_smtp: tuple[int, Mailbox], address: str, retryable: bool
) -> None:
    port, mailbox = plain_smtp

    with pytest.raises(DeliveryError, match="refused every recipient") as raised:
        await email_receiver(port, to=[address]).send(MESSAGE)

    assert raised.value.retryable is retryable
    assert not mailbox.received


# aiosmtpd 1.4 sets its own deprecated Session.login_data after a successful AUTH.
@pytest.mark.filterwarnings("ignore:Session.login_data is deprecated:DeprecationWarning")
async def test_email_over_starttls_with_a_login(tls_smtp: tuple[int, Mailbox]) -> None:
    port, mailbox = tls_smtp
    receiver = email_receiver(port, starttls=True, validate_certs=False, username="ada", password="s3cret")

    assert await receiver.send(MESSAGE) == "250 OK to 2 recipients"
    await tls_closed()
    assert mailbox.received[0]["Subject"] == "[conveyor] " + MESSAGE.subject


async def test_a_wrong_password_is_not_retried(tls_smtp: tuple[int, Mailbox]) -> None:
    port, mailbox = tls_smtp
    receiver = email_receiver(port, starttls=True, validate_certs=False, username="ada", password="wrong")

    with pytest.raises(DeliveryError, match="refused the login: 535") as raised:
        await receiver.send(MESSAGE)
    await tls_closed()

    assert raised.value.retryable is False
    assert "wrong" not in str(raised.value)
    assert not mailbox.received


async def test_an_untrusted_certificate_is_not_retried(tls_smtp: tuple[int, Mailbox]) -> None:
    port, _ = tls_smtp
    receiver = email_receiver(port, starttls=True, username="ada", password="s3cret")

    with pytest.raises(DeliveryError, match="TLS with SMTP") as raised:
        await receiver.send(MESSAGE)
    await tls_closed()

    assert raised.value.retryable is False


async def test_nothing_listening_is_retried() -> None:
    with pytest.raises(DeliveryError) as raised:
        await email_receiver(free_port()).send(MESSAGE)

    assert raised.value.retryable is True


async def test_a_server_that_never_answers_times_out() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # no greeting: the client waits for one until it gives up

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    receiver = EmailReceiver("ops-mail", to=["ops@example.com"], smtp=SmtpSettings(port=port), timeout_s=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(DeliveryError) as raised:
            await receiver.send(MESSAGE)
        elapsed = time.monotonic() - started
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()

    assert raised.value.retryable is True
    assert elapsed < 0.5 + 2


def test_starttls_and_implicit_tls_together_are_refused() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        email_receiver(25, starttls=True, use_tls=True)


# -- apprise ---------------------------------------------------------------------


@dataclass
class Webhooks:
    """A local HTTP server: ``/ok/...`` answers 200, ``/fail/...`` 500, ``/hang/...`` not at all."""

    port: int
    requests: list[tuple[str, str, bytes]]  # path, content type, body
    release: threading.Event


@pytest.fixture
def webhooks() -> Iterator[Webhooks]:
    requests: list[tuple[str, str, bytes]] = []
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            requests.append((self.path, self.headers.get("Content-Type", ""), body))
            if self.path.startswith("/hang"):
                release.wait(30)
            self.send_response(500 if self.path.startswith("/fail") else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Webhooks(server.server_address[1], requests, release)
    finally:
        release.set()
        server.shutdown()
        server.server_close()


async def test_apprise_posts_to_every_url(webhooks: Webhooks) -> None:
    base = f"127.0.0.1:{webhooks.port}"
    receiver = AppriseReceiver("chat", urls=[f"json://{base}/ok/json", f"form://{base}/ok/form"])

    done = await receiver.send(MESSAGE)

    assert done == "apprise: 2 of 2 URLs"
    posted = {path: (content_type, body) for path, content_type, body in webhooks.requests}
    content_type, body = posted["/ok/json"]
    assert content_type.startswith("application/json")
    assert json.loads(body) | {"attachments": []} == {
        "version": "1.0",
        "title": MESSAGE.subject,
        "message": MESSAGE.body.rstrip(),  # apprise trims the body
        "type": "failure",
        "attachments": [],
    }
    content_type, body = posted["/ok/form"]
    form = parse_qs(body.decode())
    assert (form["title"], form["message"], form["type"]) == (
        [MESSAGE.subject],
        [MESSAGE.body.rstrip()],
        ["failure"],
    )


async def test_a_resolution_is_a_success_for_apprise(webhooks: Webhooks) -> None:
    receiver = AppriseReceiver("chat", urls=[f"json://127.0.0.1:{webhooks.port}/ok"])

    await receiver.send(OutgoingMessage(subject="resolved: x", body="y", kind="resolution"))

    assert json.loads(webhooks.requests[0][2])["type"] == "success"


async def test_a_server_error_is_retried_and_names_the_url(webhooks: Webhooks) -> None:
    base = f"127.0.0.1:{webhooks.port}"
    receiver = AppriseReceiver("chat", urls=[f"json://{base}/ok", f"json://bot:hunter22@{base}/fail"])

    with pytest.raises(DeliveryError) as raised:
        await receiver.send(MESSAGE)

    assert raised.value.retryable is True
    assert str(raised.value).startswith(f"apprise: 1 of 2 URLs; failed: json://bot:***@{base}/fail (")
    assert "500" in str(raised.value)
    assert "hunter22" not in str(raised.value)


async def test_a_server_that_never_answers_is_given_up_on_in_time(webhooks: Webhooks) -> None:
    receiver = AppriseReceiver("chat", urls=[f"json://127.0.0.1:{webhooks.port}/hang"], timeout_s=1.0)

    started = time.monotonic()
    with pytest.raises(DeliveryError, match="no answer within 1 s") as raised:
        await receiver.send(MESSAGE)

    assert time.monotonic() - started < 1.0 + 2
    assert raised.value.retryable is True


def test_an_url_apprise_cannot_use_is_refused_masked() -> None:
    with pytest.raises(ValueError, match="apprise cannot use") as raised:
        AppriseReceiver("chat", urls=["json://127.0.0.1/ok", "nosuchscheme://bot:hunter22@chat.example/room"])

    assert "nosuchscheme://bot:***@chat.example/room" in str(raised.value)
    assert "hunter22" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "shown", "hidden"),
    [
        (
            "json://bot:hunter22@hooks.example:8080/notify",
            "json://bot:***@hooks.example:8080/notify",
            "hunter22",
        ),
        ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ", "slack://T...2/A...D/T...Q", "TIiajkdnla"),
        ("json://hooks.example/in?+Authorization=Bearer%20abc&rto=2", "+Authorization=***", "abc"),
        ("jsons://hooks.example/services/T000/B000/XXXXXXXXXXXXXXXXXXXXXXXX", "/B000/***", "XXXXXXXX"),
        ("smtp://mailer:pa55word@mail.example:587", "smtp://mailer:***@mail.example:587", "pa55word"),
        ("https://hooks.example/in?format=json&api_key=k3y", "format=json&api_key=***", "k3y"),
    ],
)
def test_mask_hides_secrets(url: str, shown: str, hidden: str) -> None:
    masked = mask(url)

    assert shown in masked
    assert hidden not in masked


# -- log -------------------------------------------------------------------------


async def test_the_log_receiver_logs_one_line() -> None:
    with structlog.testing.capture_logs() as logs:
        done = await LogReceiver("audit").send(MESSAGE)

    assert done == "logged"
    assert logs == [
        {
            "event": "notification_logged",
            "log_level": "error",
            "receiver": "audit",
            "subject": MESSAGE.subject,
            "kind": "new",
            "severity": "critical",
            "link": MESSAGE.link,
            "body": MESSAGE.body,
        }
    ]
