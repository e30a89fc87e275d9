"""Start-up time of `conveyor --version` against `git --version` and a bare interpreter.

Run: uv run python bench/cli/run.py [--runs N] [--out bench/RESULTS.md]

Each command is started N times in turn (interleaved, after warm-up runs), wall
time per start measured with perf_counter around subprocess.run. Reports the
median and p95, the ratio to git and the target: `conveyor --version` under 150 ms.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for results.py
from results import write_section

TARGET_MS = 150.0
SECTION = "## CLI start-up: `conveyor --version`"


def commands() -> dict[str, list[str]]:
    conveyor = Path(sys.executable).parent / "conveyor"
    return {
        "conveyor --version": [str(conveyor), "--version"],
        "git --version": [shutil.which("git") or "git", "--version"],
        "python -c pass (floor)": [sys.executable, "-c", "pass"],
    }


def time_once(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return (time.perf_counter() - started) * 1000


def measure(runs: int) -> dict[str, list[float]]:
    cmds = commands()
    for argv in cmds.values():  # warm the page cache and the .pyc files
        for _ in range(3):
            time_once(argv)
    samples: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(runs):
        for name, argv in cmds.items():
            samples[name].append(time_once(argv))
    return samples


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def report(samples: dict[str, list[float]], runs: int, command: str) -> str:
    git = statistics.median(samples["git --version"])
    ours = statistics.median(samples["conveyor --version"])
    rows = [
        f"| {name} | {statistics.median(v):.1f} | {p95(v):.1f} | {statistics.median(v) / git:.1f}x |"
        for name, v in samples.items()
    ]
    verdict = "PASS" if ours < TARGET_MS else "FAIL"
    return "\n".join(
        [
            SECTION,
            "",
            f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"- Python {platform.python_version()}, {platform.platform()}",
            f"- {runs} starts per command, interleaved, after 3 warm-up starts each",
            "",
            f"Command: `{command}`",
            "",
            "| command | median ms | p95 ms | vs git |",
            "| --- | ---: | ---: | ---: |",
            *rows,
            "",
            f"**{verdict}**: `conveyor --version` median {ours:.1f} ms against the target of "
            f"{TARGET_MS:.0f} ms; {ours / git:.1f}x git's start-up. Commands import their "
            "modules only when they run; typer itself is most of what remains.",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("bench/RESULTS.md"))
    args = parser.parse_args()
    samples = measure(args.runs)
    section = report(
        samples,
        args.runs,
        "uv run python bench/cli/run.py" + (f" --runs {args.runs}" if args.runs != 30 else ""),
    )
    print(section)
    write_section(args.out, SECTION, section)
    return 0 if statistics.median(samples["conveyor --version"]) < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
