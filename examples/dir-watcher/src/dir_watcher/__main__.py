"""``dir-watcher DIRECTORY``: print each change set of DIRECTORY as a JSON line until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from conveyor.observability import configure_logging
from dir_watcher.watcher import ChangeSetSeen, DirWatcher

__all__ = ["main"]


def package_name(directory: Path) -> str:
    """The name the directory's versions are recorded under: its own name, made safe."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", directory.name).lstrip("._-")[:128] or "watched"


def default_state_dir(directory: Path, name: str) -> Path:
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "dir-watcher" / f"{name}-{hashlib.sha256(bytes(directory)).hexdigest()[:12]}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dir-watcher", description=__doc__)
    parser.add_argument("directory", type=Path, help="the directory to watch")
    parser.add_argument("--name", help="the name its versions are recorded under (default: its own name)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="where the archives and marks are kept (default: $XDG_STATE_HOME/dir-watcher/<name>-<hash>)",
    )
    parser.add_argument(
        "--quiet-period", type=float, default=0.5, help="seconds without a file event before a change set"
    )
    parser.add_argument(
        "--rescan-interval", type=float, default=60.0, help="seconds between full rescans (missed events)"
    )
    parser.add_argument("--log-level", default="warning", help="of the JSON log on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    directory: Path = args.directory.resolve()
    if not directory.is_dir():
        print(f"dir-watcher: {args.directory} is not a directory; give one that exists", file=sys.stderr)
        return 2
    name = args.name or package_name(directory)
    state_dir: Path = args.state_dir or default_state_dir(directory, name)
    configure_logging(service="dir-watcher", level=args.log_level)
    try:
        watcher = DirWatcher(
            directory,
            name=name,
            state_dir=state_dir,
            quiet_period_s=args.quiet_period,
            rescan_interval_s=args.rescan_interval,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"dir-watcher: invalid options ({problems})", file=sys.stderr)
        return 2
    asyncio.run(_watch(watcher, state_dir))
    return 0


async def _watch(watcher: DirWatcher, state_dir: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _print({"event": "watching", "directory": str(watcher.directory), "state_dir": str(state_dir)})
    await watcher.run(stop, _print_changeset)
    _print({"event": "stopped", "directory": str(watcher.directory)})


def _print_changeset(seen: ChangeSetSeen) -> None:
    print(seen.model_dump_json(), flush=True)


def _print(line: dict[str, str]) -> None:
    print(json.dumps(line, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    sys.exit(main())
