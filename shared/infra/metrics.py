"""Per-agent Prometheus metrics, served at GET /metrics on the agent_runtime target.

Invocations count into plain in-process tables; prometheus-client is imported only when /metrics
is scraped, and a collector then renders the tables as the families a prometheus-client
``Counter``/``Histogram`` would (same names, labels, types, buckets, ``_created`` series). A cold
start does not pay for prometheus-client. Each worker process counts its own (gunicorn runs one
table per worker).

The label sets a metric keeps are bounded: past ``MAX_SERIES``, a new set is counted under its
first label "other" (agent_id="other", tool="other"); past ``MAX_SERIES + MAX_OVERFLOW_SERIES``,
under every label "other".
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from shared.contracts import Outcome

MAX_SERIES = 1000  # label sets per metric before new ones are pooled under "other"
MAX_OVERFLOW_SERIES = 100  # label sets with a first label "other", before every label is "other"
OVERFLOW = "other"
UNKNOWN_AGENT = "unknown"  # the agent_id label of invocations for agents no source knows
INF = float("inf")

_lock = threading.Lock()  # children are added, and values changed, under it: handlers may run in threads


class _CounterChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        """Add ``amount`` (not negative: a counter only goes up)."""
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        with _lock:
            self.value += amount


class _HistogramChild:
    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative: cumulated when scraped
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        """Count ``amount`` in the first bucket whose upper bound it does not exceed."""
        i = bisect_left(self.bounds, amount)
        with _lock:
            self.sum += amount
            if i < len(self.bounds) and amount <= self.bounds[i]:  # NaN: in the sum only, as prometheus-client
                self.counts[i] += 1


class _Metric:
    """A metric's definition and its children, one per label set."""

    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        if not self.labelnames:  # prometheus-client exports an unlabelled metric from its creation
            self._children[()] = self._new()

    def _new(self) -> Any:
        raise NotImplementedError

    def labels(self, *values: str) -> Any:
        """The child for these label values, created on first use (bounded: see the module's doc)."""
        child = self._children.get(values)
        if child is None:
            child = self._add(values)
        return child

    def _add(self, values: tuple[str, ...]) -> Any:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected {len(self.labelnames)} label values, got {len(values)}")
        values = tuple(str(v) for v in values)
        with _lock:
            child = self._children.get(values)
            if child is None:
                if len(self._children) >= MAX_SERIES:
                    values = (OVERFLOW, *values[1:])
                    if values not in self._children and len(self._children) >= MAX_SERIES + MAX_OVERFLOW_SERIES:
                        values = (OVERFLOW,) * len(values)
                child = self._children.get(values)
                if child is None:
                    child = self._children[values] = self._new()
            return child

    def series(self) -> list[tuple[tuple[str, ...], Any]]:
        with _lock:
            return list(self._children.items())


class Counter(_Metric):
    kind = "counter"

    def _new(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: float = 1) -> None:
        """Of an unlabelled counter."""
        self.labels().inc(amount)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float]):
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("Buckets not in sorted order")
        if bounds[-1] != INF:
            bounds.append(INF)
        self.bounds = tuple(bounds)
        super().__init__(name, documentation, labelnames)

    def _new(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def observe(self, amount: float) -> None:
        """Of an unlabelled histogram."""
        self.labels().observe(amount)


INVOCATIONS = Counter(
    "agent_runtime_invocations", "Invocations by agent, entrypoint and outcome", ["agent_id", "entrypoint", "outcome"]
)
RESPONSE_SECONDS = Histogram(
    "agent_runtime_response_seconds",
    "Time to answer an invocation",
    ["agent_id"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STEP_SECONDS = Histogram(
    "agent_runtime_step_seconds",
    "Time spent in each step of a run (the outcome's timings: blueprint, history, memory, llm, post …)",
    ["step"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LLM_CALLS = Counter(
    "agent_runtime_llm_calls", "LLM calls by agent, provider and result", ["agent_id", "provider", "result"]
)
TOOL_CALLS = Counter("agent_runtime_tool_calls", "Tool calls by tool and result", ["tool", "result"])
MEMORY_QUERY_SECONDS = Histogram(
    "agent_runtime_memory_query_seconds",
    "agent-memory query latency",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3),
)
MOCK_FALLBACKS = Counter(
    "agent_runtime_mock_fallbacks", "Answers the keyword mock gave in place of the LLM", ["agent_id"]
)
LLM_TOKENS = Counter(
    "agent_runtime_llm_tokens",
    "LLM tokens by agent, answering model and direction (input, output); estimated where a provider reports none",
    ["agent_id", "model", "direction"],
)
LLM_COST = Counter(
    "agent_runtime_llm_cost",
    "LLM cost by agent and answering model, in the currency of the price table (llm.prices)",
    ["agent_id", "model"],
)
HANDOFFS = Counter(
    "agent_runtime_handoffs", "Messages handed from one agent to another (the handoff tool)", ["agent_id", "to"]
)
METRICS: tuple[_Metric, ...] = (
    INVOCATIONS,
    RESPONSE_SECONDS,
    STEP_SECONDS,
    LLM_CALLS,
    TOOL_CALLS,
    MEMORY_QUERY_SECONDS,
    MOCK_FALLBACKS,
    LLM_TOKENS,
    LLM_COST,
    HANDOFFS,
)


def child(metric: _Metric, *values: str) -> Any:
    """``metric.labels(*values)``: the child to ``inc()`` or ``observe()``."""
    return metric.labels(*values)


def record(outcome: Outcome) -> None:
    """What one finished invocation adds; an agent no source knows is counted under one label."""
    agent = UNKNOWN_AGENT if outcome.reason == "unknown_agent" else outcome.agent_id
    INVOCATIONS.labels(agent, outcome.entrypoint, outcome.status).inc()
    RESPONSE_SECONDS.labels(agent).observe(outcome.timings_ms.get("total", 0.0) / 1000)
    for step, ms in outcome.timings_ms.items():
        if step != "total":  # the steps are the pipeline's own names: a bounded label
            STEP_SECONDS.labels(step).observe(ms / 1000)
    if "memory" in outcome.timings_ms:
        MEMORY_QUERY_SECONDS.observe(outcome.timings_ms["memory"] / 1000)
    for call in outcome.tool_calls:
        TOOL_CALLS.labels(call["tool"], call["result"]).inc()


def record_tokens(agent_id: str, model: str, input_tokens: int, output_tokens: int, cost: float | None) -> None:
    """What one LLM call spent: its tokens, and its cost when the model is priced."""
    LLM_TOKENS.labels(agent_id, model, "input").inc(input_tokens)
    LLM_TOKENS.labels(agent_id, model, "output").inc(output_tokens)
    if cost is not None:
        LLM_COST.labels(agent_id, model).inc(cost)


# --- exposition: prometheus-client, imported on the first scrape -----------------------------


def _families(metrics: Sequence[_Metric], use_created: bool) -> Iterator[Metric]:
    from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily
    from prometheus_client.samples import Sample
    from prometheus_client.utils import floatToGoString

    for metric in metrics:
        series = metric.series()
        if isinstance(metric, Counter):
            counters = CounterMetricFamily(metric.name, metric.documentation, labels=metric.labelnames)
            for values, c in series:
                counters.add_metric(values, c.value, created=c.created if use_created else None)
            yield counters
            continue
        assert isinstance(metric, Histogram)
        histograms = HistogramMetricFamily(metric.name, metric.documentation, labels=metric.labelnames)
        les = [floatToGoString(b) for b in metric.bounds]
        for values, h in series:
            with _lock:
                counts, total, created = list(h.counts), h.sum, h.created
            cumulative, buckets = 0, []
            for le, n in zip(les, counts, strict=True):
                cumulative += n
                buckets.append((le, cumulative))
            histograms.add_metric(values, buckets, total)
            if use_created:
                labels = dict(zip(metric.labelnames, values, strict=True))
                histograms.samples.append(Sample(metric.name + "_created", labels, created, None, None))
        yield histograms


class Collector:
    """A prometheus-client collector: renders these metrics' tables each time it is collected."""

    def __init__(self, metrics: Sequence[_Metric] = METRICS) -> None:
        self.metrics = tuple(metrics)

    def collect(self) -> Iterator[Metric]:
        # prometheus-client's own switch for the _created series
        disabled = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False").lower() in ("true", "1", "t")
        yield from _families(self.metrics, not disabled)


_registry: CollectorRegistry | None = None


def registry() -> CollectorRegistry:
    """A registry of our own, so the figures are the runtime's alone: built on the first scrape."""
    global _registry
    if _registry is None:
        from prometheus_client import CollectorRegistry

        built = CollectorRegistry(auto_describe=False)
        built.register(Collector())  # type: ignore[arg-type]
        _registry = built
    return _registry


def exposition() -> tuple[bytes, str]:
    """The Prometheus text format of every metric above, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry()), CONTENT_TYPE_LATEST
