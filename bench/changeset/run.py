"""Changesets against zip and unzip: building and applying 1% of a 100 MB package.

A deterministic package of 10,000 files (about 100 MB: mostly compressible text-like files of
varied sizes, some incompressible random bytes, nested directories) is committed as v1 with
`conveyor.pkgvcs`; then 1% of its files change (90 modified, 6 added, 4 deleted) and it is
committed as v2. Then, timed and interleaved (median of --runs, after one warm-up round):

- build: `build_changeset(package, parent=v1, version=v2)` in-process against
  `zip -q -X -6 out.zip -@` of the same added and modified files, run in the package;
- apply: `ReleaseRoot(root).apply(changeset)` in-process on a node root whose current release
  is v1, against `cp -al <v1 tree> <copy>` + `unzip -q -o out.zip -d <copy>` + `sync` (the
  primary peer: apply ends in os.sync()); the same without `sync`, and `unzip` alone into the
  copy, are reported too;
- bytes: the changeset's size against the zip's.

Targets: build at most 1.2x zip; apply at most 1.5x (cp -al + unzip + sync); the changeset at
most 1.05x the zip's bytes. Every round checks the results: the node's `current` holds exactly
v2's files (sha256 and executable bit of every file, and `status()` is clean at HEAD v2), the
peer's copy holds the changed files, and the v1 trees the copies share files with are intact.

    uv run python bench/changeset/run.py [--runs 5] [--out bench/RESULTS.md] [--workdir DIR] [--keep]

Exit status: 0 all targets pass; 1 a target is missed; 2 a correctness check failed or
Conveyor raised (what was measured is still reported).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import math
import os
import platform
import random
import re
import shlex
import shutil
import stat
import statistics
import string
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for results.py
from results import cpu_model, write_section

from conveyor.changeset import (
    CHANGELOG_NAME,
    ApplyResult,
    Built,
    ReleaseRoot,
    build_changeset,
    changes_between,
)
from conveyor.pkgvcs.package import Package

SECTION_TITLE = "## Changesets: build and apply vs zip and unzip"
SEED = 20261127
FILES = 10_000
PACKAGE_BYTES = 100_000_000
BINARY_FILES = 400  # random bytes: incompressible
EXECUTABLES = 100  # text files with mode 755
MEDIAN_TEXT, SIGMA_TEXT = 4_000, 1.2  # log-normal sizes before scaling to PACKAGE_BYTES
MEDIAN_BINARY, SIGMA_BINARY = 30_000, 1.0
MIN_SIZE, MAX_SIZE = 16, 4 << 20
MODIFIED, DELETED = 90, 4
ADDED = (  # (directory, binary): 2 in existing directories, 4 in new ones, one of them nested
    ("", False),
    ("{existing}", False),
    ("{existing}", True),
    ("src/feature", False),
    ("src/feature/deep", False),
    ("src/feature/deep", True),
)
TOP_DIRS = ("src", "lib", "assets", "docs", "tests", "config", "vendor", "data")
TEXT_SUFFIXES = (".py", ".txt", ".json", ".html", ".css", ".md", ".yaml")
BINARY_SUFFIXES = (".bin", ".png", ".jpg", ".gz", ".woff2")
VOCABULARY, LINES = 2_000, 4_096
ZIPF = 1.1  # line frequencies fall as 1/rank**ZIPF: deflate shrinks the text about 3x
SEPARATORS = (" ", " ", " ", ", ", " = ", "(", ") ", ".", ": ", " + ")
AVERAGE_LINE = 40
ZIP_LEVEL = 6
TARGET_BUILD, TARGET_APPLY, TARGET_BYTES = 1.2, 1.5, 1.05
DEFAULT_RUNS = 5
TIMEOUT_S = 600.0
METADATA = ".conveyor"

Digest = tuple[str, bool]  # sha256 of the bytes, executable bit
Files = dict[str, Digest]  # relative path -> digest
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# -- configuration --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Config:
    runs: int
    out: Path
    workdir: Path
    keep: bool
    command: str


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=DEFAULT_RUNS, help="timed rounds (plus one warm-up round)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/RESULTS.md"))
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="parent of the temporary directory holding the package and node roots (default /tmp)",
    )
    parser.add_argument("--keep", action="store_true", help="keep every tree for inspection")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    raw = sys.argv[1:] if argv is None else argv
    return Config(
        runs=args.runs,
        out=args.out,
        workdir=args.workdir,
        keep=args.keep,
        command=shlex.join(["uv", "run", "--frozen", "python", "bench/changeset/run.py", *raw]),
    )


# -- subprocesses and Conveyor calls ----------------------------------------------


class CommandFailed(Exception):
    pass


def run(argv: list[str], cwd: Path, stdin: bytes | None = None) -> float:
    """Run one command to completion; return its wall time in milliseconds."""
    started = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"`{shlex.join(argv)}` timed out after {TIMEOUT_S:.0f} s") from exc
    elapsed_ms = (time.perf_counter() - started) * 1000
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise CommandFailed(f"`{shlex.join(argv)}` in {cwd}: exit {proc.returncode}: {stderr}")
    return elapsed_ms


class ConveyorFailed(Exception):
    """Conveyor raised: reported as a failure (exit 2), not as a crash of the benchmark."""


def conveyor(what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except Exception as exc:
        raise ConveyorFailed(f"{what}: {type(exc).__name__}: {exc}") from exc


def tool_version(argv: list[str], pattern: str) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return f"{argv[0]}: not found"
    match = re.search(pattern, proc.stdout.decode(errors="replace"), re.MULTILINE)
    return match[0].strip() if match else "unknown version"


# -- the package --------------------------------------------------------------------


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
            indent = "    " * self.rng.randint(0, 3)
            self.pool.append((indent + "".join(parts).rstrip() + "\n").encode())
        self.weights = list(itertools.accumulate(1 / (rank + 1) ** ZIPF for rank in range(LINES)))

    def text(self, size: int) -> bytes:
        parts: list[bytes] = []
        total = 0
        while total < size:
            chunk = self.rng.choices(self.pool, cum_weights=self.weights, k=size // AVERAGE_LINE + 1)
            parts += chunk
            total += sum(map(len, chunk))
        return b"".join(parts)[: size - 1] + b"\n"

    def binary(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    def content(self, size: int, binary: bool) -> bytes:
        return self.binary(size) if binary else self.text(size)

    def size(self, binary: bool, scale: float = 1.0) -> int:
        median, sigma = (MEDIAN_BINARY, SIGMA_BINARY) if binary else (MEDIAN_TEXT, SIGMA_TEXT)
        raw = self.rng.lognormvariate(math.log(median), sigma) * scale
        return int(min(MAX_SIZE, max(MIN_SIZE, raw)))

    def modify(self, old: bytes, binary: bool) -> bytes:
        """A binary file is replaced whole (size within 10%); a text file gets 10-30% of it rewritten."""
        while True:
            if binary:
                new = self.binary(max(MIN_SIZE, int(len(old) * self.rng.uniform(0.9, 1.1))))
            else:
                span = max(1, int(len(old) * self.rng.uniform(0.1, 0.3)))
                start = self.rng.randrange(0, len(old) - span + 1)
                fresh = self.text(max(2, int(span * self.rng.uniform(0.8, 1.2))))
                new = old[:start] + fresh + old[start + span :]
            if new != old:
                return new


def directories(rng: random.Random) -> list[str]:
    """The package's directories, nested up to four levels (the root holds files too)."""
    dirs = [""]
    for top in TOP_DIRS:
        dirs.append(top)
        for i in range(rng.randint(3, 8)):
            sub = f"{top}/p{i}"
            dirs.append(sub)
            for j in range(rng.randint(0, 5)):
                deep = f"{sub}/m{j}"
                dirs.append(deep)
                if rng.random() < 0.3:
                    dirs.append(f"{deep}/x{j}")
    return dirs


def digest(data: bytes, executable: bool) -> Digest:
    return hashlib.sha256(data).hexdigest(), executable


def write(root: Path, rel: str, data: bytes, executable: bool) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o755 if executable else 0o644)


@dataclass
class Generated:
    """What was generated and committed: the expected files of v1 and v2, and the edits."""

    root: Path
    v1: str = ""
    v2: str = ""
    files_v1: Files = field(default_factory=dict)
    files_v2: Files = field(default_factory=dict)
    bytes_v1: int = 0
    bytes_v2: int = 0
    modified: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    changed_bytes: int = 0  # uncompressed bytes of the added and modified files
    binary_changed: int = 0
    dirs: int = 0

    @property
    def shipped(self) -> list[str]:
        """Added and modified files, sorted by path bytes (the zip's file list)."""
        return sorted(self.added + self.modified, key=os.fsencode)


def make_package(root: Path) -> Generated:
    rng = random.Random(SEED)
    gen = Generator(rng)
    dirs = directories(rng)
    binary = set(rng.sample(range(FILES), BINARY_FILES))
    sizes = [gen.size(i in binary) for i in range(FILES)]
    scale = PACKAGE_BYTES / sum(sizes)
    sizes = [max(MIN_SIZE, round(s * scale)) for s in sizes]
    text = [i for i in range(FILES) if i not in binary]
    executable = set(rng.sample(text, EXECUTABLES))
    pkg = Generated(root)
    kinds: dict[str, bool] = {}
    for i, size in enumerate(sizes):
        folder = rng.choice(dirs)
        suffix = rng.choice(BINARY_SUFFIXES if i in binary else TEXT_SUFFIXES)
        suffix = ".sh" if i in executable else suffix
        rel = f"{folder}/f{i:05d}{suffix}".lstrip("/")
        data = gen.content(size, i in binary)
        write(root, rel, data, i in executable)
        pkg.files_v1[rel] = digest(data, i in executable)
        kinds[rel] = i in binary
        pkg.bytes_v1 += size
    pkg.dirs = len(dirs)
    pkg.v1 = conveyor("commit v1", lambda: commit(root, "v1", init=True))

    paths = sorted(pkg.files_v1)
    pkg.modified = sorted(rng.sample(paths, MODIFIED))
    untouched = sorted(set(paths) - set(pkg.modified))
    pkg.deleted = sorted(rng.sample(untouched, DELETED))
    pkg.files_v2 = {p: d for p, d in pkg.files_v1.items() if p not in pkg.deleted}
    for rel in pkg.modified:
        executable_file = pkg.files_v1[rel][1]
        data = gen.modify((root / rel).read_bytes(), kinds[rel])
        write(root, rel, data, executable_file)
        pkg.files_v2[rel] = digest(data, executable_file)
        pkg.changed_bytes += len(data)
        pkg.binary_changed += kinds[rel]
    for rel in pkg.deleted:
        (root / rel).unlink()
    existing = rng.choice([d for d in dirs if d.count("/") >= 2])
    for k, (folder, is_binary) in enumerate(ADDED):
        suffix = rng.choice(BINARY_SUFFIXES if is_binary else TEXT_SUFFIXES)
        rel = f"{folder.format(existing=existing)}/new{k}{suffix}".lstrip("/")
        data = gen.content(max(MIN_SIZE, round(gen.size(is_binary) * scale)), is_binary)
        write(root, rel, data, False)
        pkg.added.append(rel)
        pkg.files_v2[rel] = digest(data, False)
        pkg.changed_bytes += len(data)
        pkg.binary_changed += is_binary
    pkg.added.sort()
    pkg.bytes_v2 = sum((root / rel).stat().st_size for rel in pkg.files_v2)
    pkg.v2 = conveyor("commit v2", lambda: commit(root, "v2", init=False))
    return pkg


def commit(root: Path, message: str, *, init: bool) -> str:
    package = Package.init(root, "bench") if init else Package(root)
    return package.commit(message, author="bench").id


# -- checks -------------------------------------------------------------------------


def tree_files(root: Path) -> Files:
    """sha256 and executable bit of every file below ``root`` (following a symlinked root only),
    without the top-level ``.conveyor/``; anything but a regular file is recorded as such."""
    found: Files = {}
    top = os.path.realpath(root)
    for folder, subdirs, names in os.walk(top):
        if folder == top and METADATA in subdirs:
            subdirs.remove(METADATA)
        for name in names:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, top)] = file_digest(path)
    return found


def file_digest(path: str) -> Digest:
    """sha256 and executable bit of a regular file; anything else is named as such."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "missing", False
    if not stat.S_ISREG(info.st_mode):
        return f"not a regular file (mode {info.st_mode:o})", False
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest(), bool(info.st_mode & 0o100)


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


def check_built(pkg: Generated, built: Built) -> list[str]:
    got = {
        "added": sorted(os.fsdecode(p) for p in built.changes.added),
        "modified": sorted(os.fsdecode(p) for p in built.changes.modified),
        "deleted": sorted(os.fsdecode(p) for p in built.changes.deleted),
    }
    want = {"added": pkg.added, "modified": pkg.modified, "deleted": pkg.deleted}
    problems = [
        f"changeset lists {len(got[k])} {k}, the edits made {len(want[k])}" for k in want if got[k] != want[k]
    ]
    with zipfile.ZipFile(built.path) as archive:
        names = sorted(n.removeprefix("files/") for n in archive.namelist() if n != CHANGELOG_NAME)
    if names != sorted(pkg.shipped):
        problems.append(f"changeset holds {len(names)} files, expected the {len(pkg.shipped)} changed ones")
    return problems


def check_node(pkg: Generated, root: Path, result: ApplyResult) -> list[str]:
    node = ReleaseRoot(root)
    problems = []
    if result.version != pkg.v2 or node.current() != pkg.v2:
        problems.append(f"node runs {node.current()}, apply said {result.version}, expected v2 {pkg.v2}")
    problems += differences("node current vs v2", tree_files(root / "current"), pkg.files_v2)
    status = conveyor("status after apply", lambda: node.package().status())
    if status or status.head != pkg.v2:
        problems.append(f"status of current: head {status.head}, {len(status.entries())} changes")
    return problems


def check_copy(pkg: Generated, copy: Path, source: Path) -> list[str]:
    """The copy holds v2's files plus the deleted ones (unzip deletes nothing); the v1 tree it
    shares its files with still holds v1's bytes at the changed paths."""
    want = pkg.files_v2 | {p: pkg.files_v1[p] for p in pkg.deleted}
    problems = differences("peer copy vs v2", tree_files(copy), want)
    touched = {p: file_digest(os.path.join(source, p)) for p in pkg.modified}
    problems += differences("peer v1 tree after unzip", touched, {p: pkg.files_v1[p] for p in pkg.modified})
    return problems


# -- one round -----------------------------------------------------------------------


@dataclass
class Samples:
    build: list[float] = field(default_factory=list)
    zip: list[float] = field(default_factory=list)
    apply: list[float] = field(default_factory=list)
    apply_steps: dict[str, list[float]] = field(default_factory=dict)  # verify, stage, switch (ms)
    cp: list[float] = field(default_factory=list)  # cp -al
    unzip: list[float] = field(default_factory=list)
    sync: list[float] = field(default_factory=list)
    setup: list[float] = field(default_factory=list)  # untimed work per round, for the notes (ms)
    changes: list[float] = field(default_factory=list)  # changes_between alone, timed on its own

    def peer(self, *, copy: bool, sync: bool) -> list[float]:
        return [
            u + (c if copy else 0.0) + (s if sync else 0.0)
            for c, u, s in zip(self.cp, self.unzip, self.sync, strict=True)
        ]


@dataclass
class Outcome:
    pkg: Generated | None = None
    samples: Samples = field(default_factory=Samples)
    archive_bytes: int | None = None
    zip_bytes: int | None = None
    changelog_bytes: int | None = None  # compressed CHANGELOG.ini inside the archive
    first_bytes: int | None = None  # the full v1 changeset (a first install)
    ids: set[str] = field(default_factory=set)
    memory: dict[str, tuple[int, int]] = field(default_factory=dict)  # after imports, peak (bytes)
    problems: list[str] = field(default_factory=list)
    failure: str | None = None


def fresh_node(root: Path, template: Path) -> None:
    """A node root running v1, untimed: a `cp -al` of the template (a root the first changeset was
    applied to), then one status, as a drift check would run, which hashes the files again (linking
    changed their ctime) and leaves the stat cache settled as on a node that has been running.
    Every write Conveyor makes replaces a file (rename), so the template's files are never changed."""
    run(["cp", "-al", str(template), str(root)], root.parent)
    conveyor("status of the v1 release", lambda: ReleaseRoot(root).package().status())


def build_both(pkg: Generated, here: Path, conveyor_first: bool, samples: Samples | None) -> Built:
    zip_path = here / "changes.zip"
    file_list = "".join(f"{rel}\n" for rel in pkg.shipped).encode()

    def build() -> Built:
        os.sync()
        started = time.perf_counter()
        built = conveyor(
            "build_changeset",
            lambda: build_changeset(
                Package(pkg.root), parent=pkg.v1, version=pkg.v2, directory=here / "build"
            ),
        )
        if samples is not None:
            samples.build.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            conveyor("changes_between", lambda: changes_between(Package(pkg.root), pkg.v1, pkg.v2))
            samples.changes.append((time.perf_counter() - started) * 1000)
        return built

    def zip_() -> None:
        os.sync()
        argv = ["zip", "-q", "-X", f"-{ZIP_LEVEL}", str(zip_path), "-@"]
        elapsed = run(argv, pkg.root, file_list)
        if samples is not None:
            samples.zip.append(elapsed)

    if conveyor_first:
        built = build()
        zip_()
    else:
        zip_()
        built = build()
    return built


def apply_both(
    pkg: Generated, *, here: Path, built: Built, peer_v1: Path, conveyor_first: bool, samples: Samples | None
) -> list[str]:
    root, copy = here / "node", here / "copy"
    problems: list[str] = []

    def apply() -> None:
        os.sync()  # the setup's writes are flushed before the timed apply, which syncs its own
        started = time.perf_counter()
        result = conveyor("apply", lambda: ReleaseRoot(root).apply(built.path))
        elapsed = (time.perf_counter() - started) * 1000
        if samples is not None:
            samples.apply.append(elapsed)
            for step, seconds in result.timings.items():
                samples.apply_steps.setdefault(step, []).append(seconds * 1000)
        problems.extend(check_node(pkg, root, result))

    def peer() -> None:
        os.sync()
        cp = run(["cp", "-al", str(peer_v1), str(copy)], here)
        unzip = run(["unzip", "-q", "-o", str(here / "changes.zip"), "-d", str(copy)], here)
        sync = run(["sync"], here)
        if samples is not None:
            samples.cp.append(cp)
            samples.unzip.append(unzip)
            samples.sync.append(sync)
        problems.extend(check_copy(pkg, copy, peer_v1))

    if conveyor_first:
        apply()
        peer()
    else:
        peer()
        apply()
    return problems


def bench_round(
    pkg: Generated, *, base: Path, index: int, template: Path, peer_v1: Path, outcome: Outcome, keep: bool
) -> None:
    """Round 0 is the warm-up: checked, not recorded. Rounds alternate which side goes first."""
    here = base / f"round-{index}"
    here.mkdir()
    samples = outcome.samples if index else None
    conveyor_first = index % 2 == 1
    built = build_both(pkg, here, conveyor_first, samples)
    outcome.ids.add(built.id)
    outcome.archive_bytes = built.size
    outcome.zip_bytes = (here / "changes.zip").stat().st_size
    with zipfile.ZipFile(built.path) as archive:
        outcome.changelog_bytes = archive.getinfo(CHANGELOG_NAME).compress_size
    outcome.problems += check_built(pkg, built)
    started = time.perf_counter()
    fresh_node(here / "node", template)
    if samples is not None:
        samples.setup.append((time.perf_counter() - started) * 1000)
    outcome.problems += apply_both(
        pkg, here=here, built=built, peer_v1=peer_v1, conveyor_first=conveyor_first, samples=samples
    )
    if not keep:
        shutil.rmtree(here)


# -- memory ----------------------------------------------------------------------------


def peak_rss() -> int:
    """This process's peak RSS so far (VmHWM, in bytes). Not getrusage's ru_maxrss: Linux carries
    that across exec, so a spawned child would report the bench process's peak at fork time."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def peak_rss_build(package: str, parent: str, version: str, directory: str) -> tuple[int, int]:
    """In a fresh (spawned) process: max RSS after the imports, then after one build."""
    before = peak_rss()
    build_changeset(Package(Path(package)), parent=parent, version=version, directory=Path(directory))
    return before, peak_rss()


def peak_rss_apply(root: str, archive: str) -> tuple[int, int]:
    """In a fresh (spawned) process: max RSS after the imports, then after one apply."""
    before = peak_rss()
    ReleaseRoot(Path(root)).apply(Path(archive))
    return before, peak_rss()


def measure_memory(pkg: Generated, base: Path, template: Path, outcome: Outcome) -> None:
    here = base / "memory"
    here.mkdir()
    fresh_node(here / "node", template)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        build = pool.submit(peak_rss_build, str(pkg.root), pkg.v1, pkg.v2, str(here / "build"))
        outcome.memory["build"] = conveyor("build (memory)", build.result)
    archive = next((here / "build").glob("*.zip"))
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        apply = pool.submit(peak_rss_apply, str(here / "node"), str(archive))
        outcome.memory["apply"] = conveyor("apply (memory)", apply.result)


# -- the whole run -----------------------------------------------------------------------


def check_disk(base: Path, runs: int, keep: bool) -> None:
    """Package, object store, first changeset, peer v1 tree, and one node root per round kept."""
    rounds = runs + 2 if keep else 2
    need = PACKAGE_BYTES * (4 + rounds) + (256 << 20)
    free = shutil.disk_usage(base).free
    if free < need:
        raise SystemExit(
            f"not enough disk under {base}: {free / 2**30:.1f} GiB free, need {need / 2**30:.1f}"
        )
    stats = os.statvfs(base)
    inodes = FILES * (4 + 2 * rounds)
    if stats.f_files and stats.f_favail < inodes:
        raise SystemExit(f"not enough inodes under {base}: {stats.f_favail:,} free, need {inodes:,}")


def bench(config: Config, base: Path, outcome: Outcome) -> None:
    log(f"generating the package ({FILES:,} files, {PACKAGE_BYTES / 1e6:.0f} MB) and committing v1, v2")
    pkg = make_package(base / "package")
    outcome.pkg = pkg
    log("building the first changeset (all of v1) for the node roots")
    first = conveyor(
        "build the first changeset",
        lambda: build_changeset(Package(pkg.root), parent=None, version=pkg.v1, directory=base / "first"),
    )
    outcome.first_bytes = first.size
    log("applying it to the template node root; copying its v1 release for the peer")
    template, peer_v1 = base / "template", base / "peer-v1"
    conveyor("apply the first changeset", lambda: ReleaseRoot(template).apply(first.path))
    # The peer links its own copy: linking changes the ctime of the linked files, which would
    # make the node's status (in apply) hash them all again.
    run(["cp", "-a", str(ReleaseRoot(template).release_dir(pkg.v1)), str(peer_v1)], base)
    for index in range(config.runs + 1):
        log(f"round {index}/{config.runs}" + (" (warm-up)" if index == 0 else ""))
        bench_round(
            pkg, base=base, index=index, template=template, peer_v1=peer_v1, outcome=outcome, keep=config.keep
        )
    if len(outcome.ids) > 1:
        outcome.problems.append(f"the same change built {len(outcome.ids)} different changeset ids")
    log("peak RSS of one build and one apply, each in a fresh process")
    measure_memory(pkg, base, template, outcome)
    outcome.problems += differences(
        "template node root after all rounds", tree_files(template / "current"), pkg.files_v1
    )


# -- report -----------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def ratio(ours: float | None, theirs: float | None) -> str:
    return "n/a" if ours is None or not theirs else f"{ours / theirs:.2f}x"


def verdict(ours: float | None, theirs: float | None, target: float) -> str:
    if ours is None or not theirs:
        return "n/a"
    return "PASS" if ours <= target * theirs else "MISS"


def mib(value: int) -> str:
    return f"{value / 2**20:,.1f} MiB"


def size(value: int | None) -> str:
    return "n/a" if value is None else f"{value:,}"


def verdicts(outcome: Outcome) -> dict[str, str]:
    s = outcome.samples
    return {
        "build": verdict(median(s.build), median(s.zip), TARGET_BUILD),
        "apply": verdict(median(s.apply), median(s.peer(copy=True, sync=True)), TARGET_APPLY),
        "bytes": verdict(outcome.archive_bytes, outcome.zip_bytes, TARGET_BYTES),
    }


def table(outcome: Outcome, runs: int) -> list[str]:
    s = outcome.samples
    build, zip_ = median(s.build), median(s.zip)
    apply = median(s.apply)
    v = verdicts(outcome)
    ours_b, zip_b = outcome.archive_bytes, outcome.zip_bytes
    package = outcome.pkg.bytes_v2 if outcome.pkg else None
    share = (
        f"| bytes / package ({package:,} B) | same | {ours_b / package:.2%} | {zip_b / package:.2%} | | | |"
        if ours_b and zip_b and package
        else "| bytes / package | same | n/a | n/a | | | |"
    )
    apply_rows = (
        (
            "**apply ms** (primary)",
            "`cp -al` + `unzip` + `sync`",
            True,
            True,
            f"≤ {TARGET_APPLY:g}x",
            v["apply"],
        ),
        ("apply ms", "`cp -al` + `unzip` (no sync)", True, False, "informative", ""),
        ("apply ms", "`unzip` alone, into an existing copy", False, False, "informative", ""),
    )
    rows = [
        f"Medians of {runs} rounds.",
        "",
        "| measure | peer | Conveyor | peer | Conveyor/peer | target | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
        f"| **build ms** | `zip -q -X -{ZIP_LEVEL}` | {ms(build)} | {ms(zip_)} "
        f"| {ratio(build, zip_)} | ≤ {TARGET_BUILD:g}x | {v['build']} |",
    ]
    for name, peer_name, copy, sync, target, mark in apply_rows:
        peer = median(s.peer(copy=copy, sync=sync))
        rows.append(
            f"| {name} | {peer_name} | {ms(apply)} | {ms(peer)} | {ratio(apply, peer)} | {target} | {mark} |"
        )
    rows += [
        f"| **bytes shipped** | the `zip -{ZIP_LEVEL}` of the same files | {size(ours_b)} | {size(zip_b)} "
        f"| {ratio(ours_b, zip_b)} | ≤ {TARGET_BYTES:g}x | {v['bytes']} |",
        share,
    ]
    return rows


def runs_line(name: str, values: list[float]) -> str:
    return f"{name}: {', '.join(f'{v:,.1f}' for v in values) or 'none'}"


def detail_lines(outcome: Outcome) -> list[str]:
    s = outcome.samples
    steps = ", ".join(f"{step} {ms(median(values))}" for step, values in s.apply_steps.items())
    lines = [
        "Runs (ms, in round order): "
        + "; ".join(
            [
                runs_line("build", s.build),
                runs_line("zip", s.zip),
                runs_line("apply", s.apply),
                runs_line("cp -al", s.cp),
                runs_line("unzip", s.unzip),
                runs_line("sync", s.sync),
            ]
        )
        + ".",
        "",
    ]
    if s.changes:
        lines += [
            f"Where Conveyor's build goes: `changes_between` alone (both versions' manifests read and "
            f"diffed, timed separately right after each build) takes {ms(median(s.changes))} ms median; "
            "the rest reads, compresses and writes the shipped files and hashes the archive.",
            "",
        ]
    if steps:
        lines += [
            f"Conveyor's apply by step (its own timings, medians, ms): {steps}; verify opens the archive, "
            "hashes it for its id, checks the node's current release (`status`) and the new tree's id; "
            "stage writes the changed files (checking each sha256), hard-links the unchanged ones, writes "
            "the release's metadata and calls `os.sync()`; switch renames `current` and records the "
            "history.",
            "",
        ]
    if outcome.memory:
        lines += [
            "Peak RSS, each in a fresh spawned process (informative): "
            + "; ".join(
                f"{task} {mib(peak)} ({mib(peak - before)} above the {mib(before)} after the imports)"
                for task, (before, peak) in outcome.memory.items()
            )
            + ".",
            "",
        ]
    return lines


def describe(pkg: Generated | None, outcome: Outcome, runs: int) -> list[str]:
    if pkg is None:
        return ["The package could not be made (see below).", ""]
    first = f"{outcome.first_bytes:,} B" if outcome.first_bytes else "n/a"
    changelog = f"{outcome.changelog_bytes:,} B" if outcome.changelog_bytes else "n/a"
    rounds = f"{runs} round{'s' if runs != 1 else ''}"
    package = (
        f"**Package** (seed {SEED}): {len(pkg.files_v1):,} files, {pkg.bytes_v1:,} bytes, in the root "
        f"and {pkg.dirs - 1} directories up to four levels deep; {FILES - BINARY_FILES:,} text-like files "
        f"(lines of pseudo-words with Zipf-like line frequencies, log-normal sizes, {EXECUTABLES} of them "
        f"mode 755) and {BINARY_FILES} larger files of random bytes, scaled to "
        f"{PACKAGE_BYTES / 1e6:.0f} MB; committed as v1 with `conveyor.pkgvcs`. Then "
        f"{len(pkg.modified)} files modified (text: 10-30% of the bytes rewritten; random bytes: replaced "
        f"whole), {len(pkg.added)} added (3 in two new directories, one inside the other) and "
        f"{len(pkg.deleted)} deleted, 1% of the files; committed as v2 ({len(pkg.files_v2):,} files, "
        f"{pkg.bytes_v2:,} bytes). The {len(pkg.shipped)} shipped files (added and modified, "
        f"{pkg.binary_changed} of them random bytes) hold {pkg.changed_bytes:,} bytes. The first "
        f"changeset (all of v1, a node's first release) is {first}."
    )
    method = (
        "**Build**: `build_changeset(Package(pkg), parent=v1, version=v2, directory=…)` in this process "
        f"(the listener builds in-process) against `zip -q -X -{ZIP_LEVEL} changes.zip -@` run in the "
        "package with the shipped files' paths on stdin (a subprocess: its start-up counts). "
        "**Apply**: `ReleaseRoot(root).apply(changeset)` in this process on a node root whose `current` "
        "is v1 (made fresh each round, untimed: a `cp -al` of a root the first changeset was applied to, "
        "then one `status()` as a drift check would run, which hashes the files again since linking "
        f"changed their ctime and settles the stat cache; {ms(median(outcome.samples.setup))} ms median) "
        "against "
        "`cp -al <v1 tree> <copy>`, then `unzip -q -o changes.zip -d <copy>`, then `sync`, each a "
        "subprocess timed on its own. The peer's v1 tree is a `cp -a` of that v1 release made once "
        "(the peer's links must not change the ctime of the node's files, or apply's `status` would "
        "hash them all again). "
        "An untimed `os.sync()` precedes every timed step, so each timed `sync` or apply flushes only its "
        f"own writes. One warm-up round, then {rounds}, alternating which side goes first; times are "
        "wall time (`time.perf_counter()`)."
    )
    checks = (
        "**Checks**, every round including the warm-up: the changeset lists exactly the edits and holds "
        "exactly the shipped files; after apply the node's `current` holds v2's files (sha256 and "
        "executable bit of every file) and its `status()` is clean at HEAD v2; the peer's copy holds "
        f"v2's files plus the {len(pkg.deleted)} deleted ones (unzip deletes nothing); the v1 trees the "
        "new trees share files with still hold v1's bytes (the template root all of v1, at the end); "
        "every round builds the same changeset id. "
        f"The archive's compressed `{CHANGELOG_NAME}` is {changelog}."
    )
    return [package, "", method, "", checks, ""]


def notes() -> list[str]:
    return [
        f"Primary apply peer: `cp -al` + `unzip` + `sync`, the ratio with the ≤ {TARGET_APPLY:g}x target. "
        "Conveyor's apply makes a new release directory next to the current one (unchanged files "
        "hard-linked, changed files written) and `os.sync()`s it before switching `current`; "
        "`cp -al` + `unzip` is the same work with the shell tools, and `sync` gives them the same "
        "durability. Without `sync` the peer skips the flush Conveyor pays for; `unzip` alone into an "
        "existing copy also skips the new directory tree — both shown for scale, not judged. `sync` "
        "flushes the whole machine, so other writers' dirty pages land in the peer's time too (the "
        "untimed sync before each step keeps ours out). Conveyor also verifies: the archive's sha256 "
        "(its id), the structure, every shipped file's sha256 and the new tree's version id, and checks "
        "the current release against its manifest; the peer checks only zip's CRC-32s.",
        "",
        f"Bytes: both are deflate level {ZIP_LEVEL} of the same files (Python's zlib against Info-ZIP's "
        f"own deflate); the archive adds `{CHANGELOG_NAME}` (a sha256 per changed file), the `files/` "
        "prefix on every entry name, and nothing else (no extra fields, like `zip -X`).",
    ]


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
        *describe(outcome.pkg, outcome, config.runs),
    ]
    if outcome.failure:
        lines += [f"**CONVEYOR FAILED** {one_line(outcome.failure)}", ""]
    lines += [*table(outcome, config.runs), ""]
    lines += detail_lines(outcome)
    if outcome.problems:
        lines += [
            p
            for problem in dict.fromkeys(outcome.problems)
            for p in (f"**MISMATCH** {one_line(problem)}", "")
        ]
    elif outcome.failure is None:
        lines += ["Checks passed in every round (the warm-up too).", ""]
    lines += [*summary(outcome), "", *notes()]
    return "\n".join(lines).rstrip("\n") + "\n"


def summary(outcome: Outcome) -> list[str]:
    v = verdicts(outcome)
    s = outcome.samples
    said = {
        "build": f"build {ratio(median(s.build), median(s.zip))} zip's (target ≤ {TARGET_BUILD:g}x)",
        "apply": f"apply {ratio(median(s.apply), median(s.peer(copy=True, sync=True)))} "
        f"`cp -al` + `unzip` + `sync` (target ≤ {TARGET_APPLY:g}x)",
        "bytes": f"changeset {ratio(outcome.archive_bytes, outcome.zip_bytes)} "
        f"the zip's bytes (target ≤ {TARGET_BYTES:g}x)",
    }
    return [f"- **{v[k]}** {said[k]}." for k in said if v[k] != "n/a"]


def one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def machine_facts(config: Config, load: tuple[float, float, float]) -> list[str]:
    fs = subprocess.run(
        ["stat", "-f", "-c", "%T", str(config.workdir)], capture_output=True, text=True, check=False
    ).stdout.strip()
    try:
        version = metadata.version("conveyor")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return [
        f"- CPUs (nproc): {len(os.sched_getaffinity(0))}; {cpu_model()}; load average before the run: "
        + ", ".join(f"{v:.2f}" for v in load),
        f"- Python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}",
        f"- {tool_version(['zip', '-v'], r'^This is Zip [^,]*')}; "
        f"{tool_version(['unzip', '-v'], r'^UnZip [0-9.]+ of [^,]*')}; conveyor {version}",
        f"- Work directory under {config.workdir}, filesystem {fs or 'unknown'}",
    ]


# -- main -----------------------------------------------------------------------------


def exit_code(outcome: Outcome) -> int:
    if outcome.problems or outcome.failure:
        return 2
    return 1 if any(v != "PASS" for v in verdicts(outcome).values()) else 0


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    load = os.getloadavg()
    for tool in ("zip", "unzip", "cp", "sync"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed; the peers need zip, unzip, cp and sync")
    config.workdir.mkdir(parents=True, exist_ok=True)
    check_disk(config.workdir, config.runs, config.keep)
    base = Path(tempfile.mkdtemp(prefix="bench-changeset-", dir=config.workdir))
    outcome = Outcome()
    started = time.perf_counter()
    try:
        bench(config, base, outcome)
    except ConveyorFailed as exc:
        outcome.failure = str(exc)
        log(f"Conveyor failed: {exc}")
    finally:
        if config.keep:
            log(f"trees kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    log(f"measured in {time.perf_counter() - started:.0f} s")
    section = report(config, outcome, machine_facts(config, load))
    print(section)
    write_section(config.out, SECTION_TITLE, section)
    for problem in dict.fromkeys(outcome.problems):
        log(f"FAILED CHECK: {problem}")
    log(f"section written to {config.out}")
    return exit_code(outcome)


if __name__ == "__main__":
    sys.exit(main())
