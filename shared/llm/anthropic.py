"""Anthropic's Messages API: the system prompt apart, tool_use and tool_result blocks."""

from __future__ import annotations

import json
from typing import Any

from shared.clients.http import Endpoint
from shared.llm.base import ChatRequest, Completion, Provider, ToolCall, reported_usage, text_or_none


class AnthropicProvider(Provider):
    """Anthropic's Messages API: POST {base}/v1/messages, system apart, tool_use/tool_result blocks."""

    name = "anthropic"
    system = "anthropic"
    path = "/v1/messages"
    probe_path = "/v1/models"
    native_tools = True

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


def _anthropic_blocks(message: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    if message["role"] == "tool":
        return "user", [{"type": "tool_result", "tool_use_id": message["tool_call_id"], "content": message["content"]}]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": message["content"]}] if message.get("content") else []
    for call in message.get("tool_calls") or []:
        arguments = json.loads(call["function"]["arguments"])
        blocks.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": arguments})
    return message["role"], blocks
