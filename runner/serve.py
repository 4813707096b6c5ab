"""ASGI apps served inside the runner's own event loop: the runner's /health and /metrics, and
the agent_runtime function when no --function-url names a remote one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ROOT = Path(__file__).resolve().parent.parent


class _Server(uvicorn.Server):
    # The runner owns SIGTERM/SIGINT (it drains the bridge first), not uvicorn.
    def capture_signals(self):  # type: ignore[override]
        return contextlib.nullcontext()


class Serving:
    """An ASGI app on host:port in the running loop; ``await stop()`` to end it."""

    def __init__(self, server: _Server, task: asyncio.Task[None], port: int) -> None:
        self._server, self._task, self.port = server, task, port

    @classmethod
    async def start(cls, app: Any, host: str, port: int) -> Serving:
        server = _Server(
            uvicorn.Config(
                app, host=host, port=port, log_level="warning", lifespan="off", timeout_keep_alive=30, access_log=False
            )
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start (port taken, say)
                raise RuntimeError(f"could not serve on {host}:{port}")
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        return cls(server, task, bound)

    async def stop(self) -> None:
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


def function_app() -> Any:
    """The agent_runtime target exactly as functions-framework --asgi serves it."""
    from functions_framework.aio import create_asgi_app

    return create_asgi_app(target="agent_runtime", source=str(ROOT / "main.py"))


def status_app(health: Callable[[], dict[str, Any]]) -> Starlette:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from runner import metrics

    async def health_route(request: Request) -> JSONResponse:
        body = health()
        return JSONResponse(body, status_code=200 if body["nats_connected"] else 503)

    async def metrics_route(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/health", health_route), Route("/metrics", metrics_route)])
