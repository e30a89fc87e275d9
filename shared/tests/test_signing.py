"""Signed privileged commands: real Ed25519 keys, real files."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from conveyor.cli import keys as cli
from conveyor.contracts import ChangesetApply, CommandAuthorization, Envelope, FirewallDisable
from conveyor.signing import (
    CommandRefused,
    InvalidFile,
    NonceStore,
    PublicKey,
    RefusalReason,
    SigningKey,
    TrustedKeys,
    Verifier,
    canonical_bytes,
    unsigned_authorization,
)

NOW = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
NODE = "qa-web-1"
CHANGESET = "3b5d5c3712955042212316173ccf37be800e5e1e8bd0c9f1d7b1e5c6e7a8f901"
PLACEHOLDER = CommandAuthorization(
    role="none",
    expires_at=NOW,
    nonce="0" * 32,
    key_id="unsigned",
    signature="unsigned",
)


def apply_command(node: str = NODE) -> Envelope[ChangesetApply]:
    command = ChangesetApply(
        deployment_id=uuid4(),
        node=node,
        changeset_id=CHANGESET,
        package="web",
        parent_version="v41",
        version="v42",
        archive_url=f"http://deploy.example:8101/artifacts/{CHANGESET}",
        authorization=PLACEHOLDER,
    )
    return Envelope.wrap(command, env="qa", source="deployer", actor="ada")


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def nonces(tmp_path: Path) -> Iterator[NonceStore]:
    store = NonceStore(tmp_path / "state" / "nonces.log")
    with store:
        yield store


@pytest.fixture
def verifier(key: SigningKey, nonces: NonceStore) -> Verifier:
    return Verifier(TrustedKeys([key.public]), nonces, node=NODE, roles={"deployer"}, env="qa")


def signed(key: SigningKey, envelope: Envelope[Any] | None = None, **kw: Any) -> Envelope[Any]:
    options: dict[str, Any] = {"role": "deployer", "ttl_s": 900, "now": NOW} | kw
    return key.sign(envelope or apply_command(), **options)


def refused(verifier: Verifier, envelope: Envelope[Any], *, now: datetime = NOW, **kw: Any) -> RefusalReason:
    with pytest.raises(CommandRefused) as caught:
        verifier.verify(envelope, target_node=kw.pop("target_node", NODE), now=now)
    return caught.value.reason


def with_auth(envelope: Envelope[Any], **changes: Any) -> Envelope[Any]:
    auth = envelope.payload.authorization.model_copy(update=changes)
    return envelope.model_copy(
        update={"payload": envelope.payload.model_copy(update={"authorization": auth})}
    )


def with_payload(envelope: Envelope[Any], **changes: Any) -> Envelope[Any]:
    return envelope.model_copy(update={"payload": envelope.payload.model_copy(update=changes)})


def wire(envelope: Envelope[Any]) -> Envelope[ChangesetApply]:
    """Through JSON and back, as an agent receives it."""
    return Envelope[ChangesetApply].model_validate_json(envelope.to_json())


# -- signing and verifying ---------------------------------------------------------------


def test_round_trip(key: SigningKey, verifier: Verifier) -> None:
    original = apply_command()
    envelope = signed(key, original)
    auth = envelope.payload.authorization
    assert envelope.id == original.id
    assert auth.role == "deployer"
    assert auth.key_id == key.key_id
    assert key.key_id.startswith("ed25519:")
    assert len(key.key_id) == 24
    assert auth.expires_at == NOW + timedelta(seconds=900)
    assert len(auth.nonce) == 32
    assert int(auth.nonce, 16) >= 0
    assert len(base64.b64decode(auth.signature)) == 64
    assert original.payload.authorization == PLACEHOLDER  # a copy was signed
    verifier.verify(wire(envelope), target_node=NODE, now=NOW + timedelta(seconds=5))


def test_canonical_form_is_compact_sorted_and_leaves_the_signature_out(key: SigningKey) -> None:
    envelope = signed(key)
    data = canonical_bytes(envelope)
    assert b" " not in data.replace(b"deploy.example", b"")
    assert b"signature" not in data
    assert data.startswith(b'{"actor":"ada","env":"qa","payload":{"archive_url"')
    assert envelope.payload.authorization.nonce.encode() in data
    # Delivery details do not change what was signed.
    redelivered = envelope.model_copy(update={"id": uuid4(), "occurred_at": NOW, "source": "outbox"})
    assert canonical_bytes(redelivered) == data
    assert canonical_bytes(wire(envelope)) == data


def test_another_signed_command_type(key: SigningKey, nonces: NonceStore) -> None:
    command = FirewallDisable(
        request_id=uuid4(), node=NODE, lease_s=600, reason="debugging", authorization=unsigned_authorization()
    )
    envelope = key.sign(
        Envelope.wrap(command, env="qa", source="deployer", actor="ada"), role="admin", ttl_s=60
    )
    verifier = Verifier(TrustedKeys([key.public]), nonces, node=NODE, roles={"admin"})
    verifier.verify(envelope, target_node=NODE)
    assert (
        refused(verifier, with_payload(envelope, lease_s=7200), now=datetime.now(UTC)) is RefusalReason.FORGED
    )


def test_only_commands_with_an_authorization_are_signed(key: SigningKey) -> None:
    from conveyor.contracts import VersionBlocked

    event = Envelope.wrap(
        VersionBlocked(package="web", version="v1", blocked_by="ada", reason="bad"), env="qa", source="x"
    )
    with pytest.raises(TypeError):
        key.sign(event, role="deployer", ttl_s=60)
    with pytest.raises(ValueError, match="ttl_s"):
        key.sign(apply_command(), role="deployer", ttl_s=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("node", "qa-web-2"),
        ("version", "v43"),
        ("parent_version", None),
        ("package", "api"),
        ("changeset_id", "0" * 64),
        ("archive_url", "http://evil.example/artifacts/x"),
        ("deployment_id", uuid4()),
    ],
)
def test_tampered_payload_is_forged(key: SigningKey, nonces: NonceStore, field: str, value: Any) -> None:
    envelope = signed(key)
    node = value if field == "node" else NODE  # a verifier on the node the attacker redirected to
    verifier = Verifier(TrustedKeys([key.public]), nonces, node=node, roles={"deployer"})
    tampered = with_payload(envelope, **{field: value})
    assert refused(verifier, tampered, target_node=node) is RefusalReason.FORGED
    assert len(nonces) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("role", "admin"),
        ("expires_at", NOW + timedelta(seconds=901)),
        ("nonce", "f" * 32),
        ("signature", base64.b64encode(b"\x01" * 64).decode()),
    ],
)
def test_tampered_authorization_is_forged(
    key: SigningKey, nonces: NonceStore, field: str, value: Any
) -> None:
    verifier = Verifier(TrustedKeys([key.public]), nonces, node=NODE)  # any role
    assert refused(verifier, with_auth(signed(key), **{field: value})) is RefusalReason.FORGED


def test_claiming_another_trusted_key_is_forged(key: SigningKey, nonces: NonceStore) -> None:
    other = SigningKey.generate()
    verifier = Verifier(TrustedKeys([key.public, other.public]), nonces, node=NODE)
    assert refused(verifier, with_auth(signed(key), key_id=other.key_id)) is RefusalReason.FORGED


@pytest.mark.parametrize(
    ("field", "value"),
    [("type", "firewall.enable"), ("env", "prod"), ("actor", "mallory"), ("actor", None)],
)
def test_tampered_envelope_is_forged(key: SigningKey, nonces: NonceStore, field: str, value: Any) -> None:
    verifier = Verifier(TrustedKeys([key.public]), nonces, node=NODE, roles={"deployer"})
    tampered = signed(key).model_copy(update={field: value})
    assert refused(verifier, tampered) is RefusalReason.FORGED


def test_unsigned(verifier: Verifier) -> None:
    assert refused(verifier, apply_command()) is RefusalReason.UNSIGNED


def test_malformed_signature(key: SigningKey, verifier: Verifier) -> None:
    assert refused(verifier, with_auth(signed(key), signature="not base64!")) is RefusalReason.MALFORMED
    short = base64.b64encode(b"\x00" * 10).decode()
    assert refused(verifier, with_auth(signed(key), signature=short)) is RefusalReason.FORGED


def test_unknown_key(verifier: Verifier) -> None:
    stranger = SigningKey.generate()
    assert refused(verifier, signed(stranger)) is RefusalReason.UNKNOWN_KEY


def test_expired(key: SigningKey, verifier: Verifier) -> None:
    envelope = signed(key, ttl_s=60)
    verifier.verify(envelope, target_node=NODE, now=NOW + timedelta(seconds=60 + 59))  # within skew
    again = signed(key, ttl_s=60)
    assert refused(verifier, again, now=NOW + timedelta(seconds=60 + 61)) is RefusalReason.EXPIRED


def test_expiring_too_far_ahead(key: SigningKey, verifier: Verifier) -> None:
    verifier.verify(signed(key, ttl_s=3600), target_node=NODE, now=NOW)
    assert refused(verifier, signed(key, ttl_s=3600 + 61)) is RefusalReason.TOO_LONG
    # Signed with a clock running ahead of the agent's by more than the skew.
    ahead = signed(key, ttl_s=60, now=NOW + timedelta(hours=2))
    assert refused(verifier, ahead) is RefusalReason.TOO_LONG


def test_wrong_node(key: SigningKey, verifier: Verifier) -> None:
    elsewhere = signed(key, apply_command(node="qa-web-2"))
    assert refused(verifier, elsewhere, target_node=NODE) is RefusalReason.WRONG_NODE
    assert refused(verifier, signed(key), target_node="qa-web-2") is RefusalReason.WRONG_NODE


def test_wrong_env(key: SigningKey, verifier: Verifier) -> None:
    prod = apply_command().model_copy(update={"env": "prod"})
    assert refused(verifier, signed(key, prod)) is RefusalReason.WRONG_ENV


def test_disallowed_role(key: SigningKey, verifier: Verifier) -> None:
    assert refused(verifier, signed(key, role="reader")) is RefusalReason.ROLE


def test_refusals_do_not_burn_the_nonce(key: SigningKey, verifier: Verifier, nonces: NonceStore) -> None:
    genuine = signed(key)
    for attempt, now in [
        (with_payload(genuine, archive_url="http://evil.example/x"), NOW),
        (with_auth(genuine, role="admin"), NOW),
        (genuine, NOW + timedelta(hours=1)),  # expired
    ]:
        with pytest.raises(CommandRefused):
            verifier.verify(attempt, target_node=NODE, now=now)
    with pytest.raises(CommandRefused):
        verifier.verify(genuine, target_node="qa-web-2", now=NOW)
    assert len(nonces) == 0
    verifier.verify(genuine, target_node=NODE, now=NOW)


# -- replays ---------------------------------------------------------------------------


def test_replay_refused(key: SigningKey, verifier: Verifier) -> None:
    envelope = signed(key)
    verifier.verify(envelope, target_node=NODE, now=NOW)
    # The broker delivering the very same message again (its consumer died before the ack) is not
    # a replay: the agent's journal answers it, or it finishes what it started.
    verifier.verify(envelope, target_node=NODE, now=NOW)
    # A new message id and publish time do not make it a new command.
    copy = envelope.model_copy(update={"id": uuid4(), "occurred_at": NOW + timedelta(seconds=3)})
    assert refused(verifier, copy) is RefusalReason.REPLAYED


def test_replay_refused_after_a_restart(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "nonces.log"
    trusted = TrustedKeys([key.public])
    envelope = signed(key, ttl_s=900, now=datetime.now(UTC))
    with NonceStore(path) as store:
        Verifier(trusted, store, node=NODE).verify(envelope, target_node=NODE)
    copy = envelope.model_copy(update={"id": uuid4()})
    with NonceStore(path) as restarted:
        Verifier(trusted, restarted, node=NODE).verify(envelope, target_node=NODE)  # redelivered
        with pytest.raises(CommandRefused) as caught:
            Verifier(trusted, restarted, node=NODE).verify(copy, target_node=NODE)
        assert caught.value.reason is RefusalReason.REPLAYED
        assert "already used" in caught.value.detail


def test_nonce_store_compaction_drops_expired_entries(tmp_path: Path) -> None:
    path = tmp_path / "nonces.log"
    clock = [1_000_000.0]
    with NonceStore(path, clock=lambda: clock[0]) as store:
        assert not store.seen_or_record("a" * 32, datetime.fromtimestamp(1_000_100, UTC))
        assert not store.seen_or_record("b" * 32, datetime.fromtimestamp(1_002_000, UTC))
        assert store.seen_or_record("a" * 32, datetime.fromtimestamp(1_000_100, UTC))
    assert path.read_text() == f"1000100 {'a' * 32} -\n1002000 {'b' * 32} -\n"
    clock[0] = 1_001_000.0
    with NonceStore(path, clock=lambda: clock[0]) as store:
        assert len(store) == 1
        assert path.read_text() == f"1002000 {'b' * 32} -\n"
        assert store.seen_or_record("b" * 32, datetime.fromtimestamp(1_002_000, UTC))
        assert not store.seen_or_record("a" * 32, datetime.fromtimestamp(1_002_000, UTC))


def test_nonce_store_compacts_while_running(tmp_path: Path) -> None:
    path = tmp_path / "nonces.log"
    clock = [0.0]
    with NonceStore(path, clock=lambda: clock[0]) as store:
        for i in range(1100):
            clock[0] = float(i)
            assert not store.seen_or_record(f"{i:032x}", datetime.fromtimestamp(i + 10, UTC))
        assert len(path.read_text().splitlines()) < 100
        assert store.seen_or_record(f"{1099:032x}", datetime.fromtimestamp(1109, UTC))


def test_nonce_store_ignores_a_torn_last_line_but_not_garbage(tmp_path: Path) -> None:
    path = tmp_path / "nonces.log"
    path.write_text(f"9999999999 {'a' * 32}\n9999999999 bbbb")
    with NonceStore(path) as store:
        assert len(store) == 1
    path.write_text(f"9999999999 {'a' * 32}\nnonsense\n9999999999 {'c' * 32}\n")
    with pytest.raises(InvalidFile, match=r"nonces\.log:2:"):
        NonceStore(path)


# -- keys and rotation -----------------------------------------------------------------


def test_key_files_are_private_and_not_overwritten(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    old_umask = os.umask(0o022)
    try:
        key.save(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert SigningKey.load(path).key_id == key.key_id
    with pytest.raises(FileExistsError):
        SigningKey.generate().save(path)
    assert SigningKey.load(path).key_id == key.key_id
    other = SigningKey.generate()
    other.save(path, overwrite=True)
    assert SigningKey.load(path).key_id == other.key_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.key"]  # no temporary files left


def test_loading_something_else_than_a_key(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    path.write_text("hello\n")
    with pytest.raises(InvalidFile, match=r"signing\.key"):
        SigningKey.load(path)


def test_public_key_line(key: SigningKey) -> None:
    line = key.public_key_text()
    key_id, encoded = line.split(" ")
    assert key_id == key.key_id
    assert len(base64.b64decode(encoded)) == 32
    assert PublicKey.parse(line + " deployer prod") == PublicKey(key.key_id, key.public.raw, "deployer prod")


def test_rotation(tmp_path: Path, nonces: NonceStore) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    trusted = TrustedKeys([old.public])
    verifier = Verifier(trusted, nonces, node=NODE)
    verifier.verify(signed(old), target_node=NODE, now=NOW)
    trusted.add(new.public_key_text())
    verifier.verify(signed(old), target_node=NODE, now=NOW)
    verifier.verify(signed(new), target_node=NODE, now=NOW)
    trusted.remove(old.key_id)
    assert refused(verifier, signed(old)) is RefusalReason.UNKNOWN_KEY
    verifier.verify(signed(new), target_node=NODE, now=NOW)


# -- trusted keys files ----------------------------------------------------------------


def test_trusted_keys_file_round_trip(tmp_path: Path) -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    path = tmp_path / "trusted_keys"
    path.write_text(f"# deployment server keys\n\n{a.public_key_text()} current\n")
    trusted = TrustedKeys.load(path)
    assert [k.key_id for k in trusted] == [a.key_id]
    assert trusted.add(b.public_key_text())
    assert not trusted.add(b.public)
    trusted.save(path)
    assert path.read_text() == (
        f"# deployment server keys\n\n{a.public_key_text()} current\n{b.public_key_text()}\n"
    )
    reloaded = TrustedKeys.load(path)
    reloaded.remove(a.key_id)
    reloaded.save(path)
    assert path.read_text() == f"# deployment server keys\n\n{b.public_key_text()}\n"
    with pytest.raises(KeyError):
        reloaded.remove(a.key_id)


@pytest.mark.parametrize(
    "line",
    [
        "garbage",
        "ed25519:0123456789abcdef",
        "rsa:0123456789abcdef AAAA",
        "ed25519:0123456789abcdef not-base64!",
        "ed25519:0123456789abcdef " + base64.b64encode(b"x" * 31).decode(),
        "ed25519:0123456789abcdef " + base64.b64encode(b"x" * 32).decode(),  # id of another key
    ],
)
def test_trusted_keys_reject_a_garbled_line_naming_file_and_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "trusted_keys"
    path.write_text(f"# keys\n{SigningKey.generate().public_key_text()}\n{line}\n")
    with pytest.raises(InvalidFile, match=rf"^{path}:3: "):
        TrustedKeys.load(path)


def test_trusted_keys_reject_duplicates_and_world_writable_files(tmp_path: Path) -> None:
    line = SigningKey.generate().public_key_text()
    path = tmp_path / "trusted_keys"
    path.write_text(f"{line}\n{line} again\n")
    with pytest.raises(InvalidFile, match=r":2: .* already listed on line 1"):
        TrustedKeys.load(path)
    path.write_text(f"{line}\n")
    path.chmod(0o666)
    with pytest.raises(InvalidFile, match="writable by everyone"):
        TrustedKeys.load(path)
    with pytest.raises(FileNotFoundError):
        TrustedKeys.load(tmp_path / "missing")
    assert len(TrustedKeys.load(tmp_path / "missing", missing_ok=True)) == 0


# -- the CLI ---------------------------------------------------------------------------


def test_cli_init_show_and_refuse_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "etc" / "signing.key"
    assert cli.run_init(path, force=False) == 0
    key = SigningKey.load(path)
    assert key.public_key_text() in capsys.readouterr().out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    assert cli.run_init(path, force=False) == 1
    assert "already exists" in capsys.readouterr().err
    assert SigningKey.load(path).key_id == key.key_id

    assert cli.run_show(path) == 0
    out = capsys.readouterr().out
    assert key.key_id in out
    assert key.public_key_text() in out

    assert cli.run_init(path, force=True) == 0
    assert SigningKey.load(path).key_id != key.key_id
    capsys.readouterr()
    assert cli.run_show(tmp_path / "nope") == 1
    assert "conveyor keys init" in capsys.readouterr().err


def test_cli_rotation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "signing.key"
    trusted_file = tmp_path / "node" / "trusted_keys"
    assert cli.run_rotate(path, promote=False) == 1  # nothing to rotate yet
    assert cli.run_init(path, force=False) == 0
    old = SigningKey.load(path)
    assert cli.run_trust(trusted_file, old.public_key_text()) == 0
    assert cli.run_rotate(path, promote=True) == 1  # no rotation under way
    capsys.readouterr()

    assert cli.run_rotate(path, promote=False) == 0
    new = SigningKey.load(tmp_path / "signing.key.next")
    out = capsys.readouterr().out
    assert new.public_key_text() in out
    assert "--promote" in out
    assert old.key_id in out
    assert stat.S_IMODE((tmp_path / "signing.key.next").stat().st_mode) == 0o600
    assert cli.run_rotate(path, promote=False) == 0  # again: the same next key, not a new one
    assert SigningKey.load(tmp_path / "signing.key.next").key_id == new.key_id

    assert cli.run_trust(trusted_file, new.public_key_text()) == 0  # step 1
    assert {k.key_id for k in TrustedKeys.load(trusted_file)} == {old.key_id, new.key_id}
    assert cli.run_rotate(path, promote=True) == 0  # step 2
    assert SigningKey.load(path).key_id == new.key_id
    assert SigningKey.load(tmp_path / "signing.key.previous").key_id == old.key_id
    assert not (tmp_path / "signing.key.next").exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "signing.key.previous").stat().st_mode) == 0o600
    assert cli.run_untrust(trusted_file, old.key_id) == 0  # step 3
    assert [k.key_id for k in TrustedKeys.load(trusted_file)] == [new.key_id]


def test_cli_trust_and_untrust_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trusted_file = tmp_path / "trusted_keys"
    line = SigningKey.generate().public_key_text()
    assert cli.run_trust(trusted_file, "ed25519:zz nonsense") == 1
    assert "not a public key line" in capsys.readouterr().err
    assert cli.run_trust(trusted_file, line) == 0
    assert cli.run_trust(trusted_file, line) == 0
    assert "already trusted" in capsys.readouterr().out
    assert trusted_file.read_text() == f"{line}\n"
    assert cli.run_untrust(trusted_file, "ed25519:0000000000000000") == 1
    err = capsys.readouterr().err
    assert "not trusted" in err
    assert line.split()[0] in err
    assert cli.run_untrust(trusted_file, line.split()[0]) == 0
    assert "refuses every signed command" in capsys.readouterr().out
    trusted_file.write_text("junk\n")
    assert cli.run_trust(trusted_file, line) == 1
    assert f"{trusted_file}:1:" in capsys.readouterr().err
