"""`conveyor-notifier`: run the service until SIGTERM."""

from __future__ import annotations

import sys

from conveyor.runtime import run_service
from conveyor_notifier.app import create_app
from conveyor_notifier.config import Settings
from conveyor_notifier.rules import RulesError


def main() -> None:
    try:
        run_service(Settings, create_app)
    except RulesError as exc:  # one clear line per problem, not a traceback; nothing consumed
        sys.stderr.write(f"conveyor-notifier: the rules file is not valid:\n{exc}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
