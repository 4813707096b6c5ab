"""Exactly one reply per human message: a record per (agent, triggering message).

A record moves in-progress → complete. A claim on a complete record answers its result; on a
live in-progress one, ``IN_PROGRESS``. An in-progress record expires, so a crashed worker's
invocation runs again; a failed run releases its record, so a retry can run.
Backends share this interface: in-process here, NATS KV and DynamoDB elsewhere.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol


class ClaimState(Enum):
    NEW = "new"  # the caller owns the record now
    IN_PROGRESS = "in_progress"  # someone else is answering it
    COMPLETE = "complete"  # already answered


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    token: str | None = None  # proves ownership to complete() and release()
    result: dict[str, Any] | None = None  # what the completed run recorded
    # IN_PROGRESS: seconds until the record expires. A retry sooner than that finds it in progress
    # again; a retry then answers even if its owner crashed.
    expires_in_s: float = 1.0


class IdempotencyStore(Protocol):
    async def claim(self, key: str, in_progress_ttl_s: float) -> Claim: ...
    async def complete(self, key: str, token: str, result: dict[str, Any], ttl_s: float) -> None: ...
    async def release(self, key: str, token: str) -> None: ...


def new_token() -> str:
    """Proof of owning a claim: random, and cheaper than a UUID object."""
    return secrets.token_hex(16)


def record_key(agent_id: str, message_id: str) -> str:
    return f"{agent_id}/{message_id}"


class InProcessStore:
    """For a single process. Bounded: the oldest records are evicted past ``max_records``."""

    def __init__(self, max_records: int = 100_000) -> None:
        self.max_records = max_records
        # key -> (state, token, expires_at, result)
        self._records: OrderedDict[str, tuple[ClaimState, str, float, dict[str, Any] | None]] = OrderedDict()

    async def claim(self, key: str, in_progress_ttl_s: float) -> Claim:
        now = time.monotonic()
        record = self._records.get(key)
        if record is not None and record[2] > now:
            state, _, expires, result = record
            return Claim(state, result=result, expires_in_s=expires - now)
        token = new_token()
        self._put(key, (ClaimState.IN_PROGRESS, token, now + in_progress_ttl_s, None))
        return Claim(ClaimState.NEW, token=token)

    async def complete(self, key: str, token: str, result: dict[str, Any], ttl_s: float) -> None:
        if self._owned(key, token):
            self._put(key, (ClaimState.COMPLETE, token, time.monotonic() + ttl_s, result))

    async def release(self, key: str, token: str) -> None:
        if self._owned(key, token):
            del self._records[key]

    def _owned(self, key: str, token: str) -> bool:
        record = self._records.get(key)
        return record is not None and record[1] == token

    def _put(self, key: str, record: tuple[ClaimState, str, float, dict[str, Any] | None]) -> None:
        self._records[key] = record
        self._records.move_to_end(key)
        while len(self._records) > self.max_records:
            self._records.popitem(last=False)
