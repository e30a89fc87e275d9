"""Where messages go: email over SMTP, any service Apprise reaches, or the log.

A receiver's ``send`` returns a short description of what was done, or raises
:class:`DeliveryError` saying whether another try may help. URLs are shown only through
:func:`mask`, which hides their passwords and tokens.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any, Protocol
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiosmtplib
import apprise

from conveyor.observability import get_logger
from conveyor_notifier.model import OutgoingMessage, Severity

__all__ = [
    "AppriseReceiver",
    "DeliveryError",
    "EmailReceiver",
    "LogReceiver",
    "Receiver",
    "SmtpSettings",
    "mask",
]


class DeliveryError(Exception):
    """A send that failed; ``retryable`` says whether trying again may help (timeouts, 5xx,
    connection refused: yes; 4xx, authentication refused, a bad address: no)."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Receiver(Protocol):
    name: str
    kind: str  # "email" | "apprise" | "log"

    async def send(self, message: OutgoingMessage) -> str:
        """Deliver ``message``; a short description of what was done, or :class:`DeliveryError`."""
        ...


# -- email ---------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpSettings:
    """The SMTP server every email receiver uses; ``timeout_s`` bounds each SMTP command."""

    host: str = "127.0.0.1"
    port: int = 25
    starttls: bool = False  # upgrade with STARTTLS (required when set; never tried when not)
    use_tls: bool = False  # implicit TLS, port 465
    username: str | None = None
    password: str | None = None
    sender: str = "conveyor@localhost"
    timeout_s: float = 10.0
    validate_certs: bool = True


class EmailReceiver:
    """A plain-text mail to fixed recipients; ``timeout_s`` bounds the whole send."""

    kind = "email"

    def __init__(
        self,
        name: str,
        *,
        to: Sequence[str],
        cc: Sequence[str] = (),
        subject_prefix: str = "[conveyor]",
        smtp: SmtpSettings,
        timeout_s: float = 10.0,
    ) -> None:
        if not to:
            raise ValueError(f"email receiver {name!r} has no recipients: give it at least one 'to' address")
        if smtp.starttls and smtp.use_tls:
            raise ValueError(
                "SMTP STARTTLS and implicit TLS exclude each other: set starttls (port 587) "
                "or use_tls (port 465), not both"
            )
        self.name = name
        self.to = tuple(to)
        self.cc = tuple(cc)
        self.subject_prefix = subject_prefix
        self.smtp = smtp
        self.timeout_s = timeout_s

    def compose(self, message: OutgoingMessage) -> EmailMessage:
        """The mail for ``message``: From, To, Cc, Subject, Date, Message-ID and a text/plain body."""
        subject = " ".join(f"{self.subject_prefix} {message.subject}".split())
        mail = EmailMessage()
        mail["From"] = self.smtp.sender
        mail["To"] = ", ".join(self.to)
        if self.cc:
            mail["Cc"] = ", ".join(self.cc)
        mail["Subject"] = subject
        mail["Date"] = format_datetime(datetime.now(UTC))
        # An explicit domain: make_msgid() would otherwise ask DNS for this host's FQDN.
        mail["Message-ID"] = make_msgid(domain=self.smtp.sender.rpartition("@")[2] or "localhost")
        mail["X-Conveyor-Kind"] = message.kind
        mail["X-Conveyor-Severity"] = str(message.severity)
        if message.severity is Severity.CRITICAL:
            mail["Importance"] = "high"
        mail.set_content(message.body, charset="utf-8")
        return mail

    async def send(self, message: OutgoingMessage) -> str:
        recipients = [*self.to, *self.cc]
        smtp = self.smtp
        try:
            async with asyncio.timeout(self.timeout_s):
                refused, response = await aiosmtplib.send(
                    self.compose(message),
                    sender=smtp.sender,
                    recipients=recipients,
                    hostname=smtp.host,
                    port=smtp.port,
                    username=smtp.username,
                    password=smtp.password,
                    start_tls=smtp.starttls,
                    use_tls=smtp.use_tls,
                    validate_certs=smtp.validate_certs,
                    timeout=smtp.timeout_s,
                )
        except (aiosmtplib.SMTPException, OSError) as exc:  # TimeoutError is an OSError
            raise _smtp_failure(exc, f"{smtp.host}:{smtp.port}", self.timeout_s) from exc
        accepted = len(recipients) - len(refused)
        done = f"250 {response} to {_count(accepted, 'recipient')}"
        if refused:
            done += f" of {len(recipients)}; refused: " + "; ".join(
                f"{address} ({reply.code} {reply.message})" for address, reply in refused.items()
            )
        return done


def _smtp_failure(exc: Exception, server: str, timeout_s: float) -> DeliveryError:
    """What went wrong talking to ``server``, and whether another try may help (4xx and network: yes)."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        refused = "; ".join(f"{r.recipient} ({r.code} {r.message})" for r in exc.recipients)
        transient = any(400 <= r.code < 500 for r in exc.recipients)
        return DeliveryError(f"SMTP {server} refused every recipient: {refused}", retryable=transient)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return DeliveryError(
            f"SMTP {server} refused the login: {exc.code} {exc.message}; check the SMTP username and "
            "password",
            retryable=400 <= exc.code < 500,
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return DeliveryError(f"SMTP {server} answered {exc.code} {exc.message}", retryable=exc.code < 500)
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | aiosmtplib.SMTPConnectError):
        return DeliveryError(f"SMTP {server}: {exc}", retryable=True)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return DeliveryError(f"SMTP {server} closed the connection: {exc}", retryable=True)
    if isinstance(exc, ssl.SSLError):
        return DeliveryError(
            f"TLS with SMTP {server} failed: {exc}; check starttls/use_tls against the port, and the "
            "server's certificate (validate_certs)",
            retryable=False,
        )
    if isinstance(exc, TimeoutError):
        return DeliveryError(f"SMTP {server}: no answer within {timeout_s:g} s", retryable=True)
    if isinstance(exc, OSError):
        return DeliveryError(f"SMTP {server}: {exc}", retryable=True)
    # What is left is the server lacking what the settings ask for (AUTH, STARTTLS): configuration.
    return DeliveryError(f"SMTP {server}: {exc}", retryable=False)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# -- apprise -------------------------------------------------------------------

_NOTIFY_TYPE = {
    Severity.INFO: apprise.NotifyType.INFO,
    Severity.WARNING: apprise.NotifyType.WARNING,
    Severity.CRITICAL: apprise.NotifyType.FAILURE,
}
# Apprise stops waiting at timeout_s and reports which services timed out; this backstop only
# matters if it does not.
_BACKSTOP_S = 1.0


class AppriseReceiver:
    """Every URL apprise understands (Slack, Teams, ntfy, webhooks ...), sent to at once.

    The notification type follows the severity (info, warning, critical → failure), except that a
    resolution is a success. A send succeeds only if every URL took it; on a retry all URLs are sent
    to again.
    """

    kind = "apprise"

    def __init__(self, name: str, *, urls: Sequence[str], timeout_s: float = 10.0) -> None:
        if not urls:
            raise ValueError(f"apprise receiver {name!r} has no URLs: give it at least one")
        self.name = name
        self.timeout_s = timeout_s
        self._apprise = apprise.Apprise(asset=apprise.AppriseAsset(app_id="Conveyor"))
        self._shown: dict[str, str] = {}  # apprise's privacy URL of a service → how we show it
        for url in urls:
            service = apprise.Apprise.instantiate(url, asset=self._apprise.asset)
            if service is None:
                raise ValueError(
                    f"apprise receiver {name!r}: apprise cannot use {mask(url)} (an unknown scheme, or a "
                    "part the service needs is missing or malformed); see "
                    "https://github.com/caronc/apprise/wiki for each service's URL"
                )
            self._apprise.add(service)
            self._shown[_privacy_url(service)] = mask(url)
        self.urls = tuple(self._shown.values())  # masked, for display

    async def send(self, message: OutgoingMessage) -> str:
        notify_type = (
            apprise.NotifyType.SUCCESS if message.kind == "resolution" else _NOTIFY_TYPE[message.severity]
        )
        try:
            result = await asyncio.wait_for(
                self._apprise.async_notify(
                    body=message.body,
                    title=message.subject,
                    notify_type=notify_type,
                    body_format=apprise.NotifyFormat.TEXT,
                    timeout=self.timeout_s,
                ),
                timeout=self.timeout_s + _BACKSTOP_S,
            )
        except TimeoutError:
            raise DeliveryError(
                f"apprise: no answer within {self.timeout_s:g} s from {', '.join(self.urls)}", retryable=True
            ) from None
        with result:
            outcomes = list(result)
            failed = [service for service in outcomes if not service]
            if result and not failed:
                return f"apprise: {len(outcomes)} of {len(self.urls)} URLs"
            if not outcomes:  # apprise refused the message itself, before any service
                why = "; ".join(entry.message for entry in result.call_logs()) or result.status.name
                raise DeliveryError(f"apprise sent nothing: {why}", retryable=True)
            reasons = "; ".join(self._failure(service) for service in failed)
            raise DeliveryError(
                f"apprise: {len(outcomes) - len(failed)} of {len(self.urls)} URLs; failed: {reasons}",
                retryable=True,
            )

    def _failure(self, service: Any) -> str:
        shown = self._shown.get(service.url, mask(service.url))
        if service.status == apprise.AppriseResultStatus.TIMEOUT:
            return f"{shown} (no answer within {self.timeout_s:g} s)"
        complaints = [e.message for e in service.logs() if e.level in {"WARNING", "ERROR", "CRITICAL"}]
        return f"{shown} ({complaints[-1] if complaints else service.status.name.lower()})"


def _privacy_url(service: Any) -> str:
    """The service's own masked URL (apprise knows which of its parts are secret)."""
    return str(service.url(privacy=True))


# Query parameters apprise turns into HTTP headers (+), drops (-) or puts in the payload (:).
_PASSTHROUGH_PREFIXES = ("+", "-", ":")
_SECRET_NAME = re.compile(r"pass|secret|token|key|auth|sig|cred|session|bearer", re.IGNORECASE)


def mask(url: str) -> str:
    """``url`` fit for messages and logs: its passwords, tokens and keys hidden.

    An URL apprise can load is shown as its service masks it (``url(privacy=True)``: a password as
    ``****``, a token as its first and last characters, ``T...Q``), with only the query parameters
    the URL itself gave. Any other URL keeps its scheme, host, port and user name, its password
    becoming ``***``. In both, ``***`` also replaces path segments that look like tokens (16
    characters or more, or 8 or more mixing upper case, lower case and digits) and the values of
    query parameters named like secrets or passed through as headers (``+name``) or payload
    (``:name``).
    """
    service = apprise.Apprise.instantiate(url)
    if service is None:
        return _mask_parts(url, keep_params=None)
    return _mask_parts(_privacy_url(service), keep_params=_param_names(url))


def _mask_parts(url: str, *, keep_params: set[str] | None) -> str:
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 -- raises ValueError when the port is not a number
    except ValueError:  # an unreadable port or address: show no more than the scheme
        scheme = url.partition("://")[0].strip()
        return f"{scheme}://***" if scheme.isalnum() else "***"
    netloc = parts.netloc.rpartition("@")[2]  # host and port as written (hostname would lower-case)
    if parts.username is not None:
        user = "***" if _looks_secret(parts.username) else parts.username
        netloc = f"{user}{'' if parts.password is None else ':***'}@{netloc}"
    path = "/".join(
        "***" if _looks_secret(unquote(segment)) else segment for segment in parts.path.split("/")
    )
    params = []
    for name, value in _params(parts.query):
        if keep_params is not None and name.lower() not in keep_params:
            continue  # apprise's defaults, added by url(): noise
        secret = name.startswith(_PASSTHROUGH_PREFIXES) or _SECRET_NAME.search(name) or _looks_secret(value)
        params.append(f"{quote(name, safe='+-:')}={'***' if secret else quote(value, safe='')}")
    return urlunsplit((parts.scheme, netloc, path, "&".join(params), ""))


def _params(query: str) -> list[tuple[str, str]]:
    # unquote, not unquote_plus: a leading "+" names a header in apprise URLs.
    pairs = (item.partition("=") for item in query.split("&") if item)
    return [(unquote(name), unquote(value)) for name, _, value in pairs]


def _param_names(url: str) -> set[str]:
    return {name.lower() for name, _ in _params(url.partition("?")[2].partition("#")[0])}


def _looks_secret(word: str) -> bool:
    if len(word) >= 16:
        return True
    kinds = (any(c.isupper() for c in word), any(c.islower() for c in word), any(c.isdigit() for c in word))
    return len(word) >= 8 and all(kinds)


# -- log -----------------------------------------------------------------------

_LOG_LEVEL = {
    Severity.INFO: logging.INFO,
    Severity.WARNING: logging.WARNING,
    Severity.CRITICAL: logging.ERROR,
}


class LogReceiver:
    """One structured log line per message (at the severity's level); it never fails."""

    kind = "log"

    def __init__(self, name: str) -> None:
        self.name = name
        self._log = get_logger("conveyor_notifier.receivers")

    async def send(self, message: OutgoingMessage) -> str:
        self._log.log(
            _LOG_LEVEL[message.severity],
            "notification_logged",
            receiver=self.name,
            subject=message.subject,
            kind=message.kind,
            severity=str(message.severity),
            link=message.link,
            body=message.body,
        )
        return "logged"
