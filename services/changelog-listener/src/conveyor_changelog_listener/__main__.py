"""`conveyor-changelog-listener`: run the service until SIGTERM."""

from __future__ import annotations

import sys

from conveyor.runtime import run_service
from conveyor_changelog_listener.app import create_app
from conveyor_changelog_listener.config import Settings
from conveyor_changelog_listener.control import ControlMisconfigured


def main() -> None:
    try:
        run_service(Settings, create_app)
    except ControlMisconfigured as exc:  # a clear line, not a traceback, and no command taken
        print(f"conveyor-changelog-listener: cannot restart units: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
