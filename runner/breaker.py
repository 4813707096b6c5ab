"""The circuit breaker in front of the function: open while it cannot be reached, closed by a probe.

While open, the bridge takes no new messages and its calls wait (``wait_closed``); a probe with
exponential backoff asks the function whether it answers, and closes the breaker when it does.
Being unreachable is the bridge's problem: the messages it holds meanwhile spend no delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from runner import metrics

log = logging.getLogger("agent_runtime.runner")


class Breaker:
    """Closed while the function answers; ``trip`` opens it, a probe that gets an answer closes it."""

    def __init__(self, probe: Callable[[], Awaitable[bool]], *, first_probe_s: float = 0.25, max_probe_s: float = 5.0):
        self._probe = probe
        self._first_probe_s, self._max_probe_s = first_probe_s, max_probe_s
        self._closed = asyncio.Event()
        self._closed.set()
        self._prober: asyncio.Task[None] | None = None
        self.reason: str | None = None  # why it opened (the failed call's error)
        self._opened_at = 0.0

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def trip(self, reason: str | None) -> None:
        """A call found the function unreachable: open (once), and probe until it answers."""
        if self.is_open:
            return
        self._closed.clear()
        self.reason = reason
        self._opened_at = time.monotonic()
        metrics.breaker_open.set(1)
        log.warning("function unreachable: intake paused", extra={"fields": {"reason": reason}})
        self._prober = asyncio.create_task(self._probe_until_answered())

    def state(self) -> dict[str, Any]:
        if not self.is_open:
            return {"reachable": True}
        return {"reachable": False, "reason": self.reason, "for_s": round(time.monotonic() - self._opened_at, 1)}

    async def _probe_until_answered(self) -> None:
        delay = self._first_probe_s
        counted = self._opened_at
        while True:
            await asyncio.sleep(delay)
            try:
                answered = await self._probe()
            except Exception:  # a defect of the probe: logged, and it probes on (the breaker must not stick)
                log.exception("function probe failed")
                answered = False
            now = time.monotonic()
            metrics.breaker_open_seconds.inc(now - counted)  # counted as it goes: an outage shows while it lasts
            counted = now
            if answered:
                break
            delay = min(self._max_probe_s, delay * 2)
        log.info(
            "function answers again: intake resumed", extra={"fields": {"down_s": round(now - self._opened_at, 1)}}
        )
        self.reason = None
        metrics.breaker_open.set(0)
        self._closed.set()

    async def close(self) -> None:
        """Stop probing (the bridge is stopping)."""
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        metrics.breaker_open.set(0)
