"""The runtime's metrics: plain tables on the hot path, rendered as prometheus-client would render them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import prometheus_client
import pytest

from shared.contracts import Outcome
from shared.infra import metrics

ROOT = Path(__file__).resolve().parent.parent
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _render(*collectors) -> str:
    registry = prometheus_client.CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return prometheus_client.generate_latest(registry).decode()


def _without_created_values(text: str) -> str:
    return re.sub(r"^(\w+_created(?:\{[^}]*\})?) \S+$", r"\1 T", text, flags=re.M)


def test_rendered_exactly_as_prometheus_client_renders_the_same_figures():
    ours_c = metrics.Counter("t_calls", "Calls by agent and result", ["agent_id", "result"])
    ours_h = metrics.Histogram("t_seconds", "Time", ["agent_id"], buckets=BUCKETS)
    ours_u = metrics.Histogram("t_unlabelled_seconds", "Unlabelled", buckets=(0.005, 0.01, 1, 3))
    registry = prometheus_client.CollectorRegistry()
    ref_c = prometheus_client.Counter("t_calls", "Calls by agent and result", ["agent_id", "result"], registry=registry)
    ref_h = prometheus_client.Histogram("t_seconds", "Time", ["agent_id"], buckets=BUCKETS, registry=registry)
    ref_u = prometheus_client.Histogram(
        "t_unlabelled_seconds", "Unlabelled", buckets=(0.005, 0.01, 1, 3), registry=registry
    )
    for c in (ours_c, ref_c):
        c.labels("agent:a", "ok").inc()
        c.labels("agent:a", "ok").inc(2.5)
        c.labels("agent:b", "error").inc()
    for h in (ours_h, ref_h):
        for seconds in (0.0, 0.05, 0.051, 7, 60, 61, -1, float("nan")):
            h.labels("agent:a").observe(seconds)
        h.labels("agent:b").observe(0.3)
    ours_u.observe(0.01)
    ref_u.observe(0.01)

    ours = _render(metrics.Collector((ours_c, ours_h, ours_u)))
    reference = prometheus_client.generate_latest(registry).decode()

    assert _without_created_values(ours) == _without_created_values(reference)
    assert 'le="+Inf"' in ours and "t_calls_created" in ours


def test_the_runtime_metrics_keep_their_names_labels_types_and_buckets():
    text = _render(metrics.Collector())
    types = dict(re.findall(r"^# TYPE (\w+) (\w+)$", text, flags=re.M))

    assert types["agent_runtime_invocations_total"] == "counter"
    assert types["agent_runtime_llm_calls_total"] == "counter"
    assert types["agent_runtime_tool_calls_total"] == "counter"
    assert types["agent_runtime_mock_fallbacks_total"] == "counter"
    assert types["agent_runtime_response_seconds"] == "histogram"
    assert types["agent_runtime_memory_query_seconds"] == "histogram"
    assert metrics.INVOCATIONS.labelnames == ("agent_id", "entrypoint", "outcome")
    assert metrics.LLM_CALLS.labelnames == ("agent_id", "provider", "result")
    assert metrics.TOOL_CALLS.labelnames == ("tool", "result")
    assert metrics.MOCK_FALLBACKS.labelnames == ("agent_id",)
    assert metrics.RESPONSE_SECONDS.bounds == (*map(float, BUCKETS), float("inf"))
    assert metrics.MEMORY_QUERY_SECONDS.bounds == (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3, float("inf"))
    # unlabelled: present before anything is observed, as with prometheus-client
    assert "agent_runtime_memory_query_seconds_count " in text


def test_record_adds_what_an_outcome_says():
    outcome = Outcome(
        status="replied",
        agent_id="agent:metrics-record",
        timings_ms={"total": 120.0, "memory": 7.0},
        tool_calls=[{"tool": "kb.search", "result": "ok"}],
    )
    memory_before = metrics.MEMORY_QUERY_SECONDS.labels().counts[:]

    metrics.record(outcome)
    metrics.child(metrics.LLM_CALLS, "agent:metrics-record", "proxy", "ok").inc()

    assert metrics.INVOCATIONS.labels("agent:metrics-record", "channel_message", "replied").value == 1
    response = metrics.RESPONSE_SECONDS.labels("agent:metrics-record")
    assert response.counts[2] == 1 and sum(response.counts) == 1 and response.sum == pytest.approx(0.12)
    assert metrics.MEMORY_QUERY_SECONDS.labels().counts[1] == memory_before[1] + 1  # 5 ms < 7 ms ≤ 10 ms
    assert metrics.TOOL_CALLS.labels("kb.search", "ok").value >= 1
    assert metrics.LLM_CALLS.labels("agent:metrics-record", "proxy", "ok").value == 1


def test_label_sets_are_bounded(monkeypatch):
    monkeypatch.setattr(metrics, "MAX_SERIES", 3)
    monkeypatch.setattr(metrics, "MAX_OVERFLOW_SERIES", 2)
    calls = metrics.Counter("t_bounded", "Bounded", ["agent_id", "result"])

    for i in range(50):
        calls.labels(f"agent:a{i}", "ok").inc()
        calls.labels(f"agent:a{i}", f"r{i}").inc()

    kept = dict(calls.series())
    assert len(kept) <= 3 + 2 + 1
    assert [v for v in kept if v[0] != "other"] == [("agent:a0", "ok"), ("agent:a0", "r0"), ("agent:a1", "ok")]
    assert ("other", "ok") in kept and ("other", "other") in kept
    assert sum(c.value for c in kept.values()) == 100  # nothing lost: pooled


def test_a_counter_only_goes_up_and_labels_must_match():
    calls = metrics.Counter("t_strict", "Strict", ["agent_id"])
    with pytest.raises(ValueError):
        calls.labels("agent:a").inc(-1)
    with pytest.raises(ValueError):
        calls.labels("agent:a", "extra")


def test_created_series_follow_prometheus_client_switch(monkeypatch):
    calls = metrics.Counter("t_switch", "Switch", ["agent_id"])
    calls.labels("agent:a").inc()
    monkeypatch.setenv("PROMETHEUS_DISABLE_CREATED_SERIES", "true")

    assert "_created" not in _render(metrics.Collector((calls,)))


def test_prometheus_client_is_imported_only_when_scraped():
    probe = (
        "import sys\n"
        "from shared.contracts import Outcome\n"
        "from shared.infra import metrics\n"
        "metrics.record(Outcome(status='replied', agent_id='agent:a', timings_ms={'total': 5.0}))\n"
        "metrics.child(metrics.MOCK_FALLBACKS, 'agent:a').inc()\n"
        "assert 'prometheus_client' not in sys.modules\n"
        "body, content_type = metrics.exposition()\n"
        "assert 'prometheus_client' in sys.modules and content_type.startswith('text/plain')\n"
        "assert b'agent_runtime_mock_fallbacks_total{agent_id=\"agent:a\"} 1.0' in body\n"
    )
    subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True)
