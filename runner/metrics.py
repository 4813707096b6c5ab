"""The runner's Prometheus metrics, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

registry = CollectorRegistry()
received = Counter("runner_invocations_received_total", "Invocations taken from NATS", registry=registry)
forwarded = Counter(
    "runner_invocations_forwarded_total", "Function calls, by status class", ["status_class"], registry=registry
)
retried = Counter("runner_invocations_retried_total", "Invocations scheduled for another try", registry=registry)
dead_lettered = Counter(
    "runner_invocations_dead_lettered_total",
    "Invocations sent to the dead-letter subject, by the status class that sent them there",
    ["status_class"],
    registry=registry,
)
reply_pieces_lost = Counter(
    "runner_reply_stream_publish_failures_total",
    "Pieces of a streamed reply that could not be published on NATS (best effort: the invocation goes on)",
    registry=registry,
)
in_flight = Gauge("runner_invocations_in_flight", "Invocations being forwarded right now", registry=registry)
breaker_open = Gauge(
    "runner_function_breaker_open", "1 while the function is unreachable and the intake paused", registry=registry
)
breaker_open_seconds = Counter(
    "runner_function_breaker_open_seconds_total",
    "Time the function was unreachable (the breaker open)",
    registry=registry,
)
latency = Histogram(
    "runner_forward_latency_seconds",
    "Time of one function call",
    registry=registry,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def status_class(status: int | None) -> str:
    return f"{status // 100}xx" if status else "error"
