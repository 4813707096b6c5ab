"""Idempotency records in a NATS JetStream key-value bucket, shared by every on-prem runner.

Claims use the bucket's compare-and-set: ``create`` succeeds for one caller only, and an expired
in-progress record is taken over with ``update`` at the revision that was read, so two callers
can never both own a message. nats-py is imported only when this backend is chosen.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

from shared.errors import DependencyError
from shared.idempotency.base import Claim, ClaimState, marked, new_token
from shared.infra import jsoncodec
from shared.infra.jetstream import Patient, ensure_replicas
from shared.infra.nats_connect import NatsRefused, connect, connect_options

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.kv import KeyValue

    from shared.infra.settings import Settings


class NatsKvStore:
    def __init__(
        self, servers: list[str], bucket: str, max_age_s: float, replicas: int = 1, auth: dict[str, Any] | None = None
    ) -> None:
        self.servers = servers
        self.auth = auth or {}  # credentials and TLS: nats_connect.connect_options
        self.bucket = bucket
        self.max_age_s = max_age_s
        self.replicas = replicas  # copies of the bucket in a NATS cluster
        # one connection per event loop, made by the first caller on that loop
        self._conns: dict[asyncio.AbstractEventLoop, asyncio.Task[tuple[Client, KeyValue]]] = {}
        # the claims this process owns: (key name, token) -> (revision, record) of its last write.
        # Later writes are compare-and-set on that revision: no read first, and a record someone
        # took over since is left alone. An entry lives from claim to complete or release.
        self._owned: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self.failing: str | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> NatsKvStore:
        i = s.idempotency
        return cls(
            s.nats.url.split(","),
            i.nats_bucket,
            s.runtime.idempotency_complete_ttl_s,
            i.nats_replicas,
            connect_options(s.nats),
        )

    @property
    def nats_connected(self) -> bool:
        return any(t.done() and not t.exception() and t.result()[0].is_connected for t in self._conns.values())

    async def claim(self, key: str, in_progress_ttl_s: float) -> Claim:
        async with self._reaching():
            return await self._claim(key, in_progress_ttl_s)

    async def posting(self, key: str, token: str, ttl_s: float, digest: str) -> bool:
        mine = self._owned.get((_name(key), token))
        if mine is None:
            return False
        # compare-and-set on this process's last revision: renewed if nobody took it over, expired or not
        posting = list(marked(mine[1].get("posting"), digest))
        renewed = {**mine[1], "posting": posting, "expires_at": time.time() + ttl_s}
        return await self._write(_name(key), token, renewed)

    async def complete(self, key: str, token: str, result: dict[str, Any], ttl_s: float) -> None:
        await self._write(_name(key), token, _record("complete", token, ttl_s, result), last_write=True)

    async def release(self, key: str, token: str) -> None:
        from nats.js.errors import APIError, KeyWrongLastSequenceError

        mine = self._owned.pop((_name(key), token), None)
        if mine is None:
            return
        async with self._reaching():
            kv = await self._kv()
            try:
                if mine[1].get("posting"):  # a reply may be out: expire it, marker and all
                    await kv.update(_name(key), jsoncodec.dumps({**mine[1], "expires_at": 0}), last=mine[0])
                else:
                    await kv.delete(_name(key), last=mine[0])
            except KeyWrongLastSequenceError:
                pass  # taken over since: not ours to free
            except APIError as exc:
                if getattr(exc, "err_code", None) not in _WRONG_LAST_SEQUENCE:
                    raise  # else taken over since: not ours to free

    async def add_usage(self, key: str, tokens: int, ttl_s: float) -> int:
        """Compare-and-set on the counter's revision, read again when another runner added first; the
        bucket's TTL removes it (its key names the day, so ``ttl_s`` is not needed)."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        name = _name(key)
        async with self._reaching():
            kv = await self._kv()
            for attempt in range(USAGE_ATTEMPTS):
                try:
                    entry = await kv.get(name)
                except KeyNotFoundError:
                    entry = None
                total = (json.loads(entry.value or b"{}").get("tokens", 0) if entry else 0) + tokens
                if tokens == 0:
                    return total
                value = jsoncodec.dumps({"tokens": total})
                try:
                    await (kv.update(name, value, last=entry.revision) if entry else kv.create(name, value))
                    return total
                except KeyWrongLastSequenceError:  # spread the runners that collided, so one gets through
                    await asyncio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise DependencyError("idempotency", "unavailable", "NATS KV: usage counter too contended", retryable=True)

    async def _write(self, name: str, token: str, record: dict[str, Any], *, last_write: bool = False) -> bool:
        """Replace the record this process owns; False when it was taken over since."""
        from nats.js.errors import KeyWrongLastSequenceError

        mine = self._owned.get((name, token))
        if mine is None:
            return False
        try:
            async with self._reaching():
                kv = await self._kv()
                try:
                    revision = await kv.update(name, jsoncodec.dumps(record), last=mine[0])
                except KeyWrongLastSequenceError:
                    last_write = True  # taken over since: nothing of it is ours any more
                    return False
            self._owned[(name, token)] = (revision, record)
            return True
        finally:
            if last_write:
                self._owned.pop((name, token), None)

    async def _claim(self, key: str, in_progress_ttl_s: float) -> Claim:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        kv, name = await self._kv(), _name(key)
        token = new_token()
        record = _record("in_progress", token, in_progress_ttl_s)
        try:
            self._owned[(name, token)] = (await kv.create(name, jsoncodec.dumps(record)), record)
            return Claim(ClaimState.NEW, token=token)
        except KeyWrongLastSequenceError:
            pass
        try:
            entry = await kv.get(name)
        except KeyNotFoundError:  # released in between: one more try to create
            try:
                self._owned[(name, token)] = (await kv.create(name, jsoncodec.dumps(record)), record)
                return Claim(ClaimState.NEW, token=token)
            except KeyWrongLastSequenceError:
                return Claim(ClaimState.IN_PROGRESS)
        current = json.loads(entry.value or b"{}")
        if current.get("token") == token:  # our own create, done though its answer was lost (and repeated)
            self._owned[(name, token)] = (entry.revision, record)
            return Claim(ClaimState.NEW, token=token)
        expires_in_s = current.get("expires_at", 0) - time.time()
        if expires_in_s > 0:
            if current.get("state") == "complete":
                return Claim(ClaimState.COMPLETE, result=current.get("result"))
            return Claim(ClaimState.IN_PROGRESS, expires_in_s=expires_in_s)
        # expired: take it over, unless someone else just did; what its owners began to post stays marked
        posted = marked(current.get("posting")) if current.get("state") == "in_progress" else ()
        if posted:
            record = {**record, "posting": list(posted)}
        try:
            self._owned[(name, token)] = (
                await kv.update(name, jsoncodec.dumps(record), last=entry.revision),
                record,
            )
            return Claim(ClaimState.NEW, token=token, posted=posted)
        except KeyWrongLastSequenceError:
            return Claim(ClaimState.IN_PROGRESS)

    async def probe(self) -> None:
        async with self._reaching():
            await self._kv()

    @asynccontextmanager
    async def _reaching(self) -> AsyncIterator[None]:
        """NATS down or slow: a failure a retry can help, in the core's terms; remembered for health."""
        import nats.errors

        try:
            yield
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            self.failing = "unavailable"
            raise DependencyError(
                "idempotency", "unavailable", f"NATS KV: {type(exc).__name__}", retryable=True
            ) from None
        self.failing = None

    async def close(self) -> None:
        task = self._conns.pop(asyncio.get_running_loop(), None)
        if task is not None and task.done() and not task.exception():
            await task.result()[0].drain()

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
        from nats.js.errors import BucketNotFoundError

        try:
            nc = await asyncio.wait_for(  # bounded: an invocation must not wait forever for NATS
                connect(
                    self.servers,
                    self.auth,
                    max_reconnect_attempts=-1,
                    connect_timeout=2,
                    name="agent-runtime-idempotency",
                ),
                timeout=5,
            )
        except NatsRefused as exc:  # wrong credentials or TLS: no retry helps, and none should hide it
            self.failing = "unauthorized"
            raise DependencyError("idempotency", "unauthorized", f"NATS KV: {exc}", retryable=False) from None
        js = nc.jetstream()
        try:
            kv = await js.key_value(self.bucket)
        except BucketNotFoundError:
            # history 1: only the current record matters; ttl: records never outlive max_age_s
            kv = await js.create_key_value(bucket=self.bucket, history=1, ttl=self.max_age_s, replicas=self.replicas)
        else:
            await ensure_replicas(js, (await js.stream_info(f"KV_{self.bucket}")).config, self.replicas)
        return nc, cast("KeyValue", Patient(kv))  # in a cluster, a node's death: seconds of latency, not failures


USAGE_ATTEMPTS = 32  # compare-and-set rounds of one add_usage before it gives up
_WRONG_LAST_SEQUENCE = (10071, 10164)  # JetStream's "the record changed since that revision"


def _name(key: str) -> str:
    # KV keys allow only [-/_=.a-zA-Z0-9]; agent ids carry ':' and message ids are free text
    return hashlib.sha256(key.encode()).hexdigest()


def _record(state: str, token: str, ttl_s: float, result: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"state": state, "token": token, "expires_at": time.time() + ttl_s, "result": result}
