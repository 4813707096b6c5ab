"""Bounded, ordered concurrency: at most ``max_in_flight`` forwards at once, at most ``capacity``
messages admitted, and one (agent, channel) at a time in arrival order while others run in parallel.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager


class Dispatcher:
    def __init__(self, max_in_flight: int, capacity: int | None = None) -> None:
        self.max_in_flight = max_in_flight
        self.capacity = capacity or max_in_flight * 4
        self._admitted = asyncio.Semaphore(self.capacity)  # the bounded queue
        self._running = asyncio.Semaphore(max_in_flight)
        self._tails: dict[str, asyncio.Future[None]] = {}  # key -> completion of its newest message
        self._tasks: set[asyncio.Task[None]] = set()
        self.in_flight = 0

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def free(self) -> int:
        return self.capacity - len(self._tasks)

    async def submit(self, key: str, work: Callable[[], Awaitable[None]]) -> None:
        """Admit one message (waiting while the queue is full); ``work`` runs after its key's predecessor
        and takes a call slot (``slot()``) for each call it makes."""
        await self._admitted.acquire()
        previous = self._tails.get(key)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[key] = done
        task = asyncio.create_task(self._run(key, previous, done, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        key: str,
        previous: asyncio.Future[None] | None,
        done: asyncio.Future[None],
        work: Callable[[], Awaitable[None]],
    ) -> None:
        try:
            if previous is not None:
                await asyncio.shield(previous)
            await work()
        finally:
            done.set_result(None)
            if self._tails.get(key) is done:
                del self._tails[key]
            self._admitted.release()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One of the ``max_in_flight`` call slots; a message waiting to retry holds none."""
        async with self._running:
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1

    async def drain(self, timeout_s: float) -> bool:
        """Wait for every admitted message; False when some were still running at the timeout."""
        if not self._tasks:
            return True
        _, still = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in still:  # unacknowledged: JetStream redelivers them; a core message is lost
            task.cancel()
        if still:
            await asyncio.wait(still)
        return not still
