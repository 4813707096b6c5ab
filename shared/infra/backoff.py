"""Exponential backoff with full jitter, or the server's Retry-After when it gave one."""

from __future__ import annotations

import random


def delay(attempt: int, retry_after: float | None = None, *, base: float = 0.1, cap: float = 2.0) -> float:
    """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 1)."""
    if retry_after is not None:
        return retry_after
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def retry_after(value: str | None, limit: float = float("inf")) -> float | None:
    """A Retry-After header in seconds (at most ``limit``); None when absent or an HTTP date."""
    try:
        return min(limit, max(0.0, float(value))) if value else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
