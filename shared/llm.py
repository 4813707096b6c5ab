"""LLM providers: llm-proxy (the default), any OpenAI-compatible Chat Completions server, Anthropic's
Messages API. Each speaks its HTTP API through ``Endpoint`` (timeouts, retries of 429/5xx honouring
Retry-After, the deadline); no provider SDK is imported.

A conversation is kept in the Chat Completions shape (``tool_calls`` on assistant turns, ``tool``
turns with the results); each provider translates it. llm-proxy answers plain text, so tools go
through a text protocol there: the model asks with a line ``TOOL: <name> <json arguments>``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from shared.deadline import Deadline
from shared.http import DependencyError, Endpoint


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any] | None  # None: the model sent arguments that are not a JSON object


@dataclass
class Completion:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)

    def as_message(self) -> dict[str, Any]:
        """The assistant turn that asked for the tools, to send back with their results."""
        return {
            "role": "assistant",
            "content": self.text,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments or {}, ensure_ascii=False)},
                }
                for c in self.tool_calls
            ],
        }


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float
    metadata: dict[str, Any]
    tools: list[ToolSpec] = field(default_factory=list)
    allow_tools: bool = True  # False: the model must answer in text now


class Provider:
    name = "proxy"
    path = "/internal/llm/proxy"
    probe_path = "/internal/llm/models"
    native_tools = False  # True: tools travel as API fields, not in the system prompt

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def complete(self, request: ChatRequest, deadline: Deadline) -> Completion:
        if not self.endpoint.base_url:  # no LLM configured: the keyword mock answers, when allowed
            raise DependencyError(
                "llm", "unavailable", "no LLM configured (its url is empty)", retryable=False, sent=False
            )
        data = await self.endpoint.call("POST", self.path, deadline, json_body=self.body(request))
        completion = self.parse(data) if isinstance(data, dict) else None
        if completion is None or not (completion.text.strip() or completion.tool_calls):
            raise DependencyError("llm", "bad_response", "empty completion", retryable=True)
        completion.text = completion.text.strip()
        return completion

    def body(self, request: ChatRequest) -> dict[str, Any]:
        return {
            "model": request.model,
            "messages": [_plain(m) for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "metadata": request.metadata,  # the proxy rate-limits per metadata.agent_id
        }

    def parse(self, data: dict[str, Any]) -> Completion | None:
        """The flat llm-proxy answer, or an OpenAI-style one; TOOL lines become tool calls."""
        if isinstance(data.get("content"), str):
            return parse_tool_lines(data["content"])
        completion = _openai_completion(data)
        if completion is not None and not completion.tool_calls:
            return parse_tool_lines(completion.text)
        return completion


class OpenAiProvider(Provider):
    """OpenAI, DeepSeek, vLLM, Ollama, LiteLLM …: POST {base}/chat/completions."""

    name = "openai"
    path = "/chat/completions"
    probe_path = "/models"
    native_tools = True

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

    def parse(self, data: dict[str, Any]) -> Completion | None:
        return _openai_completion(data)


class AnthropicProvider(Provider):
    """Anthropic's Messages API: POST {base}/v1/messages, system apart, tool_use/tool_result blocks."""

    name = "anthropic"
    path = "/v1/messages"
    probe_path = "/v1/models"
    native_tools = True

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

    def parse(self, data: dict[str, Any]) -> Completion | None:
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
        return Completion(text, calls)


PROVIDERS: dict[str, type[Provider]] = {"proxy": Provider, "openai": OpenAiProvider, "anthropic": AnthropicProvider}


# --- the wire formats ----------------------------------------------------------------------

TOOL_LINE = re.compile(r"^[ \t]*TOOL:[ \t]*([A-Za-z_][\w.-]*)[ \t]*(.*?)[ \t]*$", re.MULTILINE)


def text_protocol(tools: list[ToolSpec]) -> str:
    """How a model without native tools is told about them (llm-proxy)."""
    lines = [
        "You can use tools. To use one, answer with only a line: TOOL: <name> <JSON object of arguments>. "
        "The result comes back as a message starting with 'TOOL RESULT <name>:'; then answer the member.",
        "Tools:",
    ]
    lines += [f"- {t.name}: {t.description} Arguments: {json.dumps(t.parameters, ensure_ascii=False)}" for t in tools]
    return "\n".join(lines)


def parse_tool_lines(text: str) -> Completion:
    calls = []
    for index, match in enumerate(TOOL_LINE.finditer(text)):
        try:
            arguments = json.loads(match.group(2) or "{}")
        except ValueError:
            arguments = None
        calls.append(ToolCall(f"call_{index}", match.group(1), arguments if isinstance(arguments, dict) else None))
    return Completion(TOOL_LINE.sub("", text).strip(), calls)


def _plain(message: dict[str, Any]) -> dict[str, str]:
    """A turn with only system, user or assistant text: what llm-proxy takes."""
    if message["role"] == "tool":
        return {"role": "user", "content": f"TOOL RESULT {message.get('name', '')}: {message['content']}"}
    text = message.get("content") or ""
    for call in message.get("tool_calls") or []:
        text += f"\nTOOL: {call['function']['name']} {call['function']['arguments']}"
    return {"role": message["role"], "content": text.strip()}


def _anthropic_blocks(message: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    if message["role"] == "tool":
        return "user", [{"type": "tool_result", "tool_use_id": message["tool_call_id"], "content": message["content"]}]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": message["content"]}] if message.get("content") else []
    for call in message.get("tool_calls") or []:
        arguments = json.loads(call["function"]["arguments"])
        blocks.append({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": arguments})
    return message["role"], blocks


def _openai_completion(data: dict[str, Any]) -> Completion | None:
    try:
        message = data["choices"][0]["message"]
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
    return Completion(content if isinstance(content, str) else "", calls)
