"""LLM providers, one module each; ``PROVIDERS`` is the registry that ``llm.provider`` names.

A new provider is a module with a ``Provider`` subclass and one line here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.infra import registry
from shared.llm.base import ChatRequest, Completion, Provider, ToolCall, ToolSpec, Usage

if TYPE_CHECKING:
    from shared.infra.settings import LlmSettings

PROVIDERS: dict[str, str] = {  # imported when chosen
    "proxy": "shared.llm.proxy:ProxyProvider",
    "openai": "shared.llm.openai:OpenAiProvider",
    "anthropic": "shared.llm.anthropic:AnthropicProvider",
}

__all__ = ["PROVIDERS", "ChatRequest", "Completion", "Provider", "ToolCall", "ToolSpec", "Usage", "build"]


def build(s: LlmSettings) -> Provider:
    """The configured provider (``llm.provider``), or a clear error naming the setting."""
    return registry.load(PROVIDERS, "llm.provider", s.provider).from_settings(s)
