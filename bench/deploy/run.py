"""Deploying a release to 20 nodes: Conveyor's promotion against Ansible, a hand-written asyncssh
script and rsync, on the same machine in the same run.

20 nodes, each a real sshd on a loopback port with its own directory (`conveyor.testing.sshd`),
each also running a changelog listener (a process per node) next to a version-db, a deployer, a
dev source listener and a dev target node, on private RabbitMQ vhosts. A deterministic release of
2,000 files (~20 MB) is deployed, then a change of 20 files (~200 KB) of it. Per round, timed:

- FULL (nodes have no release yet): Conveyor's `POST /promotions` to the 20-node environment
  (canary 0, wave 100%) until the promotion's state is `succeeded`, against `ansible-playbook -f 20`
  (copy the .tar.gz, unarchive it into a new release directory, switch `current`, dummy restart) and a
  hand-written asyncssh script (SFTP put of the .tar.gz, `tar -xzf` into a new release directory,
  switch, dummy restart, all 20 nodes concurrently); `rsync -az` of the whole tree is shown too;
- DELTA (nodes run that release): the promotion of the next version (a changeset of the 20 changed
  files) against 20 parallel `rsync -az --link-dest=<previous release>` into a new release directory
  plus the switch over ssh, the same Ansible playbook with the next version's full archive, and the
  asyncssh script shipping a .tar.gz of the changed files into a `cp -al` of the previous release.

The dummy restart is the same everywhere: `touch <node>/<method>/restarted` after the switch (the
listeners run SERVICE_MANAGER=none and do it as their health-check command). Targets, on the medians:
FULL at least 8x faster than Ansible and 1.5x faster than the asyncssh script, DELTA at least 4x
faster than rsync. Every method's result is checked on every node before anything is reported.

    uv run --frozen python bench/deploy/run.py [--runs 3] [--out bench/RESULTS.md] [--workdir DIR] [--keep]

Exit status: 0 every target is met; 1 a target is missed; 2 a correctness check failed, Conveyor
failed or a peer failed (what was measured is still reported).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import os
import platform
import random
import re
import secrets
import shlex
import shutil
import signal
import stat
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import FrameType
from typing import Any

import asyncssh
import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for results.py
from results import cpu_model, write_section

from conveyor.changeset import ReleaseRoot
from conveyor.contracts import ChangesetApplied
from conveyor.pkgvcs.errors import VcsError
from conveyor.pkgvcs.package import Package
from conveyor.signing import SigningKey
from conveyor.testing.services import RabbitEndpoint, free_port, reachable
from conveyor.testing.sshd import SshNode, client_key
from conveyor.testing.tap import EventTap

SECTION_TITLE = "## Deploy: promotion vs Ansible, hand-written asyncssh and rsync"
SEED = 20261204
NODES = 20
FILES = 2_000
RELEASE_BYTES = 20_000_000
BINARY_FILES = 80  # random bytes: incompressible
EXECUTABLES = 20  # text files with mode 755
MEDIAN_TEXT, SIGMA_TEXT = 5_000, 1.0  # log-normal sizes before scaling to RELEASE_BYTES
MEDIAN_BINARY, SIGMA_BINARY = 40_000, 0.8
MIN_SIZE, MAX_SIZE = 16, 2 << 20
TOP_DIRS = ("src", "lib", "assets", "static", "templates", "config", "vendor", "docs")
TEXT_SUFFIXES = (".py", ".txt", ".json", ".html", ".css", ".js", ".yaml")
BINARY_SUFFIXES = (".bin", ".png", ".jpg", ".woff2")
VOCABULARY, LINES, ZIPF, AVERAGE_LINE = 2_000, 4_096, 1.1, 40
SEPARATORS = (" ", " ", " ", ", ", " = ", "(", ") ", ".", ": ", " + ")
DELTA_MODIFIED = 17  # plus VERSION, one added and one deleted file: 20 changed files
DELTA_SIZES = (6_000, 16_000)  # the modified files are text files of these sizes (~200 KB in all)
ADDED_PATH, ADDED_SIZE = "src/feature/new_module.py", 10_000
VERSION_FILE = "VERSION"
# The peers' local trees get fixed mtimes, a day apart: rsync's quick check (size and mtime, to the
# second) must see the change, as it would between two builds; VERSION keeps its size.
MTIME_V1 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
MTIME_V2 = MTIME_V1 + 86_400
TARGET_FULL_ANSIBLE, TARGET_FULL_ASYNCSSH, TARGET_DELTA_RSYNC = 8.0, 1.5, 4.0
REFERENCE = "Ansible f=20 ≈ 72 s full; hand asyncssh ≈ 17 s full, ≈ 2.8 s delta; parallel rsync ≈ 6.4 s delta"
DEFAULT_RUNS = 3
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_MANAGEMENT = "http://127.0.0.1:15672"
PROMOTION_TIMEOUT_S = 300.0
COMMAND_TIMEOUT_S = 600.0
POLL_S = 0.05  # how often the promotion's state is read while it runs
SETTLE_S = 0.5  # pause before each timed run, after an untimed sync
HEARTBEAT_S = 5.0
METADATA = ".conveyor"
PACKAGE_PREFIX = "app"

CONVEYOR, ANSIBLE, ASYNCSSH, RSYNC = "conveyor", "ansible", "asyncssh", "rsync"
PEERS = (ANSIBLE, ASYNCSSH, RSYNC)
FULL, DELTA = "full", "delta"
Key = tuple[str, str]  # (method, phase)
NAMES: dict[Key, str] = {
    (CONVEYOR, FULL): "Conveyor promotion (first release on every node)",
    (ANSIBLE, FULL): "`ansible-playbook -f 20` (copy + unarchive + link + touch)",
    (ASYNCSSH, FULL): "hand-written asyncssh (SFTP put + `tar -xzf` + switch)",
    (RSYNC, FULL): "parallel `rsync -az` of the whole tree + switch over ssh",
    (CONVEYOR, DELTA): "Conveyor promotion (changeset of the 20 files)",
    (RSYNC, DELTA): "parallel `rsync -az --link-dest` + switch over ssh",
    (ANSIBLE, DELTA): "`ansible-playbook -f 20`, the next version's full archive",
    (ASYNCSSH, DELTA): "hand-written asyncssh (`cp -al` + SFTP put of the changed files' .tar.gz)",
}
ORDER: dict[str, tuple[str, ...]] = {
    FULL: (CONVEYOR, ANSIBLE, ASYNCSSH, RSYNC),
    DELTA: (CONVEYOR, RSYNC, ANSIBLE, ASYNCSSH),
}
TARGETS: dict[Key, float] = {  # peer's median / Conveyor's median must be at least this
    (ANSIBLE, FULL): TARGET_FULL_ANSIBLE,
    (ASYNCSSH, FULL): TARGET_FULL_ASYNCSSH,
    (RSYNC, DELTA): TARGET_DELTA_RSYNC,
}

Entry = tuple[bytes, bool]  # content, executable
Tree = dict[str, Entry]  # relative path -> entry
Digest = tuple[str, bool]  # sha256, executable bit
Files = dict[str, Digest]

PLAYBOOK = """\
- name: Deploy a release
  hosts: nodes
  gather_facts: false
  tasks:
    - name: Copy the release archive
      ansible.builtin.copy:
        src: "{{ archive }}"
        dest: "{{ base }}/incoming/{{ release }}.tar.gz"
        mode: "0644"
    - name: Make the release directory
      ansible.builtin.file:
        path: "{{ base }}/releases/{{ release }}"
        state: directory
        mode: "0755"
    - name: Unpack the release
      ansible.builtin.unarchive:
        src: "{{ base }}/incoming/{{ release }}.tar.gz"
        dest: "{{ base }}/releases/{{ release }}"
        remote_src: true
    - name: Switch current to the release
      ansible.builtin.file:
        src: "{{ base }}/releases/{{ release }}"
        dest: "{{ base }}/current"
        state: link
        force: true
    - name: Restart (the same dummy restart as every method)
      ansible.builtin.command: "touch {{ base }}/restarted"
      changed_when: true
"""


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# -- configuration --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Config:
    runs: int
    warmup: int
    out: Path
    workdir: Path
    keep: bool
    amqp_url: str
    management_url: str
    ansible: str  # pip requirement for the Ansible virtualenv
    command: str

    @property
    def rounds(self) -> int:
        return self.warmup + self.runs


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="timed rounds (full + delta each)")
    parser.add_argument(
        "--warmup", type=int, default=0, help="untimed rounds first (checked, not recorded; default 0)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/RESULTS.md"))
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="parent of the temporary directory holding the nodes and the estate (default /tmp)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the directory (nodes, logs) at the end")
    parser.add_argument("--amqp-url", default=DEFAULT_AMQP, help="RabbitMQ (private vhosts are made there)")
    parser.add_argument("--management-url", default=DEFAULT_MANAGEMENT, help="RabbitMQ's management API")
    parser.add_argument(
        "--ansible", default="ansible-core", help="pip requirement installed into the Ansible virtualenv"
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup cannot be negative")
    raw = sys.argv[1:] if argv is None else argv
    return Config(
        runs=args.runs,
        warmup=args.warmup,
        out=args.out,
        workdir=args.workdir.absolute(),
        keep=args.keep,
        amqp_url=args.amqp_url,
        management_url=args.management_url,
        ansible=args.ansible,
        command=shlex.join(["uv", "run", "--frozen", "python", "bench/deploy/run.py", *raw]),
    )


class SetupFailed(Exception):
    """The machine cannot run the benchmark (a tool, a service, the disk): nothing is measured."""


class ConveyorFailed(Exception):
    """A promotion did not succeed, or a Conveyor service failed: reported, exit 2."""


class PeerFailed(Exception):
    """A peer's command failed: reported, exit 2."""


# -- the release --------------------------------------------------------------------


@dataclass
class Generator:
    """Deterministic content: text-like lines drawn from a pool of pseudo-words, or random bytes."""

    rng: random.Random
    pool: list[bytes] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)  # cumulative, Zipf-like: some lines are common

    def __post_init__(self) -> None:
        words: set[str] = set()
        while len(words) < VOCABULARY:
            words.add("".join(self.rng.choices(string.ascii_lowercase, k=self.rng.randint(2, 10))))
        vocabulary = sorted(words)
        for _ in range(LINES):
            parts = [
                w + self.rng.choice(SEPARATORS)
                for w in self.rng.choices(vocabulary, k=self.rng.randint(1, 8))
            ]
            self.pool.append(("    " * self.rng.randint(0, 3) + "".join(parts).rstrip() + "\n").encode())
        self.weights = list(itertools.accumulate(1 / (rank + 1) ** ZIPF for rank in range(LINES)))

    def text(self, size: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while total < size:
            chunk = self.rng.choices(self.pool, cum_weights=self.weights, k=size // AVERAGE_LINE + 1)
            parts += chunk
            total += sum(map(len, chunk))
        return b"".join(parts)[: size - 1] + b"\n"

    def size(self, binary: bool) -> float:
        median, sigma = (MEDIAN_BINARY, SIGMA_BINARY) if binary else (MEDIAN_TEXT, SIGMA_TEXT)
        return self.rng.lognormvariate(math.log(median), sigma)

    def modify(self, old: bytes) -> bytes:
        """10-30% of a text file rewritten in one place."""
        while True:
            span = max(1, int(len(old) * self.rng.uniform(0.1, 0.3)))
            start = self.rng.randrange(0, len(old) - span + 1)
            new = (
                old[:start] + self.text(max(2, int(span * self.rng.uniform(0.8, 1.2)))) + old[start + span :]
            )
            if new != old:
                return new


@dataclass
class Content:
    """The release (without its VERSION file) and the change to the next version."""

    v1: Tree
    v2: Tree
    modified: list[str]
    added: list[str]
    deleted: list[str]
    dirs: int

    @property
    def changed_bytes(self) -> int:
        """Bytes of the files the change writes (modified and added), VERSION excluded."""
        return sum(len(self.v2[p][0]) for p in self.modified + self.added)


def make_content() -> Content:
    rng = random.Random(SEED)
    gen = Generator(rng)
    dirs = [""]
    for top in TOP_DIRS:
        dirs.append(top)
        for i in range(rng.randint(2, 5)):
            dirs.append(f"{top}/p{i}")
            dirs += [f"{top}/p{i}/m{j}" for j in range(rng.randint(0, 2))]
    count = FILES - 1  # VERSION is the last one
    binary = set(rng.sample(range(count), BINARY_FILES))
    raw = [gen.size(i in binary) for i in range(count)]
    scale = (RELEASE_BYTES - 64) / sum(raw)
    sizes = [int(min(MAX_SIZE, max(MIN_SIZE, r * scale))) for r in raw]
    executable = set(rng.sample([i for i in range(count) if i not in binary], EXECUTABLES))
    v1: Tree = {}
    for i, size in enumerate(sizes):
        suffix = ".sh" if i in executable else rng.choice(BINARY_SUFFIXES if i in binary else TEXT_SUFFIXES)
        rel = f"{rng.choice(dirs)}/f{i:04d}{suffix}".lstrip("/")
        data = rng.randbytes(size) if i in binary else gen.text(size)
        v1[rel] = (data, i in executable)
    text = sorted(p for p, (d, x) in v1.items() if not x and p.endswith(TEXT_SUFFIXES))
    candidates = [p for p in text if DELTA_SIZES[0] <= len(v1[p][0]) <= DELTA_SIZES[1]]
    modified = sorted(rng.sample(candidates, DELTA_MODIFIED))
    deleted = [rng.choice(sorted(set(text) - set(modified)))]
    v2 = {p: e for p, e in v1.items() if p not in deleted}
    for rel in modified:
        v2[rel] = (gen.modify(v1[rel][0]), v1[rel][1])
    v2[ADDED_PATH] = (gen.text(ADDED_SIZE), False)
    return Content(v1=v1, v2=v2, modified=modified, added=[ADDED_PATH], deleted=deleted, dirs=len(dirs))


def versioned(tree: Tree, package: str, number: int) -> Tree:
    return {**tree, VERSION_FILE: (f"{package} {number}\n".encode(), False)}


def write_file(path: Path, entry: Entry, mtime: float | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(entry[0])
    os.chmod(path, 0o755 if entry[1] else 0o644)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def write_tree(root: Path, tree: Tree, mtime: float | None = None) -> None:
    for rel, entry in tree.items():
        write_file(root / rel, entry, mtime)


def edit_tree(root: Path, old: Tree, new: Tree, mtime: float | None = None) -> None:
    """Turn ``root`` (holding ``old``) into ``new``: changed files are replaced (unlinked first, so a
    tree sharing them through hard links keeps its bytes), removed files deleted."""
    for rel in sorted(old.keys() - new.keys()):
        (root / rel).unlink()
    for rel, entry in new.items():
        if old.get(rel) != entry:
            (root / rel).unlink(missing_ok=True)
            write_file(root / rel, entry, mtime)


@dataclass(frozen=True)
class Expect:
    """What a node's current release must hold."""

    label: str
    files: Files
    version_text: str

    @classmethod
    def of(cls, label: str, tree: Tree) -> Expect:
        files = {p: (hashlib.sha256(d).hexdigest(), x) for p, (d, x) in tree.items()}
        return cls(label, files, tree[VERSION_FILE][0].decode())


# -- checks ---------------------------------------------------------------------------


def tree_files(top: str, *, contents: bool) -> Files:
    """sha256 (or, without ``contents``, the size) and executable bit of every file under ``top``,
    without the top-level ``.conveyor/``; anything but a regular file is named as such."""
    found: Files = {}
    for folder, subdirs, names in os.walk(top):
        if folder == top and METADATA in subdirs:
            subdirs.remove(METADATA)
        for name in names:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            rel = os.path.relpath(path, top)
            if not stat.S_ISREG(info.st_mode):
                found[rel] = (f"not a regular file (mode {info.st_mode:o})", False)
            elif contents:
                with open(path, "rb") as handle:
                    found[rel] = (
                        hashlib.file_digest(handle, "sha256").hexdigest(),
                        bool(info.st_mode & 0o100),
                    )
            else:
                found[rel] = (str(info.st_size), bool(info.st_mode & 0o100))
    return found


def differences(label: str, got: Files, want: Files) -> list[str]:
    missing = sorted(want.keys() - got.keys())
    extra = sorted(got.keys() - want.keys())
    differ = sorted(p for p in want.keys() & got.keys() if want[p] != got[p])
    said = [
        f"{len(found)} {what}, e.g. {found[:3]}"
        for what, found in (("missing", missing), ("unexpected", extra), ("with other bytes or mode", differ))
        if found
    ]
    return [f"{label}: {'; '.join(said)}"] if said else []


def sizes_of(expect: Expect, tree: Tree) -> Files:
    return {p: (str(len(tree[p][0])), x) for p, (_, x) in expect.files.items()}


@dataclass(frozen=True)
class Placement:
    """Where one method put one version on one node."""

    node: str
    current: Path  # the `current` symlink
    release: Path  # the directory it must resolve to
    marker: Path  # touched by the dummy restart


def check_nodes(
    label: str,
    placements: list[Placement],
    expect: Expect,
    tree: Tree,
    *,
    sample: list[int],
    since: float,
    intact: tuple[list[Path], Expect] | None = None,
) -> list[str]:
    """Every node: `current` resolves to the release, the release lists exactly the expected files
    (sizes, executable bits), VERSION says the version, the restart marker was touched during the run.
    The ``sample`` nodes: every file's sha256 too, and (``intact``) the previous release, which the new
    one shares files with, still holds its own bytes."""
    problems: list[str] = []
    sizes = sizes_of(expect, tree)
    for index, place in enumerate(placements):
        where = f"{label} on {place.node}"
        resolved = os.path.realpath(place.current)
        if resolved != os.path.realpath(place.release):
            problems.append(f"{where}: current resolves to {resolved}, expected {place.release}")
            continue
        try:
            version = (place.release / VERSION_FILE).read_text()
        except OSError as exc:
            version = f"unreadable ({exc})"
        if version != expect.version_text:
            problems.append(f"{where}: VERSION says {version!r}, expected {expect.version_text!r}")
        problems += differences(where, tree_files(resolved, contents=False), sizes)
        try:
            touched = place.marker.stat().st_mtime
        except FileNotFoundError:
            touched = 0.0
        if touched < since - 1.0:
            problems.append(f"{where}: the restart marker {place.marker.name} was not touched by this run")
        if index in sample:
            problems += differences(f"{where} (sha256)", tree_files(resolved, contents=True), expect.files)
            if intact is not None:
                previous, old = intact
                problems += differences(
                    f"{where}: the previous release {previous[index].name}",
                    tree_files(str(previous[index]), contents=True),
                    old.files,
                )
    return problems


# -- processes ------------------------------------------------------------------------


@dataclass
class World:
    """Everything started, for the cleanup: processes, sshd nodes, vhosts, ssh control masters."""

    rabbit: RabbitEndpoint
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    sshd: list[SshNode] = field(default_factory=list)
    vhosts: list[str] = field(default_factory=list)
    control_dirs: list[Path] = field(default_factory=list)

    def close(self) -> list[str]:
        """Stop everything, whatever state it is in; returns what went wrong doing so."""
        trouble: list[str] = []
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                trouble.append(f"{name} did not stop on SIGTERM within 30 s: killed")
                process.kill()
                process.wait()
        self.processes.clear()
        for directory in self.control_dirs:
            close_masters(directory)

        def stop(node: SshNode) -> None:
            try:
                node.stop()
            except Exception as exc:  # noqa: BLE001 - stop the others anyway
                trouble.append(f"sshd of {node.name}: {exc}")

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(stop, self.sshd))
        self.sshd.clear()
        for vhost in self.vhosts:
            try:
                self.rabbit.delete_vhost(vhost)
            except Exception as exc:  # noqa: BLE001 - report and go on
                trouble.append(f"vhost {vhost} not deleted: {exc}")
        self.vhosts.clear()
        return trouble


def close_masters(directory: Path) -> None:
    """Ask every ssh control master with a socket in ``directory`` to exit (Ansible's ControlPersist)."""
    if not directory.is_dir():
        return
    for socket_path in directory.iterdir():
        subprocess.run(
            ["ssh", "-o", f"ControlPath={socket_path}", "-O", "exit", "master"],
            capture_output=True,
            timeout=30,
            check=False,
        )


async def run(
    argv: list[str], *, env: dict[str, str] | None = None, timeout: float = COMMAND_TIMEOUT_S
) -> str:
    """Run a command to completion (PeerFailed unless it exits 0); its output."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise PeerFailed(f"`{shlex.join(argv)[:300]}` timed out after {timeout:.0f} s") from None
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise PeerFailed(f"`{shlex.join(argv)[:300]}` exited {process.returncode}: {text.strip()[-1500:]}")
    return text


TICKS = os.sysconf("SC_CLK_TCK")
SELF = "this process"


@dataclass(frozen=True)
class CpuSnapshot:
    busy: float  # machine-wide jiffies: busy, iowait, all
    iowait: float
    total: float
    groups: dict[str, float]  # CPU seconds so far of the processes we started, by group

    @classmethod
    def take(cls, processes: dict[str, subprocess.Popen[bytes]]) -> CpuSnapshot:
        fields = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        groups: dict[str, float] = {}
        for name, process in processes.items():
            group = "bench listeners" if name.startswith("listener-node-") else name
            groups[group] = groups.get(group, 0.0) + process_cpu(process.pid)
        groups[SELF] = time.process_time()  # this process only (the asyncssh peer runs in it)
        return cls(sum(fields[:8]) - fields[3] - fields[4], fields[4], sum(fields[:8]), groups)


def process_cpu(pid: int) -> float:
    """User + system seconds of a process and its waited-for children (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / TICKS


@dataclass
class Usage:
    busy: float  # share of all CPUs busy during the run
    iowait: float  # share of all CPUs waiting for I/O
    cpu_s: float  # CPU seconds the whole machine spent
    groups: dict[str, float]  # of which, by the Conveyor processes (CPU seconds, by group)


def usage_between(before: CpuSnapshot, after: CpuSnapshot) -> Usage:
    total = max(after.total - before.total, 1.0)
    groups = {k: v - before.groups.get(k, 0.0) for k, v in after.groups.items()}
    return Usage(
        (after.busy - before.busy) / total,
        (after.iowait - before.iowait) / total,
        (after.busy - before.busy) / TICKS,
        groups,
    )


# -- the nodes and the estate -------------------------------------------------------------

STORE_TOKEN = "store-" + secrets.token_hex(8)
READER_TOKEN = "reader-" + secrets.token_hex(8)
USER, USER_TOKEN = "bench", "bench-" + secrets.token_hex(8)
SOURCE_NODE, DEV_NODE = "dev-src", "dev-1"


@dataclass
class Node:
    name: str
    ssh: SshNode
    http_port: int = field(default_factory=free_port)

    @property
    def root(self) -> Path:
        return self.ssh.root

    @property
    def state(self) -> Path:
        return self.ssh.directory / "listener-state"

    def base(self, method: str) -> Path:
        """A peer's directory on the node: incoming/, releases/<release>/, current, restarted."""
        return self.root / method

    def conveyor_root(self, package: str) -> Path:
        return self.root / CONVEYOR / package

    def conveyor_marker(self, package: str) -> Path:
        return self.root / CONVEYOR / f"restarted-{package}"


@dataclass
class Round:
    index: int
    package: str
    warmup: bool
    v1: Expect
    v2: Expect
    tree_v1: Tree
    tree_v2: Tree
    local_v1: Path  # local trees: rsync's sources, the archives' contents
    local_v2: Path
    archive_v1: Path
    archive_v2: Path
    delta_archive: Path  # the changed and added files of v2
    source: Path  # the package directory on the dev source node
    conveyor_v1: str = ""
    conveyor_v2: str = ""

    def release(self, number: int) -> str:
        return f"{self.package}-v{number}"

    def sample(self) -> list[int]:
        """Two nodes whose every file is hashed, different each round."""
        first = (2 * self.index) % NODES
        return [first, (first + NODES // 2 + 1) % NODES]


@dataclass
class Estate:
    base: Path
    world: World
    urls: dict[str, str]
    nodes: list[Node]
    packages: list[str]
    version_db_port: int = field(default_factory=free_port)
    deployer_port: int = field(default_factory=free_port)
    dev_port: int = field(default_factory=free_port)
    source_port: int = field(default_factory=free_port)

    @property
    def store_url(self) -> str:
        return f"http://127.0.0.1:{self.version_db_port}"

    @property
    def deployer_url(self) -> str:
        return f"http://127.0.0.1:{self.deployer_port}"

    @property
    def dir(self) -> Path:
        return self.base / "estate"

    def source_root(self, package: str) -> Path:
        return self.base / SOURCE_NODE / package

    def dev_root(self, package: str) -> Path:
        return self.base / DEV_NODE / package

    def mirrored(self, package: str, version: str) -> bool:
        release = self.dir / "deployer" / "mirror" / "packages" / package / "releases" / version
        return (release / METADATA / "HEAD").is_file()

    def spawn(self, name: str, script: str, env: dict[str, str]) -> None:
        bin_dir = Path(sys.executable).parent
        with (self.dir / f"{name}.log").open("ab") as output:
            self.world.processes[name] = subprocess.Popen(
                [str(bin_dir / script)],
                env={"PATH": f"{bin_dir}:/usr/bin:/bin", **env},
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the bench, which stops them in order
            )

    def inventory(self) -> dict[str, Any]:
        packages: dict[str, list[str]] = {p: [] for p in self.packages}
        dev = [{"name": DEV_NODE, "address": "127.0.0.1", "packages": packages}]
        bench = [
            {
                "name": n.name,
                "address": "127.0.0.1",
                "ssh_port": n.ssh.port,
                "ssh_user": "root",
                "packages": packages,
            }
            for n in self.nodes
        ]
        return {
            "environments": [
                {"name": "dev", "clusters": [{"name": "app", "nodes": dev}]},
                {"name": "bench", "clusters": [{"name": "app", "nodes": bench}]},
            ]
        }

    def start_version_db(self) -> None:
        p = "CONVEYOR_VERSION_DB_"
        self.spawn(
            "version-db",
            "conveyor-version-db",
            {
                f"{p}ENVS": json.dumps(self.urls),
                f"{p}HTTP_PORT": str(self.version_db_port),
                f"{p}DATABASE_URL": f"sqlite+aiosqlite:///{self.dir / 'version-db.sqlite3'}",
                f"{p}ARTIFACTS_DIR": str(self.dir / "artifacts"),
                f"{p}API_TOKENS": json.dumps({"deployer": [STORE_TOKEN], "reader": [READER_TOKEN]}),
                f"{p}LOG_FORMAT": "json",
            },
        )

    def start_deployer(self) -> None:
        (self.dir / "inventory.yaml").write_text(yaml.safe_dump(self.inventory()))
        p = "CONVEYOR_DEPLOYER_"
        self.spawn(
            "deployer",
            "conveyor-deployer",
            {
                f"{p}ENVS": json.dumps(self.urls),
                f"{p}HTTP_PORT": str(self.deployer_port),
                f"{p}LOG_FORMAT": "json",
                f"{p}INVENTORY_FILE": str(self.dir / "inventory.yaml"),
                f"{p}STATE_DIR": str(self.dir / "deployer"),
                f"{p}USERS": json.dumps({USER: {"token": USER_TOKEN, "role": "deployer"}}),
                f"{p}SIGNING_KEY_FILE": str(self.dir / "signing.key"),
                f"{p}ARTIFACT_STORE_URL": self.store_url,
                f"{p}ARTIFACT_STORE_TOKEN": STORE_TOKEN,
                f"{p}NODE_TIMEOUT_S": "120",
                f"{p}HEARTBEAT_STALE_S": "60",
            },
        )

    def listener_env(
        self, *, name: str, env: str, port: int, state: Path, packages: list[dict[str, Any]], source: bool
    ) -> dict[str, str]:
        p = "CONVEYOR_CHANGELOG_LISTENER_"
        return {
            f"{p}ENVS": json.dumps(self.urls),
            f"{p}ENV": env,
            f"{p}NODE": name,
            f"{p}HTTP_PORT": str(port),
            f"{p}LOG_FORMAT": "json",
            f"{p}PACKAGES": json.dumps(packages),
            f"{p}STATE_DIR": str(state),
            f"{p}ARTIFACT_STORE_URL": self.store_url,
            f"{p}ARTIFACT_STORE_TOKEN": STORE_TOKEN if source else READER_TOKEN,
            f"{p}TRUSTED_KEYS_FILE": str(self.dir / "trusted-keys"),
            f"{p}SERVICE_MANAGER": "none",
            f"{p}QUIET_PERIOD_S": "0.5",
            # targets: no drift scan while the bench runs (one at start-up, on empty roots)
            f"{p}RESCAN_INTERVAL_S": "30" if source else "3600",
            f"{p}HEARTBEAT_INTERVAL_S": str(HEARTBEAT_S),
        }

    def target_packages(
        self, root_of: Callable[[str], Path], marker_of: Callable[[str], Path]
    ) -> list[dict[str, Any]]:
        touch = shutil.which("touch") or "/usr/bin/touch"
        return [
            {
                "name": package,
                "root": str(root_of(package)),
                "role": "target",
                # SERVICE_MANAGER=none restarts nothing; this is the dummy restart every method does
                "health_check": {
                    "command": [touch, str(marker_of(package))],
                    "timeout_s": 30,
                    "interval_s": 0.1,
                },
            }
            for package in self.packages
        ]

    def start_listeners(self) -> None:
        sources = [{"name": p, "root": str(self.source_root(p)), "role": "source"} for p in self.packages]
        self.spawn(
            f"listener-{SOURCE_NODE}",
            "conveyor-changelog-listener",
            self.listener_env(
                name=SOURCE_NODE,
                env="dev",
                port=self.source_port,
                state=self.base / SOURCE_NODE / ".state",
                packages=sources,
                source=True,
            ),
        )
        dev = self.target_packages(self.dev_root, lambda p: self.base / DEV_NODE / f"restarted-{p}")
        self.spawn(
            f"listener-{DEV_NODE}",
            "conveyor-changelog-listener",
            self.listener_env(
                name=DEV_NODE,
                env="dev",
                port=self.dev_port,
                state=self.base / DEV_NODE / ".state",
                packages=dev,
                source=False,
            ),
        )
        for node in self.nodes:
            packages = self.target_packages(node.conveyor_root, node.conveyor_marker)
            self.spawn(
                f"listener-{node.name}",
                "conveyor-changelog-listener",
                self.listener_env(
                    name=node.name,
                    env="bench",
                    port=node.http_port,
                    state=node.state,
                    packages=packages,
                    source=False,
                ),
            )

    async def wait_healthy(self, names_ports: dict[str, int], timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        waiting = dict(names_ports)
        async with httpx.AsyncClient(timeout=2) as client:
            while waiting:
                for name, port in list(waiting.items()):
                    process = self.world.processes[name]
                    if process.poll() is not None:
                        raise ConveyorFailed(
                            f"{name} exited with {process.returncode} at start-up: "
                            f"{tail(self.dir / f'{name}.log')}"
                        )
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                            del waiting[name]
                if waiting and time.monotonic() > deadline:
                    raise ConveyorFailed(f"not healthy within {timeout:.0f} s: {', '.join(sorted(waiting))}")
                await asyncio.sleep(0.2)


def tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


class Api:
    """The deployer's API as the bench user."""

    def __init__(self, estate: Estate) -> None:
        self.estate = estate
        self.client = httpx.AsyncClient(
            base_url=estate.deployer_url, headers={"Authorization": f"Bearer {USER_TOKEN}"}, timeout=30
        )

    async def close(self) -> None:
        await self.client.aclose()

    async def nodes(self) -> list[dict[str, Any]]:
        response = await self.client.get("/nodes")
        response.raise_for_status()
        rows: list[dict[str, Any]] = response.json()
        return rows

    async def wait_fleet(
        self, want: Callable[[dict[str, Any]], bool], what: str, timeout: float = 60.0
    ) -> None:
        """Until every node's row (as the deployer knows it) satisfies ``want``."""
        deadline = time.monotonic() + timeout
        while True:
            rows = await self.nodes()
            if rows and all(want(r) for r in rows):
                return
            if time.monotonic() > deadline:
                bad = [r["name"] for r in rows if not want(r)]
                raise ConveyorFailed(f"the deployer never saw {what}: {', '.join(bad)}")
            await asyncio.sleep(0.2)

    async def promote(self, package: str, version: str, env: str) -> tuple[float, dict[str, Any]]:
        """POST the promotion (all nodes at once) and poll it to its final state: seconds, promotion."""
        body = {"package": package, "to_env": env, "version": version, "canary": 0, "wave_size": "100%"}
        started = time.perf_counter()
        response = await self.client.post("/promotions", json=body)
        if response.status_code != 201:
            raise ConveyorFailed(f"POST /promotions to {env}: {response.status_code} {response.text[:500]}")
        promotion_id = response.json()["id"]
        while True:
            reply = await self.client.get(f"/promotions/{promotion_id}")
            promotion: dict[str, Any] = reply.json()
            if promotion.get("state") in ("succeeded", "failed"):
                elapsed = time.perf_counter() - started
                break
            if time.perf_counter() - started > PROMOTION_TIMEOUT_S:
                raise ConveyorFailed(f"promotion {promotion_id} to {env} still {promotion.get('state')}")
            await asyncio.sleep(POLL_S)
        if promotion["state"] != "succeeded":
            errors = {
                n: r.get("error") for n, r in promotion["nodes"].items() if r.get("state") != "succeeded"
            }
            raise ConveyorFailed(
                f"promotion of {package} to {env} {promotion['state']}: {promotion['outcome']}; {errors}"
            )
        return elapsed, promotion


# -- the peers ---------------------------------------------------------------------------


@dataclass
class Peers:
    base: Path
    nodes: list[Node]
    key: Path
    known_hosts: Path
    venv: Path

    @property
    def ansible_dir(self) -> Path:
        return self.base / "ansible"

    @property
    def control_dir(self) -> Path:
        return self.base / "cp"  # short: unix socket paths

    def ssh_options(self, node: Node) -> list[str]:
        return [
            "-p",
            str(node.ssh.port),
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
        ]

    def prepare(self) -> None:
        """Each peer's incoming/ and releases/ on every node; the Ansible files."""
        for node in self.nodes:
            for method in PEERS:
                (node.base(method) / "incoming").mkdir(parents=True, exist_ok=True)
                (node.base(method) / "releases").mkdir(exist_ok=True)
        directory = self.ansible_dir
        for sub in ("home", "local-tmp", "remote-tmp"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        self.control_dir.mkdir(exist_ok=True)
        hosts = {
            n.name: {"ansible_host": "127.0.0.1", "ansible_port": n.ssh.port, "base": str(n.base(ANSIBLE))}
            for n in self.nodes
        }
        inventory = {
            "nodes": {
                "hosts": hosts,
                "vars": {
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(self.key),
                    "ansible_python_interpreter": "/usr/bin/python3",
                },
            }
        }
        (directory / "inventory.yml").write_text(yaml.safe_dump(inventory))
        (directory / "playbook.yml").write_text(PLAYBOOK)
        ssh_args = (
            f"-o ControlMaster=auto -o ControlPersist=60s -o IdentitiesOnly=yes "
            f"-o UserKnownHostsFile={self.known_hosts} -o GlobalKnownHostsFile=/dev/null "
            "-o StrictHostKeyChecking=yes"
        )
        (directory / "ansible.cfg").write_text(
            "\n".join(
                [
                    "[defaults]",
                    "forks = 20",
                    "host_key_checking = True",
                    "gathering = explicit",
                    "retry_files_enabled = False",
                    f"local_tmp = {directory / 'local-tmp'}",
                    f"remote_tmp = {directory / 'remote-tmp'}",
                    "",
                    "[ssh_connection]",
                    "pipelining = True",
                    f"ssh_args = {ssh_args}",
                    f"control_path_dir = {self.control_dir}",
                    "",
                ]
            )
        )

    def ansible_env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin",
            "HOME": str(self.ansible_dir / "home"),
            "ANSIBLE_CONFIG": str(self.ansible_dir / "ansible.cfg"),
            "ANSIBLE_HOME": str(self.ansible_dir / "home"),
            "ANSIBLE_NOCOLOR": "1",
            "LC_ALL": "C.UTF-8",
            "LANG": "C.UTF-8",
        }

    def ansible_argv(self, archive: Path, release: str) -> list[str]:
        return [
            str(self.venv / "bin" / "ansible-playbook"),
            "-f",
            "20",
            "-i",
            str(self.ansible_dir / "inventory.yml"),
            str(self.ansible_dir / "playbook.yml"),
            "-e",
            f"archive={archive}",
            "-e",
            f"release={release}",
        ]

    async def ansible(self, archive: Path, release: str) -> str:
        try:
            return await run(self.ansible_argv(archive, release), env=self.ansible_env())
        finally:
            await asyncio.to_thread(close_masters, self.control_dir)  # every run starts without connections

    @staticmethod
    def switch(base: Path, release: str) -> str:
        """Point `current` at the release (a new symlink renamed over the old one) and touch the marker."""
        rel, tmp = base / "releases" / release, base / ".current.tmp"
        q = shlex.quote
        return (
            f"ln -sfn {q(str(rel))} {q(str(tmp))} && mv -T {q(str(tmp))} {q(str(base / 'current'))} "
            f"&& touch {q(str(base / 'restarted'))}"
        )

    async def _connect(self, node: Node) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            "127.0.0.1",
            node.ssh.port,
            username="root",
            client_keys=[str(self.key)],
            known_hosts=str(self.known_hosts),
            agent_path=None,
            config=None,
            gss_kex=False,
            gss_auth=False,
        )

    async def asyncssh_full(self, archive: Path, release: str) -> None:
        async def one(node: Node) -> None:
            base = node.base(ASYNCSSH)
            remote = base / "incoming" / f"{release}.tar.gz"
            target = base / "releases" / release
            q = shlex.quote
            async with await self._connect(node) as conn:
                async with conn.start_sftp_client() as sftp:
                    await sftp.put(str(archive), str(remote))
                command = (
                    f"mkdir {q(str(target))} && tar -xzf {q(str(remote))} -C {q(str(target))} && "
                    + self.switch(base, release)
                )
                await conn.run(command, check=True)

        await self._all(one)

    async def asyncssh_delta(self, archive: Path, previous: str, release: str, deleted: list[str]) -> None:
        async def one(node: Node) -> None:
            base = node.base(ASYNCSSH)
            remote = base / "incoming" / f"{release}-delta.tar.gz"
            old, target = base / "releases" / previous, base / "releases" / release
            q = shlex.quote
            remove = " ".join(q(str(target / p)) for p in deleted)
            async with await self._connect(node) as conn:
                async with conn.start_sftp_client() as sftp:
                    await sftp.put(str(archive), str(remote))
                command = (
                    f"cp -al {q(str(old))} {q(str(target))} && rm -f -- {remove} && "
                    f"tar -xzf {q(str(remote))} -C {q(str(target))} && " + self.switch(base, release)
                )
                await conn.run(command, check=True)

        await self._all(one)

    async def rsync(self, tree: Path, release: str, link_dest: str | None) -> None:
        async def one(node: Node) -> None:
            base = node.base(RSYNC)
            shell = shlex.join(["ssh", *self.ssh_options(node)])
            argv = ["rsync", "-az", "-e", shell]
            if link_dest is not None:
                argv.append(f"--link-dest={base / 'releases' / link_dest}")
            await run([*argv, f"{tree}/", f"root@127.0.0.1:{base / 'releases' / release}/"])
            await run(["ssh", *self.ssh_options(node), "root@127.0.0.1", self.switch(base, release)])

        await self._all(one)

    async def _all(self, one: Callable[[Node], Awaitable[None]]) -> None:
        try:
            await asyncio.gather(*(one(node) for node in self.nodes))
        except (OSError, asyncssh.Error) as exc:
            raise PeerFailed(f"{type(exc).__name__}: {exc}") from exc

    def placements(self, method: str, release: str) -> list[Placement]:
        return [
            Placement(
                n.name,
                n.base(method) / "current",
                n.base(method) / "releases" / release,
                n.base(method) / "restarted",
            )
            for n in self.nodes
        ]


# -- measuring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A node's changeset.applied, when it was sent, and the apply's own verify from the node's log."""

    applied: ChangesetApplied
    occurred_at: datetime
    apply_verify: float | None


@dataclass
class ConveyorRun:
    """One timed promotion: the deployer's record and the nodes' replies, for the profile."""

    phase: str
    round: int
    seconds: float
    usage: Usage
    promotion: dict[str, Any]
    replies: list[Reply]


@dataclass
class Outcome:
    content: Content | None = None
    samples: dict[Key, list[float]] = field(default_factory=dict)
    usage: dict[Key, list[Usage]] = field(default_factory=dict)
    conveyor_runs: list[ConveyorRun] = field(default_factory=list)
    full_changeset: int | None = None  # bytes
    delta_changeset: int | None = None
    archive_bytes: dict[str, int] = field(default_factory=dict)
    alone: dict[str, float] = field(default_factory=dict)  # one node's work alone, informative
    probes: dict[str, float] = field(default_factory=dict)  # the file-creation probe: when -> seconds
    ansible_version: str = "n/a"
    setup_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    failure: str | None = None
    failed_method: str | None = None
    rounds_done: int = 0

    def record(self, key: Key, seconds: float, usage: Usage) -> None:
        self.samples.setdefault(key, []).append(seconds)
        self.usage.setdefault(key, []).append(usage)


async def settle() -> None:
    """Untimed: flush what earlier steps wrote (Conveyor's apply syncs the whole machine, so dirty
    pages left by a peer would land in its time), then let background work finish."""
    await asyncio.to_thread(os.sync)
    await asyncio.sleep(SETTLE_S)


async def timed(
    outcome: Outcome, world: World, key: Key, rnd: Round, work: Callable[[], Awaitable[None]]
) -> tuple[float, Usage]:
    await settle()
    log(f"round {rnd.index}{' (warm-up)' if rnd.warmup else ''}: {key[1]} {key[0]}")
    before = CpuSnapshot.take(world.processes)
    started = time.perf_counter()
    try:
        await work()
    except (PeerFailed, ConveyorFailed):
        outcome.failed_method = f"{key[0]} {key[1]}"
        raise
    seconds = time.perf_counter() - started
    usage = usage_between(before, CpuSnapshot.take(world.processes))
    if not rnd.warmup:
        outcome.record(key, seconds, usage)
    log(f"  {seconds:.2f} s (CPU busy {usage.busy:.0%}, iowait {usage.iowait:.0%})")
    return seconds, usage


async def replies_of(tap: EventTap, estate: Estate, promotion_id: str, version: str) -> list[Reply]:
    """The nodes' changeset.applied replies to the promotion's commands (waits briefly for stragglers),
    each with the apply's own verify time from the node's log (`release_switched`)."""
    deadline = time.monotonic() + 10
    while True:
        found = [
            (e.payload, e.occurred_at)
            for e in tap.of(ChangesetApplied)
            if isinstance(e.payload, ChangesetApplied) and str(e.payload.deployment_id) == promotion_id
        ]
        if len(found) >= NODES or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    replies = []
    for applied, occurred_at in found:
        verify = None
        with contextlib.suppress(OSError):
            for line in (estate.dir / f"listener-{applied.node}.log").read_text().splitlines():
                if '"release_switched"' in line and version in line:
                    with contextlib.suppress(ValueError):
                        verify = float(json.loads(line)["verify_s"])
        replies.append(Reply(applied, occurred_at, verify))
    return replies


async def conveyor_phase(
    *, outcome: Outcome, estate: Estate, api: Api, tap: EventTap, rnd: Round, phase: str
) -> None:
    version = rnd.conveyor_v1 if phase == FULL else rnd.conveyor_v2
    before = None if phase == FULL else rnd.conveyor_v1
    # untimed: the deployer must know every bench node's version (a late heartbeat can lag)
    await api.wait_fleet(
        lambda r: r["packages"].get(rnd.package) == (version if r["name"] == DEV_NODE else before),
        f"{rnd.package} at {version[:12]} on {DEV_NODE} and {(before or 'nothing')[:12]} on the bench",
    )
    result: dict[str, Any] = {}

    async def work() -> None:
        result["seconds"], result["promotion"] = await api.promote(rnd.package, version, "bench")

    seconds, usage = await timed(outcome, estate.world, (CONVEYOR, phase), rnd, work)
    promotion = result["promotion"]
    replies = await replies_of(tap, estate, promotion["id"], version)
    if not rnd.warmup:
        outcome.conveyor_runs.append(ConveyorRun(phase, rnd.index, seconds, usage, promotion, replies))
    expect, tree = (rnd.v1, rnd.tree_v1) if phase == FULL else (rnd.v2, rnd.tree_v2)
    placements = [
        Placement(
            n.name,
            n.conveyor_root(rnd.package) / "current",
            n.conveyor_root(rnd.package) / "releases" / version,
            n.conveyor_marker(rnd.package),
        )
        for n in estate.nodes
    ]
    intact = None
    if phase == DELTA:
        intact = ([n.conveyor_root(rnd.package) / "releases" / rnd.conveyor_v1 for n in estate.nodes], rnd.v1)
    outcome.problems += await asyncio.to_thread(
        check_nodes,
        f"Conveyor {phase} {rnd.package}",
        placements,
        expect,
        tree,
        sample=rnd.sample(),
        since=time.time() - seconds,
        intact=intact,
    )
    states = {n: r["state"] for n, r in promotion["nodes"].items()}
    if sorted(states) != sorted(n.name for n in estate.nodes) or set(states.values()) != {"succeeded"}:
        outcome.problems.append(f"Conveyor {phase} {rnd.package}: node states {states}")
    if len(replies) != NODES:
        outcome.problems.append(
            f"Conveyor {phase} {rnd.package}: {len(replies)} changeset.applied replies seen"
        )


async def peer_phase(
    *, outcome: Outcome, world: World, peers: Peers, rnd: Round, method: str, phase: str
) -> None:
    number = 1 if phase == FULL else 2
    release = rnd.release(number)
    result: dict[str, str] = {}

    async def work() -> None:
        if method == ANSIBLE:
            result["output"] = await peers.ansible(
                rnd.archive_v1 if phase == FULL else rnd.archive_v2, release
            )
        elif method == ASYNCSSH and phase == FULL:
            await peers.asyncssh_full(rnd.archive_v1, release)
        elif method == ASYNCSSH:
            await peers.asyncssh_delta(
                rnd.delta_archive, rnd.release(1), release, sorted(rnd.tree_v1.keys() - rnd.tree_v2.keys())
            )
        else:
            await peers.rsync(
                rnd.local_v1 if phase == FULL else rnd.local_v2,
                release,
                None if phase == FULL else rnd.release(1),
            )

    seconds, _ = await timed(outcome, world, (method, phase), rnd, work)
    if method == ANSIBLE:
        recap = re.findall(
            r"^(\S+)\s+: ok=(\d+)\s+changed=\d+\s+unreachable=(\d+)\s+failed=(\d+)", result["output"], re.M
        )
        good = [h for h, ok, unreachable, failed in recap if ok == "5" and unreachable == failed == "0"]
        if len(good) != NODES:
            outcome.problems.append(
                f"Ansible {phase} {rnd.package}: PLAY RECAP shows {len(good)} good hosts of {NODES}"
            )
    expect, tree = (rnd.v1, rnd.tree_v1) if phase == FULL else (rnd.v2, rnd.tree_v2)
    intact = None
    if phase == DELTA and method in (RSYNC, ASYNCSSH):  # they share files with the previous release
        intact = ([n.base(method) / "releases" / rnd.release(1) for n in peers.nodes], rnd.v1)
    outcome.problems += await asyncio.to_thread(
        check_nodes,
        f"{method} {phase} {rnd.package}",
        peers.placements(method, release),
        expect,
        tree,
        sample=rnd.sample(),
        since=time.time() - seconds,
        intact=intact,
    )


# -- setting up ----------------------------------------------------------------------------


async def make_archive(tree: Path, out: Path, paths: list[str] | None = None) -> int:
    argv = [
        "tar",
        "--sort=name",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "-C",
        str(tree),
        "-czf",
        str(out),
    ]
    await run([*argv, "--", *(paths or ["."])])
    return await asyncio.to_thread(lambda: out.stat().st_size)


async def make_rounds(config: Config, base: Path, content: Content) -> list[Round]:
    rounds = []
    for index in range(config.rounds):
        package = f"{PACKAGE_PREFIX}-{index}"
        tree_v1, tree_v2 = versioned(content.v1, package, 1), versioned(content.v2, package, 2)
        local = base / "trees"
        rnd = Round(
            index=index,
            package=package,
            warmup=index < config.warmup,
            v1=Expect.of(f"{package} v1", tree_v1),
            v2=Expect.of(f"{package} v2", tree_v2),
            tree_v1=tree_v1,
            tree_v2=tree_v2,
            local_v1=local / f"{package}-v1",
            local_v2=local / f"{package}-v2",
            archive_v1=base / "archives" / f"{package}-v1.tar.gz",
            archive_v2=base / "archives" / f"{package}-v2.tar.gz",
            delta_archive=base / "archives" / f"{package}-v2-delta.tar.gz",
            source=base / SOURCE_NODE / package,
        )
        write_tree(rnd.local_v1, tree_v1, MTIME_V1)
        # v2 shares v1's unchanged files (same inode, same mtime): rsync's --link-dest matches them
        await run(["cp", "-al", str(rnd.local_v1), str(rnd.local_v2)])
        edit_tree(rnd.local_v2, tree_v1, tree_v2, MTIME_V2)
        rnd.archive_v1.parent.mkdir(exist_ok=True)
        await make_archive(rnd.local_v1, rnd.archive_v1)
        await make_archive(rnd.local_v2, rnd.archive_v2)
        changed = sorted(p for p, e in tree_v2.items() if tree_v1.get(p) != e)
        await make_archive(rnd.local_v2, rnd.delta_archive, changed)
        # the source package: v1 committed here; the source listener ships it when it starts
        write_tree(rnd.source, tree_v1)
        rnd.conveyor_v1 = Package.init(rnd.source, package).commit("v1", author="bench").id
        rounds.append(rnd)
    return rounds


async def start_nodes(base: Path, world: World) -> tuple[list[Node], Path, Path]:
    key, public = client_key(base / "client")
    nodes = []
    for i in range(1, NODES + 1):
        ssh = SshNode(base / "nodes" / f"node-{i:02d}", f"node-{i:02d}")
        ssh.authorize(public)
        world.sshd.append(ssh)
        nodes.append(Node(f"node-{i:02d}", ssh))
    await asyncio.gather(*(asyncio.to_thread(n.ssh.start) for n in nodes))
    known_hosts = base / "client" / "known_hosts"
    known_hosts.write_text("".join(f"[127.0.0.1]:{n.ssh.port} {n.ssh.host_key_line}\n" for n in nodes))
    return nodes, key, known_hosts


async def install_ansible(config: Config, venv: Path) -> str:
    log(f"installing {config.ansible} into {venv}")
    try:
        await run([sys.executable, "-m", "venv", str(venv)])
        await run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", config.ansible])
        output = await run([str(venv / "bin" / "ansible-playbook"), "--version"], env={"LC_ALL": "C.UTF-8"})
    except PeerFailed as exc:
        raise SetupFailed(f"could not install Ansible: {exc}") from None
    return output.splitlines()[0].strip()


async def ship_next(estate: Estate, rnd: Round) -> str:
    """Edit the source package to v2; the version once the listener committed it and the deployer's
    mirror has it."""
    edit_tree(rnd.source, rnd.tree_v1, rnd.tree_v2)
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(VcsError, OSError):
            package = Package(rnd.source)
            head = package.head()
            fresh = head is not None and head != rnd.conveyor_v1 and estate.mirrored(rnd.package, head)
            if fresh and head is not None and not package.status():
                return head
        if time.monotonic() > deadline:
            raise ConveyorFailed(f"{rnd.package} v2 never reached the deployer's mirror")
        await asyncio.sleep(0.1)


# -- the whole run ----------------------------------------------------------------------------


DELETIONS = (
    "Deletions: ext4 without a journal (this machine's root file system) skips, when it allocates an "
    "inode, the inodes freed in the last 60 s (360 s while their inode-table block is dirty), reading each "
    "(`recently_deleted` in `perf`), so creating files soon after deleting many costs many times the "
    "system time: 20 parallel `tar -xzf` of this release took 1.4 s of system time on a quiet file "
    "system and 13-33 s right after `rm -rf` of the previous 20. The bench deletes nothing until it has "
    "measured (every round's releases stay on disk); the probe above is a rough sign of the state it "
    "found (it writes into a fresh directory, which may miss the groups holding the freed inodes). "
    "Whatever ran before it (another benchmark's cleanup, its own previous run's) can still slow the "
    "first runs: run it last, at least 6 minutes after large deletions."
)
PROBE_FILES = 2_000


def probe(directory: Path) -> float:
    """Seconds to create and write 2,000 files of 4 KiB in one process: how fast the file system
    creates files right now (see DELETIONS)."""
    directory.mkdir(parents=True)
    data = b"x" * 4096
    started = time.perf_counter()
    for i in range(PROBE_FILES):
        (directory / f"f{i}").write_bytes(data)
    return time.perf_counter() - started


def check_disk(base: Path, rounds: int) -> None:
    """Nothing is deleted until the end (see DELETIONS): every round's releases stay, ~2.6 GB and
    ~250,000 inodes a round."""
    need = (3 << 30) + rounds * (3 << 30)
    free = shutil.disk_usage(base).free
    if free < need:
        raise SetupFailed(
            f"not enough disk under {base}: {free / 2**30:.1f} GiB free, need {need / 2**30:.1f}"
        )
    stats = os.statvfs(base)
    inodes = 100_000 + rounds * 300_000
    if stats.f_files and stats.f_favail < inodes:
        raise SetupFailed(f"not enough inodes under {base}: {stats.f_favail:,} free, need {inodes:,}")


async def start_estate(base: Path, world: World, nodes: list[Node], rounds: list[Round]) -> Estate:
    log("starting version-db, the deployer and 22 changelog listeners")
    suffix = secrets.token_hex(4)
    urls = {}
    for env in ("dev", "bench"):
        vhost = f"bench-deploy-{env}-{suffix}"
        world.rabbit.create_vhost(vhost)
        world.vhosts.append(vhost)
        urls[env] = world.rabbit.url_for(vhost)
    estate = Estate(base, world, urls, nodes, [r.package for r in rounds])
    estate.dir.mkdir()
    signing = SigningKey.generate()
    signing.save(estate.dir / "signing.key")
    (estate.dir / "trusted-keys").write_text(signing.public_key_text() + "\n")
    estate.start_version_db()
    await estate.wait_healthy({"version-db": estate.version_db_port})
    estate.start_deployer()
    await estate.wait_healthy({"deployer": estate.deployer_port})
    estate.start_listeners()
    await estate.wait_healthy(
        {f"listener-{SOURCE_NODE}": estate.source_port, f"listener-{DEV_NODE}": estate.dev_port}
        | {f"listener-{n.name}": n.http_port for n in nodes}
    )
    return estate


async def bench(config: Config, base: Path, world: World, outcome: Outcome) -> None:
    started = time.perf_counter()
    outcome.probes["before the rounds"] = await asyncio.to_thread(probe, base / "probe" / "before")
    log(f"generating the release ({FILES:,} files, {RELEASE_BYTES / 1e6:.0f} MB), {config.rounds} rounds")
    content = await asyncio.to_thread(make_content)
    outcome.content = content
    rounds = await make_rounds(config, base, content)
    outcome.archive_bytes = {
        "full": rounds[0].archive_v1.stat().st_size,
        "delta": rounds[0].delta_archive.stat().st_size,
    }
    log(f"starting {NODES} sshd nodes")
    nodes, key, known_hosts = await start_nodes(base, world)
    peers = Peers(base, nodes, key, known_hosts, base / "ansible" / "venv")
    peers.prepare()
    world.control_dirs.append(peers.control_dir)
    outcome.ansible_version = await install_ansible(config, peers.venv)

    estate = await start_estate(base, world, nodes, rounds)
    api = Api(estate)
    try:
        await api.wait_fleet(lambda r: bool(r["alive"]), "every node's heartbeat")
        deadline = time.monotonic() + 120
        while not all(estate.mirrored(r.package, r.conveyor_v1) for r in rounds):
            if time.monotonic() > deadline:
                raise ConveyorFailed("the first versions never reached the deployer's mirror")
            await asyncio.sleep(0.2)
        outcome.setup_s = time.perf_counter() - started
        log(f"set up in {outcome.setup_s:.0f} s")
        async with EventTap(estate.urls["bench"], ["changeset.applied", "changeset.failed"]) as tap:
            log("listening for the nodes' replies on the bench vhost")
            for rnd in rounds:
                await one_round(outcome=outcome, estate=estate, api=api, tap=tap, peers=peers, rnd=rnd)
                outcome.rounds_done += not rnd.warmup
        outcome.full_changeset, outcome.delta_changeset = changeset_sizes(estate, rounds[-1])
        outcome.alone = await measure_alone(estate, rounds[-1], base / "alone")
        outcome.probes["after them"] = await asyncio.to_thread(probe, base / "probe" / "after")
    finally:
        await api.close()


async def one_round(
    *, outcome: Outcome, estate: Estate, api: Api, tap: EventTap, peers: Peers, rnd: Round
) -> None:
    """FULL then DELTA; the order of the methods rotates from round to round."""
    log(f"round {rnd.index}: {rnd.package} v1 to {DEV_NODE} (untimed)")
    await api.wait_fleet(lambda r: r["name"] != DEV_NODE or r["alive"], f"{DEV_NODE} alive")
    await api.promote(rnd.package, rnd.conveyor_v1, "dev")
    for phase in (FULL, DELTA):
        if phase == DELTA:
            log(
                f"round {rnd.index}: {rnd.package} v2 shipped by the source, promoted to {DEV_NODE} (untimed)"
            )
            rnd.conveyor_v2 = await ship_next(estate, rnd)
            await api.wait_fleet(
                lambda r: r["name"] != DEV_NODE or r["packages"].get(rnd.package) == rnd.conveyor_v1,
                f"{DEV_NODE} on v1",
            )
            await api.promote(rnd.package, rnd.conveyor_v2, "dev")
        order = ORDER[phase]
        shift = rnd.index % len(order)
        for method in order[shift:] + order[:shift]:
            if method == CONVEYOR:
                await conveyor_phase(outcome=outcome, estate=estate, api=api, tap=tap, rnd=rnd, phase=phase)
            else:
                await peer_phase(
                    outcome=outcome, world=estate.world, peers=peers, rnd=rnd, method=method, phase=phase
                )


def artifact(estate: Estate, key: str) -> Path | None:
    """The stored changeset the deployer's mirror knows for ``key`` (``package parent version``)."""
    try:
        built: dict[str, str] = json.loads((estate.dir / "deployer" / "mirror" / "built.json").read_text())
    except (OSError, ValueError):
        return None
    digest = built.get(key)
    found = sorted((estate.dir / "artifacts").rglob(f"{digest}*")) if digest else []
    return found[0] if found else None


def changeset_sizes(estate: Estate, rnd: Round) -> tuple[int | None, int | None]:
    """The first release's and the change's changeset, in bytes."""
    full = artifact(estate, f"{rnd.package} - {rnd.conveyor_v1}")
    delta = artifact(estate, f"{rnd.package} {rnd.conveyor_v1} {rnd.conveyor_v2}")
    return (full.stat().st_size if full else None), (delta.stat().st_size if delta else None)


def prepare_alone(source: Path, archive: Path) -> None:
    (archive.parent / "tar").mkdir(parents=True)
    shutil.copyfile(source, archive)


async def measure_alone(estate: Estate, rnd: Round, here: Path) -> dict[str, float]:
    """One node's FULL work with the machine otherwise idle (informative): Conveyor's apply of the
    first changeset in this process, and `tar -xzf` of the release."""
    source = artifact(estate, f"{rnd.package} - {rnd.conveyor_v1}")
    if source is None:
        return {}
    archive = here / f"{source.name}.zip"
    await asyncio.to_thread(prepare_alone, source, archive)
    await settle()
    started = time.perf_counter()
    result = await asyncio.to_thread(ReleaseRoot(here / "root").apply, archive, good=False)
    found = {"Conveyor's apply of the first changeset (with its `os.sync()`)": time.perf_counter() - started}
    found |= {f"of which {step}": seconds for step, seconds in result.timings.items()}
    await settle()
    started = time.perf_counter()
    await run(["tar", "-xzf", str(rnd.archive_v1), "-C", str(here / "tar")])
    found["`tar -xzf` of the release's .tar.gz (no sync)"] = time.perf_counter() - started
    return found


# -- report -----------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def secs(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def speedup(peer: float | None, ours: float | None) -> float | None:
    return None if peer is None or not ours else peer / ours


def verdict(key: Key, outcome: Outcome) -> str:
    target = TARGETS.get(key)
    if target is None:
        return "informative"
    ratio = speedup(median(outcome.samples.get(key, [])), median(outcome.samples.get((CONVEYOR, key[1]), [])))
    if ratio is None:
        return "n/a"
    return "PASS" if ratio >= target else "MISS"


def table(outcome: Outcome, phase: str) -> list[str]:
    ours = median(outcome.samples.get((CONVEYOR, phase), []))
    rows = [
        "| method | median s | runs (s) | CPU busy / iowait | peer / Conveyor | target | verdict |",
        "| --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for method in ORDER[phase]:
        key = (method, phase)
        values = outcome.samples.get(key, [])
        usage = outcome.usage.get(key, [])
        busy = (
            f"{statistics.median(u.busy for u in usage):.0%} / "
            f"{statistics.median(u.iowait for u in usage):.0%}"
            if usage
            else "n/a"
        )
        runs = ", ".join(f"{v:.2f}" for v in values) or "none"
        if method == CONVEYOR:
            rows.append(f"| **{NAMES[key]}** | **{secs(ours)}** | {runs} | {busy} | — | | |")
            continue
        ratio = speedup(median(values), ours)
        target = TARGETS.get(key)
        rows.append(
            f"| {NAMES[key]} | {secs(median(values))} | {runs} | {busy} | "
            f"{'n/a' if ratio is None else f'{ratio:.2f}x'} | {f'≥ {target:g}x' if target else ''} | "
            f"{verdict(key, outcome)} |"
        )
    return rows


SEGMENTS = (  # (name, what it covers)
    ("command out", "request to the node's signed command in the deployer's outbox (gates, plan, sign)"),
    ("delivery", "command out to the listener starting it (outbox, broker, consumer)"),
    ("download", "the changeset from version-db, sha256-checked"),
    ("command check", "the archive opened and checked against the command; after the switch, pruning"),
    (
        "verify",
        "apply: the archive hashed for its id, its changelog parsed, the current release's status, "
        "the new tree's id",
    ),
    ("stage", "apply: files written (sha256-checked) or hard-linked, metadata, `os.sync()`"),
    ("switch", "apply: `current` renamed, history written"),
    ("touch", "the dummy restart (health-check command)"),
    ("other", "the rest of the listener's apply (marking the release good, locks)"),
    ("reply", "the reply from the listener's outbox to the deployer's record of it"),
)


def node_segments(r: ConveyorRun) -> dict[str, list[float]]:
    """Per node, the seconds of each segment of its part of the promotion.

    The listener reports `verify` as the whole verify-stage-switch span plus the apply's own verify
    (counted twice); the apply's own verify comes from the node's log, the span is the difference."""
    p = r.promotion
    requested = datetime.fromisoformat(p["requested_at"])
    found: dict[str, list[float]] = {name: [] for name, _ in SEGMENTS}
    for reply in r.replies:
        a, run = reply.applied, p["nodes"].get(reply.applied.node, {})
        if not run.get("sent_at") or not run.get("finished_at") or reply.apply_verify is None:
            continue
        sent, done = datetime.fromisoformat(run["sent_at"]), datetime.fromisoformat(run["finished_at"])
        steps = a.steps
        touch = steps.get("restart", 0.0) + steps.get("health_check", 0.0)
        span = steps.get("verify", 0.0) - reply.apply_verify  # command check + apply + prune
        values = {
            "command out": (sent - requested).total_seconds(),
            "delivery": (reply.occurred_at - sent).total_seconds() - a.duration_s,
            "download": steps.get("download", 0.0),
            "command check": span - reply.apply_verify - steps.get("stage", 0.0) - steps.get("switch", 0.0),
            "verify": reply.apply_verify,
            "stage": steps.get("stage", 0.0),
            "switch": steps.get("switch", 0.0),
            "touch": touch,
            "other": a.duration_s - steps.get("download", 0.0) - span - touch,
            "reply": (done - reply.occurred_at).total_seconds(),
        }
        for name, value in values.items():
            found[name].append(value)
    return found


def profile_lines(outcome: Outcome) -> list[str]:
    """Where Conveyor's time went: per node segments, and the CPU the processes used."""
    phases = [ph for ph in (FULL, DELTA) if any(r.phase == ph for r in outcome.conveyor_runs)]
    if not phases:
        return []
    typical: dict[str, dict[str, float | None]] = {}
    slowest: dict[str, dict[str, float | None]] = {}
    for phase in phases:
        per_run = [node_segments(r) for r in outcome.conveyor_runs if r.phase == phase]
        typical[phase] = {n: median([v for seg in per_run for v in seg[n]]) for n, _ in SEGMENTS}
        slowest[phase] = {n: median([max(seg[n]) for seg in per_run if seg[n]]) for n, _ in SEGMENTS}
    head = " | ".join(f"{ph.upper()} median node | {ph.upper()} slowest node" for ph in phases)
    lines = [
        f"| segment (seconds) | {head} | what it covers |",
        "| --- |" + " ---: | ---: |" * len(phases) + " --- |",
    ]
    for name, covers in SEGMENTS:
        cells = " | ".join(f"{secs(typical[ph][name])} | {secs(slowest[ph][name])}" for ph in phases)
        lines.append(f"| {name} | {cells} | {covers} |")
    lines.append("")
    for phase in phases:
        runs = [r for r in outcome.conveyor_runs if r.phase == phase]
        server = [
            (
                datetime.fromisoformat(r.promotion["finished_at"])
                - datetime.fromisoformat(r.promotion["requested_at"])
            ).total_seconds()
            for r in runs
        ]
        cpu = median([r.usage.cpu_s for r in runs]) or 0.0
        groups = {g: median([r.usage.groups.get(g, 0.0) for r in runs]) or 0.0 for g in runs[0].usage.groups}
        mine = groups.pop(SELF, 0.0)
        ours = sum(groups.values())
        shown = ", ".join(
            f"{g} {v:.1f}" for g, v in sorted(groups.items(), key=lambda kv: -kv[1]) if v >= 0.05
        )
        wall = median([r.seconds for r in runs])
        lines += [
            f"- **{phase}**: wall time {secs(wall)} s, the deployer's record (request to final state) "
            f"{secs(median(server))} s. CPU seconds the whole machine used meanwhile: {cpu:.1f} (of "
            f"{secs(wall)} s x {len(os.sched_getaffinity(0))} CPUs): Conveyor's processes {ours:.1f} "
            f"({shown}), this process {mine:.1f} (polling the promotion, the event tap), the rest "
            f"{cpu - ours - mine:.1f} (RabbitMQ, the kernel's writeback, sshd and other idle processes).",
        ]
    peers = []
    for key in ((ANSIBLE, FULL), (ASYNCSSH, FULL), (RSYNC, DELTA), (ASYNCSSH, DELTA)):
        usage = outcome.usage.get(key, [])
        if usage:
            idle = median([sum(v for g, v in u.groups.items() if g != SELF) for u in usage]) or 0.0
            peers.append(
                f"{key[1]} {key[0]} {secs(median([u.cpu_s for u in usage]))} (this process "
                f"{secs(median([u.groups.get(SELF, 0.0) for u in usage]))}, the idle Conveyor processes "
                f"{idle:.1f})"
            )
    if peers:
        lines.append(f"- CPU seconds of the whole machine during the peers' runs: {'; '.join(peers)}.")
    if outcome.alone:
        lines.append(
            "- One node alone (informative, after the rounds, in this process with the machine otherwise "
            "idle): " + "; ".join(f"{k} {v:.2f} s" for k, v in outcome.alone.items()) + "."
        )
    return lines


def describe(outcome: Outcome, config: Config) -> list[str]:
    c = outcome.content
    if c is None:
        return ["The release could not be made (see below).", ""]
    total = sum(len(d) for d, _ in c.v1.values())
    full_cs = f"{outcome.full_changeset:,} B" if outcome.full_changeset else "n/a"
    delta_cs = f"{outcome.delta_changeset:,} B" if outcome.delta_changeset else "n/a"
    release = (
        f"**Release** (seed {SEED}): {len(c.v1) + 1:,} files (with VERSION), {total:,} bytes, in the root "
        f"and {c.dirs - 1} directories; text-like files (lines of pseudo-words, log-normal sizes, "
        f"{EXECUTABLES} mode 755) and {BINARY_FILES} files of random bytes. The next version changes 20 "
        f"files: VERSION, {len(c.modified)} text files with 10-30% of their bytes rewritten, "
        f"{len(c.added)} added in a new directory, {len(c.deleted)} deleted; the modified and added files "
        f"hold {c.changed_bytes:,} bytes. "
        f"Peer archives: the release's .tar.gz {outcome.archive_bytes.get('full', 0):,} B, the changed "
        f"files' .tar.gz {outcome.archive_bytes.get('delta', 0):,} B; Conveyor's changesets: first release "
        f"{full_cs}, the change {delta_cs}. Each round uses a fresh package (`{PACKAGE_PREFIX}-<round>`), so "
        "FULL always lands on nodes without a release."
    )
    setup = (
        f"**Nodes**: {NODES} `sshd`s on loopback ports (`conveyor.testing.sshd.SshNode`, root login with an "
        "ed25519 key, host keys pinned in a known_hosts file for every client), each with its own directory; "
        f"each node also runs a changelog listener (a process per node) whose release roots are in that "
        f"directory. Beside them: version-db (SQLite), the deployer, a dev source listener (the package "
        f"directories) and a dev target `{DEV_NODE}`, on two private RabbitMQ vhosts (dev, bench). The "
        f"inventory lists dev ({DEV_NODE}) then bench (the {NODES} nodes). Listeners: SERVICE_MANAGER=none, "
        "no units; the health check is the command `touch <node>/conveyor/restarted-<package>`, the dummy "
        "restart every method does (Ansible: a `command` task; asyncssh and rsync: in the shell command that "
        "switches `current`). All of it runs on this machine's CPUs at once: during every method's run the "
        f"{NODES + 2} idle listeners, the deployer and version-db are up too (heartbeats every "
        f"{HEARTBEAT_S:g} s, no drift scans)."
    )
    methods = (
        "**Conveyor**: per round the new version is promoted to dev first (untimed: the gate wants it "
        "current in the previous environment, and the source listener has already built and stored its "
        "changeset, which the deployer's mirror has applied); then, timed, `POST /promotions` "
        "`{to_env: bench, canary: 0, wave_size: 100%}` and `GET /promotions/<id>` every "
        f"{POLL_S * 1000:.0f} ms until the state is `succeeded`: every node downloaded the changeset from "
        "version-db, verified it, staged the new release (hard links to the unchanged files for DELTA), "
        "`os.sync()`ed, switched `current`, ran the touch, replied over the bus, and the deployer recorded "
        "it. **Ansible**: `ansible-playbook -f 20` in its own virtualenv, the playbook below (copy, file, "
        "unarchive with `remote_src`, file link, command touch); `gathering = explicit`, "
        "`pipelining = True`, OpenSSH with ControlPersist (closed after every run, so each run connects "
        "afresh), no `-C` (the archive is compressed already). **asyncssh** (in this process, fresh "
        "connections each run): per node concurrently, connect, SFTP put the .tar.gz, then one command: "
        "`mkdir` + `tar -xzf` (DELTA: "
        "`cp -al <previous> <new>` + `rm` of the deleted file + `tar -xzf` of the changed files) + switch + "
        "touch. **rsync**: per node concurrently (asyncio subprocesses), `rsync -az -e 'ssh …' <local tree>/ "
        "root@127.0.0.1:<base>/releases/<new>/` (DELTA: with `--link-dest=<base>/releases/<previous>`, the "
        "unchanged files become hard links, the changed ones are sent with rsync's delta algorithm against "
        "their previous versions), then `ssh … '<switch> && touch'`. The switch everywhere: `ln -sfn` to a "
        "temporary name, `mv -T` over `current`. Archives and local trees are made before the run (untimed, "
        "as Conveyor's changesets are)."
    )
    timing = (
        f"**Timing**: one round per run ({config.runs} runs"
        + (f", after {config.warmup} warm-up rounds" if config.warmup else ", no warm-up")
        + "); in each round FULL then DELTA, every method once, the order rotating from round to round. "
        f"Before every timed run: an untimed `sync` and a {SETTLE_S:g} s pause. Wall time "
        "(`time.perf_counter()`) from the request (the POST, the command's start) to the end (the final "
        "state observed, every node's command done). CPU busy / iowait: the whole machine's share during the "
        "run, from /proc/stat."
    )
    checks = (
        "**Checks** after every run, warm-ups too: on all 20 nodes `current` resolves to the new release, "
        "which holds exactly the release's files (paths, sizes, executable bits), VERSION names the version, "
        "and the restart marker was touched during the run; on 2 nodes (different ones each round) every "
        "file's sha256, and for DELTA (Conveyor, rsync, asyncssh: they share files with the previous "
        "release through hard links) the previous release still holds its own bytes; Conveyor's promotion "
        "shows every node succeeded, with a `changeset.applied` reply from each; Ansible's PLAY RECAP "
        "shows 5 ok tasks and no failure on each host. Any difference is a **MISMATCH** and exit 2."
    )
    return [release, "", setup, "", methods, "", timing, "", checks, ""]


def summary(outcome: Outcome) -> list[str]:
    lines = []
    for key, target in TARGETS.items():
        ours = median(outcome.samples.get((CONVEYOR, key[1]), []))
        ratio = speedup(median(outcome.samples.get(key, [])), ours)
        if ratio is None:
            continue
        lines.append(
            f"- **{verdict(key, outcome)}** {key[1].upper()}: Conveyor {ratio:.2f}x faster than "
            f"{NAMES[key]} (target ≥ {target:g}x)."
        )
    return lines


def one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def report(config: Config, outcome: Outcome, facts: list[str]) -> str:
    lines = [
        SECTION_TITLE,
        "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        *facts,
        "",
        f"Command: `{config.command}`",
        "",
        *describe(outcome, config),
    ]
    if outcome.failure:
        what = outcome.failed_method or "setup"
        label = "CONVEYOR FAILED" if what.startswith(CONVEYOR) or what == "setup" else "PEER FAILED"
        lines += [f"**{label}** ({what}) {one_line(outcome.failure)[:3000]}", ""]
    lines += [
        f"**FULL** (a release of {FILES:,} files to {NODES} nodes without one), {outcome.rounds_done} runs:",
        "",
    ]
    lines += [*table(outcome, FULL), ""]
    lines += [
        f"**DELTA** (the next version, 20 changed files, to the {NODES} nodes), {outcome.rounds_done} runs:",
        "",
    ]
    lines += [*table(outcome, DELTA), ""]
    if outcome.problems:
        lines += [
            p
            for problem in dict.fromkeys(outcome.problems)
            for p in (f"**MISMATCH** {one_line(problem)}", "")
        ]
    elif outcome.failure is None:
        lines += ["Checks passed on every node after every run.", ""]
    lines += [*summary(outcome), ""]
    measured = "; ".join(
        f"{NAMES[k].split(' (')[0]} {k[1]} {secs(median(outcome.samples.get(k, [])))} s"
        for k in ((ANSIBLE, FULL), (ASYNCSSH, FULL), (ASYNCSSH, DELTA), (RSYNC, DELTA))
    )
    lines += [
        f"Reference figures measured before on this machine (from the issue): {REFERENCE}. This run's "
        f"medians: {measured}. The targets are judged on this run's peers only.",
        "",
    ]
    profile = profile_lines(outcome)
    if profile:
        lines += [
            "**Where Conveyor's time goes** (the promotion's node records, the `changeset.applied` steps):",
            "",
        ]
        lines += [*profile, ""]
    lines += [
        DELETIONS,
        "",
        "Notes: Conveyor does more than the peers inside its time: the changeset's sha256 is checked on "
        "download and again as its id, every file's sha256 and the new tree's version id are verified, the "
        "node's current release is checked against its manifest before anything is written, the release is "
        "flushed to disk with `os.sync()` before `current` switches (none of the peers syncs: their releases "
        "may still be in the page cache when they report done), and every step is a signed command and a "
        "reply through RabbitMQ, recorded by the deployer. The peers are given their best usual settings "
        f"(forks, pipelining, prebuilt archives). On this {len(os.sched_getaffinity(0))}-CPU machine, with "
        f"{NODES} listener processes, all {NODES} nodes' work competes for the same CPUs and disk, for every "
        "method; FULL is CPU-bound for all of them (CPU seconds above).",
        "",
        "<details><summary>The Ansible playbook</summary>",
        "",
        "```yaml",
        PLAYBOOK.rstrip(),
        "```",
        "",
        "</details>",
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def tool_version(argv: list[str], pattern: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return f"{argv[0]}: not found"
    text = (proc.stdout + proc.stderr).decode(errors="replace")
    match = re.search(pattern, text, re.MULTILINE)
    return match[0].strip() if match else f"{argv[0]}: unknown version"


def machine_facts(config: Config, load: tuple[float, float, float], outcome: Outcome) -> list[str]:
    fs = subprocess.run(
        ["stat", "-f", "-c", "%T", str(config.workdir)], capture_output=True, text=True, check=False
    ).stdout.strip()

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    probes = ", ".join(f"{v:.2f} s {k}" for k, v in outcome.probes.items())
    tools = "; ".join(
        tool_version(argv, pattern)
        for argv, pattern in (
            (["rsync", "--version"], r"^rsync\s+version\s+\S+"),
            (["ssh", "-V"], r"^OpenSSH_\S+"),
            (["tar", "--version"], r"^tar .*$"),
        )
    )
    return [
        f"- CPUs (nproc): {len(os.sched_getaffinity(0))}; {cpu_model()}; load average before the run: "
        + ", ".join(f"{v:.2f}" for v in load),
        f"- Python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}",
        f"- conveyor {version('conveyor')}; {outcome.ansible_version}; asyncssh {version('asyncssh')}; "
        f"{tools}",
        f"- Work directory under {config.workdir}, filesystem {fs or 'unknown'}; set-up (release, nodes, "
        f"Ansible install, services) {outcome.setup_s:.0f} s; file-creation probe ({PROBE_FILES:,} files "
        f"of 4 KiB, one process): {probes or 'n/a'}",
    ]


# -- main -------------------------------------------------------------------------------------


def exit_code(outcome: Outcome) -> int:
    if outcome.problems or outcome.failure:
        return 2
    verdicts = [verdict(key, outcome) for key in TARGETS]
    return 0 if all(v == "PASS" for v in verdicts) else 1


def _interrupt(signum: int, frame: FrameType | None) -> None:
    del frame
    raise KeyboardInterrupt(f"signal {signum}")


def preflight(config: Config) -> RabbitEndpoint:
    missing = [t for t in ("ssh", "ssh-keygen", "rsync", "tar", "cp", "touch") if shutil.which(t) is None]
    if missing:
        raise SetupFailed(f"{', '.join(missing)} not installed (apt-get install openssh-client rsync tar)")
    if not Path("/usr/bin/python3").exists():
        raise SetupFailed("/usr/bin/python3 is missing: Ansible's modules run with it on the nodes")
    if os.geteuid() != 0:
        raise SetupFailed("sshd must run as root (the nodes are real sshd processes)")
    if not reachable(config.amqp_url, default_port=5672):
        raise SetupFailed(f"RabbitMQ is not reachable at {config.amqp_url} (make services)")
    config.workdir.mkdir(parents=True, exist_ok=True)
    check_disk(config.workdir, config.rounds)
    return RabbitEndpoint.from_url(config.amqp_url, config.management_url)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    load = os.getloadavg()
    try:
        rabbit = preflight(config)
    except SetupFailed as exc:
        raise SystemExit(str(exc)) from None
    base = Path(tempfile.mkdtemp(prefix="bench-deploy-", dir=config.workdir))
    base.chmod(0o755)
    world = World(rabbit)
    outcome = Outcome()
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.perf_counter()
    try:
        asyncio.run(bench(config, base, world, outcome))
    except SetupFailed as exc:
        raise SystemExit(str(exc)) from None
    except (ConveyorFailed, PeerFailed) as exc:
        outcome.failure = str(exc)
        log(f"FAILED ({outcome.failed_method or 'setup'}): {exc}")
    finally:
        log("stopping every process started")
        for trouble in world.close():
            log(f"cleanup: {trouble}")
        if config.keep:
            log(f"everything kept in {base}")
        else:
            subprocess.run(["rm", "-rf", "--", str(base)], check=False)
    log(f"measured in {time.perf_counter() - started:.0f} s")
    section = report(config, outcome, machine_facts(config, load, outcome))
    print(section)
    write_section(config.out, SECTION_TITLE, section)
    for problem in dict.fromkeys(outcome.problems):
        log(f"FAILED CHECK: {problem}")
    log(f"section written to {config.out}")
    return exit_code(outcome)


if __name__ == "__main__":
    sys.exit(main())
