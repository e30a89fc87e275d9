"""Signed privileged commands: the deployment server signs, node agents verify.

Privileged commands (``changeset.apply``, ``firewall.disable``,
``firewall.enable``) carry a ``CommandAuthorization`` in their payload. The
deployment server fills it with :meth:`SigningKey.sign`; an agent calls
:meth:`Verifier.verify` before acting and refuses anything forged, expired,
replayed or addressed to another node.

The scheme
----------
* **Keys** are Ed25519. A key's id is ``ed25519:`` followed by the first 16 hex
  digits of the sha256 of its raw 32-byte public key, so an id always names
  exactly one key and agents can check that a trusted-keys line is coherent.
  The private key lives in a PEM (PKCS#8, unencrypted) file of mode 0600.
* **A public key line**, as printed by ``conveyor keys`` and stored one per line
  in an agent's trusted-keys file, is ``<key id> <base64 of the raw public key>``
  optionally followed by a free-text comment::

      ed25519:3f9a0c1d2b4e6f70 q1mJ0t0Yy3b9wz0YUo0pE2j0m1bqJX8xk3mY2a4dJkQ= deployer prod 2026

* **What is signed** is :func:`canonical_bytes`: compact JSON, keys sorted,
  ASCII only, of::

      {"scheme": "conveyor-ed25519/1", "type": ..., "schema_version": ...,
       "env": ..., "actor": ..., "payload": {... "authorization": {role,
       expires_at, nonce, key_id} ...}}

  The payload is the model dumped in JSON mode, with only
  ``authorization.signature`` removed: the role, the expiry, the nonce and the
  key id are all covered. ``scheme`` separates these signatures from anything
  else the key might ever sign and versions the canonical form. The envelope's
  ``type``/``schema_version`` fix how the payload is read, ``env`` stops a
  command signed for qa from being replayed into prod, and ``actor`` is who the
  command runs for.

  The envelope's ``id``, ``occurred_at``, ``source``, ``correlation_id`` and
  ``causation_id`` are *not* signed: they describe the delivery, not the order.
  An outbox re-publishing or a broker redelivering the same message must still
  verify, and none of them stops a replay anyway (an attacker copies them along
  with the signature). Replays are stopped by the **nonce**: 32 random hex
  digits, recorded by each agent in its :class:`NonceStore` until the command
  expires, so the same signed command is executed at most once per agent.

  Because the agent re-serialises the payload it parsed, both sides must read
  the payload with the same model: adding a field to a signed command (even one
  with a default) needs a new ``schema_version``, or mixed versions refuse each
  other's commands as ``forged``.
* **Expiry** is an absolute ``expires_at`` set to ``now + ttl``. Agents refuse a
  command past ``expires_at + clock_skew_s`` (``expired``) and one whose expiry
  lies more than ``max_ttl_s + clock_skew_s`` ahead (``too_long``): a key cannot
  mint long-lived commands that agents would have to remember forever.
* **Check order**: the signature and everything it covers (key, signature, node,
  env, expiry, role) first, the nonce **last**, so a forged or otherwise refused
  command never burns the nonce of a genuine one.
* **Consumption**: a command that passed :meth:`Verifier.verify` has its nonce
  recorded (durably) before the agent acts. If handling then fails, or the agent
  crashes half-way, the command is still consumed: a redelivery of it is refused
  as ``replayed`` and the deployment server has to send a new, freshly signed
  command. Executing a privileged command twice is worse than asking again.
* **Rotation**: an agent trusts a *set* of keys. Add the new key to every node,
  switch the server to it, then remove the old one (``conveyor keys rotate``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from conveyor.contracts.common import CommandAuthorization
from conveyor.contracts.envelope import Envelope, Payload
from conveyor.pkgvcs.storage import atomic_write, fsync_dir

__all__ = [
    "SCHEME",
    "UNSIGNED",
    "CommandRefused",
    "InvalidFile",
    "NonceStore",
    "PublicKey",
    "RefusalReason",
    "SigningError",
    "SigningKey",
    "TrustedKeys",
    "Verifier",
    "canonical_bytes",
    "key_id_for",
    "unsigned_authorization",
]

SCHEME: Final = "conveyor-ed25519/1"
UNSIGNED: Final = "unsigned"
"""``key_id`` and ``signature`` of a placeholder authorization, before signing."""

_KEY_ID_PREFIX = "ed25519:"
_KEY_ID = re.compile(r"^ed25519:[0-9a-f]{16}$")
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
_OWNER = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a message id (a UUID), "-" for none
_SIGNATURE_BYTES = 64
_PUBLIC_KEY_BYTES = 32

P = TypeVar("P", bound=Payload)


class SigningError(Exception):
    """Base of this module's errors."""


class InvalidFile(SigningError):
    """A key, trusted-keys or nonce file that cannot be used; the message names file (and line)."""


class RefusalReason(StrEnum):
    """Why an agent refused a privileged command."""

    UNSIGNED = "unsigned"
    """The command carries no authorization, or only the unsigned placeholder."""
    MALFORMED = "malformed"
    """The authorization is not in the form the signer produces (key id, nonce, base64 signature)."""
    UNKNOWN_KEY = "unknown_key"
    """Signed with a key this agent does not trust."""
    FORGED = "forged"
    """The signature does not match: the command was altered or not signed by that key."""
    WRONG_NODE = "wrong_node"
    """Addressed to another node."""
    WRONG_ENV = "wrong_env"
    """Signed for another environment."""
    EXPIRED = "expired"
    """Past its ``expires_at`` (plus the allowed clock skew)."""
    TOO_LONG = "too_long"
    """Expires further ahead than the agent's ``max_ttl_s`` (plus skew) allows."""
    ROLE = "role"
    """Signed for a role this agent does not accept."""
    REPLAYED = "replayed"
    """Its nonce was already used: a replay, or a redelivery of a command already consumed."""


class CommandRefused(SigningError):
    """``Verifier.verify`` refused a command; ``reason`` for metrics, ``detail`` for people."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# -- the canonical form ----------------------------------------------------------------


def _authorization(payload: Payload) -> CommandAuthorization | None:
    value = getattr(payload, "authorization", None)
    return value if isinstance(value, CommandAuthorization) else None


def canonical_bytes(envelope: Envelope[Any]) -> bytes:
    """The exact bytes signed for ``envelope`` (see the module docstring for what is in them)."""
    payload = envelope.payload
    if not isinstance(payload, Payload) or _authorization(payload) is None:
        raise TypeError(f"{envelope.type} carries no authorization: it is not a signed command")
    body = payload.model_dump(mode="json")
    del body["authorization"]["signature"]
    document = {
        "scheme": SCHEME,
        "type": envelope.type,
        "schema_version": envelope.schema_version,
        "env": envelope.env,
        "actor": envelope.actor,
        "payload": body,
    }
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def unsigned_authorization() -> CommandAuthorization:
    """A placeholder to build a command with; :meth:`SigningKey.sign` replaces it."""
    return CommandAuthorization(
        role=UNSIGNED,
        expires_at=datetime(1970, 1, 1, tzinfo=UTC),
        nonce="0" * 32,
        key_id=UNSIGNED,
        signature=UNSIGNED,
    )


# -- keys ------------------------------------------------------------------------------


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_for(raw_public_key: bytes) -> str:
    """``ed25519:`` + the first 16 hex digits of sha256(raw public key)."""
    return _KEY_ID_PREFIX + hashlib.sha256(raw_public_key).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    """A public key as agents trust it: its id, the key, and an optional comment."""

    key_id: str
    raw: bytes
    comment: str = ""

    @classmethod
    def from_raw(cls, raw: bytes, comment: str = "") -> PublicKey:
        if len(raw) != _PUBLIC_KEY_BYTES:
            raise ValueError(f"an Ed25519 public key is {_PUBLIC_KEY_BYTES} bytes, not {len(raw)}")
        Ed25519PublicKey.from_public_bytes(raw)  # ValueError if it is not a key
        return cls(key_id_for(raw), raw, " ".join(comment.split()))

    @classmethod
    def parse(cls, line: str) -> PublicKey:
        """Read ``<key id> <base64 raw key> [comment]``; ``ValueError`` saying what is wrong."""
        parts = line.strip().split(None, 2)
        if len(parts) < 2:
            raise ValueError("expected '<key id> <base64 public key>', optionally followed by a comment")
        key_id, encoded = parts[0], parts[1]
        if not _KEY_ID.match(key_id):
            raise ValueError(f"{key_id!r} is not a key id (ed25519: and 16 hex digits)")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise ValueError(f"the public key of {key_id} is not valid base64") from None
        key = cls.from_raw(raw, parts[2] if len(parts) > 2 else "")
        if key.key_id != key_id:
            raise ValueError(f"the key id says {key_id} but the key's id is {key.key_id}")
        return key

    def line(self) -> str:
        text = f"{self.key_id} {base64.b64encode(self.raw).decode('ascii')}"
        return f"{text} {self.comment}" if self.comment else text

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True


def _write_private(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write a 0600 file atomically; without ``overwrite`` fail with FileExistsError if present.

    The temporary file is created 0600 (never readable by others, not even for a
    moment) and linked into place, which fails if ``path`` exists: no race
    between checking and writing.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # whatever the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)


class SigningKey:
    """The deployment server's Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public = PublicKey.from_raw(_raw_public(private_key.public_key()))

    @property
    def key_id(self) -> str:
        return self.public.key_id

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path | str) -> SigningKey:
        """Read a PEM (PKCS#8) Ed25519 private key; ``InvalidFile`` if it is something else.

        A missing file raises ``FileNotFoundError``. The file's mode is not
        checked here (secrets mounted by an orchestrator are often 0444);
        ``conveyor keys show`` warns about keys readable by others.
        """
        path = Path(path)
        data = path.read_bytes()
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidFile(f"{path}: not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidFile(f"{path}: a {type(key).__name__}, not an Ed25519 key")
        return cls(key)

    def save(self, path: Path | str, *, overwrite: bool = False) -> None:
        """Write the key as PEM PKCS#8, mode 0600, atomically; ``FileExistsError`` unless ``overwrite``."""
        data = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_private(Path(path), data, overwrite=overwrite)

    def public_key_text(self) -> str:
        """``<key id> <base64 raw public key>``: the line to add to the agents' trusted keys."""
        return self.public.line()

    def sign(
        self,
        envelope: Envelope[P],
        *,
        role: str,
        ttl_s: float,
        now: datetime | None = None,
    ) -> Envelope[P]:
        """A copy of ``envelope`` whose ``payload.authorization`` is filled and signed.

        ``expires_at`` is ``now + ttl_s`` rounded up to the whole second; the
        nonce is 32 fresh random hex digits. The envelope keeps its id.
        """
        if _authorization(envelope.payload) is None:
            raise TypeError(f"{envelope.type} has no authorization field: it is not a signed command")
        if not ttl_s > 0:
            raise ValueError(f"ttl_s must be positive, not {ttl_s}")
        issued = now if now is not None else datetime.now(UTC)
        if issued.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        expires_at = datetime.fromtimestamp(math.ceil(issued.timestamp() + ttl_s), UTC)
        pending = CommandAuthorization(
            role=role,
            expires_at=expires_at,
            nonce=secrets.token_hex(16),
            key_id=self.key_id,
            signature=UNSIGNED,
        )
        unsigned = _with_authorization(envelope, pending)
        signature = self._private.sign(canonical_bytes(unsigned))
        signed = pending.model_copy(update={"signature": base64.b64encode(signature).decode("ascii")})
        return _with_authorization(envelope, signed)


def _with_authorization(envelope: Envelope[P], authorization: CommandAuthorization) -> Envelope[P]:
    payload = envelope.payload.model_copy(update={"authorization": authorization})
    return envelope.model_copy(update={"payload": payload})


# -- what an agent trusts --------------------------------------------------------------


class TrustedKeys:
    """The public keys an agent accepts commands from.

    The file holds one public key line per line (``<key id> <base64> [comment]``),
    blank lines and ``#`` comments. Editing keeps the other lines as they were.
    """

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        # Each line is either raw text (comment, blank) or a key.
        self._lines: list[str | PublicKey] = []
        self._keys: dict[str, PublicKey] = {}
        for key in keys:
            self.add(key)

    @classmethod
    def parse(cls, text: str, *, source: str = "<trusted keys>") -> TrustedKeys:
        """Read a trusted-keys file's text; ``InvalidFile`` naming ``source:line`` on a bad line."""
        trusted = cls()
        first_line: dict[str, int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                trusted._lines.append(line)
                continue
            try:
                key = PublicKey.parse(stripped)
            except ValueError as exc:
                raise InvalidFile(f"{source}:{number}: {exc}") from None
            if key.key_id in first_line:
                raise InvalidFile(
                    f"{source}:{number}: {key.key_id} is already listed on line {first_line[key.key_id]}"
                )
            first_line[key.key_id] = number
            trusted._lines.append(key)
            trusted._keys[key.key_id] = key
        return trusted

    @classmethod
    def load(cls, path: Path | str, *, missing_ok: bool = False) -> TrustedKeys:
        """Read ``path``; a missing file is an empty set only with ``missing_ok``.

        A world-writable file is refused: anyone on the node could add a key.
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except FileNotFoundError:
            if missing_ok:
                return cls()
            raise
        except UnicodeDecodeError:
            raise InvalidFile(f"{path}: not a UTF-8 text file") from None
        if mode & stat.S_IWOTH:
            raise InvalidFile(f"{path}: writable by everyone; chmod o-w it")
        return cls.parse(text, source=str(path))

    def add(self, key: PublicKey | str) -> bool:
        """Trust ``key`` (a ``PublicKey`` or a key line); False if it was already trusted."""
        if isinstance(key, str):
            key = PublicKey.parse(key)
        if key.key_id in self._keys:
            return False
        self._keys[key.key_id] = key
        self._lines.append(key)
        return True

    def remove(self, key_id: str) -> PublicKey:
        """Stop trusting ``key_id``; ``KeyError`` if it is not trusted."""
        key = self._keys.pop(key_id)
        self._lines = [line for line in self._lines if line is not key]
        return key

    def get(self, key_id: str) -> PublicKey | None:
        return self._keys.get(key_id)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __iter__(self) -> Iterator[PublicKey]:
        return iter(list(self._keys.values()))

    def __len__(self) -> int:
        return len(self._keys)

    def to_text(self) -> str:
        lines = [line if isinstance(line, str) else line.line() for line in self._lines]
        return "".join(f"{line}\n" for line in lines)

    def save(self, path: Path | str) -> None:
        """Write the file atomically (temporary file, fsync, rename)."""
        atomic_write(Path(path), self.to_text().encode("utf-8"))


# -- nonces ----------------------------------------------------------------------------


class NonceStore:
    """The nonces an agent has accepted, each kept until its command can no longer verify.

    Each nonce is recorded with the id of the message that carried it: the
    broker delivering that same message again (the agent crashed before it
    acked) is not a replay, the same nonce in any other message is.

    Persisted as an append-only log of ``<expires epoch> <nonce> <message id>`` lines, one
    fsync per record, so a restarted agent still refuses a replay. The log is
    compacted (expired entries dropped, rewritten atomically) when it is opened
    and whenever it has grown well beyond the live entries. One process per
    file: give each agent its own (``<state dir>/nonces.log``).

    A torn last line (a crash during an append) is ignored: its record never
    completed, so the command it belonged to was never acted on. Any other
    unreadable line raises ``InvalidFile``: the agent refuses to start rather
    than forget nonces.
    """

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._live: dict[str, int] = {}
        self._owners: dict[str, str] = {}
        self._load()
        self._compact()
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._appended = 0

    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return
        lines = data.split(b"\n")
        lines.pop()  # after the last newline: empty, or an incomplete append
        now = self._clock()
        for number, line in enumerate(lines, start=1):
            try:
                epoch_text, nonce, *owner = line.decode("ascii").split(" ")
                expires = int(epoch_text)
                if len(owner) > 1:
                    raise ValueError
            except ValueError:
                raise InvalidFile(
                    f"{self.path}:{number}: expected '<expires epoch> <nonce> <message id>'"
                ) from None
            if not _NONCE.match(nonce):
                raise InvalidFile(f"{self.path}:{number}: {nonce!r} is not a nonce")
            if expires >= now:
                self._live[nonce] = max(expires, self._live.get(nonce, 0))
                self._owners[nonce] = owner[0] if owner and owner[0] != "-" else ""

    def _compact(self) -> None:
        entries = "".join(
            f"{expires} {nonce} {self._owners.get(nonce) or '-'}\n" for nonce, expires in self._live.items()
        )
        atomic_write(self.path, entries.encode("ascii"))
        self._appended = 0

    def _prune(self, now: float) -> None:
        for nonce in [n for n, expires in self._live.items() if expires < now]:
            del self._live[nonce]
            self._owners.pop(nonce, None)

    def __len__(self) -> int:
        """Nonces still remembered (expired ones may linger until the next record)."""
        return len(self._live)

    def seen_or_record(self, nonce: str, expires_at: datetime, owner: str | None = None) -> bool:
        """True if ``nonce`` was already used (by another message than ``owner``); otherwise record
        it durably and return False.

        The nonce is remembered until ``expires_at`` (rounded up to the second).
        """
        if owner is not None and not _OWNER.fullmatch(owner):
            raise ValueError(f"{owner!r} is not a message id")
        if not _NONCE.match(nonce):
            raise ValueError(f"{nonce!r} is not a nonce (16-128 of A-Z a-z 0-9 _ -)")
        expires = math.ceil(expires_at.timestamp())
        with self._lock:
            if self._fd is None:
                raise ValueError(f"{self.path} is closed")
            if nonce in self._live:
                # even if expired since: such a command fails its expiry check anyway
                return owner is None or self._owners.get(nonce) != owner
            os.write(self._fd, f"{expires} {nonce} {owner or '-'}\n".encode("ascii"))
            os.fsync(self._fd)
            self._live[nonce] = expires
            self._owners[nonce] = owner or ""
            self._appended += 1
            # Rewrite once the appends since the last rewrite outnumber the entries: amortised O(1).
            if self._appended >= max(1024, len(self._live)):
                self._prune(self._clock())
                self._compact_locked()
            return False

    def _compact_locked(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._compact()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> NonceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- verification ----------------------------------------------------------------------


class Verifier:
    """An agent's check of privileged commands addressed to it.

    ``roles``: the roles accepted (None: any). ``env``: the agent's environment;
    when given, commands signed for another environment are refused.
    """

    def __init__(
        self,
        trusted: TrustedKeys,
        nonces: NonceStore,
        *,
        node: str,
        roles: set[str] | None = None,
        env: str | None = None,
        max_ttl_s: float = 3600,
        clock_skew_s: float = 60,
    ) -> None:
        self.trusted = trusted
        self.nonces = nonces
        self.node = node
        self.roles = frozenset(roles) if roles is not None else None
        self.env = env
        self.max_ttl_s = max_ttl_s
        self.clock_skew_s = clock_skew_s

    def verify(
        self,
        envelope: Envelope[Any],
        *,
        target_node: str | None = None,
        now: datetime | None = None,
    ) -> None:
        """Accept the command (and consume its nonce) or raise ``CommandRefused``.

        ``target_node`` is the node the command was delivered for (the routing
        key's last part, or the payload's ``node``); it and the payload's signed
        target field must both name this agent's node.

        Order: form, key, signature, node, env, expiry, role, then the nonce,
        so that only a command that would otherwise be executed burns its nonce.
        Once this returns, the command is consumed even if acting on it fails.
        """
        auth = self._authenticate(envelope)
        self._check_scope(envelope, auth, target_node, now if now is not None else datetime.now(UTC))
        # Last: kept until the command could no longer pass the expiry check.
        retain_until = auth.expires_at + timedelta(seconds=self.clock_skew_s)
        if self.nonces.seen_or_record(auth.nonce, retain_until, owner=str(envelope.id)):
            raise CommandRefused(RefusalReason.REPLAYED, f"nonce {auth.nonce} was already used")

    def _authenticate(self, envelope: Envelope[Any]) -> CommandAuthorization:
        """The authorization, once its form, key and signature check out."""
        auth = _authorization(envelope.payload)
        if auth is None or UNSIGNED in (auth.key_id, auth.signature):
            raise CommandRefused(RefusalReason.UNSIGNED, f"{envelope.type} carries no signature")
        if not _KEY_ID.match(auth.key_id):
            raise CommandRefused(RefusalReason.MALFORMED, f"{auth.key_id!r} is not a key id")
        if not _NONCE.match(auth.nonce):
            raise CommandRefused(RefusalReason.MALFORMED, "the nonce is not 16-128 of A-Z a-z 0-9 _ -")
        try:
            signature = base64.b64decode(auth.signature, validate=True)
        except binascii.Error:
            raise CommandRefused(RefusalReason.MALFORMED, "the signature is not base64") from None
        key = self.trusted.get(auth.key_id)
        if key is None:
            raise CommandRefused(
                RefusalReason.UNKNOWN_KEY, f"signed with {auth.key_id}, which this node does not trust"
            )
        if len(signature) != _SIGNATURE_BYTES or not key.verify(signature, canonical_bytes(envelope)):
            raise CommandRefused(RefusalReason.FORGED, f"the signature does not match {auth.key_id}")
        return auth

    def _check_scope(
        self, envelope: Envelope[Any], auth: CommandAuthorization, target_node: str | None, now: datetime
    ) -> None:
        """Node, environment, validity period and role of an authentic command."""
        payload = envelope.payload
        signed_target = getattr(payload, payload.target_field) if payload.target_field else None
        for addressed in (target_node, signed_target):
            if addressed is not None and addressed != self.node:
                raise CommandRefused(
                    RefusalReason.WRONG_NODE, f"addressed to {addressed}, this is {self.node}"
                )
        if self.env is not None and envelope.env != self.env:
            raise CommandRefused(
                RefusalReason.WRONG_ENV, f"signed for env {envelope.env}, this is {self.env}"
            )
        skew = timedelta(seconds=self.clock_skew_s)
        if now > auth.expires_at + skew:
            raise CommandRefused(RefusalReason.EXPIRED, f"expired at {auth.expires_at.isoformat()}")
        if auth.expires_at - now > timedelta(seconds=self.max_ttl_s) + skew:
            raise CommandRefused(
                RefusalReason.TOO_LONG,
                f"expires at {auth.expires_at.isoformat()}, more than {self.max_ttl_s:g}s ahead",
            )
        if self.roles is not None and auth.role not in self.roles:
            allowed = ", ".join(sorted(self.roles)) or "none"
            raise CommandRefused(
                RefusalReason.ROLE, f"role {auth.role!r} is not accepted here (accepted: {allowed})"
            )
