"""``conveyor keys``: the deployment server's signing key and the nodes' trusted keys.

The deployment server signs privileged commands with its key (``init``,
``show``, ``rotate``); each node agent accepts only keys listed in its
trusted-keys file (``trust``, ``untrust``). See ``conveyor.signing``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from rich.markup import escape

from conveyor.cli.output import console, error
from conveyor.pkgvcs.storage import fsync_dir
from conveyor.signing import InvalidFile, PublicKey, SigningKey, TrustedKeys

__all__ = ["run_init", "run_rotate", "run_show", "run_trust", "run_untrust"]


def _fail(message: str, code: int = 1) -> int:
    error(escape(message))
    return code


def _say(text: str) -> None:
    """Plain text, never wrapped: paths and key lines stay whole for copying."""
    console.print(text, soft_wrap=True, markup=False, highlight=False)


def _warn(text: str) -> None:
    console.print(f"[yellow]warning:[/] {escape(text)}", soft_wrap=True, highlight=False)


def _next(path: Path) -> Path:
    return path.with_name(path.name + ".next")


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def _load(path: Path, what: str) -> SigningKey | int:
    try:
        return SigningKey.load(path)
    except FileNotFoundError:
        return _fail(f"no {what} at {path}: create one with `conveyor keys init`")
    except InvalidFile as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot read {path}: {exc.strerror or exc}", 2)


def run_init(path: Path | str, *, force: bool) -> int:
    """Create the deployment server's signing key at ``path`` and print its public key line."""
    path = Path(path)
    if path.exists() and not force:
        return _fail(
            f"{path} already exists; use --force to replace it (nodes will then refuse commands "
            "until they trust the new key), or `conveyor keys rotate` to change keys without downtime"
        )
    key = SigningKey.generate()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        key.save(path, overwrite=force)
    except FileExistsError:
        return _fail(f"{path} appeared meanwhile; use --force to replace it")
    except OSError as exc:
        return _fail(f"cannot write {path}: {exc.strerror or exc}", 2)
    _say(f"Created signing key {key.key_id} in {path} (mode 0600).")
    _say("Public key, to add to every node's trusted keys:")
    _say(key.public_key_text())
    _say(f"On each node: conveyor keys trust <trusted keys file> '{key.public_key_text()}'")
    return 0


def _rotation_steps(path: Path, trusted_hint: str, new: SigningKey, old: SigningKey | None) -> None:
    old_id = old.key_id if old else "<old key id>"
    _say(
        "\nRotation in three steps:\n"
        f"  1. On every node, trust the new key as well (nodes then accept both):\n"
        f"       conveyor keys trust {trusted_hint} '{new.public_key_text()}'\n"
        f"  2. Once every node trusts it, switch the server to it:\n"
        f"       conveyor keys rotate --promote {path}\n"
        f"     then restart the deployer. The old key is kept as {_previous(path)}.\n"
        f"  3. When no command signed by the old key is in flight (wait for the command TTL),\n"
        f"     stop trusting it on every node:\n"
        f"       conveyor keys untrust {trusted_hint} {old_id}"
    )


def run_rotate(path: Path | str, *, promote: bool) -> int:
    """Prepare a new key as ``<path>.next``, or with ``promote`` make it the signing key."""
    path = Path(path)
    upcoming = _next(path)
    current = _load(path, "signing key")
    if isinstance(current, int):
        return current
    if promote:
        return _promote(path, current)
    if upcoming.exists():
        new = _load(upcoming, "next key")
        if isinstance(new, int):
            return new
        _say(f"A rotation is already under way: {upcoming} holds {new.key_id}.")
    else:
        new = SigningKey.generate()
        try:
            new.save(upcoming)
        except FileExistsError:
            return _fail(f"{upcoming} appeared meanwhile; run the command again")
        except OSError as exc:
            return _fail(f"cannot write {upcoming}: {exc.strerror or exc}", 2)
        _say(f"Created the next signing key {new.key_id} in {upcoming} (mode 0600).")
    _say(f"The server still signs with {current.key_id}. New public key:")
    _say(new.public_key_text())
    _rotation_steps(path, "<trusted keys file>", new, current)
    return 0


def _promote(path: Path, current: SigningKey) -> int:
    upcoming = _next(path)
    new = _load(upcoming, "next key (start the rotation with `conveyor keys rotate`)")
    if isinstance(new, int):
        return new
    try:
        # The old key first: a crash in between leaves .next in place and the command repeatable.
        current.save(_previous(path), overwrite=True)
        os.replace(upcoming, path)
        fsync_dir(path.parent)
    except OSError as exc:
        return _fail(f"cannot promote {upcoming}: {exc.strerror or exc}", 2)
    _say(
        f"The server now signs with {new.key_id} ({path}); restart the deployer to use it.\n"
        f"The old key {current.key_id} is kept in {_previous(path)}.\n"
        "Last step, once no command signed by the old key is in flight (wait for the command TTL):\n"
        f"  conveyor keys untrust <trusted keys file> {current.key_id}   (on every node)"
    )
    return 0


def run_show(path: Path | str) -> int:
    """Print the signing key's id and public key line (and a pending rotation, if any)."""
    path = Path(path)
    key = _load(path, "signing key")
    if isinstance(key, int):
        return key
    _say(f"Key id: {key.key_id}")
    _say(key.public_key_text())
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        _warn(f"{path} has mode {mode:04o}; others can read it: chmod 600 it")
    upcoming = _next(path)
    if upcoming.exists():
        new = _load(upcoming, "next key")
        if isinstance(new, int):
            return new
        _say(f"Rotation under way: next key {new.key_id} in {upcoming}")
        _say(new.public_key_text())
    return 0


def _trusted(trusted_file: Path) -> TrustedKeys | int:
    try:
        return TrustedKeys.load(trusted_file, missing_ok=True)
    except InvalidFile as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"cannot read {trusted_file}: {exc.strerror or exc}", 2)


def _save(trusted: TrustedKeys, trusted_file: Path) -> int:
    try:
        trusted_file.parent.mkdir(parents=True, exist_ok=True)
        trusted.save(trusted_file)
    except OSError as exc:
        return _fail(f"cannot write {trusted_file}: {exc.strerror or exc}", 2)
    return 0


def run_trust(trusted_file: Path | str, key_line: str) -> int:
    """Add a public key line (``<key id> <base64> [comment]``) to a trusted-keys file."""
    trusted_file = Path(trusted_file)
    try:
        key = PublicKey.parse(key_line)
    except ValueError as exc:
        return _fail(f"not a public key line: {exc}")
    trusted = _trusted(trusted_file)
    if isinstance(trusted, int):
        return trusted
    if not trusted.add(key):
        _say(f"{key.key_id} is already trusted in {trusted_file}")
        return 0
    if code := _save(trusted, trusted_file):
        return code
    _say(f"Trusting {key.key_id} in {trusted_file} ({len(trusted)} key(s) trusted).")
    _say("Restart the node's agents to apply it.")
    return 0


def run_untrust(trusted_file: Path | str, key_id: str) -> int:
    """Remove a key, by id, from a trusted-keys file."""
    trusted_file = Path(trusted_file)
    trusted = _trusted(trusted_file)
    if isinstance(trusted, int):
        return trusted
    try:
        trusted.remove(key_id)
    except KeyError:
        known = ", ".join(key.key_id for key in trusted) or "none"
        return _fail(f"{key_id} is not trusted in {trusted_file} (trusted: {known})")
    if code := _save(trusted, trusted_file):
        return code
    _say(f"No longer trusting {key_id} in {trusted_file}.")
    if not len(trusted):
        _warn("no key is trusted any more: this node refuses every signed command")
    _say("Restart the node's agents to apply it.")
    return 0
