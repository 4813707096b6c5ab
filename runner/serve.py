"""ASGI apps served inside the runner's own event loop: the runner's /health, /metrics and console, and
the agent_runtime function when no function_url names a remote one (a container runs both)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from runner.console.app import Console

ROOT = Path(__file__).resolve().parent.parent


class _Server(uvicorn.Server):
    # The runner owns SIGTERM/SIGINT (it drains the bridge first), not uvicorn.
    def capture_signals(self):  # type: ignore[override]
        return contextlib.nullcontext()


class Serving:
    """An ASGI app on host:port in the running loop; ``await stop()`` to end it.

    Bounded against slow and flooding clients: at most ``limit_concurrency`` connections or
    requests at once (beyond that, 503), and a connection that has no request in progress for
    ``idle_timeout_s`` (a client trickling its headers, an idle keep-alive) is closed.
    """

    def __init__(self, server: _Server, task: asyncio.Task[None], port: int, idle_timeout_s: float) -> None:
        self._server, self._task, self.port = server, task, port
        self._reaper = asyncio.create_task(_reap_idle(server, idle_timeout_s))

    @classmethod
    async def start(
        cls, app: Any, host: str, port: int, *, idle_timeout_s: float = 10.0, limit_concurrency: int = 256
    ) -> Serving:
        server = _Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="warning",
                lifespan="off",
                timeout_keep_alive=min(30, max(1, int(idle_timeout_s))),
                access_log=False,
                limit_concurrency=limit_concurrency,
                backlog=128,
                h11_max_incomplete_event_size=16 * 1024,
            )
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start (port taken, say)
                raise RuntimeError(f"could not serve on {host}:{port}")
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        return cls(server, task, bound, idle_timeout_s)

    async def stop(self) -> None:
        self._reaper.cancel()
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(asyncio.CancelledError):
            await self._reaper


async def _reap_idle(server: uvicorn.Server, idle_timeout_s: float) -> None:
    """Close connections with no request in progress for ``idle_timeout_s`` (uvicorn has no header timeout)."""
    loop = asyncio.get_running_loop()
    idle_since: dict[Any, tuple[Any, float]] = {}  # connection -> (its last request cycle, idle since)
    while True:
        await asyncio.sleep(min(1.0, idle_timeout_s / 4))
        now = loop.time()
        live = server.server_state.connections
        for connection in list(live):
            cycle = getattr(connection, "cycle", None)
            if cycle is not None and not getattr(cycle, "response_complete", True):
                idle_since.pop(connection, None)  # a request is being answered
                continue
            last = idle_since.get(connection)
            if last is None or last[0] is not cycle:  # new, or it finished a request since
                idle_since[connection] = (cycle, now)
            elif now - last[1] > idle_timeout_s:
                transport = getattr(connection, "transport", None)
                if transport is not None:
                    transport.close()
                idle_since.pop(connection, None)
        for gone in [c for c in idle_since if c not in live]:
            del idle_since[gone]


def function_app() -> Any:
    """The agent_runtime target exactly as functions-framework --asgi serves it."""
    from functions_framework.aio import create_asgi_app

    return create_asgi_app(target="agent_runtime", source=str(ROOT / "main.py"))


def status_app(
    health: Callable[[], dict[str, Any]], *, secret: str | None, console: Console | None = None
) -> Starlette:
    """The runner's /health (open) and /metrics (needs ``secret`` when there is one), and the console's
    page and API beside them when given one."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from runner import metrics
    from shared.errors import BadInput
    from shared.intake import check_auth

    async def health_route(request: Request) -> JSONResponse:
        body = health()
        return JSONResponse(body, status_code=200 if body["nats_connected"] else 503)

    async def metrics_route(request: Request) -> Response:
        try:
            check_auth(secret, request.headers)
        except BadInput as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    routes = [Route("/health", health_route), Route("/metrics", metrics_route)]
    return Starlette(routes=routes + (console.routes() if console is not None else []))
