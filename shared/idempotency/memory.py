"""The in-process backend: records in this process's memory (one process, tests, the local stack)."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, NamedTuple

from shared.idempotency.base import Claim, ClaimState, marked, new_token

if TYPE_CHECKING:
    from shared.infra.settings import Settings


class _Record(NamedTuple):
    state: ClaimState
    token: str
    expires_at: float  # time.monotonic()
    result: dict[str, Any] | None = None
    posting: tuple[str, ...] = ()  # the digests of replies its owners began to post


class InProcessStore:
    """For a single process. Bounded: the oldest records are evicted past ``max_records``."""

    failing: str | None = None  # never: the records are in this process

    def __init__(self, max_records: int = 100_000) -> None:
        self.max_records = max_records
        self._records: OrderedDict[str, _Record] = OrderedDict()
        self._usage: dict[str, tuple[int, float]] = {}  # counter -> (total, expires_at)

    @classmethod
    def from_settings(cls, s: Settings) -> InProcessStore:
        return cls()

    async def claim(self, key: str, in_progress_ttl_s: float) -> Claim:
        now = time.monotonic()
        record = self._records.get(key)
        if record is not None and record.expires_at > now:
            return Claim(record.state, result=record.result, expires_in_s=record.expires_at - now)
        token = new_token()
        posted = record.posting if record is not None and record.state is ClaimState.IN_PROGRESS else ()
        self._put(key, _Record(ClaimState.IN_PROGRESS, token, now + in_progress_ttl_s, posting=posted))
        return Claim(ClaimState.NEW, token=token, posted=posted)

    async def probe(self) -> None:
        return None

    async def posting(self, key: str, token: str, ttl_s: float, digest: str) -> bool:
        if not self._owned(key, token):
            return False
        record = self._records[key]
        self._records[key] = record._replace(
            posting=marked(record.posting, digest), expires_at=time.monotonic() + ttl_s
        )
        return True

    async def complete(self, key: str, token: str, result: dict[str, Any], ttl_s: float) -> None:
        if self._owned(key, token):
            self._put(key, _Record(ClaimState.COMPLETE, token, time.monotonic() + ttl_s, result))

    async def release(self, key: str, token: str) -> None:
        if not self._owned(key, token):
            return
        record = self._records[key]
        if not record.posting:
            del self._records[key]
        else:  # a reply may be out: the next claim takes the record over, marker and all
            self._records[key] = record._replace(expires_at=0.0)

    async def add_usage(self, key: str, tokens: int, ttl_s: float) -> int:
        now = time.monotonic()
        total, expires_at = self._usage.get(key, (0, 0.0))
        if expires_at <= now:  # a new counter (a new day's): the expired ones go
            self._usage = {k: v for k, v in self._usage.items() if v[1] > now}
            total, expires_at = 0, now + ttl_s
        self._usage[key] = (total + tokens, expires_at)
        return total + tokens

    def _owned(self, key: str, token: str) -> bool:
        record = self._records.get(key)
        return record is not None and record.token == token

    def _put(self, key: str, record: _Record) -> None:
        self._records[key] = record
        self._records.move_to_end(key)
        while len(self._records) > self.max_records:
            self._records.popitem(last=False)
