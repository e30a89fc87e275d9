"""``release-board``: serve the board until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal

import uvicorn

from conveyor.observability import configure_logging
from conveyor.settings import load_settings
from release_board.app import create_app
from release_board.settings import Settings

__all__ = ["main"]


def main() -> None:
    settings = load_settings(Settings)  # a bad variable: one line naming it, exit 2
    configure_logging(service=Settings.service_name, level=settings.log_level)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,  # uvicorn's records go through Conveyor's JSON logging
        access_log=settings.http_access_log,
        lifespan="on",
        timeout_graceful_shutdown=max(1, round(settings.bus.shutdown_grace_s)),
    )
    # uvicorn stops gracefully on SIGTERM/SIGINT, then raises the signal again under the handler
    # installed before it: this one turns that into a normal exit instead of death by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_after_graceful_stop)
    uvicorn.Server(config).run()


def _exit_after_graceful_stop(signum: int, _: object) -> None:
    raise SystemExit(0 if signum == signal.SIGTERM else 128 + signum)


if __name__ == "__main__":
    main()
