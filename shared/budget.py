"""The context budget: estimate tokens without a tokenizer, and fit a prompt into a model's window.
The same estimate counts a call's usage when its provider reports none.

The estimate is deliberately pessimistic, so a fitted prompt does not overflow: about four
characters a token for ASCII text, two for everything else (Cyrillic costs more tokens per
character), plus a few tokens a message for the chat format.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from shared.llm import ChatRequest, Completion, Usage

PER_MESSAGE = 4


def estimate(text: str) -> int:
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    return math.ceil((len(text) - non_ascii) / 4 + non_ascii / 2)


def message_tokens(message: dict[str, Any]) -> int:
    tokens = PER_MESSAGE + estimate(message.get("content") or "")
    if message.get("tool_calls"):
        tokens += estimate(json.dumps(message["tool_calls"], ensure_ascii=False))
    return tokens


def estimated_usage(request: ChatRequest, completion: Completion) -> Usage:
    """What a call spent, counted as prompts are fitted: for a provider that reports no usage."""
    spent_in = sum(message_tokens(m) for m in request.messages)
    return Usage(spent_in, message_tokens(completion.as_message()), estimated=True)


@dataclass
class Fitted:
    messages: list[dict[str, Any]]
    tokens: int
    trimmed: dict[str, int] = field(default_factory=dict)


def fit(
    *,
    system: str,
    memory: list[str],
    memory_header: str,
    history: list[dict[str, Any]],
    final: dict[str, Any],
    limit: int,
    overhead: int = 0,
) -> Fitted:
    """Instructions and the final turn always; then memory, most relevant first; then history, newest first.

    ``memory`` is ordered most relevant first; ``history`` oldest first, ending before ``final``.
    ``overhead`` is what the request spends outside the messages (tool definitions).
    """
    head = {"role": "system", "content": system}
    used = overhead + message_tokens(head) + message_tokens(final)
    kept_memory: list[str] = []
    for item in memory:
        cost = estimate(item) + 1 + (0 if kept_memory else PER_MESSAGE + estimate(memory_header))
        if used + cost > limit:
            break
        kept_memory.append(item)
        used += cost
    kept_history: list[dict[str, Any]] = []
    for turn in reversed(history):
        cost = message_tokens(turn)
        if used + cost > limit:
            break
        kept_history.insert(0, turn)
        used += cost
    messages = [head]
    if kept_memory:
        messages.append({"role": "system", "content": memory_header + "\n" + "\n".join(kept_memory)})
    trimmed = {"memory": len(memory) - len(kept_memory), "history": len(history) - len(kept_history)}
    return Fitted(messages + kept_history + [final], used, {k: v for k, v in trimmed.items() if v})
