"""Helpers for the pkgvcs tests against git: byte-named trees on disk, git, and C-style unquoting.

Everything works on ``bytes`` paths so names that are not valid UTF-8 survive.
Nothing here uses conveyor's own quoting: the tests compare against it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONVEYOR",
    "GIT",
    "Edit",
    "File",
    "Link",
    "Node",
    "apply_edit",
    "c_unquote",
    "git",
    "git_commit_all",
    "git_init",
    "git_porcelain",
    "materialize",
    "snapshot",
    "snapshot_dirs",
]

CONVEYOR = str(Path(sys.executable).parent / "conveyor")
GIT = shutil.which("git")

# Every setting that could change what `git status` reports is pinned here, and the user's
# and the system's configuration are kept out (GIT_CONFIG_GLOBAL/NOSYSTEM below).
_GIT_CONFIG = {
    "core.quotePath": "true",
    "core.fileMode": "true",
    "core.symlinks": "true",
    "core.trustctime": "true",
    "core.checkStat": "default",
    "core.autocrlf": "false",
    "core.excludesFile": "/dev/null",
    "core.precomposeUnicode": "false",
    "core.untrackedCache": "false",
    "core.fsmonitor": "false",
    "status.renames": "false",
    "status.showUntrackedFiles": "all",
    "user.name": "Test",
    "user.email": "test@example.invalid",
    "commit.gpgSign": "false",
    "init.defaultBranch": "main",
    "gc.auto": "0",
}


@dataclass(frozen=True)
class File:
    content: bytes
    executable: bool = False


@dataclass(frozen=True)
class Link:
    target: bytes


Node = File | Link


def materialize(root: bytes, tree: dict[bytes, Node]) -> None:
    """Create ``tree`` (relative byte paths → nodes) below the existing directory ``root``."""
    for path, node in sorted(tree.items()):
        full = root + b"/" + path
        os.makedirs(os.path.dirname(full), exist_ok=True)
        if isinstance(node, Link):
            os.symlink(node.target, full)
        else:
            with open(full, "wb") as handle:
                handle.write(node.content)
            os.chmod(full, 0o755 if node.executable else 0o644)


def _walk(root: bytes, rel: bytes, files: dict[bytes, Node], dirs: set[bytes]) -> None:
    with os.scandir(root + b"/" + rel if rel else root) as entries:
        for entry in entries:
            if not rel and entry.name in (b".git", b".conveyor"):
                continue
            path = rel + b"/" + entry.name if rel else entry.name
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                dirs.add(path)
                _walk(root, path, files, dirs)
            elif stat.S_ISLNK(info.st_mode):
                files[path] = Link(os.readlink(entry.path))
            elif stat.S_ISREG(info.st_mode):
                with open(entry.path, "rb") as handle:
                    files[path] = File(handle.read(), bool(info.st_mode & stat.S_IXUSR))


def snapshot(root: bytes) -> dict[bytes, Node]:
    """Every file and symlink below ``root`` (not ``.git``/``.conveyor``): content, exec bit, target."""
    files: dict[bytes, Node] = {}
    _walk(root, b"", files, set())
    return files


def snapshot_dirs(root: bytes) -> set[bytes]:
    """Every directory below ``root`` (not ``.git``/``.conveyor``)."""
    dirs: set[bytes] = set()
    _walk(root, b"", {}, dirs)
    return dirs


# -- edits ----------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Edit:
    """One change to a working tree, applied the same way to the git and the conveyor copy.

    kind: ``write`` (content, keep_mtime), ``touch``, ``delete``, ``chmod`` (mode), ``to_link``
    (target), ``to_file`` (content), ``retarget`` (target, keep_mtime), ``add`` (content, mode;
    creates missing parent directories), ``rmtree``, ``to_dir`` (child, content).
    """

    kind: str
    path: bytes
    content: bytes = b""
    target: bytes = b""
    mode: int = 0o644
    keep_mtime: bool = False
    child: bytes = b""

    def __repr__(self) -> str:  # short in hypothesis' falsifying examples
        fields = [f"{self.kind!r}", f"{self.path!r}"]
        if self.kind in ("write", "to_file", "add", "to_dir"):
            fields.append(f"content={self.content!r}")
        if self.kind in ("to_link", "retarget"):
            fields.append(f"target={self.target!r}")
        if self.kind in ("chmod", "add"):
            fields.append(f"mode={self.mode:o}")
        if self.keep_mtime:
            fields.append("keep_mtime=True")
        if self.child:
            fields.append(f"child={self.child!r}")
        return f"Edit({', '.join(fields)})"


def _write(full: bytes, edit: Edit) -> None:
    before = os.lstat(full)
    with open(full, "wb") as handle:  # in place: the inode stays the same
        handle.write(edit.content)
    if edit.keep_mtime:  # the stat cache sees the same mtime (and size): only ctime moved
        os.utime(full, ns=(before.st_atime_ns, before.st_mtime_ns))


def _touch(full: bytes, _edit: Edit) -> None:
    info = os.lstat(full)
    os.utime(full, ns=(info.st_atime_ns, info.st_mtime_ns + 5_000_000_000))


def _to_link(full: bytes, edit: Edit) -> None:
    os.unlink(full)
    os.symlink(edit.target, full)


def _to_file(full: bytes, edit: Edit) -> None:
    os.unlink(full)
    with open(full, "wb") as handle:
        handle.write(edit.content)


def _retarget(full: bytes, edit: Edit) -> None:
    before = os.lstat(full)
    os.unlink(full)
    os.symlink(edit.target, full)
    if edit.keep_mtime:
        os.utime(full, ns=(before.st_atime_ns, before.st_mtime_ns), follow_symlinks=False)


def _add(full: bytes, edit: Edit) -> None:
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "wb") as handle:
        handle.write(edit.content)
    os.chmod(full, edit.mode)


def _to_dir(full: bytes, edit: Edit) -> None:
    os.unlink(full)
    os.mkdir(full)
    with open(full + b"/" + edit.child, "wb") as handle:
        handle.write(edit.content)


_APPLY: dict[str, Callable[[bytes, Edit], None]] = {
    "write": _write,
    "touch": _touch,
    "delete": lambda full, _edit: os.unlink(full),
    "chmod": lambda full, edit: os.chmod(full, edit.mode),
    "to_link": _to_link,
    "to_file": _to_file,
    "retarget": _retarget,
    "add": _add,
    "rmtree": lambda full, _edit: shutil.rmtree(full),
    "to_dir": _to_dir,
}


def apply_edit(root: bytes, edit: Edit) -> None:
    _APPLY[edit.kind](root + b"/" + edit.path, edit)


# -- git --------------------------------------------------------------------------------------------


def _git_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_DATE="2020-01-01T00:00:00Z",
        GIT_COMMITTER_DATE="2020-01-01T00:00:00Z",
        LC_ALL="C",
    )
    return env


def git(root: bytes, *args: str) -> bytes:
    assert GIT is not None
    options = [arg for key, value in _GIT_CONFIG.items() for arg in ("-c", f"{key}={value}")]
    result = subprocess.run(
        [GIT, *options, *args], cwd=root, env=_git_env(), capture_output=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout


def git_init(root: bytes) -> None:
    git(root, "init", "-q")


def git_commit_all(root: bytes, message: str) -> None:
    git(root, "add", "-A")
    git(root, "commit", "-q", "--allow-empty", "--no-verify", "-m", message)


_CODES = {b"??": "A", b" M": "M", b" D": "D", b" T": "M"}


def git_porcelain(root: bytes) -> list[tuple[str, bytes, str]]:
    """``git status --porcelain -uall`` as (conveyor code, raw path, git's quoted path), by raw path.

    The raw paths come from ``-z`` output, the quoted ones from the plain output, and the two
    are checked against each other with an independent unquoter.
    """
    raw_records = git(root, "status", "--porcelain", "-z", "-uall").split(b"\0")
    assert raw_records[-1] == b""
    quoted_lines = git(root, "status", "--porcelain", "-uall").split(b"\n")
    assert quoted_lines[-1] == b""
    raw_records, quoted_lines = raw_records[:-1], quoted_lines[:-1]
    assert len(raw_records) == len(quoted_lines), (raw_records, quoted_lines)
    items: list[tuple[str, bytes, str]] = []
    for record, line in zip(raw_records, quoted_lines, strict=True):
        xy, path = record[:2], record[3:]
        assert record[2:3] == b" ", record
        assert line[:3] == record[:3], (record, line)
        assert xy in _CODES, f"unexpected git status {xy!r} for {path!r}"
        quoted = line[3:].decode("ascii")
        assert c_unquote(quoted) == path, (quoted, path)
        items.append((_CODES[xy], path, quoted))
    return sorted(items, key=lambda item: item[1])


_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13, '"': 0x22, "\\": 0x5C}


def c_unquote(text: str) -> bytes:
    """git's C-style quoting undone: ``"a\\tb\\303\\251"`` → bytes; unquoted text stays as it is."""
    if not text.startswith('"'):
        return text.encode("ascii")
    assert len(text) >= 2, text
    assert text.endswith('"'), text
    body, out, i = text[1:-1], bytearray(), 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out += char.encode("ascii")
            i += 1
        elif body[i + 1] in _ESCAPES:
            out.append(_ESCAPES[body[i + 1]])
            i += 2
        else:
            out.append(int(body[i + 1 : i + 4], 8))
            i += 4
    return bytes(out)
