"""Exponential backoff with full jitter, or the server's Retry-After when it gave one."""

from __future__ import annotations

import random


def delay(attempt: int, retry_after: float | None = None, *, base: float = 0.1, cap: float = 2.0) -> float:
    """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
    if retry_after is not None:
        return retry_after
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))
