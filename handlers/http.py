"""HTTP triggers (functions-framework ASGI mode): invoke, test_channel, health, agent_runtime."""

from __future__ import annotations

import asyncio

from starlette import responses
from starlette.requests import Request
from starlette.responses import Response

from handlers import accept
from shared import runtime
from shared.errors import BadInput
from shared.infra import jsoncodec
from shared.infra import metrics as metrics_module
from shared.intake import check_auth

BODY_READ_TIMEOUT_S = 10.0


class JSONResponse(responses.JSONResponse):
    """Starlette's, rendered by orjson (shared/infra/jsoncodec.py), the JSON of the hot path."""

    def render(self, content: object) -> bytes:
        return jsoncodec.dumps(content)


async def invoke(request: Request) -> JSONResponse:
    """POST an invocation; the response is its outcome."""
    if request.method != "POST":
        return JSONResponse({"error": "use POST"}, status_code=405)
    limit = runtime.get().settings.runtime.max_body_bytes
    answer = await accept.run(lambda: _read_body(request, limit), headers=request.headers)
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


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
