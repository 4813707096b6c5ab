"""deploy/grafana/agent-runtime.json asks only for what the runtime exports: every PromQL selector in
it names a metric, and labels, found in a real scrape of the function's and the runner's /metrics
after invocations that exercise them."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.clients import http as shared_http
from standins.server import Fault, Served
from tests.conftest import ROOT
from tests.console_support import start_console
from tests.runner_support import eventually

DASHBOARD = ROOT / "deploy" / "grafana" / "agent-runtime.json"
CREATE = '{tool} create_task {"title": "Write the budget"}'  # {tool}: the run's marker (tests/test_agents_tools.py)

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*""\s*,?')
IDENT = re.compile(r"\b[a-zA-Z_:][\w:]*\b(?!\s*\()")


def selectors(expr: str) -> tuple[dict[str, set[str]], set[str]]:
    """The metrics a PromQL expression selects, each with the labels its matchers name, and the labels
    its grouping clauses name (by, without, on, ignoring …)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string values: nothing in them is a name
    grouping = {label.strip() for _, labels in GROUPING.findall(expr) for label in labels.split(",") if label.strip()}
    expr = GROUPING.sub(" ", expr)
    metrics: dict[str, set[str]] = defaultdict(set)
    for name, matchers in SELECTOR.findall(expr):
        metrics[name] |= {m.group(1) for m in MATCHER.finditer(matchers)}
        assert MATCHER.sub("", matchers).strip() == "", f"unparsed matchers {matchers!r} in {expr}"
    expr = SELECTOR.sub(" ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges, with Grafana's $__rate_interval
    for name in IDENT.findall(expr):
        if name not in KEYWORDS:
            metrics.setdefault(name, set())
    return dict(metrics), grouping


def test_the_promql_reader_finds_selectors_matchers_and_grouping():
    found, grouping = selectors(
        'histogram_quantile(0.95, sum by (le, step) (rate(a_bucket{agent_id=~"$agent", x!="a,b}"}[$__rate_interval])))'
        " / ignoring(step) b_total * 60 offset 5m"
    )
    assert found == {"a_bucket": {"agent_id", "x"}, "b_total": set()}
    assert grouping == {"le", "step"}


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    """Every (panel, PromQL) of the dashboard, the variables' label_values() queries included."""
    found = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"]).groups()
            found.append((f"${variable['name']}", f"sum by ({label}) ({metric})"))
    return found


def exported(*scrapes: str) -> dict[str, set[str]]:
    """Each series name a scrape exposes (``_bucket``, ``_sum``, ``_count``, ``_total`` …) with its labels."""
    labels: dict[str, set[str]] = defaultdict(set)
    for text in scrapes:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels[sample.name] |= set(sample.labels)
    return dict(labels)


def test_the_dashboard_is_a_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] and dashboard["schemaVersion"] >= 36
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs))


@pytest.fixture
def exercised_function(asgi_apps, configure):
    """The real agent_runtime target, with a priced model so that cost is counted too."""
    configure(AGENT_RUNTIME__LLM__PRICES='{"gpt-4": {"input": 30, "output": 60}}')
    served = Served(asgi_apps["agent_runtime"], on_stop=shared_http.aclose)
    yield served.url
    served.stop()


async def test_every_query_names_metrics_and_labels_the_runtime_exports(stack, nats_server, exercised_function):
    run = await start_console(nats_server.url, f"{exercised_function}/invoke", stack.url("messaging"), secret=None)
    try:
        channel = stack.channel()
        await run.say(stack.messaging, channel, "hello")  # the LLM answers: calls, tokens, cost, steps
        stack.llm.script = [CREATE, "Created."]
        await run.say(stack.messaging, channel, "make a task")  # a tool call
        await eventually(lambda: len(stack.messaging.replies_to(channel)) == 2, what="two replies")
        stack.llm.faults.set("proxy", Fault(status=503))
        await run.say(stack.messaging, channel, "still there?")  # the LLM fails: the mock answers
        await eventually(lambda: len(stack.messaging.replies_to(channel)) == 3, what="the mock's reply")
        stack.llm.faults.set("proxy", None)
        stack.messaging.members = {channel: set()}
        await run.say(stack.messaging, channel, "let me in")  # refused: a dead letter
        await eventually(lambda: any(e["status"] == "failed" for e in run.feed.recent()), what="the refusal")
        async with httpx.AsyncClient(timeout=10) as client:
            function = (await client.get(f"{exercised_function}/metrics")).text
            runner = (await client.get(f"{run.url}/metrics")).text
    finally:
        await run.stop()

    series = exported(function, runner)
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    problems = []
    for title, expr in expressions(dashboard):
        metrics, grouping = selectors(expr)
        assert metrics, f"{title}: no metric in {expr}"
        for name, matched in metrics.items():
            if name not in series:
                problems.append(f"{title}: {name} is not exported")
            elif missing := matched - series[name]:
                problems.append(f"{title}: {name} has no label {sorted(missing)}")
        known = set().union(*(series.get(name, set()) for name in metrics))
        if missing := grouping - known:
            problems.append(f"{title}: grouped by {sorted(missing)}, which {sorted(metrics)} do not carry")
    assert problems == []
    # what the dashboard promises to show is there: steps, tokens, the bridge
    assert {"agent_runtime_step_seconds_bucket", "agent_runtime_llm_tokens_total"} <= set(series)
    assert "runner_invocations_dead_lettered_total" in series
