"""`conveyor-deployer`: run the service until SIGTERM."""

from __future__ import annotations

import sys

from conveyor.runtime import run_service
from conveyor_deployer.app import create_app
from conveyor_deployer.config import Settings
from conveyor_deployer.inventory import InventoryError


def main() -> None:
    try:
        run_service(Settings, create_app)
    except InventoryError as exc:  # one clear message per problem, not a traceback
        sys.stderr.write(f"conveyor-deployer: the inventory is not valid:\n{exc}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
