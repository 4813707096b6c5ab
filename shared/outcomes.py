"""The outcome → HTTP status contract that every caller (bridge, SQS, Pub/Sub) acts on.

2xx: done, acknowledge. 409, 502, 503, 504: a retry can help. 424: a dependency refused in a way
no retry fixes (wrong secret, agent not in the channel): a 4xx, so no caller retries it.
"""

from __future__ import annotations

from shared.contracts import Outcome

_RETRYABLE = {"in_progress": 409, "timeout": 504, "unavailable": 503, "bad_response": 502}


def http_status(outcome: Outcome) -> int:
    if outcome.status != "failed":
        return 200
    if outcome.retryable:
        return _RETRYABLE.get(outcome.kind or "", 503)
    return 424


def retry_headers(outcome: Outcome) -> dict[str, str]:
    if outcome.status == "failed" and outcome.retryable and outcome.retry_after_s is not None:
        return {"Retry-After": str(max(1, round(outcome.retry_after_s)))}
    return {}
