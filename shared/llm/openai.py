"""Any OpenAI-compatible Chat Completions server: OpenAI, DeepSeek, vLLM, Ollama, LiteLLM …"""

from __future__ import annotations

import json
from typing import Any

from shared.clients.http import Endpoint
from shared.llm.base import ChatRequest, Completion, Provider, ToolCall, reported_usage, text_or_none


class OpenAiProvider(Provider):
    """POST {base}/chat/completions; the API key as a Bearer token."""

    name = "openai"
    system = "openai"
    path = "/chat/completions"
    probe_path = "/models"
    native_tools = True

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
