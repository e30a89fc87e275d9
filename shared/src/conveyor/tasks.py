"""A service's background work: named asyncio tasks, a crash logged with its name, all cancelled at stop.

::

    background = BackgroundTasks()
    background.spawn("outbox", outbox.run(stop))
    ...
    await background.cancel_all()  # at shutdown: cancelled and awaited
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable

from conveyor.observability import get_logger

__all__ = ["BackgroundTasks"]

log = get_logger(__name__)


class BackgroundTasks:
    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[None]] = []

    def spawn(self, name: str, work: Awaitable[None]) -> asyncio.Task[None]:
        """Run ``work`` as a task named ``name``; if it raises, the error is logged with that name."""

        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background_task_crashed", task=name)
                raise

        task = asyncio.create_task(guarded(), name=name)
        self._tasks.append(task)
        task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Task[None]) -> None:
        """A finished task is dropped, so short-lived ones do not pile up."""
        if task in self._tasks:
            self._tasks.remove(task)

    async def cancel_all(self) -> None:
        """Cancel every task and wait for each to end."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
