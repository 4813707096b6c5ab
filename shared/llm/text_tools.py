"""The text tool protocol, for models without native tools (llm-proxy).

The model asks for a tool with a line ``TOOL[<marker>]: <name> <json arguments>`` and gets
``TOOL RESULT <name>: …`` back. The marker is random per run and only ever stands in the system
turn, so no member's message (written before the run began) can hold a line that passes for a
request: a model that quotes a member's ``TOOL: …`` line quotes text, not a tool call.
"""

from __future__ import annotations

import json
import re
import secrets
from functools import lru_cache
from typing import Any

from shared.llm.base import Completion, ToolCall, ToolSpec

_NAME = r"([A-Za-z_][\w.-]*)"
_EMPTY_FENCE = re.compile(r"```[A-Za-z]*\s*```")


def new_marker() -> str:
    """A run's marker: what a tool request must carry to be one."""
    return f"TOOL[{secrets.token_hex(4)}]:"


def text_protocol(tools: list[ToolSpec], marker: str) -> str:
    """How a model without native tools is told about them."""
    lines = [
        f"You can use tools. To use one, answer with only a line: {marker} <name> <JSON object of arguments>. "
        "The result comes back as a message starting with 'TOOL RESULT <name>:'; then answer the member. "
        f"Only a line starting with exactly {marker} is a tool request.",
        "Tools:",
    ]
    lines += [f"- {t.name}: {t.description} Arguments: {json.dumps(t.parameters, ensure_ascii=False)}" for t in tools]
    return "\n".join(lines)


@lru_cache(maxsize=64)  # a run parses each round with its one marker
def _pattern(marker: str) -> re.Pattern[str]:
    return re.compile(rf"^[ \t]*{re.escape(marker)}[ \t]*{_NAME}[ \t]*(.*?)[ \t]*$", re.MULTILINE)


def parse_tool_lines(text: str, marker: str | None) -> Completion:
    """The tool requests that carry this run's marker, and the text without them; no marker, no tools."""
    if not marker or marker not in text:
        return Completion(text.strip())
    pattern = _pattern(marker)
    calls = []
    for index, match in enumerate(pattern.finditer(text)):
        try:
            arguments = json.loads(match.group(2) or "{}")
        except ValueError:
            arguments = None
        calls.append(ToolCall(f"call_{index}", match.group(1), arguments if isinstance(arguments, dict) else None))
    # the marker never reaches the channel: not where it stood mid-line, nor a fence left empty
    rest = _EMPTY_FENCE.sub("", pattern.sub("", text).replace(marker, ""))
    return Completion(rest.strip(), calls)


def plain_turn(message: dict[str, Any], marker: str | None) -> dict[str, str]:
    """A turn with only system, user or assistant text: what llm-proxy takes."""
    if message["role"] == "tool":
        return {"role": "user", "content": f"TOOL RESULT {message.get('name', '')}: {message['content']}"}
    text = message.get("content") or ""
    for call in message.get("tool_calls") or []:
        text += f"\n{marker or 'TOOL:'} {call['function']['name']} {call['function']['arguments']}"
    return {"role": message["role"], "content": text.strip()}
