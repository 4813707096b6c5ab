"""One HTTP call of the invoke function, with the headers a NATS message carries over, and the
one rule telling the function's own answer from its absence (``reachable``)."""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from shared.clients import http
from shared.infra import telemetry
from shared.infra.observability import redact_url
from shared.infra.tracing import TRACEPARENT

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


async def forward(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> Answer:
    """POST the invocation in a client span whose context the function receives (``traceparent``)."""
    with telemetry.span("POST", telemetry.CLIENT) as span:
        if span.recording:
            span.set("http.request.method", "POST")
            span.set("url.full", redact_url(url))
        answer = await _post(url, body, span.inject(headers), timeout_s)
        span.set("http.response.status_code", answer.status)
        if not answer.reachable:
            span.fail("unreachable")
        elif answer.status is None or answer.status >= 500:
            span.fail(str(answer.status or "no_answer"))
    return answer


async def _post(url: str, body: bytes, headers: dict[str, str], timeout_s: float) -> Answer:
    import aiohttp

    # a connection that cannot be made within the connect timeout carried nothing: unreachable
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(timeout_s, CONNECT_TIMEOUT_S))
    try:
        async with http.session().post(url, data=body, headers=headers, timeout=timeout) as response:
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


async def probe(url: str, timeout_s: float) -> bool:
    """Does the function answer at all (any answer but a gateway's in its place)?"""
    import aiohttp

    try:
        async with http.session().get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as response:
            return answered(response.status, await response.read()).reachable
    except (TimeoutError, aiohttp.ClientError):
        return False
