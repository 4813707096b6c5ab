"""LLM providers, one module each; ``PROVIDERS`` is the registry that ``llm.provider`` names.

A new provider is a module with a ``Provider`` subclass and one line here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.llm.anthropic import AnthropicProvider
from shared.llm.base import ChatRequest, Completion, Provider, ToolCall, ToolSpec, Usage
from shared.llm.openai import OpenAiProvider
from shared.llm.proxy import ProxyProvider

if TYPE_CHECKING:
    from shared.infra.settings import LlmSettings

PROVIDERS: dict[str, type[Provider]] = {
    "proxy": ProxyProvider,
    "openai": OpenAiProvider,
    "anthropic": AnthropicProvider,
}

__all__ = ["PROVIDERS", "ChatRequest", "Completion", "Provider", "ToolCall", "ToolSpec", "Usage", "build"]


def build(s: LlmSettings) -> Provider:
    """The configured provider (``llm.provider``), or a clear error naming the setting."""
    try:
        kind = PROVIDERS[s.provider]
    except KeyError:
        raise ValueError(f"llm.provider: unknown provider {s.provider!r} (known: {', '.join(PROVIDERS)})") from None
    return kind.from_settings(s)
