"""Fake LLM providers speaking their public APIs: OpenAI Chat Completions and Anthropic Messages.

Each answers the next scripted turn (``script``: text, or a list of tool calls as (name, arguments))
or else echoes the last user text, and checks the API key in the header its API uses. Answers carry
the model asked for and a fixed ``usage`` in the API's own shape, unless ``report_usage`` is off.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from standins.server import FaultTable

Turn = str | list[tuple[str, dict[str, Any]]]


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

    async def complete(self, request: Request) -> JSONResponse:
        if denied := await self.faults.apply("complete", request):
            return denied
        if request.headers.get(self.key_header) != self.key_prefix + self.key:
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=401)
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        turn = self.script.pop(0) if self.script else f"LLM reply to: {self.last_user_text(body)}"
        answer = self.answer(turn)
        if self.report_usage:
            answer.update(model=body.get("model"), usage=self.usage)
        return JSONResponse(answer)

    def last_user_text(self, body: dict[str, Any]) -> str:
        raise NotImplementedError

    def answer(self, turn: Turn) -> dict[str, Any]:
        raise NotImplementedError


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


class AnthropicStandIn(_FakeProvider):
    key_header = "x-api-key"
    usage = {"input_tokens": 33, "output_tokens": 9}

    def __init__(self, key: str = "test-key") -> None:
        super().__init__("/v1/messages", key)

    async def complete(self, request: Request) -> JSONResponse:
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
