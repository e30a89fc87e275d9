"""`conveyor vcs` against git: first commit and `status --porcelain` on large trees.

For each size N a deterministic tree of N small text files is generated and
copied (`cp -a`), one copy becomes a git repository, the other a conveyor
package. Both get their first commit (timed), then the same edits (1% of the
files modified, 100 files added in existing and new directories). After one
untimed warm-up status each, `git status --porcelain -uall` and
`conveyor vcs status --porcelain` are timed interleaved, whole-process wall
time. Both outputs are checked against the edits and against each other.

Targets: status median at most 1.5x git's at 100,000 files, at most 2x at
10,000 files (start-up included). If `conveyor vcs --help` fails, git's
numbers are still measured and reported, and the exit status is non-zero.

    uv run python bench/vcs/run.py [--sizes 10000,100000] [--runs 5] [--out bench/RESULTS.md]
                                   [--workdir DIR] [--keep]

Exit status: 0 all targets pass; 1 a target failed; 2 an output mismatch or a
failed conveyor command; 3 `conveyor vcs` is not available (git measured only).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for results.py
from results import cpu_model, write_section

SECTION_TITLE = "## VCS: conveyor vcs vs git"
SEED = 20261126
FILES_PER_DIR = 100
MIN_BYTES, MAX_BYTES = 10, 200
ADDED_IN_EXISTING_DIRS = 50
NEW_DIRS = ("{top}/snew", "dnew/s00", "dnew/s01", "dnew/s01/deep", "dnew2")
ADDED_PER_NEW_DIR = 10  # 5 new directories x 10 = 50, plus 50 in existing ones = 100 added
TIMEOUT_S = 600.0
DEFAULT_SIZES = (10_000, 100_000)
DEFAULT_RUNS = 5
TEXT = (string.ascii_lowercase + "      _=().:\n").encode()
DEFAULT_CONVEYOR = Path(sys.executable).parent / "conveyor"
BOX_DRAWING = re.compile("[\u2500-\u257f]")
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C"}
GIT_CONFIG = (
    "user.name=bench",
    "user.email=bench@example.invalid",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "gc.auto=0",
    "commit.gpgSign=false",
    "init.defaultBranch=main",
)
# git porcelain v1 status codes -> the A/M/D of `conveyor vcs status --porcelain`
GIT_CODES = {
    "??": "A",
    "A ": "A",
    "AM": "A",
    " M": "M",
    "M ": "M",
    "MM": "M",
    " T": "M",
    "T ": "M",
    " D": "D",
    "D ": "D",
}
CONVEYOR_LINE = re.compile(r"^([AMD]) (.+)$")

Change = tuple[str, str]  # (A|M|D, path)
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


# -- configuration --------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Config:
    sizes: tuple[int, ...]
    runs: int
    out: Path
    workdir: Path
    keep: bool
    conveyor: Path
    command: str


def parse_sizes(text: str) -> tuple[int, ...]:
    sizes = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    if not sizes or min(sizes) < FILES_PER_DIR:
        raise argparse.ArgumentTypeError(f"sizes must be at least {FILES_PER_DIR}")
    return sizes


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=DEFAULT_SIZES,
        help="comma-separated file counts (default 10000,100000)",
    )
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="timed status runs per tool")
    parser.add_argument("--out", type=Path, default=Path("bench/RESULTS.md"))
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="parent of the temporary directory holding the trees (default /tmp)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the trees for inspection")
    parser.add_argument(
        "--conveyor",
        type=Path,
        default=DEFAULT_CONVEYOR,
        help=f"the conveyor executable (default {DEFAULT_CONVEYOR})",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    raw = sys.argv[1:] if argv is None else argv
    return Config(
        sizes=args.sizes,
        runs=args.runs,
        out=args.out,
        workdir=args.workdir,
        keep=args.keep,
        conveyor=args.conveyor.absolute(),
        command=shlex.join(["uv", "run", "python", "bench/vcs/run.py", *raw]),
    )


def target_ratio(n: int) -> float:
    """At most 1.5x git from 100,000 files up, 2x below (start-up weighs more on small trees)."""
    return 1.5 if n >= 100_000 else 2.0


# -- subprocesses ---------------------------------------------------------------


class CommandFailed(Exception):
    def __init__(self, argv: list[str], cwd: Path, problem: str) -> None:
        self.argv = argv
        super().__init__(f"`{shlex.join(argv)}` in {cwd}: {problem}")


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run one command to completion; return (wall milliseconds, stdout)."""
    started = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(argv, cwd, f"timed out after {TIMEOUT_S:.0f} s") from exc
    elapsed_ms = (time.perf_counter() - started) * 1000
    if proc.returncode != 0:
        stderr = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise CommandFailed(argv, cwd, f"exit {proc.returncode}: {stderr}")
    return elapsed_ms, proc.stdout.decode(errors="replace")


def git_env() -> dict[str, str]:
    return {**os.environ, **GIT_ENV}


def git_argv(*args: str) -> list[str]:
    config = [item for pair in GIT_CONFIG for item in ("-c", pair)]
    return [shutil.which("git") or "git", *config, *args]


def run_git(repo: Path, *args: str) -> tuple[float, str]:
    return run(git_argv(*args), repo, git_env())


@dataclass(frozen=True)
class Conveyor:
    exe: Path

    def vcs(self, package: Path, *args: str) -> tuple[float, str]:
        return run([str(self.exe), "vcs", *args], package)

    def owns(self, exc: CommandFailed) -> bool:
        return exc.argv[0] == str(self.exe)

    def problem(self) -> str | None:
        """None when `conveyor vcs --help` exits 0, else what went wrong, in one line."""
        if not self.exe.exists():
            return f"{self.exe} does not exist"
        try:
            proc = subprocess.run(
                [str(self.exe), "vcs", "--help"], capture_output=True, timeout=TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"`{self.exe} vcs --help` failed: {exc}"
        if proc.returncode == 0:
            return None
        lines = BOX_DRAWING.sub("", proc.stderr.decode(errors="replace")).splitlines()
        said = [" ".join(line.split()) for line in lines if line.strip()]
        return f"`{self.exe} vcs --help` exited {proc.returncode}: {said[-1] if said else 'no message'}"


def tool_version(argv: list[str]) -> str:
    try:
        return run(argv, Path.cwd())[1].strip().splitlines()[0]
    except (CommandFailed, IndexError, OSError):
        return "unknown"


# -- the tree and the edits -----------------------------------------------------


def random_text(rng: random.Random, size: int) -> bytes:
    return bytes(rng.choices(TEXT, k=size - 1)) + b"\n"


def layout(n: int) -> list[str]:
    """N relative paths, ~100 files per leaf directory, two directory levels (dTT/sSS/fNNN.txt)."""
    leaves = math.ceil(n / FILES_PER_DIR)
    fan_out = math.ceil(math.sqrt(leaves))
    width = len(str(fan_out - 1))
    paths = []
    for i in range(n):
        leaf, k = divmod(i, FILES_PER_DIR)
        top, sub = divmod(leaf, fan_out)
        paths.append(f"d{top:0{width}d}/s{sub:0{width}d}/f{k:03d}.txt")
    return paths


def write_files(root: Path, files: dict[str, bytes]) -> None:
    made: set[Path] = set()
    for rel, data in files.items():
        path = root / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(data)


def make_tree(n: int, rng: random.Random) -> dict[str, bytes]:
    return {rel: random_text(rng, rng.randint(MIN_BYTES, MAX_BYTES)) for rel in layout(n)}


@dataclass(frozen=True)
class Edits:
    modified: dict[str, bytes]
    added: dict[str, bytes]

    def expected(self) -> set[Change]:
        return {("M", p) for p in self.modified} | {("A", p) for p in self.added}


def modify(old: bytes, rng: random.Random) -> bytes:
    """New content of a similar size (within 20%), never equal to the old."""
    low = max(MIN_BYTES, int(len(old) * 0.8))
    while True:
        new = random_text(rng, rng.randint(low, max(low, int(len(old) * 1.2))))
        if new != old:
            return new


def make_edits(tree: dict[str, bytes], rng: random.Random) -> Edits:
    paths = sorted(tree)
    modified = {p: modify(tree[p], rng) for p in sorted(rng.sample(paths, max(1, len(paths) // 100)))}
    dirs = sorted({p.rsplit("/", 1)[0] for p in paths})
    added = {f"{d}/new{i:03d}.txt": b"" for i, d in enumerate(rng.choices(dirs, k=ADDED_IN_EXISTING_DIRS))}
    for d in (new.format(top=dirs[0].split("/")[0]) for new in NEW_DIRS):
        added.update({f"{d}/n{i:02d}.txt": b"" for i in range(ADDED_PER_NEW_DIR)})
    return Edits(modified, {p: random_text(rng, rng.randint(MIN_BYTES, MAX_BYTES)) for p in sorted(added)})


# -- disk -------------------------------------------------------------------------


def check_disk(base: Path, largest: int) -> None:
    """Two copies, git's loose objects and conveyor's store: budget five blocks and inodes per file."""
    stats = os.statvfs(base)
    need_bytes = largest * 5 * max(stats.f_frsize, 4096) + 256 * 2**20
    free_bytes = shutil.disk_usage(base).free
    if free_bytes < need_bytes:
        raise SystemExit(
            f"not enough disk under {base}: {free_bytes / 2**30:.1f} GiB free, "
            f"need about {need_bytes / 2**30:.1f} GiB for {largest:,} files"
        )
    need_inodes = largest * 5 + 10_000
    if stats.f_files and stats.f_favail < need_inodes:
        raise SystemExit(f"not enough inodes under {base}: {stats.f_favail:,} free, need {need_inodes:,}")


# -- status output ----------------------------------------------------------------


def parse_git_status(text: str) -> set[Change]:
    """`git status --porcelain` lines as (A|M|D, path); an unknown code is kept as `git:XY`."""
    return {(GIT_CODES.get(line[:2], f"git:{line[:2]!r}"), line[3:]) for line in text.splitlines() if line}


def parse_conveyor_status(text: str) -> tuple[set[Change], list[str]]:
    """`conveyor vcs status --porcelain` lines as (A|M|D, path), and problems with the format."""
    changes: set[Change] = set()
    problems: list[str] = []
    paths: list[str] = []
    for line in text.splitlines():
        match = CONVEYOR_LINE.match(line)
        if match is None:
            problems.append(f"unexpected line {line!r}")
            continue
        changes.add((match[1], match[2]))
        paths.append(match[2])
    if paths != sorted(paths, key=os.fsencode):
        problems.append("lines are not sorted by path bytes")
    if len(set(paths)) != len(paths):
        problems.append("a path is listed more than once")
    return changes, problems


def differences(label: str, got: set[Change], want: set[Change], want_label: str) -> list[str]:
    missing, extra = sorted(want - got), sorted(got - want)
    parts = [
        f"{len(found)} {what}, e.g. {found[:5]}" for what, found in (("missing", missing), ("extra", extra))
    ]
    said = [part for part, found in zip(parts, (missing, extra), strict=True) if found]
    return [f"{label} vs {want_label}: {'; '.join(said)}"] if said else []


def verify(git_out: str, conveyor_out: str | None, edits: Edits) -> list[str]:
    expected = edits.expected()
    git = parse_git_status(git_out)
    problems = differences("git", git, expected, "the edits")
    if conveyor_out is not None:
        conveyor, format_problems = parse_conveyor_status(conveyor_out)
        problems += [f"conveyor: {p}" for p in format_problems]
        problems += differences("conveyor", conveyor, git, "git")
        problems += differences("conveyor", conveyor, expected, "the edits")
    return problems


# -- one size ---------------------------------------------------------------------


@dataclass
class SizeResult:
    n: int
    modified: int = 0
    added: int = 0
    git_times: dict[str, float] = field(default_factory=dict)  # init, add, commit (ms)
    conveyor_times: dict[str, float] = field(default_factory=dict)  # init, commit (ms)
    git_status: list[float] = field(default_factory=list)
    conveyor_status: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # mismatches: exit 2
    conveyor_error: str | None = None  # a conveyor command failed: exit 2


def first_commit_git(repo: Path) -> dict[str, float]:
    init, _ = run_git(repo, "init", "-q")
    add, _ = run_git(repo, "add", "-A")
    commit, _ = run_git(repo, "commit", "-q", "-m", "initial")
    return {"init": init, "add": add, "commit": commit}


def first_commit_conveyor(conveyor: Conveyor, package: Path) -> dict[str, float]:
    init, _ = conveyor.vcs(package, "init", "--name", "bench")
    commit, _ = conveyor.vcs(package, "commit", "-m", "initial", "--author", "bench")
    return {"init": init, "commit": commit}


def time_status(
    result: SizeResult, runs: int, repo: Path, package: Path, conveyor: Conveyor | None
) -> tuple[str, str | None]:
    """Warm up, then time both statuses interleaved (alternating which goes first)."""
    commands = {"git": partial(run_git, repo, "status", "--porcelain", "-uall")}
    if conveyor is not None:
        commands["conveyor"] = partial(conveyor.vcs, package, "status", "--porcelain")
    samples = {"git": result.git_status, "conveyor": result.conveyor_status}
    warm = {name: cmd()[1] for name, cmd in commands.items()}
    for i in range(runs):
        for name in sorted(commands, reverse=i % 2 == 1):
            elapsed, out = commands[name]()
            samples[name].append(elapsed)
            if out != warm[name]:
                result.problems.append(f"{name} status printed something else on timed run {i + 1}")
    return warm["git"], warm.get("conveyor")


def conveyor_step(result: SizeResult, conveyor: Conveyor, what: str, step: Callable[[], T]) -> T | None:
    """Run a step involving conveyor; when a conveyor command fails, record it and return None."""
    try:
        return step()
    except CommandFailed as exc:
        if not conveyor.owns(exc):
            raise
        result.conveyor_error = f"{what}: {exc}"
        log(f"{result.n:,} files: conveyor vcs {what} failed: {exc}")
        return None


def bench_size(n: int, base: Path, runs: int, conveyor: Conveyor | None) -> SizeResult:
    result = SizeResult(n)
    rng = random.Random(SEED + n)
    root = base / str(n)
    repo, package = root / "git", root / "conveyor"
    log(f"{n:,} files: generating the tree")
    tree = make_tree(n, rng)
    write_files(repo, tree)
    run(["cp", "-a", str(repo), str(package)], root)
    log(f"{n:,} files: first commits")
    result.git_times = first_commit_git(repo)
    if conveyor is not None:
        times = conveyor_step(
            result, conveyor, "init/commit", partial(first_commit_conveyor, conveyor, package)
        )
        result.conveyor_times = times or {}
        conveyor = conveyor if times is not None else None
    edits = make_edits(tree, rng)
    result.modified, result.added = len(edits.modified), len(edits.added)
    for copy in (repo, package):
        write_files(copy, edits.modified | edits.added)
    log(f"{n:,} files: status, 1 warm-up + {runs} timed runs each")
    outputs = None
    if conveyor is not None:
        step = partial(time_status, result, runs, repo, package, conveyor)
        outputs = conveyor_step(result, conveyor, "status", step)
    if outputs is None:  # git alone, also after conveyor failed half-way
        result.git_status.clear()
        result.conveyor_status.clear()
        outputs = time_status(result, runs, repo, package, None)
    result.problems += verify(*outputs, edits)
    log(f"{n:,} files: done")
    return result


# -- report -----------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def ratio(ours: float | None, git: float) -> str:
    return "n/a" if ours is None else f"{ours / git:.2f}x"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def verdict(result: SizeResult) -> str:
    ours = median(result.conveyor_status)
    if ours is None:
        return "n/a"
    return "PASS" if ours <= target_ratio(result.n) * statistics.median(result.git_status) else "FAIL"


def size_table(result: SizeResult, runs: int) -> list[str]:
    git_med, conv_med = statistics.median(result.git_status), median(result.conveyor_status)
    git_min = min(result.git_status)
    conv_min = min(result.conveyor_status) if result.conveyor_status else None
    g, c = result.git_times, result.conveyor_times
    git_commit = g["add"] + g["commit"]
    conv_commit = c.get("commit")
    return [
        f"**{result.n:,} files** (then {result.modified:,} modified and {result.added} added)",
        "",
        "| measure | git | conveyor | conveyor/git | target | verdict |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        f"| status median ms ({runs} runs) | {ms(git_med)} | {ms(conv_med)} | {ratio(conv_med, git_med)} "
        f"| ≤ {target_ratio(result.n):g}x | {verdict(result)} |",
        f"| status min ms | {ms(git_min)} | {ms(conv_min)} | {ratio(conv_min, git_min)} | | |",
        f"| first commit ms | {ms(git_commit)} | {ms(conv_commit)} | {ratio(conv_commit, git_commit)} "
        "| none | |",
        f"| init ms | {ms(g['init'])} | {ms(c.get('init'))} | {ratio(c.get('init'), g['init'])} | none | |",
        "",
        f"git first commit = `git add -A` {ms(g['add'])} ms + `git commit` {ms(g['commit'])} ms. "
        f"Status runs (ms) git: {', '.join(f'{v:.1f}' for v in result.git_status)}"
        + (
            f"; conveyor: {', '.join(f'{v:.1f}' for v in result.conveyor_status)}."
            if result.conveyor_status
            else "."
        ),
        "",
        *check_lines(result),
    ]


def check_lines(result: SizeResult) -> list[str]:
    """Paragraphs: a failed conveyor command, mismatches, or that the outputs agree."""
    lines = []
    if result.conveyor_error:
        lines.append(f"**CONVEYOR FAILED** {one_line(result.conveyor_error)}")
    if result.problems:
        lines += [f"**MISMATCH** {one_line(p)}" for p in result.problems]
    elif result.conveyor_status:
        lines.append(f"Outputs agree: both report the edits' {result.modified:,} M and {result.added} A.")
    else:
        lines.append(f"git's output matches the edits ({result.modified:,} M, {result.added} A).")
    return [paragraph for line in lines for paragraph in (line, "")]


def one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def machine_facts(config: Config, load: tuple[float, float, float]) -> list[str]:
    fs_type = tool_version(["stat", "-f", "-c", "%T", str(config.workdir)])
    exe = config.conveyor
    conveyor = tool_version([str(exe), "--version"]) if exe.exists() else f"{exe} not installed"
    return [
        f"- CPUs (nproc): {len(os.sched_getaffinity(0))}; {cpu_model()}; load average before the run: "
        + ", ".join(f"{v:.2f}" for v in load),
        f"- Python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}",
        f"- {tool_version(['git', '--version'])}; conveyor: {conveyor}",
        f"- Work directory under {config.workdir}, filesystem {fs_type}",
    ]


def startup_floor(conveyor: Conveyor | None, runs: int) -> str:
    """Median start-up of `git --version` and `conveyor --version`, timed interleaved after a warm-up.

    Not `conveyor vcs --help`: rendering typer's help imports rich, which is slower than a real command.
    """
    commands = {"git --version": [shutil.which("git") or "git", "--version"]}
    if conveyor is not None:
        commands["conveyor --version"] = [str(conveyor.exe), "--version"]
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for i in range(runs + 1):
        for name, argv in commands.items():
            elapsed = run(argv, Path.cwd())[0]
            if i:  # the first round warms the page cache
                samples[name].append(elapsed)
    medians = ", ".join(f"`{name}` {statistics.median(v):.1f} ms" for name, v in samples.items())
    return f"- Start-up floor (median of {runs}, interleaved): {medians}"


def tree_description(runs: int) -> str:
    return (
        f"Each tree holds N text files of {MIN_BYTES}-{MAX_BYTES} random bytes (seed {SEED}+N), "
        f"{FILES_PER_DIR} per leaf directory, two directory levels (`dTT/sSS/fNNN.txt`, about "
        "sqrt(N/100) directories per level); it is generated once and copied with `cp -a`, one copy "
        "a git repository, the other a conveyor package. First commit: `git init`, then `git add -A` + "
        "`git commit -q -m initial` against `conveyor vcs init --name bench`, then `conveyor vcs commit "
        "-m initial --author bench`. Then both copies get the same edits: 1% of the files rewritten "
        "(new content within 20% of the old size) and 100 files added (50 in existing directories, 50 "
        "in 5 new ones, one of them nested). After one untimed warm-up each, `git status --porcelain "
        f"-uall` and `conveyor vcs status --porcelain` run {runs} times each, interleaved with "
        "alternating order; times are whole-process wall time. git runs with "
        "`-c core.fsmonitor=false -c core.untrackedCache=false -c gc.auto=0` and no global or system "
        "config. Both outputs are compared with the edits (git `??` as A, `M`/`T` as M, `D` as D)."
    )


def report(config: Config, results: list[SizeResult], facts: list[str], unavailable: str | None) -> str:
    lines = [
        SECTION_TITLE,
        "",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        *facts,
        "",
        f"Command: `{config.command}`",
        "",
        tree_description(config.runs),
        "",
    ]
    if unavailable:
        lines += [
            f"**conveyor vcs is not available** ({one_line(unavailable)}); only git's numbers are reported.",
            "",
        ]
    for result in results:
        lines += size_table(result, config.runs)
    return "\n".join(lines).rstrip("\n") + "\n"


# -- main -------------------------------------------------------------------------


def exit_code(results: list[SizeResult], unavailable: str | None) -> int:
    if any(r.problems or r.conveyor_error for r in results):
        return 2
    if unavailable:
        return 3
    return 1 if any(verdict(r) == "FAIL" for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    load = os.getloadavg()
    config.workdir.mkdir(parents=True, exist_ok=True)
    check_disk(config.workdir, max(config.sizes))
    conveyor: Conveyor | None = Conveyor(config.conveyor)
    unavailable = conveyor.problem() if conveyor else None
    if unavailable:
        log(f"conveyor vcs is not available ({unavailable}); measuring git only")
        conveyor = None
    floor = startup_floor(conveyor, config.runs)
    base = Path(tempfile.mkdtemp(prefix="bench-vcs-", dir=config.workdir))
    results: list[SizeResult] = []
    try:
        for n in config.sizes:
            results.append(bench_size(n, base, config.runs, conveyor))
            if not config.keep:
                shutil.rmtree(base / str(n))
    finally:
        if config.keep:
            log(f"trees kept in {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    section = report(config, results, [*machine_facts(config, load), floor], unavailable)
    print(section)
    write_section(config.out, SECTION_TITLE, section)
    for result in results:
        for problem in ([result.conveyor_error] if result.conveyor_error else []) + result.problems:
            log(f"{result.n:,} files: FAILED CHECK: {problem}")
    if unavailable:
        log(f"conveyor vcs is not available: {unavailable}; only git was measured")
    log(f"section written to {config.out}")
    return exit_code(results, unavailable)


if __name__ == "__main__":
    sys.exit(main())
