"""What the bridge does with a function's answer: the status contract of design.md.

2xx → ack. 408, 409, 429, 5xx, timeouts and connection errors → retry later (honouring
Retry-After), until ``max_deliver`` attempts. Any other 4xx → no retry: dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shared import backoff

RETRYABLE_4XX = frozenset({408, 409, 429})


@dataclass(frozen=True)
class Decision:
    action: Literal["ack", "retry", "dead_letter"]
    reason: str = ""
    delay_s: float = 0.0


def decide(
    status: int | None, *, attempt: int, max_deliver: int, retry_after: str | None = None, error: str | None = None
) -> Decision:
    """``status`` None means no answer (timeout, connection error); ``attempt`` counts from 1."""
    if status is not None and 200 <= status < 300:
        return Decision("ack")
    what = error or f"HTTP {status}"
    if status is not None and status < 500 and status not in RETRYABLE_4XX:
        return Decision("dead_letter", what)
    if attempt >= max_deliver:
        return Decision("dead_letter", f"{what}; gave up after {attempt} attempts")
    return Decision(
        "retry", what, backoff.delay(attempt, backoff.retry_after(retry_after, limit=300.0), base=0.5, cap=30.0)
    )
