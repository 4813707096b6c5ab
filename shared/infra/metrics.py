"""Per-agent Prometheus metrics, served at GET /metrics on the agent_runtime target.

A registry of our own, so the figures are the runtime's alone. Each worker process counts its
own invocations (gunicorn runs one registry per worker).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from shared.contracts import Outcome

REGISTRY = CollectorRegistry()

INVOCATIONS = Counter(
    "agent_runtime_invocations",
    "Invocations by agent, entrypoint and outcome",
    ["agent_id", "entrypoint", "outcome"],
    registry=REGISTRY,
)
RESPONSE_SECONDS = Histogram(
    "agent_runtime_response_seconds",
    "Time to answer an invocation",
    ["agent_id"],
    registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LLM_CALLS = Counter(
    "agent_runtime_llm_calls",
    "LLM calls by agent, provider and result",
    ["agent_id", "provider", "result"],
    registry=REGISTRY,
)
TOOL_CALLS = Counter("agent_runtime_tool_calls", "Tool calls by tool and result", ["tool", "result"], registry=REGISTRY)
MEMORY_QUERY_SECONDS = Histogram(
    "agent_runtime_memory_query_seconds",
    "agent-memory query latency",
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3),
)
MOCK_FALLBACKS = Counter(
    "agent_runtime_mock_fallbacks", "Answers the keyword mock gave in place of the LLM", ["agent_id"], registry=REGISTRY
)


@lru_cache(maxsize=4096)
def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, looked up once: prometheus-client validates and locks on every call."""
    return metric.labels(*values)


def record(outcome: Outcome) -> None:
    """What one finished invocation adds."""
    child(INVOCATIONS, outcome.agent_id, outcome.entrypoint, outcome.status).inc()
    child(RESPONSE_SECONDS, outcome.agent_id).observe(outcome.timings_ms.get("total", 0.0) / 1000)
    if "memory" in outcome.timings_ms:
        MEMORY_QUERY_SECONDS.observe(outcome.timings_ms["memory"] / 1000)
    for call in outcome.tool_calls:
        child(TOOL_CALLS, call["tool"], call["result"]).inc()


def exposition() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
