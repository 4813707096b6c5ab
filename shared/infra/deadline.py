"""An invocation's deadline: every call and every retry fits inside it."""

from __future__ import annotations

import time

from shared.errors import DependencyError


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

    def timeout_for(self, dependency: str, timeout_s: float) -> float:
        """A call's timeout within the deadline; a call with no time left is never made (it raises)."""
        timeout = self.cap(timeout_s)
        if timeout <= 0:
            raise DependencyError(dependency, "timeout", "invocation deadline reached", retryable=True, sent=False)
        return timeout
