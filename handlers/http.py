"""HTTP triggers (functions-framework ASGI mode): invoke, test_channel, health, agent_runtime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import anyio
from starlette import responses
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from handlers import accept
from shared import runtime
from shared.contracts import Invocation
from shared.errors import BadInput
from shared.infra import jsoncodec, sse
from shared.infra import metrics as metrics_module
from shared.intake import check_auth
from shared.streaming import Typing

BODY_READ_TIMEOUT_S = 10.0


class JSONResponse(responses.JSONResponse):
    """Starlette's, rendered by orjson (shared/infra/jsoncodec.py), the JSON of the hot path."""

    def render(self, content: object) -> bytes:
        return jsoncodec.dumps(content)


async def invoke(request: Request) -> Response:
    """POST an invocation; the response is its outcome (as events, with ``Accept: text/event-stream``)."""
    if request.method != "POST":
        return JSONResponse({"error": "use POST"}, status_code=405)
    limit = runtime.get().settings.runtime.max_body_bytes
    if sse.wants_stream(request.headers.get("accept")):
        return await _streamed(request, limit)
    answer = await accept.run(lambda: _read_body(request, limit), headers=request.headers)
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


# Streamed runs, referenced until they end: one whose caller left before its stream began still finishes.
_running: set[asyncio.Task[None]] = set()


async def _streamed(request: Request, limit: int) -> Response:
    """The run as server-sent events: steps, the reply's deltas, then its outcome. Bad input is
    answered as JSON with its status, before any event."""
    try:
        invocation = await accept.admit(lambda: _read_body(request, limit), request.headers)
    except BadInput as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    events: asyncio.Queue[bytes | None] = asyncio.Queue()  # bounded by the run: its steps and its capped reply
    typing = Typing(
        lambda name, data: events.put_nowait(sse.encode(name, data)), runtime.get().settings.runtime.max_reply_chars
    )
    task = asyncio.create_task(_run_shown(invocation, request.headers, typing, events))
    _running.add(task)
    task.add_done_callback(_running.discard)

    async def stream() -> AsyncIterator[bytes]:
        try:
            while (event := await events.get()) is not None:
                yield event
        finally:  # a caller that hung up leaves the run going, and this request open until it ends:
            with anyio.CancelScope(shield=True):  # a server that stops waits for it, as for any in flight
                await task

    # no caching, and no proxy buffering: each event is sent as it happens
    return StreamingResponse(
        stream(), media_type=sse.MEDIA_TYPE, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def _run_shown(
    invocation: Invocation, headers: Mapping[str, str], typing: Typing, events: asyncio.Queue[bytes | None]
) -> None:
    """Run the invocation, then end its stream with the outcome (or the error a defect became)."""
    try:

        async def given() -> Invocation:
            return invocation

        answer = await accept.run(given, headers=headers, authenticate=False, typing=typing)
        if answer.outcome is not None:
            events.put_nowait(sse.encode("outcome", answer.body))
        else:
            events.put_nowait(sse.encode("error", {"status": answer.status, **answer.body}))
    finally:
        events.put_nowait(None)


# The seed's manual entry point runs the same pipeline and answers with the real outcome.
test_channel = invoke


async def health(request: Request) -> JSONResponse:
    """The seed's body; with ?deep=1, what each dependency answers when asked."""
    answer = await accept.health(request.query_params, request.headers)
    return JSONResponse(answer.body, status_code=answer.status)


async def metrics(request: Request) -> Response:
    """Prometheus: invocations, response time, LLM, tool and memory figures per agent."""
    rt = runtime.get()
    secret = rt.settings.runtime.secret
    try:
        check_auth(secret.get_secret_value() if secret else None, request.headers)
    except BadInput as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    body, content_type = await asyncio.to_thread(metrics_module.exposition)  # a long scrape never holds the loop
    return Response(body, media_type=content_type)


ROUTES = {
    ("GET", "/health"): health,
    ("GET", "/metrics"): metrics,
    ("POST", "/invoke"): invoke,
    ("POST", "/internal/agent-runtime/test-channel"): test_channel,
}


async def agent_runtime(request: Request) -> Response:
    """Every path of the seed's service in one target."""
    path = request.scope["path"].rstrip("/") or "/"  # request.url would build and parse a whole URL
    handler = ROUTES.get((request.method, path))
    if handler is None:
        if request.method == "HEAD" and path == "/health":
            handler = health
        elif any(p == path for _, p in ROUTES):
            return JSONResponse({"error": f"method {request.method} not allowed on {path}"}, status_code=405)
        else:
            return JSONResponse({"error": f"no such path: {path}"}, status_code=404)
    return await handler(request)


async def _read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise BadInput(413, f"body larger than {max_bytes} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT_S):  # a client trickling its body holds nothing for long
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise BadInput(413, f"body larger than {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise BadInput(408, f"body not received within {BODY_READ_TIMEOUT_S:.0f}s") from None
    return b"".join(chunks)
