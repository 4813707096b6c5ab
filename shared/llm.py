"""llm-proxy: one chat completion."""

from __future__ import annotations

from typing import Any

from shared.deadline import Deadline
from shared.http import DependencyError, Endpoint


class LlmClient:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def complete(
        self,
        *,
        model: str,
        messages: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        metadata: dict[str, Any],
        deadline: Deadline,
    ) -> str:
        if not self.endpoint.base_url:  # no LLM configured: the keyword mock answers, when allowed
            raise DependencyError(
                "llm", "unavailable", "no LLM configured (llm.url is empty)", retryable=False, sent=False
            )
        data = await self.endpoint.call(
            "POST",
            "/internal/llm/proxy",
            deadline,
            json_body={
                "model": model,
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "metadata": metadata,
            },
        )
        text = _content(data)
        if not text or not text.strip():
            raise DependencyError("llm", "bad_response", "empty completion", retryable=True)
        return text.strip()


def _content(data: Any) -> str | None:
    """The flat llm-proxy answer, or an OpenAI-style one."""
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("content"), str):
        return data["content"]
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None
