"""The call every dependency client makes: one ``Endpoint`` per service, with its auth, timeout and
retries, over the transports of transport.py (errors mapped to ``DependencyError`` here, once)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

from shared.clients import transport
from shared.contracts import FailureKind
from shared.errors import DependencyError
from shared.infra import backoff, jsoncodec, telemetry
from shared.infra.deadline import Deadline

if TYPE_CHECKING:
    import aiohttp
    from tenacity import RetryCallState

MAX_RESPONSE_BYTES = 4 * 1024 * 1024
# a streamed answer is not kept, and its events wrap every few characters in a JSON envelope
MAX_STREAM_BYTES = 4 * MAX_RESPONSE_BYTES


def session() -> aiohttp.ClientSession:
    """The running loop's pooled aiohttp session, for callers that speak aiohttp (the bridge, say)."""
    return transport.aiohttp_session()


async def aclose() -> None:
    """Close the running loop's connections (tests, shutdown)."""
    await transport.aclose()


def _status_error(dependency: str, status: int, retry_after: str | None) -> DependencyError:
    if status == 401:
        return DependencyError(
            dependency, "unauthorized", f"HTTP {status}: check the configured secret", status=status, retryable=False
        )
    if status in (408, 429) or status >= 500:
        kind: FailureKind = "timeout" if status in (408, 504) else "unavailable"
        return DependencyError(
            dependency,
            kind,
            f"HTTP {status}",
            status=status,
            retryable=True,
            retry_after=backoff.retry_after(retry_after),
        )
    return DependencyError(dependency, "rejected", f"HTTP {status}", status=status, retryable=False)


class Stream(Protocol):
    """Takes an answer streamed as events (text/event-stream) as it arrives, for one call and its retries."""

    def feed(self, chunk: bytes) -> None:
        """The body's next piece, as it arrived; raises ``DependencyError`` on what cannot be read."""

    def finish(self) -> None:
        """The body ended; raises ``DependencyError`` when the stream had not reached its own end."""

    def rewind(self) -> bool:
        """Before a retry: forget what arrived; False once part of it reached the caller (no retry then)."""


@dataclass(frozen=True)
class Endpoint:
    """One dependency: where it is, how to authenticate, how long to wait, how often to try."""

    name: str
    base_url: str
    secret: str | None
    timeout_s: float
    attempts: int
    headers: Mapping[str, str] = field(default_factory=dict)  # a provider's own auth (Bearer, x-api-key …)

    @cached_property
    def _base(self) -> str:
        return self.base_url.rstrip("/")

    @cached_property
    def _headers(self) -> dict[str, str]:
        """Every call's headers, built once: the secret, the provider's auth."""
        headers = {"Accept": "application/json", **self.headers}
        if self.secret:
            headers["X-Internal-Secret"] = self.secret
        return headers

    @cached_property
    def _json_headers(self) -> dict[str, str]:
        return {**self._headers, "Content-Type": "application/json"}

    async def call(
        self,
        method: str,
        path: str,
        deadline: Deadline,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        retry: bool = True,
        stream: Stream | None = None,
    ) -> Any:
        """Call the dependency and return its JSON answer.

        ``retry`` is for calls that are safe to repeat; a call that is not (posting a reply) is
        repeated only when the request provably never left this process. An answer streamed as events
        goes to ``stream`` as it arrives (the call returns None), and is repeated only while it can rewind.
        """
        try:  # most calls succeed at once: they pay for no retry machinery
            return await self._once(method, path, deadline, json_body, params, stream)
        except DependencyError as exc:
            if not self._repeatable(exc, retry, stream) or self.attempts == 1:
                raise
            first_failure: DependencyError | None = exc
        from tenacity import AsyncRetrying, retry_if_exception  # only once a call has failed

        def wait(state: RetryCallState) -> float:
            failed = state.outcome.exception() if state.outcome else None
            return backoff.delay(state.attempt_number, getattr(failed, "retry_after", None))

        def stop(state: RetryCallState) -> bool:
            return state.attempt_number >= self.attempts or deadline.remaining() < wait(state)

        # A retry: tenacity drives the rest. Its first attempt is the failure above, so it waits
        # (backoff with jitter, or the server's Retry-After) before calling again.
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, DependencyError) and self._repeatable(e, retry, stream)),
            stop=stop,
            wait=wait,
            reraise=True,
        ):
            with attempt:
                if first_failure is not None:
                    failed, first_failure = first_failure, None
                    raise failed
                return await self._once(method, path, deadline, json_body, params, stream)
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _repeatable(exc: DependencyError, retry: bool, stream: Stream | None) -> bool:
        return exc.retryable and (retry or not exc.sent) and (stream is None or stream.rewind())

    async def _once(
        self,
        method: str,
        path: str,
        deadline: Deadline,
        json_body: Any,
        params: dict[str, str] | None,
        stream: Stream | None = None,
    ) -> Any:
        timeout = deadline.timeout_for(self.name, self.timeout_s)
        # errors="ignore": a lone surrogate is dropped, not a crash
        url = self._base + path + ("?" + urlencode(params, errors="ignore") if params else "")
        body = None if json_body is None else jsoncodec.dumps(json_body)
        headers = self._headers if json_body is None else self._json_headers
        cap, on_chunk = (MAX_RESPONSE_BYTES, None) if stream is None else (MAX_STREAM_BYTES, stream.feed)
        with telemetry.span(f"{method} {self.name}", telemetry.CLIENT) as span:
            if span.recording:  # the query (a post's text) stays out
                span.set("http.request.method", method)
                span.set("url.full", self._base + path)
                span.set("peer.service", self.name)
            headers = span.inject(headers)  # the service called joins the trace (or learns it is not sampled)
            try:
                reply = await transport.for_url(url).send(method, url, headers, body, timeout, cap, on_chunk)
            except transport.TooLarge:
                raise DependencyError(self.name, "bad_response", "answer too large", retryable=False) from None
            except transport.Timeout as exc:
                raise DependencyError(self.name, "timeout", str(exc), retryable=True) from None
            except transport.TransportError as exc:
                raise DependencyError(self.name, "unavailable", str(exc), retryable=True, sent=exc.sent) from None
            span.set("http.response.status_code", reply.status)
            if reply.status >= 400:
                raise _status_error(self.name, reply.status, reply.retry_after)
        if not reply.body:
            if stream is not None:  # streamed (or empty, which no whole answer is either)
                stream.finish()
            return None
        try:
            return jsoncodec.loads(reply.body)
        except ValueError:
            raise DependencyError(self.name, "bad_response", "answer is not JSON", retryable=True) from None

    async def probe(self, path: str, deadline: Deadline) -> dict[str, Any]:
        """For deep health checks: what the dependency answers, never raising."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self._once("GET", path, deadline, None, None)
            result: dict[str, Any] = {"ok": True}
        except DependencyError as exc:
            result = {"ok": False, "kind": exc.kind, "error": str(exc)}
            if exc.status:
                result["status"] = exc.status
        result["ms"] = round((loop.time() - started) * 1000, 1)
        return result
