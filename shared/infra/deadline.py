"""An invocation's deadline: every call and every retry fits inside it."""

from __future__ import annotations

import time


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.expires = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self.expires - time.monotonic())

    def before(self, seconds: float) -> Deadline:
        """A deadline ``seconds`` earlier: what comes after it keeps that much time."""
        earlier = Deadline(0)
        earlier.expires = self.expires - seconds
        return earlier

    def cap(self, timeout: float) -> float:
        """A call's timeout, shortened so that it ends by the deadline."""
        return min(timeout, self.remaining())
