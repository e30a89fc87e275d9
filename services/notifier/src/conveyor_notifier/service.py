"""The notifier's pipeline: an event in, messages to the right people out, each exactly once.

Receiving (one database transaction per event, committed before the broker gets its ack): the event
is written to the inbox under its message id — a redelivery finds it there and stops; an event with
the same fingerprint (type, environment, package, version, node, payload) as one received within
``DEDUP_WINDOW_S`` is recorded and goes no further; otherwise the rules give its routes, and for each
(group key, receiver) the event joins the notification still waiting for that group, or starts one:
due after the rule's ``group_wait_s``, or, when that group was notified less than ``group_interval_s``
ago, a follow-up due at that interval's end. So a 20-node deployment becomes one message, and the
nodes that answer later one follow-up.

Dispatching (a loop that sleeps until the next notification is due or a new one arrives): each due
notification, several at once (a slow receiver holds up only its own messages), is rendered from its
events, sent by its receiver, retried with backoff on retryable
errors up to the receiver's ``retries``, every attempt written to the delivery log; when it gives
up, the fallback receiver gets it with a note saying what failed. A notifier killed after receiving
and before sending finds the waiting notification at start and sends it then, once. Silences are
checked when a notification is due (:mod:`conveyor_notifier.silences`): what they match is recorded,
not sent.

Alerts (:mod:`conveyor_notifier.alerts`): an event that opens or resolves one does so in the same
transaction that receives it; the dispatch loop also wakes for the alerts whose escalation is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from conveyor.contracts import CATALOGUE, ContractError, Envelope
from conveyor.observability import get_logger
from conveyor.tasks import BackgroundTasks
from conveyor_notifier import alerts, silences
from conveyor_notifier.model import EventFacts, MessageKind, OutgoingMessage, Severity, facts_of
from conveyor_notifier.models import Delivery, InboxMessage, Notification, NotificationState, utcnow
from conveyor_notifier.receivers import DeliveryError, Receiver
from conveyor_notifier.retention import prune
from conveyor_notifier.rules import Route, RulesConfig, group_key, route
from conveyor_notifier.templates import TemplateRenderError, Templates

__all__ = ["Notifier", "fingerprint"]

log = get_logger(__name__)

# Payload keys that differ between two sendings of the same report (times, signatures, how long it
# took): left out of fingerprints. Ids that name a deployment, a changeset or a request stay in: two
# deployments are two reports, however alike.
_VOLATILE = frozenset({"id", "nonce", "signature", "duration_s", "steps", "audit_seq", "audit_hash"})


def fingerprint(facts: EventFacts) -> str:
    """What makes two events "the same report": type, env, package, version, node and the payload
    without times and the keys in ``_VOLATILE``."""
    payload = {k: v for k, v in facts.payload.items() if k not in _VOLATILE and not k.endswith("_at")}
    document = [facts.type, facts.env, facts.package, facts.version, facts.node, payload]
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def _plain(events: Sequence[EventFacts], *, kind: MessageKind, note: str) -> OutgoingMessage:
    """A message without templates, for when rendering failed: the events' facts, one per line."""
    first = events[0] if events else None
    subject = f"[{first.env}] {first.type}" if first else "[conveyor] an event"
    lines = [note, ""]
    for event in events:
        lines.append(
            f"{event.occurred_at.isoformat()} {event.env} {event.type} node={event.node or '-'} "
            f"package={event.package or '-'} version={event.version or '-'} actor={event.actor or '-'}"
        )
    severity = max((e.severity for e in events), key=lambda s: s.rank, default=Severity.INFO)
    return OutgoingMessage(subject=subject[:120], body="\n".join(lines), kind=kind, severity=severity)


class Notifier:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        rules: RulesConfig,
        receivers: Mapping[str, Receiver],
        templates: Templates,
        *,
        node_labels: Mapping[str, Mapping[str, str]] | None = None,
        dedup_window_s: float = 300.0,
        retry_base_s: float = 1.0,
        concurrency: int = 8,
        retention_s: float = 30 * 86_400,
    ) -> None:
        self.sessions = sessions
        self.rules = rules
        self.receivers = receivers
        self.templates = templates
        self.node_labels = node_labels or {}
        self.dedup_window_s = dedup_window_s
        self.retry_base_s = retry_base_s
        self.retention_s = retention_s
        self._sending = asyncio.Semaphore(concurrency)  # a slow receiver holds up only its own messages
        self._wake = asyncio.Event()
        self._receiving = asyncio.Lock()
        self._stop = asyncio.Event()
        self._background = BackgroundTasks()

    async def start(self) -> None:
        async with self.sessions.begin() as session:  # a send cut off by a crash: tried again
            interrupted = await session.scalars(
                select(Notification).where(Notification.state == NotificationState.SENDING)
            )
            for notification in interrupted:
                notification.state = NotificationState.WAITING
                log.warning(
                    "notification_resumed", notification=notification.id, receiver=notification.receiver
                )
        self._background.spawn("dispatch", self._dispatch_loop())
        self._background.spawn("prune", self._prune_loop())

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        await self._background.cancel_all()

    # -- receiving ---------------------------------------------------------------------------------------

    async def on_event(self, envelope: Envelope[Any]) -> None:
        facts = facts_of(envelope, self.node_labels)
        now = utcnow()
        fp = fingerprint(facts)
        try:
            # One event at a time: two events of one group received at once would each find no
            # waiting notification and start one each (SQLite reads outside a transaction).
            async with self._receiving, self.sessions.begin() as session:
                outcome, transition = await self._receive(session, envelope, facts, fp, now)
        except IntegrityError:  # the same message id, inserted by a concurrent delivery
            outcome, transition = "redelivered", "none"
        if outcome == "routed" or transition == "resolved":
            self._wake.set()
        if transition != "none":
            log.info("alert_" + transition, message_id=facts.message_id, type=facts.type, env=facts.env)
        log.debug("event_received", message_id=facts.message_id, type=facts.type, outcome=outcome)

    async def _receive(
        self, session: AsyncSession, envelope: Envelope[Any], facts: EventFacts, fp: str, now: datetime
    ) -> tuple[str, alerts.Transition]:
        if await session.scalar(select(InboxMessage.id).where(InboxMessage.message_id == facts.message_id)):
            return "redelivered", "none"
        window = now - timedelta(seconds=self.dedup_window_s)
        seen = await session.scalar(
            select(InboxMessage.id).where(InboxMessage.fingerprint == fp, InboxMessage.received_at >= window)
        )
        routes = route(self.rules, facts)
        signal = alerts.signal_of(facts)
        transition = await alerts.on_signal(session, signal, facts, routes, now) if signal else "none"
        # An event that opens or resolves an alert is never "the same report again".
        duplicate = seen is not None and transition not in ("opened", "resolved")
        outcome = "duplicate" if duplicate else ("routed" if routes else "ignored")
        session.add(
            InboxMessage(
                message_id=facts.message_id,
                type=facts.type,
                env=facts.env,
                fingerprint=fp,
                received_at=now,
                envelope=envelope.to_json().decode(),
                outcome=outcome,
            )
        )
        if outcome != "routed":
            return outcome, transition
        done: set[tuple[str, str]] = set()
        for found in routes:
            key = group_key(found, facts)
            for receiver in found.receivers:
                if (key, receiver) in done:
                    continue
                done.add((key, receiver))
                await self._join(session, (key, receiver), found, facts, now)
        return outcome, transition

    async def _join(
        self, session: AsyncSession, target: tuple[str, str], found: Route, facts: EventFacts, now: datetime
    ) -> None:
        key, receiver = target
        waiting = await session.scalar(
            select(Notification).where(
                Notification.group_key == key,
                Notification.receiver == receiver,
                Notification.state == NotificationState.WAITING,
                Notification.kind.in_(("new", "follow_up")),
            )
        )
        if waiting is not None:
            waiting.events = [*waiting.events, facts.message_id]
            return
        last_sent = await session.scalar(
            select(Notification.finished_at)
            .where(
                Notification.group_key == key,
                Notification.receiver == receiver,
                Notification.state == NotificationState.SENT,
                Notification.kind.in_(("new", "follow_up")),
            )
            .order_by(Notification.finished_at.desc())
            .limit(1)
        )
        kind: MessageKind = "new"
        due = now + timedelta(seconds=found.group_wait_s)
        if last_sent is not None and now - last_sent < timedelta(seconds=found.group_interval_s):
            kind, due = "follow_up", last_sent + timedelta(seconds=found.group_interval_s)
        session.add(
            Notification(
                group_key=key,
                receiver=receiver,
                rule=found.rule,
                kind=kind,
                state=NotificationState.WAITING,
                created_at=now,
                due_at=due,
                events=[facts.message_id],
                attempts=0,
            )
        )

    # -- keeping the database small ---------------------------------------------------------------------

    async def _prune_loop(self) -> None:
        while not self._stop.is_set():
            try:
                removed = await prune(self.sessions, utcnow() - timedelta(seconds=self.retention_s))
                if any(removed.values()):
                    log.info("pruned", **removed)
            except Exception:  # the database away for a moment: next hour
                log.exception("prune_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 3600)

    # -- dispatching -------------------------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                wait = await self.dispatch_due()
            except Exception:  # the database away for a moment: look again soon
                log.exception("dispatch_failed")
                wait = 2.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def dispatch_due(self) -> float | None:
        """Escalate the alerts that are due, send every notification that is due; seconds until the
        next of either (None: nothing waiting)."""
        async with self.sessions.begin() as session:
            escalated = await alerts.escalate_due(session, utcnow())
        if escalated:
            log.warning("alerts_escalated", count=escalated)
        while True:
            async with self.sessions.begin() as session:
                now = utcnow()
                due = await session.scalar(
                    select(Notification)
                    .where(Notification.state == NotificationState.WAITING, Notification.due_at <= now)
                    .order_by(Notification.due_at)
                    .limit(1)
                )
                if due is None:
                    upcoming = await session.scalar(
                        select(Notification.due_at)
                        .where(Notification.state == NotificationState.WAITING)
                        .order_by(Notification.due_at)
                        .limit(1)
                    )
                    escalation = await alerts.next_escalation(session)
                    times = [t for t in (upcoming, escalation) if t is not None]
                    return None if not times else max(0.05, (min(times) - now).total_seconds())
                due.state = NotificationState.SENDING
                notification_id = due.id
            self._background.spawn(f"deliver:{notification_id}", self._deliver_one(notification_id))

    async def _deliver_one(self, notification_id: int) -> None:
        async with self._sending:
            try:
                await self._deliver(notification_id)
            except Exception as exc:  # a bug: the fallback gets it, rather than nobody
                log.exception("delivery_crashed", notification=notification_id)
                with contextlib.suppress(Exception):  # the database away: "sending", resumed at start
                    error = f"the notifier failed: {type(exc).__name__}: {exc}"
                    await self._finish(notification_id, NotificationState.FAILED, 0, "", error)
                    async with self.sessions() as session:
                        receiver = (await session.get_one(Notification, notification_id)).receiver
                    await self._fall_back(notification_id, receiver, 0, error)

    async def _events(self, session: AsyncSession, message_ids: Sequence[str]) -> list[EventFacts]:
        rows = await session.scalars(select(InboxMessage).where(InboxMessage.message_id.in_(message_ids)))
        by_id: dict[str, EventFacts] = {}
        for row in rows:
            try:
                by_id[row.message_id] = facts_of(CATALOGUE.decode(row.envelope.encode()), self.node_labels)
            except ContractError as exc:
                log.error("inbox_entry_unreadable", message_id=row.message_id, error=str(exc))
        return [by_id[m] for m in message_ids if m in by_id]

    async def _deliver(self, notification_id: int) -> None:
        async with self.sessions.begin() as session:
            notification = await session.get_one(Notification, notification_id)
            events = await self._events(session, notification.events)
            receiver_name, kind, note = notification.receiver, notification.kind, notification.note
            events, silence = silences.unsilenced(events, await silences.active(session, utcnow()), kind)
            if silence is not None:
                silences.hold_back(session, notification, silence)
        if silence is not None:
            log.info("notification_silenced", notification=notification_id, silence=silence.id)
            return
        try:
            message = self.templates.render(events, kind=cast(MessageKind, kind), note=note)
        except (TemplateRenderError, ValueError) as exc:  # a broken template, or no readable event
            log.error("template_failed", notification=notification_id, error=str(exc)[:500])
            message = _plain(events, kind=cast(MessageKind, kind), note=f"(the template failed: {exc})")
        receiver = self.receivers.get(receiver_name)
        retries = self._retries(receiver_name)
        attempt, error = 0, "no such receiver"
        while receiver is not None:
            attempt += 1
            try:
                detail = await receiver.send(message)
            except DeliveryError as exc:
                error = str(exc)
                last = not exc.retryable or attempt > retries
                await self._record(
                    notification_id,
                    receiver_name,
                    attempt,
                    outcome="gave_up" if last else "failed",
                    detail=error,
                    subject=message.subject,
                )
                if last:
                    break
                await asyncio.sleep(min(self.retry_base_s * 2 ** (attempt - 1), 60.0))
                continue
            await self._record(
                notification_id,
                receiver_name,
                attempt,
                outcome="sent",
                detail=detail,
                subject=message.subject,
            )
            await self._finish(notification_id, NotificationState.SENT, attempt, message.subject, None)
            log.info(
                "notification_sent", notification=notification_id, receiver=receiver_name, attempts=attempt
            )
            return
        await self._finish(notification_id, NotificationState.FAILED, attempt, message.subject, error)
        log.error(
            "notification_failed", notification=notification_id, receiver=receiver_name, error=error[:500]
        )
        await self._fall_back(notification_id, receiver_name, attempt, error)

    def _retries(self, receiver: str) -> int:
        config = self.rules.receivers.get(receiver)
        return int(getattr(config, "retries", 3)) if config is not None else 0

    async def _record(
        self, notification_id: int, receiver: str, attempt: int, *, outcome: str, detail: str, subject: str
    ) -> None:
        async with self.sessions.begin() as session:
            session.add(
                Delivery(
                    notification_id=notification_id,
                    at=utcnow(),
                    receiver=receiver,
                    attempt=attempt,
                    outcome=outcome,
                    detail=detail[:4000],
                    subject=subject,
                )
            )

    async def _finish(
        self, notification_id: int, state: str, attempts: int, subject: str, error: str | None
    ) -> None:
        async with self.sessions.begin() as session:
            notification = await session.get_one(Notification, notification_id)
            notification.state, notification.attempts = state, attempts
            notification.subject, notification.last_error = subject, error
            notification.finished_at = utcnow()

    async def _fall_back(self, notification_id: int, receiver: str, attempts: int, error: str) -> None:
        fallback = self.rules.fallback_receiver
        async with self.sessions.begin() as session:
            original = await session.get_one(Notification, notification_id)
            if fallback is None or fallback == receiver or original.kind == "fallback":
                return
            session.add(
                Notification(
                    group_key=original.group_key,
                    receiver=fallback,
                    rule=original.rule,
                    kind="fallback",
                    state=NotificationState.WAITING,
                    created_at=utcnow(),
                    due_at=utcnow(),
                    events=list(original.events),
                    attempts=0,
                    note=f"This message could not be delivered to {receiver} after {attempts} "
                    f"attempt(s): {error[:500]}",
                )
            )
        self._wake.set()
