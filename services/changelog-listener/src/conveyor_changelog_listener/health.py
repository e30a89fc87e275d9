"""A package's health check: an HTTP URL answering 2xx (with the expected text), or a command exiting 0."""

from __future__ import annotations

import asyncio
import time

import httpx

from conveyor_changelog_listener.config import HealthCheck

__all__ = ["check_health"]


async def check_health(check: HealthCheck | None) -> str | None:
    """Retry until healthy or ``timeout_s``; None when healthy, else the last failure."""
    if check is None:
        return None
    deadline = time.monotonic() + check.timeout_s
    attempts = 0
    while True:
        attempts += 1
        remaining = max(deadline - time.monotonic(), 0.1)
        problem = await (_http(check, remaining) if check.url else _command(check, remaining))
        if problem is None:
            return None
        if time.monotonic() + check.interval_s >= deadline:
            return f"unhealthy after {attempts} attempts in {check.timeout_s:g}s: {problem}"
        await asyncio.sleep(check.interval_s)


async def _http(check: HealthCheck, timeout: float) -> str | None:
    assert check.url is not None
    try:
        async with httpx.AsyncClient(timeout=min(timeout, 10.0)) as client:
            response = await client.get(check.url)
    except httpx.HTTPError as exc:
        return f"GET {check.url}: {exc!r}"
    if not response.is_success:
        return f"GET {check.url} answered {response.status_code}"
    if check.expect is not None and check.expect not in response.text:
        return f"GET {check.url} answered without {check.expect!r}"
    return None


async def _command(check: HealthCheck, timeout: float) -> str | None:
    assert check.command is not None
    try:
        process = await asyncio.create_subprocess_exec(
            *check.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        return f"cannot run {check.command[0]}: {exc.strerror}"
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        return f"`{' '.join(check.command)}` did not finish in {timeout:.1f}s"
    if process.returncode != 0:
        tail = output.decode(errors="replace").strip()[-300:]
        return f"`{' '.join(check.command)}` exited {process.returncode}: {tail}"
    return None
