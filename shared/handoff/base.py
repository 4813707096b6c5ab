"""Where a handoff sends the target agent's invocation: the way invocations arrive on the platform.

Every sink (one module each beside this one) is an ``InvocationSink``: ``send`` hands over the
router's JSON shape of an invocation under a stable ``key`` (the transport's deduplication id), or
raises ``DependencyError("handoff", …)``, with ``sent=False`` only when the invocation provably
reached nobody. A sink opens what it needs on its first send and never reopens it after ``aclose``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.errors import DependencyError

if TYPE_CHECKING:
    from shared.infra.deadline import Deadline
    from shared.infra.settings import Settings

DEPENDENCY = "handoff"  # what a failed send names, in outcomes and logs


class InvocationSink:
    """Sends invocations for other agents to run."""

    name: str
    closed = False

    @classmethod
    def from_settings(cls, s: Settings) -> InvocationSink:
        """The sink as ``handoff`` configures it (checked now; nothing is opened yet)."""
        raise NotImplementedError

    async def send(self, invocation: dict[str, Any], key: str, deadline: Deadline) -> None:
        """Hand ``invocation`` over for its agent; ``key`` is the same on every retry of it."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the sink holds; a later send fails."""
        self.closed = True

    def _check_open(self) -> None:
        if self.closed:  # a redelivery to a live process can still send it
            raise DependencyError(DEPENDENCY, "unavailable", f"{self.name} sink closed", retryable=True, sent=False)
