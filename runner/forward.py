"""One HTTP call of the invoke function, with the headers a NATS message carries over."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from shared.clients import http
from shared.infra.tracing import TRACEPARENT

_TRACESTATE = re.compile(r"^[\x20-\x7e]{1,512}$")  # printable ASCII only: nothing to inject or choke on
_TOKEN = re.compile(r"^[\x21-\x7e]{1,256}$")  # printable, no spaces or newlines: safe as a header


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no answer (timeout, connection error)
    body: bytes = b""
    retry_after: str | None = None
    error: str | None = None


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
    import aiohttp

    try:
        async with http.session().post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            return Answer(response.status, await response.read(), response.headers.get("Retry-After"))
    except (TimeoutError, aiohttp.ServerTimeoutError):
        return Answer(None, error=f"no answer within {timeout_s:.0f}s")
    except aiohttp.ClientError as exc:
        return Answer(None, error=f"connection failed: {type(exc).__name__}")
