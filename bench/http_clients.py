"""Which HTTP client belongs under the hot path: small JSON POSTs on loopback, concurrency 32.

    python bench/http_clients.py [--requests 3000] [--concurrency 32]

Starts a uvicorn (uvloop + httptools) JSON echo server in a subprocess, then drives it with
httpx (default transport), httpx over the httpx-aiohttp transport, and aiohttp. Prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time

SERVER = """
import sys, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"ok": true}'})
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_up(port: int) -> None:
    for _ in range(200):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("server did not start")


async def drive(post, n: int, concurrency: int) -> float:
    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            await post()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/echo"
    body = {"channel_id": "7c72d497-27aa-4e75-bb2f-4a4a21d4f91f", "text": "hello"}
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)])  # noqa: ASYNC220
    try:
        await wait_up(port)
        import aiohttp
        import httpx
        from httpx_aiohttp import AiohttpTransport

        rows = []
        async with httpx.AsyncClient() as client:

            async def post_httpx():
                (await client.post(url, json=body)).json()

            await drive(post_httpx, 200, args.concurrency)  # warm-up
            rows.append(
                ("httpx.AsyncClient (default transport)", await drive(post_httpx, args.requests, args.concurrency))
            )
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:

            async def post_httpx_aio():
                (await client.post(url, json=body)).json()

            await drive(post_httpx_aio, 200, args.concurrency)
            rows.append(
                ("httpx.AsyncClient over httpx-aiohttp", await drive(post_httpx_aio, args.requests, args.concurrency))
            )
        async with aiohttp.ClientSession() as session:

            async def post_aiohttp():
                async with session.post(url, json=body) as r:
                    await r.json()

            await drive(post_aiohttp, 200, args.concurrency)
            rows.append(("aiohttp.ClientSession", await drive(post_aiohttp, args.requests, args.concurrency)))
        print(f"{f'client (concurrency {args.concurrency})':<42} {'requests/s':>10}")
        for name, rps in rows:
            print(f"{name:<42} {rps:>10.0f}")
    finally:
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main())
