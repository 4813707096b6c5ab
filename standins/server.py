"""Serve an ASGI app on a loopback port in a background thread, and inject faults into it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response


@dataclass
class Fault:
    """How one route misbehaves: a delay, then a status (with a body), or a non-JSON answer."""

    status: int | None = None
    delay_s: float = 0.0
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    malformed: bool = False
    times: int | None = None  # only the next N calls; None: every call


class FaultTable:
    def __init__(self) -> None:
        self._faults: dict[str, Fault] = {}
        self.calls: dict[str, int] = {}
        self.seen: list[tuple[str, str, str]] = []  # (route, raw path and query, Host header) of every call

    def set(self, route: str, fault: Fault | None) -> None:
        if fault is None:
            self._faults.pop(route, None)
        else:
            self._faults[route] = fault

    def clear(self) -> None:
        self._faults.clear()
        self.calls.clear()
        self.seen.clear()

    async def apply(self, route: str, request: Request) -> Response | None:
        """Count the call; answer for the route when a fault is set for it."""
        self.calls[route] = self.calls.get(route, 0) + 1
        raw = request.scope.get("raw_path", b"").decode("latin-1")
        query = request.scope.get("query_string", b"").decode("latin-1")
        self.seen.append((route, raw + (f"?{query}" if query else ""), request.headers.get("host", "")))
        await request.body()  # read (and cache) it now: after a delay the caller may be gone
        fault = self._faults.get(route)
        if fault is None:
            return None
        if fault.times is not None:
            if fault.times <= 0:
                return None
            fault.times -= 1
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.malformed:
            return PlainTextResponse("<html>not json", status_code=fault.status or 200)
        if fault.status is None:
            return None
        return JSONResponse(
            fault.body if fault.body is not None else {"detail": f"fault {fault.status}"},
            status_code=fault.status,
            headers=fault.headers,
        )


def check_secret(request: Request, secret: str | None) -> Response | None:
    if secret and request.headers.get("x-internal-secret") != secret:
        return JSONResponse({"detail": "Invalid internal secret"}, status_code=401)
    return None


class Served:
    """A running server: ``url``, ``stop()``; ``on_stop`` runs last in its loop (to close what the app pooled)."""

    def __init__(
        self, app, host: str = "127.0.0.1", port: int = 0, on_stop: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        import uvicorn

        # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose protocol
        # says TCP, and without it Nagle holds a response's second write for the client's delayed ACK
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.port = sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._on_stop = on_stop
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(sock),), daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"stand-in server on {self.url} did not start")
            time.sleep(0.01)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await self._server.serve(sockets=[sock])
        finally:
            if self._on_stop is not None:
                await self._on_stop()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
