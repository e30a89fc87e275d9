"""`conveyor-changelog-listener`: run the service until SIGTERM."""

from __future__ import annotations

from conveyor.runtime import run_service
from conveyor_changelog_listener.app import create_app
from conveyor_changelog_listener.config import Settings


def main() -> None:
    run_service(Settings, create_app)


if __name__ == "__main__":
    main()
