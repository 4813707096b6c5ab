"""Anthropic's Messages API: the system prompt apart, tool_use and tool_result blocks."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar

from shared.clients.http import Endpoint
from shared.errors import DependencyError
from shared.infra.sse import Event
from shared.llm.base import ChatRequest, Completion, Provider, StreamReader, ToolCall, reported_usage, text_or_none


class AnthropicProvider(Provider):
    """Anthropic's Messages API: POST {base}/v1/messages, system apart, tool_use/tool_result blocks."""

    name = "anthropic"
    system = "anthropic"
    path = "/v1/messages"
    probe_path = "/v1/models"
    native_tools = True
    streams = True

    @classmethod
    def from_settings(cls, s: Any) -> AnthropicProvider:
        key = s.anthropic_api_key.get_secret_value() if s.anthropic_api_key else ""
        headers = {"x-api-key": key, "anthropic-version": s.anthropic_version}
        return cls(Endpoint("llm", s.anthropic_url, None, s.timeout_s, s.attempts, headers))

    def body(self, request: ChatRequest) -> dict[str, Any]:
        turns: list[dict[str, Any]] = []
        for message in request.messages:
            if message["role"] == "system":
                continue
            role, blocks = _anthropic_blocks(message)
            if turns and turns[-1]["role"] == role:  # the API wants user and assistant to alternate
                turns[-1]["content"].extend(blocks)
            else:
                turns.append({"role": role, "content": blocks})
        if turns and turns[0]["role"] == "assistant":  # and the conversation to open with the user
            turns.insert(0, {"role": "user", "content": [{"type": "text", "text": "(earlier in the channel)"}]})
        body: dict[str, Any] = {
            "model": request.model,
            "system": "\n\n".join(m["content"] for m in request.messages if m["role"] == "system"),
            "messages": turns,
            "max_tokens": request.max_tokens,
            "temperature": min(request.temperature, 1.0),  # Anthropic's range is 0..1
        }
        if request.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters} for t in request.tools
            ]
            body["tool_choice"] = {"type": "auto" if request.allow_tools else "none"}
        return body

    def parse(self, data: dict[str, Any], request: ChatRequest) -> Completion | None:
        blocks = data.get("content")
        if not isinstance(blocks, list):
            return None
        text = "".join(
            b["text"]
            for b in blocks
            if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
        )
        calls = [
            ToolCall(str(b.get("id")), str(b.get("name")), b.get("input") if isinstance(b.get("input"), dict) else None)
            for b in blocks
            if isinstance(b, dict) and b.get("type") == "tool_use"
        ]
        return Completion(
            text,
            calls,
            reported_usage(data, "input_tokens", "output_tokens"),
            text_or_none(data.get("model")),
            text_or_none(data.get("stop_reason")),
        )

    def reader(self, request: ChatRequest, on_text: Callable[[str], None]) -> StreamReader:
        return AnthropicStream(self, request, on_text)


# a content block's type: the type of its delta events, and the field that holds their piece
_DELTAS = {"text": ("text_delta", "text"), "tool_use": ("input_json_delta", "partial_json")}


class AnthropicStream(StreamReader):
    """Messages streaming events: ``message_start`` (model, input tokens), each content block's start,
    its ``text_delta`` or ``input_json_delta`` pieces, then ``message_delta`` (stop reason, output
    tokens) and ``message_stop``; ``error`` is the API's error, mid-stream."""

    asks: ClassVar[dict[str, Any]] = {"stream": True}

    def start(self) -> None:
        self._message: dict[str, Any] = {"usage": {}}
        self._blocks: dict[int, dict[str, Any]] = {}  # by index, as content_block_start gave them
        self._pieces: dict[int, list[str]] = {}  # a block's text, or its input's JSON, in pieces

    def event(self, event: Event, data: Any) -> None:
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "error" or event.name == "error":
            error = data.get("error") if isinstance(data, dict) else None
            if isinstance(error, dict) and error.get("type") == "overloaded_error":
                raise DependencyError("llm", "unavailable", "overloaded (in the stream)", retryable=True)
            raise DependencyError("llm", "bad_response", "an error in the stream", retryable=True)
        if not isinstance(data, dict):
            return
        index = data.get("index")
        if kind == "message_start" and isinstance(data.get("message"), dict):
            message = data["message"]
            self._message["model"] = message.get("model")
            if isinstance(message.get("usage"), dict):
                self._message["usage"] = dict(message["usage"])
        elif kind == "content_block_start" and type(index) is int and index not in self._blocks:
            block = data.get("content_block")
            kept = isinstance(block, dict) and isinstance(block.get("type"), str) and block["type"] in _DELTAS
            if kept:  # text or tool_use; thinking is not shown
                self._blocks[index], self._pieces[index] = block, []
                if isinstance(block.get("text"), str):
                    self._piece(index, block["text"])
        elif kind == "content_block_delta" and type(index) is int and index in self._blocks:
            delta = data.get("delta")
            delta_type, field = _DELTAS[self._blocks[index]["type"]]
            if isinstance(delta, dict) and delta.get("type") == delta_type and isinstance(delta.get(field), str):
                self._piece(index, delta[field])
        elif kind == "message_delta":
            delta, usage = data.get("delta"), data.get("usage")
            if isinstance(delta, dict):
                self._message["stop_reason"] = delta.get("stop_reason")
            if isinstance(usage, dict) and "output_tokens" in usage:
                self._message["usage"]["output_tokens"] = usage["output_tokens"]
        elif kind == "message_stop":
            self.ended = True

    def _piece(self, index: int, piece: str) -> None:
        self._pieces[index].append(piece)
        if self._blocks[index]["type"] == "text":
            self.text(piece)

    def answer(self) -> dict[str, Any]:
        content = []
        for index, block in sorted(self._blocks.items()):
            joined = "".join(self._pieces[index])
            if block["type"] == "text":
                content.append({**block, "text": joined})
            else:
                try:  # no pieces: the input it started with (an empty object)
                    arguments = json.loads(joined) if joined else block.get("input")
                except ValueError:
                    arguments = None
                content.append({**block, "input": arguments})
        return {**self._message, "content": content}


def _anthropic_blocks(message: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    if message["role"] == "tool":
        return "user", [{"type": "tool_result", "tool_use_id": message["tool_call_id"], "content": message["content"]}]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": message["content"]}] if message.get("content") else []
    for call in message.get("tool_calls") or []:
        arguments = json.loads(call["function"]["arguments"])
        blocks.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": arguments})
    return message["role"], blocks
