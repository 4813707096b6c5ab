"""Support for the bridge tests: bounded waits, a scripted function, and real function processes."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from runner.bridge import Bridge, flushed
from shared.infra import sse
from shared.infra.settings import NatsSettings, RunnerSettings, RuntimeSettings, Settings
from tests.conftest import ROOT, free_port, invocation


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], timeout_s: float = 15.0, what: str = "condition"
) -> None:
    """Wait until ``condition()`` holds (it may be a coroutine), at most ``timeout_s``: a bounded wait, not a sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s

    async def holds() -> bool:
        result = condition()
        return bool(await result if inspect.isawaitable(result) else result)

    while not await holds():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def failed(error: str, *, retryable: bool = True) -> dict[str, Any]:
    """The function's own outcome for a failed run (what tells its 5xx from a proxy's)."""
    return {"status": "failed", "agent_id": "agent:sofia", "retryable": retryable, "error": error}


@dataclass
class Streamed:
    """A body answered as server-sent events to a call that asks for them, the way the function
    streams a run: each item an event (name, data), a pause (seconds), or a gate (waited for).
    Asked for JSON, it answers its final event's data (an ``error``'s with 500)."""

    items: list[tuple[str, Any] | float | threading.Event]

    async def events(self) -> AsyncIterator[bytes]:
        for item in self.items:
            if isinstance(item, threading.Event):
                await asyncio.to_thread(item.wait, 15)
            elif isinstance(item, float | int):
                await asyncio.sleep(item)
            else:
                yield sse.encode(*item)

    def answer(self, headers: dict[str, str]) -> Response:
        """What a call that did not ask for events gets."""
        name, data = [item for item in self.items if isinstance(item, tuple)][-1]
        return JSONResponse(data, status_code=500 if name == "error" else 200, headers=headers)


class ScriptedFunction:
    """An HTTP server standing where the invoke function would: answers from a script, records calls.

    ``script`` maps a call number (1-based, per message body) to (status, body, headers); calls not
    in it answer 200. A body that is a str is sent as text (a proxy's page), a ``Streamed`` as events
    (when asked for), anything else as JSON. ``scripts`` does the same for one body. ``delay_s`` makes
    every call slow. ``GET /health`` answers 200.
    """

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.completed: list[bytes] = []
        self.script: dict[int, tuple[int, Any, dict[str, str]]] = {}
        self.scripts: dict[bytes, dict[int, tuple[int, Any, dict[str, str]]]] = {}
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/invoke", self.invoke, methods=["POST"]), Route("/health", self.health)])

    def calls_for(self, body: bytes) -> int:
        return sum(1 for c in self.calls if c["body"] == body)

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def invoke(self, request: Request) -> Response:
        body = await request.body()
        with self._lock:
            self.calls.append({"body": body, "headers": dict(request.headers)})
            n = self.calls_for(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        script = self.scripts.get(body, self.script)
        status, payload, headers = script.get(n, (200, {"status": "replied"}, {}))
        if isinstance(payload, Streamed) and sse.wants_stream(request.headers.get("accept")):
            return StreamingResponse(self._streamed(body, payload), status_code=status, media_type=sse.MEDIA_TYPE)
        with self._lock:
            self.completed.append(body)
        if isinstance(payload, Streamed):
            return payload.answer(headers)
        if isinstance(payload, str):
            return PlainTextResponse(payload, status_code=status, headers=headers)
        return JSONResponse(payload, status_code=status, headers=headers)

    async def _streamed(self, body: bytes, streamed: Streamed) -> AsyncIterator[bytes]:
        async for event in streamed.events():
            yield event
        with self._lock:
            self.completed.append(body)


def bridge(nats_url: str, function_url: str, *, function_secret: str | None = None, **runner: Any) -> Bridge:
    s = Settings(
        nats=NatsSettings(url=nats_url),
        runner=RunnerSettings(**runner),
        runtime=RuntimeSettings(secret=function_secret),
    )
    return Bridge(s, function_url)


class FunctionProcess:
    """``functions-framework --target agent_runtime --asgi``, the operator's command, as a subprocess."""

    def __init__(self, port: int, env: dict[str, str], *, capture_stderr: bool = False) -> None:
        self.port, self.env, self.capture_stderr = port, env, capture_stderr
        self.url = f"http://127.0.0.1:{port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, timeout_s: float = 30.0) -> FunctionProcess:
        import httpx

        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "functions_framework",
            "--target",
            "agent_runtime",
            "--asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE if self.capture_stderr else asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its own process group: gunicorn's worker goes with its master
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    if (await client.get(f"{self.url}/health")).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                assert self.process.returncode is None, "the function process exited"
                assert loop.time() < deadline, "the function process did not start"
                await asyncio.sleep(0.05)

    async def stop(self) -> bytes:
        """SIGTERM, then what it wrote on stderr (when captured)."""
        assert self.process is not None
        self.process.terminate()
        _, stderr = await self.process.communicate()
        return stderr or b""

    async def kill(self) -> None:
        """kill -9 of the whole group (gunicorn's graceful stop waits up to 30 s for open connections)."""
        if self.process is not None and self.process.returncode is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()


DEAD_LETTER_SUBJECT = "router.invoke.agent.dlq"


def body_for(channel: str | None = None, **payload: Any) -> bytes:
    """An invocation's bytes as the router publishes them (a new channel unless one is named)."""
    return json.dumps(invocation(channel or str(uuid.uuid4()), **payload)).encode()


async def dead_letters(nc: Any, subject: str = DEAD_LETTER_SUBJECT) -> list:
    """Every message published on the dead-letter subject from now on, as it arrives."""
    received: list = []

    async def keep(msg: Any) -> None:
        received.append(msg)

    await nc.subscribe(subject, cb=keep)
    await flushed(nc)
    return received


@asynccontextmanager
async def runner_waiting_for_nats(*options: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[bytes]]]:
    """``local_runner.py`` (the bridge as deployed) pointed at a NATS nobody serves, once it has tried
    twice, and its log lines so far; killed on the way out if the test did not stop it."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "local_runner.py",
        *("--nats-url", f"nats://127.0.0.1:{free_port()}", "--port", "0", *options),
        cwd=ROOT,
        env={**os.environ, "AGENT_RUNTIME__RUNTIME__LOG_FORMAT": "json"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    seen: list[bytes] = []
    try:
        assert process.stderr is not None
        while sum(b"ConnectionRefusedError" in line for line in seen) < 2:  # it keeps trying
            line = await asyncio.wait_for(process.stderr.readline(), 20)
            assert line, b"".join(seen)
            seen.append(line)
        yield process, seen
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
