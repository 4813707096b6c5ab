"""Idempotency records in a NATS JetStream key-value bucket, shared by every on-prem runner.

Claims use the bucket's compare-and-set: ``create`` succeeds for one caller only, and an expired
in-progress record is taken over with ``update`` at the revision that was read, so two callers
can never both own a message. nats-py is imported only when this backend is chosen.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from shared.http import DependencyError
from shared.idempotency import Claim, ClaimState, new_token

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

    from shared.settings import Settings


class NatsKvStore:
    def __init__(self, servers: list[str], bucket: str, max_age_s: float) -> None:
        self.servers = servers
        self.bucket = bucket
        self.max_age_s = max_age_s
        # one connection per event loop, made by the first caller on that loop
        self._conns: dict[asyncio.AbstractEventLoop, asyncio.Task[tuple[Client, KeyValue]]] = {}

    @classmethod
    def from_settings(cls, s: Settings) -> NatsKvStore:
        return cls(s.nats.url.split(","), s.idempotency.nats_bucket, s.runtime.idempotency_complete_ttl_s)

    @property
    def nats_connected(self) -> bool:
        return any(t.done() and not t.exception() and t.result()[0].is_connected for t in self._conns.values())

    async def claim(self, key: str, in_progress_ttl_s: float) -> Claim:
        async with _unavailable_as_dependency_error():
            return await self._claim(key, in_progress_ttl_s)

    async def posting(self, key: str, token: str) -> None:
        async with _unavailable_as_dependency_error():
            kv, name = await self._kv(), _name(key)
            owned = await self._owned(kv, name, token)
            if owned is not None:
                revision, current = owned
                await kv.update(name, json.dumps({**current, "posting": True}).encode(), last=revision)

    async def complete(self, key: str, token: str, result: dict[str, Any], ttl_s: float) -> None:
        async with _unavailable_as_dependency_error():
            kv, name = await self._kv(), _name(key)
            owned = await self._owned(kv, name, token)
            if owned is not None:
                await kv.update(name, _encode("complete", token, ttl_s, result), last=owned[0])

    async def release(self, key: str, token: str) -> None:
        async with _unavailable_as_dependency_error():
            kv, name = await self._kv(), _name(key)
            owned = await self._owned(kv, name, token)
            if owned is not None:
                await kv.delete(name, last=owned[0])

    async def _claim(self, key: str, in_progress_ttl_s: float) -> Claim:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        kv, name = await self._kv(), _name(key)
        token = new_token()
        record = _encode("in_progress", token, in_progress_ttl_s)
        try:
            await kv.create(name, record)
            return Claim(ClaimState.NEW, token=token)
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await kv.get(name)
        except KeyNotFoundError:  # released in between: one more try to create
            try:
                await kv.create(name, record)
                return Claim(ClaimState.NEW, token=token)
            except KeyWrongLastSequenceError:
                return Claim(ClaimState.IN_PROGRESS)
        current = json.loads(entry.value or b"{}")
        expires_in_s = current.get("expires_at", 0) - time.time()
        if expires_in_s > 0:
            if current.get("state") == "complete":
                return Claim(ClaimState.COMPLETE, result=current.get("result"))
            return Claim(ClaimState.IN_PROGRESS, expires_in_s=expires_in_s)
        try:  # expired: take it over, unless someone else just did
            await kv.update(name, record, last=entry.revision)
            after_posting = current.get("state") == "in_progress" and bool(current.get("posting"))
            return Claim(ClaimState.NEW, token=token, after_posting=after_posting)
        except KeyWrongLastSequenceError:
            return Claim(ClaimState.IN_PROGRESS)

    async def close(self) -> None:
        task = self._conns.pop(asyncio.get_running_loop(), None)
        if task is not None and task.done() and not task.exception():
            await task.result()[0].drain()

    async def _owned(self, kv: KeyValue, name: str, token: str) -> tuple[int, dict[str, Any]] | None:
        """The record's revision and content, when ``token`` owns it."""
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await kv.get(name)
        except KeyNotFoundError:
            return None
        current = json.loads(entry.value or b"{}")
        return (entry.revision, current) if current.get("token") == token else None

    async def _kv(self) -> KeyValue:
        loop = asyncio.get_running_loop()
        task = self._conns.get(loop)
        if task is None:
            task = self._conns[loop] = loop.create_task(self._connect())
        try:
            return (await task)[1]
        except Exception:
            self._conns.pop(loop, None)  # the next call tries again
            raise

    async def _connect(self) -> tuple[Client, KeyValue]:
        import nats
        from nats.js.errors import BucketNotFoundError

        nc = await asyncio.wait_for(  # bounded: an invocation must not wait forever for NATS
            nats.connect(
                servers=self.servers, max_reconnect_attempts=-1, connect_timeout=2, name="agent-runtime-idempotency"
            ),
            timeout=5,
        )
        js = nc.jetstream()
        try:
            kv = await js.key_value(self.bucket)
        except BucketNotFoundError:
            # history 1: only the current record matters; ttl: records never outlive max_age_s
            kv = await js.create_key_value(bucket=self.bucket, history=1, ttl=self.max_age_s)
        return nc, kv


@asynccontextmanager
async def _unavailable_as_dependency_error() -> AsyncIterator[None]:
    """NATS down or slow: a failure a retry can help, in the core's terms."""
    import nats.errors

    try:
        yield
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise DependencyError("idempotency", "unavailable", f"NATS KV: {type(exc).__name__}", retryable=True) from None


def _name(key: str) -> str:
    # KV keys allow only [-/_=.a-zA-Z0-9]; agent ids carry ':' and message ids are free text
    return hashlib.sha256(key.encode()).hexdigest()


def _encode(state: str, token: str, ttl_s: float, result: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"state": state, "token": token, "expires_at": time.time() + ttl_s, "result": result}).encode()
