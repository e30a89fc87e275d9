"""The notifier's part of ``make demo``: its rules, a local SMTP sink, and what it told whom.

Every event of the demo goes to the notifier's log receiver, one message per deployment (events of
one correlation id within a second); the blocked version also goes by email to on-call, through an
SMTP server the demo runs on loopback (aiosmtpd), whose mailbox the demo prints at the end.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from conveyor.testing.services import free_port

__all__ = ["RULES", "Mailbox", "notifier_env", "show_notifications", "smtp_sink"]

RULES = """\
# The demo's notifications: all to the notifier's log (.demo/notifier.log), one message per
# deployment; a blocked version by email to on-call as well.
receivers:
  log: {kind: log}
  oncall-mail: {kind: email, to: [oncall@example.com], subject_prefix: "[conveyor demo]"}
default_receiver: log
fallback_receiver: log
rules:
  - name: blocked-versions
    match: {type: version.blocked}
    receivers: [oncall-mail]
    group_wait_s: 1
    continue: true
  - name: everything
    match: {}
    receivers: [log]
    group_wait_s: 1
    group_interval_s: 5
"""


class Mailbox:
    """What the demo's SMTP server received."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        del server, session
        with self._lock:
            self.messages.append(message_from_bytes(envelope.content))
        return "250 Message accepted"

    def received(self) -> list[Message]:
        with self._lock:
            return list(self.messages)


@contextlib.contextmanager
def smtp_sink() -> Iterator[tuple[Mailbox, int]]:
    """An SMTP server on loopback for the demo's email receiver: its mailbox and port."""
    mailbox, port = Mailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def notifier_env(
    log_dir: Path, *, smtp_port: int, users: dict[str, str], deployer_url: str
) -> dict[str, str]:
    (log_dir / "notifier-rules.yaml").write_text(RULES)
    p = "CONVEYOR_NOTIFIER_"
    return {
        f"{p}RULES_FILE": str((log_dir / "notifier-rules.yaml").resolve()),
        # its own database, not version-db's
        f"{p}DATABASE_URL": f"sqlite+aiosqlite:///{(log_dir / 'notifier.sqlite3').resolve()}",
        f"{p}USERS": json.dumps({name: {"token": t, "role": "responder"} for name, t in users.items()}),
        f"{p}SMTP_PORT": str(smtp_port),
        f"{p}LINK_BASE": deployer_url,
        f"{p}INVENTORY_FILE": str((log_dir / "inventory.yaml").resolve()),
    }


def _get(url: str, token: str) -> Any:
    response = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    response.raise_for_status()
    return response.json()


def _settled(base: str, token: str, timeout: float) -> None:
    """Wait until the notifier has nothing waiting (grouping holds messages for a second or so)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = _get(f"{base}/notifications?state=waiting", token) + _get(
            f"{base}/notifications?state=sending", token
        )
        if not pending:
            return
        time.sleep(0.2)


def show_notifications(console: Console, base: str, token: str, mailbox: Mailbox) -> bool:
    """Print the notifier's messages (log receiver), the email on-call got, and the open alerts;
    True if the blocked version reached the mailbox."""
    time.sleep(1.5)  # the last events of the story are still on their way to the notifier
    _settled(base, token, timeout=20)
    table = Table(
        "#", "to", "kind", "state", "subject", title="What the notifier told (log receiver and email)"
    )
    for row in reversed(_get(f"{base}/notifications?limit=200", token)):
        subject = escape(row["subject"] or "")
        table.add_row(str(row["id"]), row["receiver"], row["kind"], row["state"], subject)
    console.print(table)
    mails = mailbox.received()
    for mail in mails:
        body = mail.get_payload(decode=True)
        text = body.decode() if isinstance(body, bytes) else ""
        console.print(f"\n[bold]email[/] to {mail['To']}: {escape(str(mail['Subject']))}")
        console.print(escape("  " + "\n  ".join(text.strip().splitlines()[:12])))
    alerts = _get(f"{base}/alerts", token)
    console.print(
        f"\nopen alerts: {len(alerts)}" + escape("".join(f"\n  #{a['id']} {a['summary']}" for a in alerts))
    )
    return any("blocked" in str(m["Subject"]) for m in mails)
