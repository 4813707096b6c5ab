"""Fake LLM providers speaking their public APIs: OpenAI Chat Completions and Anthropic Messages.

Each answers the next scripted turn (``script``: text, or a list of tool calls as (name, arguments))
or else echoes the last user text, and checks the API key in the header its API uses. Answers carry
the model asked for and a fixed ``usage`` in the API's own shape, unless ``report_usage`` is off.

A request with ``"stream": true`` is answered as the API streams (text/event-stream, one event per
chunk, ``stream_pause_s`` between them): the text in pieces of ``piece_chars``, tool calls the way
the API streams them. A test can cut the next stream (``cut_after`` events, then the connection
drops without the end) or hold its end until it has seen a piece (``hold_end``).
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Send

from standins.server import FaultTable

Turn = str | list[tuple[str, dict[str, Any]]]
HOLD_LIMIT_S = 5.0  # a held end is sent anyway after this long: the test then fails on end_released


class _FakeProvider:
    key_header = ""
    key_prefix = ""
    usage: dict[str, int] = {}  # what every answer says it spent, in the API's shape

    def __init__(self, path: str, key: str = "test-key") -> None:
        self.reset(key)
        self.app = Starlette(routes=[Route(path, self.complete, methods=["POST"])])

    def reset(self, key: str = "test-key") -> None:
        self.key = key
        self.faults = FaultTable()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.script: list[Turn] = []
        self.report_usage = True
        self.ignore_stream = False  # answer whole even when asked to stream, as a server that cannot
        self.refuse_stream = False  # answer 400 to a request asking to stream, as a server that knows no such field
        self.stream_pause_s = 0.02
        self.piece_chars = 3
        self.cut_after: int | None = None  # the next stream drops its connection after this many events
        self.hold_end: threading.Event | None = None  # a stream's end waits for it (a test sets it)
        self.end_released: bool | None = None  # the held end went out because hold_end was set

    async def complete(self, request: Request) -> Response:
        if denied := await self.faults.apply("complete", request):
            return denied
        if request.headers.get(self.key_header) != self.key_prefix + self.key:
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.refuse_stream and "stream" in body:
            return JSONResponse({"error": {"message": "Unrecognized request argument: stream"}}, status_code=400)
        turn = self.script.pop(0) if self.script else f"LLM reply to: {self.last_user_text(body)}"
        if body.get("stream") is True and not self.ignore_stream:
            events, end = self.stream(turn, body)
            cut, self.cut_after = self.cut_after, None
            return _EventStream(self, events, end, cut)
        answer = self.answer(turn)
        if self.report_usage:
            answer.update(model=body.get("model"), usage=self.usage)
        return JSONResponse(answer)

    def pieces(self, text: str) -> list[str]:
        return [text[i : i + self.piece_chars] for i in range(0, len(text), self.piece_chars)]

    def last_user_text(self, body: dict[str, Any]) -> str:
        raise NotImplementedError

    def answer(self, turn: Turn) -> dict[str, Any]:
        raise NotImplementedError

    def stream(self, turn: Turn, body: dict[str, Any]) -> tuple[list[bytes], list[bytes]]:
        """The turn's events: those before its end, and its end."""
        raise NotImplementedError

    def cut_with(self) -> bytes | None:
        """The event a cut stream sends last, if any."""
        return None


class _EventStream(StreamingResponse):
    """Events sent one a chunk with a pause between, the end held or the connection cut as the fake says."""

    def __init__(self, fake: _FakeProvider, events: list[bytes], end: list[bytes], cut_after: int | None) -> None:
        super().__init__(iter(()), media_type="text/event-stream")  # no iterator: stream_response sends the events
        self.fake, self.events, self.end, self.cut_after = fake, events, end, cut_after

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        for sent, event in enumerate(self.events + self.end):
            if sent == self.cut_after:
                if last := self.fake.cut_with():
                    await send({"type": "http.response.body", "body": last, "more_body": True})
                return  # no last empty chunk: uvicorn closes the connection mid-body
            if sent == len(self.events) and self.fake.hold_end is not None:
                self.fake.end_released = await asyncio.to_thread(self.fake.hold_end.wait, HOLD_LIMIT_S)
            await send({"type": "http.response.body", "body": event, "more_body": True})
            await asyncio.sleep(self.fake.stream_pause_s)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _event(data: Any, name: str | None = None) -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


class OpenAiStandIn(_FakeProvider):
    key_header, key_prefix = "authorization", "Bearer "
    usage = {"prompt_tokens": 21, "completion_tokens": 7, "total_tokens": 28}

    def __init__(self, key: str = "test-key") -> None:
        super().__init__("/v1/chat/completions", key)

    def last_user_text(self, body: dict[str, Any]) -> str:
        return next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")

    def answer(self, turn: Turn) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": turn if isinstance(turn, str) else None}
        if not isinstance(turn, str):
            message["tool_calls"] = [
                {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
                for i, (n, a) in enumerate(turn)
            ]
        finish = "stop" if isinstance(turn, str) else "tool_calls"
        choice = {"index": 0, "message": message, "finish_reason": finish}
        return {"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice]}

    def stream(self, turn: Turn, body: dict[str, Any]) -> tuple[list[bytes], list[bytes]]:
        """chat.completion.chunk events, the usage in a chunk of its own when stream_options asks, then [DONE]."""
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        top: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000}
        if self.report_usage:
            top["model"] = body.get("model")
        if include_usage:
            top["usage"] = None  # every chunk but the last says so

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _event({**top, "choices": [choice]})

        if isinstance(turn, str):
            events = [chunk({"role": "assistant", "content": ""})]
            events += [chunk({"content": piece}) for piece in self.pieces(turn)]
        else:
            events = [chunk({"role": "assistant", "content": None})]
            for i, (name, arguments) in enumerate(turn):
                start = {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": ""}}
                events.append(chunk({"tool_calls": [start]}))
                events += [
                    chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                    for piece in self.pieces(json.dumps(arguments))
                ]
        end = [chunk({}, "stop" if isinstance(turn, str) else "tool_calls")]
        if include_usage and self.report_usage:
            end.append(_event({**top, "choices": [], "usage": self.usage}))
        return events, [*end, b"data: [DONE]\n\n"]


class AnthropicStandIn(_FakeProvider):
    key_header = "x-api-key"
    usage = {"input_tokens": 33, "output_tokens": 9}

    def __init__(self, key: str = "test-key") -> None:
        super().__init__("/v1/messages", key)

    def reset(self, key: str = "test-key") -> None:
        super().reset(key)
        self.error: str | None = None  # a cut stream (cut_after) sends an error event of this type last

    async def complete(self, request: Request) -> Response:
        if not request.headers.get("anthropic-version"):
            return JSONResponse({"error": {"message": "anthropic-version header is required"}}, status_code=400)
        return await super().complete(request)

    def last_user_text(self, body: dict[str, Any]) -> str:
        for message in reversed(body["messages"]):
            texts = [b["text"] for b in message["content"] if message["role"] == "user" and b["type"] == "text"]
            if texts:
                return texts[-1]
        return ""

    def answer(self, turn: Turn) -> dict[str, Any]:
        if isinstance(turn, str):
            blocks: list[dict[str, Any]] = [{"type": "text", "text": turn}]
        else:
            blocks = [{"type": "tool_use", "id": f"toolu_{i}", "name": n, "input": a} for i, (n, a) in enumerate(turn)]
        stop = "end_turn" if isinstance(turn, str) else "tool_use"
        return {"id": "msg_1", "type": "message", "role": "assistant", "content": blocks, "stop_reason": stop}

    def stream(self, turn: Turn, body: dict[str, Any]) -> tuple[list[bytes], list[bytes]]:
        """message_start, each content block's start, deltas and stop (a ping after the first start), then
        message_delta and message_stop."""
        message: dict[str, Any] = {"id": "msg_1", "type": "message", "role": "assistant", "content": []}
        message.update(stop_reason=None, stop_sequence=None)
        if self.report_usage:
            message.update(
                model=body.get("model"), usage={"input_tokens": self.usage["input_tokens"], "output_tokens": 1}
            )
        if isinstance(turn, str):
            blocks = [({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in self.pieces(turn)])]
        else:
            blocks = [
                (
                    {"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {}},
                    [
                        {"type": "input_json_delta", "partial_json": p}
                        for p in ["", *self.pieces(json.dumps(arguments))]
                    ],
                )
                for i, (name, arguments) in enumerate(turn)
            ]
        events = [_named("message_start", message=message)]
        for index, (block, deltas) in enumerate(blocks):
            events.append(_named("content_block_start", index=index, content_block=block))
            if index == 0:
                events.append(_named("ping"))
            events += [_named("content_block_delta", index=index, delta=delta) for delta in deltas]
            events.append(_named("content_block_stop", index=index))
        stop = {"stop_reason": "end_turn" if isinstance(turn, str) else "tool_use", "stop_sequence": None}
        usage = {"usage": {"output_tokens": self.usage["output_tokens"]}} if self.report_usage else {}
        return events, [_named("message_delta", delta=stop, **usage), _named("message_stop")]

    def cut_with(self) -> bytes | None:
        if self.error is None:
            return None
        return _named("error", error={"type": self.error, "message": f"{self.error} (a stand-in's)"})


def _named(kind: str, **fields: Any) -> bytes:
    """An Anthropic event: named as the type its data says."""
    return _event({"type": kind, **fields}, kind)
