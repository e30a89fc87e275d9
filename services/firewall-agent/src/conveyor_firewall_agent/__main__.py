"""`conveyor-firewall-agent`: run the service until SIGTERM."""

from __future__ import annotations

from conveyor.runtime import run_service
from conveyor_firewall_agent.app import create_app
from conveyor_firewall_agent.config import Settings


def main() -> None:
    run_service(Settings, create_app)


if __name__ == "__main__":
    main()
