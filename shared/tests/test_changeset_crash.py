"""Crash safety of ``ReleaseRoot.apply``: SIGKILLed at any point, ``current`` points at the old
release or the new one, each complete, never in between; ``recover`` removes what the apply
left and the next apply succeeds.

A package of about 2000 files is committed twice (v1, then v2 with files modified, deleted,
added, a mode and a symlink changed). A template release root running v1 is copied for each
kill; a child process applies the v1 -> v2 changeset to the copy and is SIGKILLed, either
after a random delay (seeded, spread over a measured unkilled apply) or right before one of
the renames that publish its work (the release directory, ``current``, the history).
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conveyor.changeset import Built, ReleaseRoot, build_changeset
from conveyor.pkgvcs import Package
from conveyor.pkgvcs.manifest import Tree

from .test_changeset import Exe, Link, Spec, commit_versions, disk_tree, leftovers, settle

FILES = 2000

# The child: apply the changeset argv[2] to the release root argv[1]. With argv[3] =
# "rename:<name>" (or "link:<name>") it SIGKILLs itself right before the os.replace/os.rename
# (os.link) whose destination is called <name>. It prints "ready" once imported, just before
# the apply starts.
_CHILD = r"""
import os, signal, sys
from pathlib import Path
from conveyor.changeset import ReleaseRoot

root, archive, point = sys.argv[1], sys.argv[2], sys.argv[3]
kind, _, name = point.partition(":")

def killing(real, at):
    def call(src, dst, *args, **kwargs):
        if kind == at and os.path.basename(os.fsdecode(dst)) == name:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(src, dst, *args, **kwargs)
    return call

os.replace = killing(os.replace, "rename")
os.rename = killing(os.rename, "rename")
os.link = killing(os.link, "link")
releases = ReleaseRoot(Path(root))
sys.stdout.write("ready\n")
sys.stdout.flush()
releases.apply(Path(archive))
sys.stdout.write("done\n")
"""


def _spec_v1() -> Spec:
    # (every content distinct: pkgvcs cannot yet commit 256+ new files sharing a content)
    files: dict[str, bytes | Exe | Link | None] = {
        f"d{i % 20}/e{i % 5}/file {i}.txt": b"%d\n" % i * (1 + i % 30) for i in range(FILES)
    }
    files["bin/run.sh"] = b"#!/bin/sh\n"
    files["lnk"] = Link("d1/e1")
    return files


def _spec_v2() -> Spec:
    files: dict[str, bytes | Exe | Link | None] = {}
    for i in range(0, FILES, 10):
        files[f"d{i % 20}/e{i % 5}/file {i}.txt"] = b"changed %d\n" % i
    for i in range(1, FILES, 23):
        files[f"d{i % 20}/e{i % 5}/file {i}.txt"] = None
    for i in range(150):
        files[f"new{i % 10}/n {i}"] = b"new %d\n" % i
    files["bin/run.sh"] = Exe(b"#!/bin/sh\n")
    files["lnk"] = Link("d2")
    return files


@dataclass
class World:
    v1: str
    v2: str
    trees: dict[str, Tree]
    second: Built  # v1 -> v2
    template: Path  # a release root running v1
    seconds: float  # an unkilled apply, from "ready" to its end


@dataclass
class Run:
    returncode: int
    seconds: float


def run_child(root: Path, archive: Path, *, point: str = "none", delay: float | None = None) -> Run:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(root), str(archive), point],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "ready\n"
    start = time.perf_counter()
    if delay is not None:
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)  # (a no-op if it has ended)
    _, errors = child.communicate(timeout=60)
    seconds = time.perf_counter() - start
    assert child.returncode in (0, -signal.SIGKILL), errors
    return Run(child.returncode, seconds)


_copies = iter(range(1_000_000))


def copy(template: Path) -> Path:
    """A hard-linked copy (``cp -al``): cheap, and independent as long as nothing writes a file
    in place (an apply only links, renames and unlinks the files of the running release)."""
    target = template.parent / f"node{next(_copies)}"
    subprocess.run(["cp", "-al", str(template), str(target)], check=True)
    return target


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    top = tmp_path_factory.mktemp("crash")
    package, (v1, v2), trees = commit_versions(top / "src", "crash", [_spec_v1(), _spec_v2()])
    first = build_changeset(package, parent=None, version=v1, directory=top / "out")
    second = build_changeset(package, parent=v1, version=v2, directory=top / "out")
    counts = second.changes.counts()
    assert counts == {"added": 150, "modified": 193, "deleted": 87}
    template = top / "template"
    releases = ReleaseRoot(template)
    releases.apply(first.path)
    settle(releases)

    measured = copy(template)
    run = run_child(measured, second.path)
    assert run.returncode == 0
    assert ReleaseRoot(measured).current() == v2
    assert disk_tree(measured / "current") == trees[v2]
    return World(v1, v2, trees, second, template, run.seconds)


@pytest.fixture
def node(world: World) -> Path:
    return copy(world.template)


def check_after_kill(world: World, root: Path) -> str:
    """What a killed apply may leave: ``current`` at v1 or v2, complete; returns which."""
    link = root / "current"
    assert link.is_symlink()
    target = os.readlink(link)
    assert target in (f"releases/{world.v1}", f"releases/{world.v2}"), target
    version = Path(target).name
    assert disk_tree(link) == world.trees[version]
    assert Package(root / target).head() == version
    return version


def check_recovery(world: World, root: Path, version: str) -> None:
    """``recover`` removes the leftovers; the next apply brings the root to v2."""
    releases = ReleaseRoot(root)
    releases.recover()
    assert leftovers(root) == []
    assert releases.current() == version
    assert releases.history()[-1]["version"] == version
    assert releases.available()[-1] == version

    result = releases.apply(world.second.path)
    assert result.version == world.v2
    assert result.already_current == (version == world.v2)
    assert os.readlink(root / "current") == f"releases/{world.v2}"
    assert disk_tree(root / "current") == world.trees[world.v2]
    assert disk_tree(releases.release_dir(world.v1)) == world.trees[world.v1]
    assert releases.drift() is None
    assert leftovers(root) == []


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_killed_at_a_random_moment_the_root_runs_one_complete_version(world: World, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(2):
        root = copy(world.template)
        delay = rng.uniform(0, world.seconds * 1.1)
        run = run_child(root, world.second.path, delay=delay)
        version = check_after_kill(world, root)
        if run.returncode == 0:
            assert version == world.v2
        check_recovery(world, root, version)


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        ("staging", "v1"),  # the complete staging directory is renamed to releases/<v2>
        ("current", "v1"),  # the new symlink is renamed over current
        ("releases.json", "v2"),  # the history is written
    ],
)
def test_killed_right_before_a_rename(world: World, node: Path, point: str, expected: str) -> None:
    name = world.v2 if point == "staging" else point
    run = run_child(node, world.second.path, point=f"rename:{name}")
    assert run.returncode == -signal.SIGKILL
    version = check_after_kill(world, node)
    assert version == (world.v1 if expected == "v1" else world.v2)
    before = leftovers(node)
    if point == "staging":
        assert any(n.startswith("releases/.staging-") for n in before), before
    if point == "current":
        assert (node / "releases" / world.v2 / ".conveyor" / "HEAD").is_file()  # built, not switched to
        assert any(re.fullmatch(r"\.current\.[0-9a-f]+\.tmp", n) for n in before), before
    if point == "releases.json":
        assert ReleaseRoot(node).history()[-1]["version"] == world.v1  # switched, not recorded
    check_recovery(world, node, version)
    if point == "releases.json":
        assert ReleaseRoot(node).state(world.v2) == "pending"  # recover recorded the switch


def test_killed_with_the_history_half_written(world: World, node: Path) -> None:
    # Killed between writing the new history beside releases.json and renaming it into place.
    run_child(node, world.second.path, point="rename:releases.json")
    assert any(re.fullmatch(r"\.releases\.json\.\d+\.tmp", n) for n in leftovers(node)), leftovers(node)
    ReleaseRoot(node).recover()
    assert leftovers(node) == []


def test_killed_while_taking_the_lock(world: World, node: Path) -> None:
    # The lock is written beside .lock, then hard-linked into place: killed in between.
    run_child(node, world.second.path, point="link:.lock")
    assert [n for n in leftovers(node) if n != ".lock"] != []
    ReleaseRoot(node).recover()
    assert leftovers(node) == []
    assert ReleaseRoot(node).apply(world.second.path).version == world.v2
