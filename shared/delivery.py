"""What a transport does with a run: the one delivery decision every caller acts on.

An outcome becomes an HTTP status (``http_status``); a status becomes a ``Verdict`` (``decide``):
2xx → ack; 408, 409, 429, 5xx and no answer → retry after a wait (the server's Retry-After when
it gave one); any other 4xx → dead letter with the reason. 424 is a dependency that refused in a
way no retry fixes (a wrong secret, an agent not in the channel): a 4xx, so nobody retries it.
The HTTP triggers answer the status, the bridge decides on the status it was answered, and the
in-process transports (SQS, Pub/Sub) decide on their outcome's status: one rule for all.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

from shared.contracts import Outcome
from shared.infra import backoff

_RETRYABLE = {"in_progress": 409, "timeout": 504, "unavailable": 503, "bad_response": 502}
RETRYABLE_4XX = frozenset({408, 409, 429})


def http_status(outcome: Outcome) -> int:
    if outcome.status != "failed":
        return 200
    if outcome.retryable:
        return _RETRYABLE.get(outcome.kind or "", 503)
    return 424


def retry_after_s(outcome: Outcome) -> int | None:
    """The wait a retry should honour, in whole seconds rounded up: a retry that comes early finds
    the same claim busy and spends a delivery."""
    if outcome.status == "failed" and outcome.retryable and outcome.retry_after_s is not None:
        return max(1, math.ceil(outcome.retry_after_s))
    return None


def retry_headers(outcome: Outcome) -> dict[str, str]:
    seconds = retry_after_s(outcome)
    return {} if seconds is None else {"Retry-After": str(seconds)}


class Verdict(NamedTuple):
    action: Literal["ack", "retry", "dead_letter"]
    reason: str = ""
    delay_s: float = 0.0  # retry: how long to wait (backoff, or the announced wait)
    announced: bool = False  # retry: the delay is the server's own Retry-After


def decide(
    status: int | None,
    *,
    attempt: int = 1,
    max_deliver: int | None = None,
    retry_after: str | float | None = None,
    error: str | None = None,
) -> Verdict:
    """``status`` None means no answer (timeout, connection error); ``attempt`` counts from 1;
    ``max_deliver`` None leaves the count to the transport (an SQS redrive policy)."""
    if status is not None and 200 <= status < 300:
        return Verdict("ack")
    what = error or f"HTTP {status}"
    if status is not None and status < 500 and status not in RETRYABLE_4XX:
        return Verdict("dead_letter", what)
    if max_deliver is not None and attempt >= max_deliver:
        return Verdict("dead_letter", f"{what}; gave up after {attempt} attempts")
    announced = backoff.retry_after(retry_after, limit=300.0) if isinstance(retry_after, str) else retry_after
    delay = backoff.delay(attempt, announced, base=0.5, cap=30.0)
    return Verdict("retry", what, delay, announced is not None)


def verdict(outcome: Outcome, *, attempt: int = 1, max_deliver: int | None = None) -> Verdict:
    """The decision for a run answered in this process (SQS, Pub/Sub)."""
    why = outcome.error or (f"{outcome.step}: {outcome.kind}" if outcome.status == "failed" else None)
    return decide(
        http_status(outcome), attempt=attempt, max_deliver=max_deliver, retry_after=retry_after_s(outcome), error=why
    )
