"""One HTTP call of the invoke function, with the headers a NATS message carries over, and the
one rule telling the function's own answer from its absence (``reachable``). Asked for a stream,
the function answers with server-sent events; their final event is the answer a JSON body would be."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit, urlunsplit

from shared import delivery
from shared.clients import http
from shared.contracts import Outcome
from shared.infra import jsoncodec, sse, telemetry
from shared.infra.observability import redact_url
from shared.infra.tracing import TRACEPARENT

if TYPE_CHECKING:
    import aiohttp

_TRACESTATE = re.compile(r"^[\x20-\x7e]{1,512}$")  # printable ASCII only: nothing to inject or choke on
_TOKEN = re.compile(r"^[\x21-\x7e]{1,256}$")  # printable, no spaces or newlines: safe as a header


_GATEWAY = frozenset({502, 503, 504})
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no answer (timeout, connection error)
    body: bytes = b""
    retry_after: str | None = None
    error: str | None = None
    # False: the function did not answer (no connection, or a proxy's 502/503/504 in its place).
    # That is the bridge's problem, not a verdict on the message.
    reachable: bool = True


def answered(status: int, body: bytes, retry_after: str | None = None) -> Answer:
    """An HTTP answer; a 502/503/504 without the function's JSON outcome is a proxy's: unreachable."""
    if status in _GATEWAY and not _is_outcome(body):
        return Answer(status, body, retry_after, f"HTTP {status} from a gateway: the function did not answer", False)
    return Answer(status, body, retry_after)


def _is_outcome(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("status") == "failed"


class Listener(Protocol):
    """Hears a streamed answer as it arrives (the bridge publishes the reply's pieces)."""

    async def opened(self, headers: Mapping[str, str]) -> None:
        """The function streams its answer to a call made with ``headers``."""

    async def piece(self, kind: str, text: str) -> None:
        """A ``delta`` of the reply, or a ``reset`` voiding the deltas before it (``text`` empty)."""

    async def ended(self, outcome: Outcome | None) -> None:
        """The stream is over: with its outcome, or without one (an error event, cut short, timed out)."""


def health_url(function_url: str) -> str:
    """Where the function says it is up: ``health`` beside the invoke path (``…/invoke`` → ``…/health``)."""
    parts = urlsplit(function_url)
    path = parts.path.rsplit("/", 1)[0] + "/health"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def call_headers(nats_headers: dict[str, str] | None, secret: str | None) -> dict[str, str]:
    """Forward Nats-Msg-Id as Idempotency-Key and the trace context; start a trace when none came."""
    given = nats_headers or {}
    headers = {"Content-Type": "application/json"}
    if secret:
        headers["X-Internal-Secret"] = secret
    msg_id = given.get("Nats-Msg-Id")
    if msg_id and _TOKEN.fullmatch(msg_id):
        headers["Idempotency-Key"] = msg_id
    traceparent = given.get("traceparent", "").strip().lower()
    if TRACEPARENT.fullmatch(traceparent):
        headers["traceparent"] = traceparent
        tracestate = given.get("tracestate", "")
        if _TRACESTATE.fullmatch(tracestate):
            headers["tracestate"] = tracestate
    else:
        headers["traceparent"] = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    return headers


async def forward(
    url: str, body: bytes, headers: dict[str, str], timeout_s: float, listener: Listener | None = None
) -> Answer:
    """POST the invocation in a client span whose context the function receives (``traceparent``);
    an event stream answered is read as it arrives, ``listener`` hearing it, within ``timeout_s``."""
    with telemetry.span("POST", telemetry.CLIENT) as span:
        if span.recording:
            span.set("http.request.method", "POST")
            span.set("url.full", redact_url(url))
        answer = await _post(url, body, span.inject(headers), timeout_s, listener)
        span.set("http.response.status_code", answer.status)
        if not answer.reachable:
            span.fail("unreachable")
        elif answer.status is None or answer.status >= 500:
            span.fail(str(answer.status or "no_answer"))
    return answer


async def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float, listener: Listener | None) -> Answer:
    import aiohttp

    # a connection that cannot be made within the connect timeout carried nothing: unreachable;
    # the total bounds a streamed answer's every event too
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, CONNECT_TIMEOUT_S))
    try:
        async with http.session().post(url, data=body, headers=headers, timeout=timeout) as response:
            if listener is not None and response.status == 200 and response.content_type == sse.MEDIA_TYPE:
                return await _streamed(response, headers, listener)
            return answered(response.status, await response.read(), response.headers.get("Retry-After"))
    except aiohttp.ConnectionTimeoutError as exc:
        return Answer(None, error=f"connection failed: {type(exc).__name__}", reachable=False)
    except TimeoutError:  # the function may be working on it: a verdict, as a retry spends a delivery
        return Answer(None, error=f"no answer within {timeout_s:.0f}s")
    except aiohttp.ClientPayloadError as exc:
        # It began to answer, then the connection dropped: the function died under the call (a kill
        # between the answer's head and body, say). Held like any outage; a message that brings the
        # function down every time still spends a delivery once the function has answered a probe.
        return Answer(None, error=f"answer cut short: {type(exc).__name__}", reachable=False)
    except aiohttp.ClientError as exc:  # refused, reset, DNS, not HTTP: nothing answered
        return Answer(None, error=f"connection failed: {type(exc).__name__}", reachable=False)


async def _streamed(response: aiohttp.ClientResponse, headers: dict[str, str], listener: Listener) -> Answer:
    """Read the function's events as they come: pieces to ``listener``, the final event the answer."""
    decoder = sse.Decoder()
    outcome: Outcome | None = None
    await listener.opened(headers)
    try:
        async for chunk in response.content.iter_any():
            for event in decoder.feed(chunk):
                if event.name in ("delta", "reset"):
                    await listener.piece(event.name, _text(event.data) if event.name == "delta" else "")
                elif event.name == "outcome":
                    outcome = _judged(event.data)
                    seconds = delivery.retry_after_s(outcome)
                    retry_after = None if seconds is None else str(seconds)
                    return Answer(delivery.http_status(outcome), event.data.encode(), retry_after)
                elif event.name == "error":
                    return Answer(500, event.data.encode())  # a defect after the stream began: the function's 500
        # No final event: the function went away under the call (held like an outage, as a body cut
        # short). An event still without its blank line may be cut in half: it is not read (as SSE says).
        return Answer(None, error="answer cut short: the stream ended before its outcome", reachable=False)
    except (sse.StreamError, ValueError) as exc:  # the function's own defect, as a 500 of its is
        return Answer(500, error=f"unreadable event stream: {type(exc).__name__}")
    finally:
        await listener.ended(outcome)


def _judged(data: str) -> Outcome:
    """What the verdict reads of an outcome (status, retryable, kind, the wait), read as leniently as a
    JSON answer's status is: a function newer than this bridge may say what its contract does not know."""
    fields = jsoncodec.loads(data)
    if not isinstance(fields, dict) or not isinstance(fields.get("status"), str):
        raise ValueError("an outcome without a status")
    return Outcome.model_construct(**{name: fields[name] for name in Outcome.model_fields if name in fields})


def _text(data: str) -> str:
    """A delta's text (``{"text": …}``); anything else adds nothing to the reply."""
    try:
        text = jsoncodec.loads(data).get("text")
    except (ValueError, AttributeError):
        return ""
    return text if isinstance(text, str) else ""


async def probe(url: str, timeout_s: float) -> bool:
    """Does the function answer at all (any answer but a gateway's in its place)?"""
    import aiohttp

    try:
        async with http.session().get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            return answered(response.status, await response.read()).reachable
    except (TimeoutError, aiohttp.ClientError):
        return False
