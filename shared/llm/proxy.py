"""llm-proxy, DAARION's own gateway: plain text turns; tools through the text protocol."""

from __future__ import annotations

from typing import Any

from shared.clients.http import Endpoint
from shared.llm.base import ChatRequest, Completion, Provider, reported_usage, text_or_none
from shared.llm.openai import openai_completion
from shared.llm.text_tools import parse_tool_lines, plain_turn


class ProxyProvider(Provider):
    name = "proxy"
    system = "llm-proxy"
    path = "/internal/llm/proxy"
    probe_path = "/internal/llm/models"
    streams = False  # llm-proxy's contract has no streaming: on_text is not called, the reply comes whole

    @classmethod
    def from_settings(cls, s: Any) -> ProxyProvider:
        secret = s.secret.get_secret_value() if s.secret else None
        return cls(Endpoint("llm", s.url, secret, s.timeout_s, s.attempts))

    def body(self, request: ChatRequest) -> dict[str, Any]:
        return {
            "model": request.model,
            "messages": [plain_turn(m, request.tool_marker) for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "metadata": request.metadata,  # the proxy rate-limits per metadata.agent_id
        }

    def parse(self, data: dict[str, Any], request: ChatRequest) -> Completion | None:
        """The flat llm-proxy answer (``usage``, ``model_resolved``), or an OpenAI-style one; this run's
        tool lines become tool calls."""
        if isinstance(data.get("content"), str):
            completion = parse_tool_lines(data["content"], request.tool_marker)
        else:
            completion = openai_completion(data)
            if completion is None:
                return None
            if not completion.tool_calls:
                lines = parse_tool_lines(completion.text, request.tool_marker)
                completion.text, completion.tool_calls = lines.text, lines.tool_calls
        completion.usage = reported_usage(data, "prompt_tokens", "completion_tokens")
        completion.model = text_or_none(data.get("model_resolved")) or text_or_none(data.get("model"))
        return completion
