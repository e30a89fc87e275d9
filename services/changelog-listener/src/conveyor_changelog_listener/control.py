"""Restarting a package's units through the node's service manager (systemctl or supervisorctl).

One command per unit, always in the same form (``systemctl --no-pager restart
UNIT``, ``supervisorctl -c CONF restart PROGRAM``): sudoers rules match
argument lists literally, so the system-control user's rules can allow
exactly these.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

from conveyor_changelog_listener.config import ServiceManager, Settings

__all__ = ["RestartFailed", "UnitControl", "unit_control"]


class RestartFailed(Exception):
    """A unit did not restart; the message names it and what the service manager said."""


class UnitControl(Protocol):
    async def restart(self, units: list[str]) -> None: ...


class _CommandControl:
    def __init__(
        self, argv_for: list[str], *, sudo: bool, timeout_s: float, success_word: str | None = None
    ) -> None:
        self._prefix = ["sudo", "-n", *argv_for] if sudo else list(argv_for)
        self._timeout_s = timeout_s
        self._success_word = success_word

    async def restart(self, units: list[str]) -> None:
        for unit in units:
            await self._run([*self._prefix, "restart", unit], unit)

    async def _run(self, argv: list[str], unit: str) -> None:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
        except OSError as exc:
            raise RestartFailed(f"{unit}: cannot run {argv[0]}: {exc.strerror}") from None
        try:
            output, _ = await asyncio.wait_for(process.communicate(), self._timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise RestartFailed(
                f"{unit}: `{' '.join(argv)}` did not finish in {self._timeout_s:g}s"
            ) from None
        text = output.decode(errors="replace").strip()
        # supervisorctl exits 0 on some failures (older versions); its words tell. A restart of a
        # stopped program says "ERROR (not running)" and then "started", which is a success.
        said_so = self._success_word is None or f"{unit}: {self._success_word}" in text
        if process.returncode != 0 or not said_so:
            raise RestartFailed(f"{unit}: `{' '.join(argv)}` failed ({process.returncode}): {text[-500:]}")


class _Nothing:
    async def restart(self, units: list[str]) -> None:
        del units


def unit_control(settings: Settings) -> UnitControl:
    if settings.service_manager is ServiceManager.SYSTEMD:
        return _CommandControl(
            ["systemctl", "--no-pager"], sudo=settings.control_via_sudo, timeout_s=settings.restart_timeout_s
        )
    if settings.service_manager is ServiceManager.SUPERVISORD:
        config: Path | None = settings.supervisorctl_config
        argv = ["supervisorctl", *(["-c", str(config)] if config else [])]
        return _CommandControl(
            argv, sudo=settings.control_via_sudo, timeout_s=settings.restart_timeout_s, success_word="started"
        )
    return _Nothing()
