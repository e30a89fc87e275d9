"""``conveyor-version-db``: serve (the default), or ``migrate`` / ``downgrade REVISION``."""

from __future__ import annotations

import asyncio
import sys

from conveyor.runtime import run_service
from conveyor.settings import load_settings
from conveyor_version_db.app import create_app
from conveyor_version_db.config import Settings
from conveyor_version_db.db import create_engine, downgrade, migrate

USAGE = "usage: conveyor-version-db [serve | migrate [REVISION] | downgrade REVISION | --help | --version]"


async def _migrations(action: str, revision: str) -> None:
    settings = load_settings(Settings)
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        await (migrate if action == "migrate" else downgrade)(engine, revision)
    finally:
        await engine.dispose()


def main() -> None:
    args = sys.argv[1:]
    if args in (["--help"], ["-h"], ["--version"]):
        run_service(Settings, create_app)  # answers them and exits, starting nothing
    elif not args or args == ["serve"]:
        del sys.argv[1:]  # run_service takes no arguments
        run_service(Settings, create_app)
    elif args[0] == "migrate" and len(args) <= 2:
        asyncio.run(_migrations("migrate", args[1] if len(args) == 2 else "head"))
        print(f"schema at {args[1] if len(args) == 2 else 'head'}")
    elif args[0] == "downgrade" and len(args) == 2:
        asyncio.run(_migrations("downgrade", args[1]))
        print(f"schema at {args[1]}")
    else:
        sys.exit(USAGE)


if __name__ == "__main__":
    main()
