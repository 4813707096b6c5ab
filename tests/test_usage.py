"""Token usage: read from every provider's answer (estimated where none is reported), summed in the
outcome, counted per agent and model in /metrics with its cost, and the daily budget per agent."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from shared.clients.http import Endpoint
from shared.idempotency.dynamodb import DynamoDbStore
from shared.idempotency.memory import InProcessStore
from shared.idempotency.nats import NatsKvStore
from shared.llm import ChatRequest, Provider
from shared.llm.anthropic import AnthropicProvider
from shared.llm.openai import OpenAiProvider
from shared.llm.proxy import ProxyProvider
from shared.pipeline import budget_key
from tests.aws import create_table, mocked_aws
from tests.conftest import invocation

REQUEST = ChatRequest(
    model="gpt-4", messages=[{"role": "user", "content": "hi"}], max_tokens=10, temperature=0.5, metadata={}
)


def _provider(kind: type[Provider]) -> Provider:
    return kind(Endpoint("llm", "http://127.0.0.1:9", None, 1.0, 1))


async def _ask(stack, client, text: str = "hello", agent_id: str = "agent:sofia") -> dict:
    channel = stack.channel()
    stack.messaging.add_message(channel, text)
    response = await client.post("/invoke", json=invocation(channel, agent_id=agent_id))
    assert response.status_code == 200, response.text
    return response.json()


def _sample(text: str, name: str, **labels: str) -> float | None:
    """One sample of the Prometheus text, by its labels (in any order)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    return None


# --- what each provider reports ---------------------------------------------------------------


def test_each_provider_reads_usage_model_and_finish_reason():
    openai = _provider(OpenAiProvider).parse(
        {
            "model": "gpt-4o-2024-08-06",
            "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        },
        REQUEST,
    )
    assert (openai.usage.input, openai.usage.output, openai.usage.estimated) == (12, 3, False)
    assert openai.model == "gpt-4o-2024-08-06" and openai.finish_reason == "stop"

    anthropic = _provider(AnthropicProvider).parse(
        {
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 30, "output_tokens": 4},
        },
        REQUEST,
    )
    assert (anthropic.usage.input, anthropic.usage.output) == (30, 4)
    assert anthropic.model == "claude-sonnet-4-5" and anthropic.finish_reason == "end_turn"

    usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    proxy = _provider(ProxyProvider)
    flat = proxy.parse({"content": "hi", "usage": usage, "model_resolved": "dagi-local-8b"}, REQUEST)
    assert (flat.usage.input, flat.usage.output, flat.model) == (7, 2, "dagi-local-8b")
    chat = proxy.parse({"choices": [{"message": {"content": "hi"}}], "usage": usage}, REQUEST)
    assert (chat.usage.input, chat.usage.output, chat.model) == (7, 2, None)


@pytest.mark.parametrize(
    "usage",
    [None, "12", {"prompt_tokens": -1, "completion_tokens": 2}, {"prompt_tokens": True, "completion_tokens": 2}, {}],
)
def test_usage_that_is_not_two_counts_is_not_reported(usage):
    completion = _provider(ProxyProvider).parse({"content": "hi", "usage": usage}, REQUEST)
    assert completion.usage is None


# --- the outcome ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "expected"),
    [("proxy", (10, 5)), ("openai", (21, 7)), ("anthropic", (33, 9))],
)
async def test_the_outcome_carries_what_the_provider_reported(stack, configure, client, provider, expected):
    configure(AGENT_RUNTIME__LLM__PROVIDER=provider)

    outcome = await _ask(stack, client)

    assert outcome["llm_source"] == "llm"
    assert outcome["usage"] == {
        "input_tokens": expected[0],
        "output_tokens": expected[1],
        "model": "gpt-4",
        "estimated": False,
    }


async def test_usage_is_summed_over_tool_rounds(stack, configure, client):
    configure(AGENT_RUNTIME__LLM__PROVIDER="openai")
    stack.openai.script = [[("create_task", {"title": "report"})], "done"]

    outcome = await _ask(stack, client, "create a task: report")

    assert len(stack.openai.requests) == 2 and outcome["tool_calls"] == [{"tool": "create_task", "result": "ok"}]
    assert (outcome["usage"]["input_tokens"], outcome["usage"]["output_tokens"]) == (42, 14)


async def test_usage_a_provider_does_not_report_is_estimated(stack, configure, client):
    configure(AGENT_RUNTIME__LLM__PROVIDER="openai")
    stack.openai.report_usage = False

    outcome = await _ask(stack, client, "hello " * 40)

    usage = outcome["usage"]
    assert usage["estimated"] is True and usage["model"] == "gpt-4"  # the model asked for: none was reported
    assert usage["input_tokens"] > 60 and usage["output_tokens"] > 40  # the system prompt, and the echoed question


async def test_the_mock_counts_nothing(stack, configure, client):
    configure(LLM_PROXY_URL="")

    outcome = await _ask(stack, client)

    assert outcome["llm_source"] == "mock" and "usage" not in outcome


# --- /metrics ---------------------------------------------------------------------------------


async def test_metrics_count_tokens_and_cost_per_agent_and_model(stack, configure, client):
    agent = "agent:usage-meter"
    configure(
        AGENT_RUNTIME__AGENTS__KNOWN=json.dumps([agent]),
        AGENT_RUNTIME__LLM__PRICES='{"gpt-4": {"input": 30, "output": 60}}',
    )
    for i in range(3):
        await _ask(stack, client, f"question {i}", agent_id=agent)

    text = (await client.get("/metrics")).text

    assert _sample(text, "agent_runtime_llm_tokens_total", agent_id=agent, model="gpt-4", direction="input") == 30
    assert _sample(text, "agent_runtime_llm_tokens_total", agent_id=agent, model="gpt-4", direction="output") == 15
    # 3 × (10 × 30 + 5 × 60) per million
    assert _sample(text, "agent_runtime_llm_cost_total", agent_id=agent, model="gpt-4") == pytest.approx(0.0018)


async def test_no_cost_is_counted_for_a_model_without_a_price(stack, configure, client):
    agent = "agent:usage-unpriced"
    configure(AGENT_RUNTIME__AGENTS__KNOWN=json.dumps([agent]))
    await _ask(stack, client, agent_id=agent)

    text = (await client.get("/metrics")).text

    assert _sample(text, "agent_runtime_llm_tokens_total", agent_id=agent, model="gpt-4", direction="input") == 10
    assert _sample(text, "agent_runtime_llm_cost_total", agent_id=agent, model="gpt-4") is None


# --- the daily budget -------------------------------------------------------------------------


async def test_past_its_daily_budget_an_agent_answers_with_the_mock(stack, configure, client):
    configure(
        AGENT_RUNTIME__LLM__DAILY_TOKEN_BUDGET="1000",
        AGENT_RUNTIME__LLM__AGENT_BUDGETS='{"agent:sofia": 30}',
    )

    first, second = await _ask(stack, client), await _ask(stack, client)  # 15 tokens each: 30
    third = await _ask(stack, client)
    other = await _ask(stack, client, agent_id="agent:helion")  # its budget is the default's

    assert first["llm_source"] == second["llm_source"] == "llm"
    assert third["llm_source"] == "mock" and "budget_exhausted" in third["notes"] and "usage" not in third
    assert other["llm_source"] == "llm" and "budget_exhausted" not in other["notes"]
    assert len(stack.llm.requests) == 3


async def test_the_budget_holds_without_mock_fallback(stack, configure, client):
    configure(AGENT_RUNTIME__LLM__AGENT_BUDGETS='{"agent:sofia": 0}', AGENT_RUNTIME__LLM__MOCK_FALLBACK="false")

    outcome = await _ask(stack, client)

    assert outcome["status"] == "replied" and outcome["llm_source"] == "mock"
    assert "budget_exhausted" in outcome["notes"] and stack.llm.requests == []


def test_the_budget_counts_per_utc_day():
    assert re.fullmatch(r"tokens/agent:sofia/\d{4}-\d{2}-\d{2}", budget_key("agent:sofia"))


# --- the shared counter, in every backend -----------------------------------------------------


async def test_the_in_process_counter_adds_and_expires():
    store = InProcessStore()
    assert await store.add_usage("tokens/a/d1", 0, 60) == 0
    assert await store.add_usage("tokens/a/d1", 15, 60) == 15
    assert await store.add_usage("tokens/a/d1", 5, 60) == 20
    assert await store.add_usage("tokens/a/d0", 7, -1) == 7  # made already expired
    assert await store.add_usage("tokens/a/d0", 1, 60) == 1  # a new counter
    assert await store.add_usage("tokens/a/d1", 0, 60) == 20


async def test_the_nats_kv_counter_is_shared_and_adds_atomically(nats_server):
    stores = [NatsKvStore([nats_server.url], "usage_test", 3600) for _ in range(2)]
    try:
        adds = [stores[i % 2].add_usage("tokens/agent:sofia/d", 3, 60) for i in range(20)]
        totals = await asyncio.gather(*adds)
        assert sorted(totals) == list(range(3, 61, 3))  # every add saw the ones before it, none was lost
        assert await stores[1].add_usage("tokens/agent:sofia/d", 0, 60) == 60
        assert await stores[0].add_usage("tokens/agent:helion/d", 0, 60) == 0
    finally:
        for store in stores:
            await store.close()


async def test_the_dynamodb_counter_adds_atomically(monkeypatch):
    with mocked_aws(monkeypatch):
        store = DynamoDbStore(create_table())
        assert await store.add_usage("tokens/agent:sofia/d", 0, 60) == 0
        assert await store.add_usage("tokens/agent:sofia/d", 15, 60) == 15
        assert await store.add_usage("tokens/agent:sofia/d", 15, 60) == 30
