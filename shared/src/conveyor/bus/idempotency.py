"""Remembering which messages a consumer has already handled."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Protocol

__all__ = ["IdempotencyStore", "MemoryIdempotencyStore"]


class IdempotencyStore(Protocol):
    """Claims a message key before its handler runs, records it after.

    ``begin`` returns False when the key was already handled; when another
    delivery of the same key is being handled right now it waits for that
    outcome first, so a redelivery never races its original.
    """

    async def begin(self, key: str) -> bool: ...

    async def complete(self, key: str) -> None: ...

    async def abandon(self, key: str) -> None: ...


class MemoryIdempotencyStore:
    """In-process store remembering the last ``capacity`` handled keys."""

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._capacity = capacity
        self._done: OrderedDict[str, None] = OrderedDict()
        self._in_progress: dict[str, asyncio.Event] = {}

    async def begin(self, key: str) -> bool:
        while (running := self._in_progress.get(key)) is not None:
            await running.wait()
        if key in self._done:
            self._done.move_to_end(key)
            return False
        self._in_progress[key] = asyncio.Event()
        return True

    async def complete(self, key: str) -> None:
        self._done[key] = None
        self._done.move_to_end(key)
        while len(self._done) > self._capacity:
            self._done.popitem(last=False)
        self._release(key)

    async def abandon(self, key: str) -> None:
        self._release(key)

    def _release(self, key: str) -> None:
        event = self._in_progress.pop(key, None)
        if event is not None:
            event.set()

    def __len__(self) -> int:
        return len(self._done)
