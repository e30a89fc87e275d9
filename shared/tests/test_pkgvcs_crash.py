"""Crash safety of ``conveyor vcs commit``: killed at any point, the package is at the old version
or the new one, never in between, and every later command works.

A template package of a few thousand files is committed once (the old version) and then edited;
committing an identical hard-linked copy gives the new version's id (ids are content hashes).
Each kill point gets its own hard-linked copy of the edited template (safe: every write of
the library replaces files, none writes in place), where a commit runs in a child process
that is SIGKILLed either after a delay (spread over a measured unkilled commit) or exactly
before/after one of its file renames (the first and the last object, the changelog, the
manifest, HEAD, the index) or at its sync. Then: ``fsck`` passes, HEAD is one of the two
ids, ``status --porcelain`` is empty (new) or exactly the edits (old), and a following commit
gives the new id.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor.pkgvcs import LockHeld, NothingToCommit, Package, fsck, porcelain_quote

CONVEYOR = str(Path(sys.executable).parent / "conveyor")
FILES = 2500

# The child: commit (or status) the package at argv[1], killing itself with SIGKILL at the
# point named by argv[2]: "none", "count" (no kill; print every rename's target as JSON at
# the end), "rename:<n>:before|after" (around the n-th os.replace/os.rename, 1-based), "sync"
# (os.sync) or "write:<n>:before" (the n-th os.write). It prints "ready" once imported and set
# up, just before the operation starts.
_CHILD = r"""
import json, os, signal, sys, threading
from pathlib import Path
from conveyor.pkgvcs.package import Package

root, point, operation = sys.argv[1], sys.argv[2], sys.argv[3]
kind, _, rest = point.partition(":")
nth, _, when = rest.partition(":")
counts = {"rename": 0, "write": 0}
targets = []
lock = threading.Lock()

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def counting(name, real):
    def call(*args, **kwargs):
        with lock:
            counts[name] += 1
            hit = kind == name and counts[name] == int(nth)
            if name == "rename":
                targets.append(os.path.relpath(os.fsdecode(args[1]), root))
        if hit and when != "after":
            die()
        result = real(*args, **kwargs)
        if hit:
            die()
        return result
    return call

os.replace = counting("rename", os.replace)
os.rename = counting("rename", os.rename)
os.write = counting("write", os.write)
real_sync = os.sync
def sync():
    if kind == "sync":
        die()
    real_sync()
os.sync = sync

package = Package(Path(root))
sys.stdout.write("ready\n")
sys.stdout.flush()
if operation == "commit":
    package.commit("edits", author="crash")
else:
    package.status()
if kind == "count":
    sys.stdout.write(json.dumps(targets) + "\n")
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "COLUMNS": "200", "CONVEYOR_AUTHOR": "crash"}
    return subprocess.run(
        [CONVEYOR, "vcs", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def porcelain(package: Package) -> str:
    return "".join(f"{code} {porcelain_quote(path)}\n" for code, path in package.status().entries())


def copy(source: Path, target: Path) -> Path:
    """A hard-linked copy (``cp -al``): fast, and independent as long as nothing writes in place."""
    subprocess.run(["cp", "-al", str(source), str(target)], check=True)
    return target


@dataclass
class Run:
    returncode: int
    seconds: float  # from "ready" to the end (or the kill)
    output: str
    pid: int


def run_child(root: Path, point: str, *, operation: str = "commit", delay: float | None = None) -> Run:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(root), point, operation],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    start = time.perf_counter()
    if delay is not None:
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)  # (a no-op if it is already reaped)
    output, errors = child.communicate(timeout=120)  # reaps it: a dead holder's pid is gone
    seconds = time.perf_counter() - start
    assert child.returncode in (0, -signal.SIGKILL), errors
    return Run(child.returncode, seconds, output, child.pid)


@dataclass
class Template:
    root: Path  # committed (old version), then edited, not committed
    old: str
    new: str
    edits: str  # the porcelain status of the edits against the old version
    renames: list[str]  # the targets of an unkilled commit's os.replace/os.rename calls, in order
    seconds: float  # how long an unkilled commit runs (after start-up)


def _build(root: Path) -> None:
    for i in range(FILES):
        path = root / f"d{i % 25}" / f"e{i % 7}" / f"file {i}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"%d\n" % i * (1 + i % 40))
    (root / "run.sh").write_bytes(b"#!/bin/sh\n")
    (root / "link").symlink_to("d1/e1")


def _edit(root: Path) -> None:
    for i in range(0, FILES, 5):  # modified
        (root / f"d{i % 25}" / f"e{i % 7}" / f"file {i}.txt").write_bytes(b"changed %d\n" % i)
    for i in range(1, FILES, 11):  # deleted
        (root / f"d{i % 25}" / f"e{i % 7}" / f"file {i}.txt").unlink()
    for i in range(600):  # added, in new directories
        path = root / f"new{i % 12}" / f"n {i}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"new %d\n" % i)
    (root / "run.sh").chmod(0o755)
    (root / "link").unlink()
    (root / "link").symlink_to("d2")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    base = tmp_path_factory.mktemp("crash")
    root = base / "template"
    root.mkdir()
    _build(root)
    package = Package.init(root, "crash")
    old = package.commit("old", author="crash").id
    _edit(root)
    edits = porcelain(package)
    assert edits.count("\n") > 1000
    reference = Package(copy(root, base / "reference"))
    new = reference.commit("new", author="crash").id
    assert new != old
    measured = run_child(copy(root, base / "measured"), "count")
    assert measured.returncode == 0
    assert Package(base / "measured").head() == new
    renames = json.loads(measured.output.splitlines()[-1])
    return Template(root, old, new, edits, renames, measured.seconds)


_counter = iter(range(1_000_000))


@pytest.fixture
def fresh(template: Template) -> Iterator[Path]:
    """A hard-linked copy of the edited template, removed after the test."""
    target = copy(template.root, template.root.parent / f"copy{next(_counter)}")
    yield target
    shutil.rmtree(target)


def check_after_crash(root: Path, template: Template) -> str:
    """Everything a user would do next works, from whichever version the crash left; returns it."""
    result = cli("fsck", "-C", str(root))
    assert result.returncode == 0, result.stderr
    package = Package(root)
    head = package.head()
    assert head in (template.old, template.new)
    status = cli("status", "--porcelain", str(root))
    assert status.returncode == 0, status.stderr
    assert status.stdout == ("" if head == template.new else template.edits)

    result = cli("commit", "-m", "again", "-C", str(root))
    if head == template.old:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode == 1, result.stderr
        assert "nothing to commit" in result.stdout
    assert package.head() == template.new
    assert not package.lock_path.exists()
    assert porcelain(package) == ""
    info, _ = package.version(template.new)
    assert info.parent == template.old
    assert fsck(package) == (2, [])
    return head


def test_commit_killed_at_spread_out_moments(template: Template) -> None:
    """Ten kills spread evenly over a commit's measured run time."""
    heads = []
    for k in range(10):
        root = copy(template.root, template.root.parent / f"timed{k}")
        run = run_child(root, "none", delay=template.seconds * (k + 0.5) / 10)
        heads.append((run.returncode, check_after_crash(root, template)))
        shutil.rmtree(root)
    assert (-signal.SIGKILL, template.old) in heads  # (some kills landed before the commit point)


def _metadata_file(name: str, template: Template) -> str:
    return {
        "changelog": f".conveyor/changelog/{template.new}.ini",
        "manifest": f".conveyor/versions/{template.new}.ini",
        "HEAD": ".conveyor/HEAD",
        "index": ".conveyor/index",
    }[name]


@pytest.mark.parametrize(
    "point",
    [
        "sync",
        "first object:before",
        "last object:after",
        *(
            f"{name}:{when}"
            for name in ("changelog", "manifest", "HEAD", "index")
            for when in ("before", "after")
        ),
    ],
)
def test_commit_killed_around_each_rename(template: Template, fresh: Path, point: str) -> None:
    """Killed just before or after each file of the commit is renamed into place (found by
    name in an unkilled commit's renames), or at its sync: the new version exactly when HEAD
    was renamed."""
    name, _, when = point.partition(":")
    renames = template.renames
    objects = [n for n, target in enumerate(renames, 1) if target.startswith(".conveyor/objects/")]
    if name == "sync":
        at, head_written = None, False
    else:
        if name in ("first object", "last object"):
            assert objects, renames[-10:]
            at = objects[0] if name == "first object" else objects[-1]
        else:
            target = _metadata_file(name, template)
            assert target in renames, f"the commit renamed no {target}: {renames[-10:]}"
            at = renames.index(target) + 1
        head = renames.index(".conveyor/HEAD") + 1
        head_written = at > head or (at == head and when == "after")
    run = run_child(fresh, "sync" if at is None else f"rename:{at}:{when}")
    assert run.returncode == -signal.SIGKILL
    assert check_after_crash(fresh, template) == (template.new if head_written else template.old)


@pytest.mark.parametrize(
    ("operation", "point"),
    [("commit", "sync"), ("status", "rename:1:before")],
    ids=["commit-holding-the-lock", "status-saving-the-index"],
)
def test_a_lock_left_by_a_killed_process_does_not_block(
    template: Template, fresh: Path, operation: str, point: str
) -> None:
    """The lock is created already holding ``host:pid`` (linked into place whole), also by
    status's index refresh; killed while holding it, its process is gone, so the next
    commit takes it over."""
    run = run_child(fresh, point, operation=operation)
    assert run.returncode == -signal.SIGKILL
    package = Package(fresh)
    assert package.lock_path.exists()
    assert package.lock_path.read_text().strip().endswith(":" + str(run.pid))
    try:
        package.commit("after the crash", author="crash")
    except (LockHeld, NothingToCommit) as exc:
        pytest.fail(f"commit after a killed {operation}: {type(exc).__name__}: {exc}")
    assert package.head() == template.new


def test_an_empty_lock_is_held_only_while_fresh(template: Template, fresh: Path) -> None:
    """Conveyor never leaves an empty lock, but another writer might: respected while recent,
    taken over once it is older than the grace period."""
    package = Package(fresh)
    package.lock_path.write_text("")
    with pytest.raises(LockHeld):
        package.commit("blocked", author="crash")
    stale = time.time() - 60
    os.utime(package.lock_path, (stale, stale))
    package.commit("after the stale lock", author="crash")
    assert package.head() == template.new
