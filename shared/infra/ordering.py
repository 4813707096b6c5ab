"""Per-key FIFO locks: one channel's invocations run in arrival order, others in parallel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class KeyedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:  # asyncio.Lock wakes waiters in arrival order
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]  # no waiters left: do not grow without bound
            else:
                self._locks[key] = (lock, users - 1)
