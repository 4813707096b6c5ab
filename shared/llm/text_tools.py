"""The text tool protocol, for models without native tools (llm-proxy): the model asks with a line
``TOOL: <name> <json arguments>`` and gets ``TOOL RESULT <name>: …`` back."""

from __future__ import annotations

import json
import re
from typing import Any

from shared.llm.base import Completion, ToolCall, ToolSpec

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


def plain_turn(message: dict[str, Any]) -> dict[str, str]:
    """A turn with only system, user or assistant text: what llm-proxy takes."""
    if message["role"] == "tool":
        return {"role": "user", "content": f"TOOL RESULT {message.get('name', '')}: {message['content']}"}
    text = message.get("content") or ""
    for call in message.get("tool_calls") or []:
        text += f"\nTOOL: {call['function']['name']} {call['function']['arguments']}"
    return {"role": message["role"], "content": text.strip()}
