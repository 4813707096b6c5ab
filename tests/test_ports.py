"""The function's port as deployed on-prem (served by local_runner.py, as in the container) cannot
be held: connections trickling their headers, or idle, are closed; past the connection cap new
callers get a prompt 503; once the slow ones are gone, an authenticated invocation is answered."""

from __future__ import annotations

import asyncio

import httpx

from runner.serve import Serving, function_app
from tests.conftest import invocation

SECRET = "port-secret"


async def test_slow_and_idle_connections_cannot_hold_the_functions_port(stack, configure):
    configure(AGENT_RUNTIME_SECRET=SECRET)
    served = await Serving.start(function_app(), "127.0.0.1", 0, idle_timeout_s=0.5, limit_concurrency=32)
    held: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for i in range(96):  # three times the cap: a third trickle headers, the rest connect and say nothing
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            if i % 3 == 0:
                writer.write(b"POST /invoke HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # never the end of the headers
                await writer.drain()
            held.append((reader, writer))

        async def closed(reader: asyncio.StreamReader) -> bool:
            return await asyncio.wait_for(reader.read(), 10) is not None  # b"" at EOF (or a 503 and EOF)

        assert all(await asyncio.gather(*(closed(r) for r, _ in held)))  # every one let go, none kept
        channel = stack.channel()
        stack.messaging.add_message(channel, "hello")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}", timeout=10) as c:
            answer = await c.post("/invoke", json=invocation(channel), headers={"X-Internal-Secret": SECRET})
        assert answer.status_code == 200 and answer.json()["status"] == "replied"
    finally:
        for _, writer in held:
            writer.close()
        await served.stop()
