"""`conveyor-version-db`: run the service until SIGTERM."""

from __future__ import annotations

from conveyor.runtime import run_service
from conveyor_version_db.app import create_app
from conveyor_version_db.config import Settings


def main() -> None:
    run_service(Settings, create_app)


if __name__ == "__main__":
    main()
