"""Restarting a package's units through the node's service manager (systemctl or supervisorctl).

One command per unit, always in the same form (``systemctl --no-pager restart
UNIT``, ``supervisorctl -c CONF restart PROGRAM``): sudoers rules match
argument lists literally, so the system-control user's rules allow exactly
these. With ``CONTROL_USER`` the command runs through that account:
``sudo -n /usr/bin/systemctl --no-pager restart UNIT`` as the account (the
listener switches to it with ``runuser -u ACCOUNT --`` when it runs as root),
so a restart can only reach the units its sudo rules list. The tool is given
to sudo by its absolute path, the one the rules name.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
from pathlib import Path
from typing import Protocol

from conveyor_changelog_listener.config import ServiceManager, Settings

__all__ = ["ControlMisconfigured", "RestartFailed", "UnitControl", "command_prefix", "unit_control"]


class RestartFailed(Exception):
    """A unit did not restart; the message names it and what the service manager said."""


class ControlMisconfigured(ValueError):
    """The tool is not installed, or the control user does not exist or cannot be switched to."""


def command_prefix(tool: list[str], control_user: str | None) -> list[str]:
    """The argument list before ``restart UNIT``: the tool with its absolute path, through the control
    user's sudo rules when there is one."""
    found = shutil.which(tool[0])
    if found is None:
        raise ControlMisconfigured(f"{tool[0]}: not found (PATH={os.environ.get('PATH', '')})")
    argv = [str(Path(found).absolute()), *tool[1:]]
    if control_user is None:
        return argv
    try:
        pwd.getpwnam(control_user)
    except KeyError:
        raise ControlMisconfigured(
            f"CONTROL_USER {control_user}: no such account on this node (provision it with "
            "`conveyor nodes provision-ctl-user`)"
        ) from None
    sudo = [_system_tool("sudo"), "-n", *argv]
    me = pwd.getpwuid(os.geteuid()).pw_name
    if me == control_user:
        return sudo
    if os.geteuid() == 0:
        return [_system_tool("runuser"), "-u", control_user, "--", *sudo]
    raise ControlMisconfigured(
        f"CONTROL_USER {control_user}: the listener runs as {me}, which can switch to it only as root; "
        f"run the listener as root or as {control_user}"
    )


def _system_tool(name: str) -> str:
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    found = shutil.which(name, path=search)
    if found is None:
        raise ControlMisconfigured(f"CONTROL_USER needs {name}, which is not installed")
    return found


class UnitControl(Protocol):
    async def restart(self, units: list[str]) -> None: ...


class _CommandControl:
    def __init__(self, prefix: list[str], *, timeout_s: float, success_word: str | None = None) -> None:
        self._prefix = prefix
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
    """How this node restarts units; :class:`ControlMisconfigured` when it cannot (checked at start-up,
    before any command is taken)."""
    if not any(p.units for p in settings.packages):
        return _Nothing()
    if settings.service_manager is ServiceManager.SYSTEMD:
        prefix = command_prefix([settings.systemctl, "--no-pager"], settings.control_user)
        return _CommandControl(prefix, timeout_s=settings.restart_timeout_s)
    if settings.service_manager is ServiceManager.SUPERVISORD:
        config: Path | None = settings.supervisorctl_config
        tool = [settings.supervisorctl, *(["-c", str(config)] if config else [])]
        prefix = command_prefix(tool, settings.control_user)
        return _CommandControl(prefix, timeout_s=settings.restart_timeout_s, success_word="started")
    return _Nothing()
