"""HTTP triggers (functions-framework ASGI mode): invoke, test_channel, health, agent_runtime."""

from __future__ import annotations

import asyncio
import logging

from starlette import responses
from starlette.requests import Request
from starlette.responses import Response

from shared import pipeline, runtime
from shared.delivery import http_status, retry_headers
from shared.errors import BadInput
from shared.health import report
from shared.infra import jsoncodec, tracing
from shared.intake import check_auth, parse_invocation

log = logging.getLogger("agent_runtime.http")
BODY_READ_TIMEOUT_S = 10.0


class JSONResponse(responses.JSONResponse):
    """Starlette's, rendered by orjson: an outcome costs a tenth of the stdlib's time."""

    def render(self, content: object) -> bytes:
        return jsoncodec.dumps(content)


async def invoke(request: Request) -> JSONResponse:
    """POST an invocation; the response is its outcome."""
    rt = runtime.get()
    try:
        if request.method != "POST":
            raise BadInput(405, "use POST")
        secret = rt.settings.runtime.secret
        check_auth(secret.get_secret_value() if secret else None, request.headers)
        invocation = parse_invocation(
            await _read_body(request, rt.settings.runtime.max_body_bytes), rt.settings.runtime.max_body_bytes
        )
    except BadInput as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    try:
        outcome = await pipeline.run(
            invocation, rt, delivery_id=request.headers.get("idempotency-key"), **tracing.log_fields(request.headers)
        )
    except Exception:
        log.exception("defect while running invocation", extra={"fields": {"agent_id": invocation.agent_id}})
        return JSONResponse({"error": "internal error"}, status_code=500)
    return JSONResponse(
        outcome.model_dump(exclude_none=True), status_code=http_status(outcome), headers=retry_headers(outcome)
    )


# The seed's manual entry point runs the same pipeline and answers with the real outcome.
test_channel = invoke


async def health(request: Request) -> JSONResponse:
    """The seed's body; with ?deep=1, what each dependency answers when asked."""
    deep = request.query_params.get("deep") in ("1", "true", "yes")
    return JSONResponse(await report(runtime.get(), deep=deep))


async def metrics(request: Request) -> Response:
    """Prometheus: invocations, response time, LLM, tool and memory figures per agent."""
    rt = runtime.get()
    secret = rt.settings.runtime.secret
    try:
        check_auth(secret.get_secret_value() if secret else None, request.headers)
    except BadInput as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    from shared.infra import metrics as figures  # prometheus-client: only when asked

    body, content_type = figures.exposition()
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
