"""Support for the bridge tests: a real nats-server per test, a scripted function, bounded waits."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from runner.bridge import Bridge, BridgeConfig


async def eventually(condition: Callable[[], bool], timeout_s: float = 15.0, what: str = "condition") -> None:
    """Wait until ``condition()`` holds, at most ``timeout_s``: a bounded wait, not a sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class ScriptedFunction:
    """An HTTP server standing where the invoke function would: answers from a script, records calls.

    ``script`` maps a call number (1-based, per message body) to (status, body, headers); calls not
    in it answer 200. ``delay_s`` makes every call slow.
    """

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.completed: list[bytes] = []
        self.script: dict[int, tuple[int, dict[str, Any], dict[str, str]]] = {}
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/invoke", self.invoke, methods=["POST"])])

    def calls_for(self, body: bytes) -> int:
        return sum(1 for c in self.calls if c["body"] == body)

    async def invoke(self, request: Request) -> JSONResponse:
        body = await request.body()
        with self._lock:
            self.calls.append({"body": body, "headers": dict(request.headers)})
            n = self.calls_for(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status, payload, headers = self.script.get(n, (200, {"status": "replied"}, {}))
        with self._lock:
            self.completed.append(body)
        return JSONResponse(payload, status_code=status, headers=headers)


def bridge(nats_url: str, function_url: str, **options: Any) -> Bridge:
    return Bridge(
        BridgeConfig(
            nats_servers=[nats_url],
            subject=options.pop("subject", "router.invoke.agent"),
            function_url=function_url,
            **options,
        )
    )
