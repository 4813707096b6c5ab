"""The registries a setting names a backend from (LLM providers, idempotency stores, handoff sinks):
``"module:attribute"`` strings, imported when chosen, so a backend not used costs a cold start nothing."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import import_module
from typing import Any


def load(registry: Mapping[str, str], setting: str, name: str, *, others: tuple[str, ...] = ()) -> Any:
    """What ``name`` stands for in ``registry``, imported now; an unknown name is an error naming the
    setting and what it may be (``others``: the values the caller handles itself)."""
    try:
        module, _, attribute = registry[name].partition(":")
    except KeyError:
        known = ", ".join([*others, *registry])
        raise ValueError(f"{setting}: unknown {setting.split('.')[-1]} {name!r} (known: {known})") from None
    return getattr(import_module(module), attribute)
