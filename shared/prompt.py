"""Prompt assembly: who the agent is, what it remembers, what was said."""

from __future__ import annotations

from shared.contracts import ChannelMessage, MemoryItem


def build(
    *,
    instructions: str,
    agent_id: str,
    rewrite_prompt: str | None,
    memory: list[MemoryItem],
    history: list[ChannelMessage],
    trigger: ChannelMessage,
    window: int,
    max_chars: int,
) -> list[dict[str, str]]:
    """System turn, memory turn, then the last ``window`` messages up to and including the trigger.

    Channel members only ever speak as ``user`` (or, for this agent, ``assistant``): nothing they
    write becomes system text.
    """
    system = instructions
    if rewrite_prompt:
        system += "\n\n" + rewrite_prompt[:max_chars]
    messages = [{"role": "system", "content": system}]
    if memory:
        facts = "\n".join(f"- {item.content[:max_chars]}" for item in memory)
        messages.append({"role": "system", "content": "Relevant memory (most relevant first):\n" + facts})
    upto = history.index(trigger) + 1
    for message in history[max(0, upto - window) : upto]:
        own = message.sender_id == agent_id
        messages.append({"role": "assistant" if own else "user", "content": message.text[:max_chars]})
    return messages
