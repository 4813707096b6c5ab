"""Fast fake dependencies for the benchmarks: raw ASGI apps under uvicorn (uvloop + httptools).

    python bench/fakes.py messaging|memory|llm|otlp PORT [--latency SECONDS]

Each runs in a process of its own, so a fake never shares a GIL with what is measured. They
follow the contracts of the stand-ins in standins/ (and of the deployed services) but keep no
state beyond a counter, and answer at once unless a latency is set:

- messaging: ``GET /api/messaging/channels/{id}/messages`` answers three messages, newest first,
  the newest a human's with the id ``m-{id}`` (so one channel = one message to answer);
  ``POST /internal/agents/{agent}/post-to-channel`` answers a ``message_id`` and counts;
  ``GET /count`` answers how many posts so far.
- memory: ``POST /internal/agent-memory/query`` answers one item; ``…/store`` answers ok.
- llm: ``POST /internal/llm/proxy`` answers the flat llm-proxy shape after ``--latency``.
- otlp: an OpenTelemetry collector that discards: ``POST /v1/traces`` answers an empty
  ExportTraceServiceResponse (protobuf) and counts; ``GET /count`` answers the exports and bytes so far.
"""

from __future__ import annotations

import argparse
import asyncio
import json

JSON = [(b"content-type", b"application/json")]
HISTORY_PREFIX = "/api/messaging/channels/"


async def _drain(receive) -> None:
    while (await receive()).get("more_body"):
        pass


async def _answer(send, body: bytes, status: int = 200) -> None:
    await send({"type": "http.response.start", "status": status, "headers": JSON})
    await send({"type": "http.response.body", "body": body})


def _history(channel_id: str) -> bytes:
    def message(suffix: str, sender: str, kind: str, text: str, second: int) -> dict:
        return {
            "id": f"{suffix}-{channel_id}",
            "channel_id": channel_id,
            "matrix_event_id": f"${suffix}{channel_id}:daarion.local",
            "sender_id": sender,
            "sender_type": kind,
            "content_preview": text,
            "content_type": "text",
            "thread_id": None,
            "created_at": f"2025-01-01T10:00:0{second}+00:00",
        }

    return json.dumps(
        [  # newest first, as the deployed service answers
            message("m", "user:alice", "human", "Що нового в нашій DAO цього тижня?", 3),
            message("r", "agent:sofia", "agent", "Вітаю! Чим можу допомогти?", 2),
            message("q", "user:alice", "human", "Привіт!", 1),
        ]
    ).encode()


def messaging_app():
    posts = 0

    async def app(scope, receive, send) -> None:
        nonlocal posts
        if scope["type"] != "http":
            return
        await _drain(receive)
        path, method = scope["path"], scope["method"]
        if method == "GET" and path.startswith(HISTORY_PREFIX) and path.endswith("/messages"):
            await _answer(send, _history(path[len(HISTORY_PREFIX) : -len("/messages")]))
        elif method == "POST" and path.endswith("/post-to-channel"):
            posts += 1
            await _answer(send, b'{"status": "posted", "message_id": "p-%d"}' % posts)
        elif path == "/count":
            await _answer(send, b'{"posts": %d}' % posts)
        elif path == "/health":
            await _answer(send, b'{"status": "ok", "service": "messaging-service"}')
        else:
            await _answer(send, b'{"detail": "Not Found"}', 404)

    return app


MEMORY_HIT = json.dumps(
    {
        "items": [
            {"id": "k1", "kind": "kb", "content": "DAARION DAO: щотижневе голосування у п'ятницю.", "score": 0.8}
        ],
        "total": 1,
    }
).encode()


def memory_app():
    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        await _drain(receive)
        path = scope["path"]
        if path == "/internal/agent-memory/query":
            await _answer(send, MEMORY_HIT)
        elif path == "/internal/agent-memory/store":
            await _answer(send, b'{"ok": true, "id": "s1"}')
        elif path == "/health":
            await _answer(send, b'{"status": "ok", "service": "memory-orchestrator"}')
        else:
            await _answer(send, b'{"detail": "Not Found"}', 404)

    return app


LLM_ANSWER = json.dumps(
    {
        "content": "Цього тижня голосування про бюджет і новий канал для розробників.",
        "usage": {"prompt_tokens": 120, "completion_tokens": 20, "total_tokens": 140},
        "provider": "local",
        "model_resolved": "gpt-4",
        "latency_ms": 1,
        "cached": False,
    }
).encode()


def llm_app(latency_s: float):
    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        await _drain(receive)
        path = scope["path"]
        if path == "/internal/llm/proxy":
            if latency_s:
                await asyncio.sleep(latency_s)
            await _answer(send, LLM_ANSWER)
        elif path == "/internal/llm/models":
            await _answer(send, b'{"models": [{"name": "gpt-4"}]}')
        else:
            await _answer(send, b'{"detail": "Not Found"}', 404)

    return app


def otlp_app():
    exports = size = 0

    async def app(scope, receive, send) -> None:
        nonlocal exports, size
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/v1/traces":
            exports, size = exports + 1, size + len(body)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/x-protobuf")],
                }
            )
            await send({"type": "http.response.body", "body": b""})  # an empty ExportTraceServiceResponse
        elif scope["path"] == "/count":
            await _answer(send, json.dumps({"exports": exports, "bytes": size}).encode())
        else:
            await _answer(send, b'{"status": "ok"}')

    return app


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["messaging", "memory", "llm", "otlp"])
    ap.add_argument("port", type=int)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before the LLM answers")
    args = ap.parse_args()
    apps = {"messaging": messaging_app, "memory": memory_app, "llm": lambda: llm_app(args.latency), "otlp": otlp_app}
    app = apps[args.kind]()
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="error",
        access_log=False,
        lifespan="off",
        loop="uvloop",
        http="httptools",
        backlog=4096,
        timeout_keep_alive=60,
    )


if __name__ == "__main__":
    main()
