"""Per-agent figures over the last hour, kept in one-minute slots: counts, latency, tokens.

Bounded: at most ``WINDOW_MIN`` slots an agent, ``MAX_AGENTS`` agents (later ones are counted under
"other"), and a latency histogram of geometric buckets (a percentile read from it is the upper bound
of its bucket: within ``RATIO`` of the truth).
"""

from __future__ import annotations

import math
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.contracts import AGENT_ID_PATTERN

WINDOW_MIN = 60
MAX_AGENTS = 100
OTHER = "other"
RATIO = 1.1  # each latency bucket's upper bound is this times the one below
AGENT_ID = re.compile(AGENT_ID_PATTERN)  # a refused invocation's id may be anything: counted as "other"
COUNTED = frozenset({"replied", "handed_off", "skipped", "failed", "rejected", "no_answer"})  # the function's verdicts


@dataclass
class Slot:
    """One agent's minute."""

    minute: int
    invocations: int = 0
    replied: int = 0
    handed_off: int = 0  # another agent answered
    skipped: int = 0
    failed: int = 0
    mock_fallbacks: int = 0
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    with_usage: int = 0  # outcomes that said what they spent
    latency: dict[int, int] = field(default_factory=dict)  # bucket index -> count


class AgentStats:
    """What the console's Agents view shows, from the entries the feed keeps."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._agents: dict[str, deque[Slot]] = {}

    def add(self, entry: dict[str, Any]) -> None:
        if entry["status"] not in COUNTED:  # unreachable: the function never saw it
            return
        agent = entry["agent_id"] or OTHER
        if not AGENT_ID.fullmatch(agent) or (agent not in self._agents and len(self._agents) >= MAX_AGENTS):
            agent = OTHER
        slots = self._agents.setdefault(agent, deque(maxlen=WINDOW_MIN))
        minute = int(entry["at"] // 60)
        if not slots or slots[-1].minute != minute:
            slots.append(Slot(minute))
        slot = slots[-1]
        slot.invocations += 1
        status = entry["status"]
        if status in ("replied", "handed_off", "skipped"):
            setattr(slot, status, getattr(slot, status) + 1)
        else:
            slot.failed += 1
        if entry["llm_source"] == "mock" and any(n.startswith(("llm_degraded", "budget_")) for n in entry["notes"]):
            slot.mock_fallbacks += 1  # the mock answered in place of a configured LLM
        slot.tool_calls += len(entry["tool_calls"])
        if entry["usage"] is not None:
            slot.with_usage += 1
            slot.input_tokens += entry["usage"]["input_tokens"]
            slot.output_tokens += entry["usage"]["output_tokens"]
        if entry["total_ms"] is not None:
            bucket = bucket_of(entry["total_ms"])
            slot.latency[bucket] = slot.latency.get(bucket, 0) + 1

    def summary(self) -> list[dict[str, Any]]:
        """Each agent's last hour: totals, p50/p95, and per-minute series (oldest first) for the charts."""
        now = int(self._clock() // 60)
        first = now - WINDOW_MIN + 1
        agents = []
        for agent, slots in sorted(self._agents.items()):
            recent = [s for s in slots if s.minute >= first]
            if not recent:
                continue
            latency: dict[int, int] = {}
            for s in recent:
                for bucket, n in s.latency.items():
                    latency[bucket] = latency.get(bucket, 0) + n
            by_minute = {s.minute: s for s in recent}
            series = [by_minute.get(m) for m in range(first, now + 1)]
            totals = {
                name: sum(getattr(s, name) for s in recent)
                for name in (
                    "invocations",
                    "replied",
                    "handed_off",
                    "skipped",
                    "failed",
                    "mock_fallbacks",
                    "tool_calls",
                    "input_tokens",
                    "output_tokens",
                    "with_usage",
                )
            }
            agents.append(
                {
                    "agent_id": agent,
                    **totals,
                    "p50_ms": percentile(latency, 0.5),
                    "p95_ms": percentile(latency, 0.95),
                    "series": {
                        "replied": [s.replied if s else 0 for s in series],
                        "handed_off": [s.handed_off if s else 0 for s in series],
                        "skipped": [s.skipped if s else 0 for s in series],
                        "failed": [s.failed if s else 0 for s in series],
                        "p95_ms": [percentile(s.latency, 0.95) if s else None for s in series],
                    },
                }
            )
        return agents


def bucket_of(ms: float) -> int:
    """The latency bucket holding ``ms``: the smallest index whose upper bound, RATIO**index, is not below it."""
    return max(0, math.ceil(math.log(max(ms, 1e-3), RATIO) - 1e-9))


def percentile(histogram: dict[int, int], q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile; None with nothing counted."""
    total = sum(histogram.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            break
    return round(RATIO**bucket, 1)
