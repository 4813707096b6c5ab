"""Any OpenAI-compatible Chat Completions server: OpenAI, DeepSeek, vLLM, Ollama, LiteLLM …"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

from shared.clients.http import Endpoint
from shared.infra.sse import Event
from shared.llm.base import ChatRequest, Completion, Provider, StreamReader, ToolCall, reported_usage, text_or_none


class OpenAiProvider(Provider):
    """POST {base}/chat/completions; the API key as a Bearer token."""

    name = "openai"
    system = "openai"
    path = "/chat/completions"
    probe_path = "/models"
    native_tools = True
    streams = True

    @classmethod
    def from_settings(cls, s: Any) -> OpenAiProvider:
        key = s.openai_api_key.get_secret_value() if s.openai_api_key else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return cls(Endpoint("llm", s.openai_url, None, s.timeout_s, s.attempts, headers))

    def body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{k: v for k, v in m.items() if k != "name"} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in request.tools
            ]
            body["tool_choice"] = "auto" if request.allow_tools else "none"
        return body

    def parse(self, data: dict[str, Any], request: ChatRequest) -> Completion | None:
        return openai_completion(data)

    def reader(self, request: ChatRequest, on_text: Callable[[str], None]) -> StreamReader:
        return OpenAiStream(self, request, on_text)


class OpenAiStream(StreamReader):
    """Chat Completions chunks: ``delta.content`` is the text, ``delta.tool_calls`` pieces gather by
    their ``index``; the usage comes in a last chunk of its own, before ``[DONE]``."""

    asks: ClassVar[dict[str, Any]] = {"stream": True, "stream_options": {"include_usage": True}}

    def start(self) -> None:
        self._content: list[str] = []
        self._calls: dict[int, dict[str, str]] = {}  # by index: id, name and arguments, as pieces joined
        self._top: dict[str, Any] = {}  # model and usage, as the last chunk that said them
        self._finish: Any = None

    def event(self, event: Event, data: Any) -> None:
        if data is None:  # [DONE]
            self.ended = True
            return
        if not isinstance(data, dict):
            return
        for key in ("model", "usage"):
            if data.get(key) is not None:
                self._top[key] = data[key]
        choices = data.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            return
        delta = choice.get("delta")
        if isinstance(delta, dict):
            content = delta.get("content")
            if isinstance(content, str):
                self._content.append(content)
                self.text(content)
            pieces = delta.get("tool_calls")
            for piece in pieces if isinstance(pieces, list) else []:
                self._tool_piece(piece)
        if choice.get("finish_reason") is not None:  # the answer is whole; its usage may follow
            self._finish = choice["finish_reason"]
            self.ended = True

    def _tool_piece(self, piece: Any) -> None:
        if not isinstance(piece, dict) or type(piece.get("index")) is not int:
            return
        call = self._calls.setdefault(piece["index"], {"id": "", "name": "", "arguments": ""})
        function = piece.get("function")
        function = function if isinstance(function, dict) else {}
        # every string piece is appended, as OpenAI's own client gathers them
        for key, value in (
            ("id", piece.get("id")),
            ("name", function.get("name")),
            ("arguments", function.get("arguments")),
        ):
            if isinstance(value, str):
                call[key] += value

    def answer(self) -> dict[str, Any]:
        calls = [
            {"id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}
            for _, c in sorted(self._calls.items())
        ]
        message = {"content": "".join(self._content), "tool_calls": calls}
        return {**self._top, "choices": [{"message": message, "finish_reason": self._finish}]}


def openai_completion(data: dict[str, Any]) -> Completion | None:
    """A Chat Completions answer: the first choice, its tool calls, the usage and the model."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(message, dict):
        return None
    calls = []
    tool_calls = message.get("tool_calls")
    for call in tool_calls if isinstance(tool_calls, list) else []:
        # a provider's answer is untrusted: anything but {"id", "function": {"name", "arguments"}} is skipped
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            continue
        raw = function.get("arguments")
        try:
            arguments = json.loads(raw or "{}") if isinstance(raw, (str, type(None))) else raw
        except ValueError:
            arguments = None
        calls.append(
            ToolCall(str(call.get("id")), function["name"], arguments if isinstance(arguments, dict) else None)
        )
    content = message.get("content")
    return Completion(
        content if isinstance(content, str) else "",
        calls,
        reported_usage(data, "prompt_tokens", "completion_tokens"),
        text_or_none(data.get("model")),
        text_or_none(choice.get("finish_reason")),
    )
