"""LLM providers against fake servers speaking their APIs, and the context budget."""

from __future__ import annotations

import json

import pytest

from shared import budget
from standins.server import Fault
from tests.conftest import invocation

ROUTE = {"proxy": "proxy", "openai": "complete", "anthropic": "complete"}
STANDIN = {"proxy": "llm", "openai": "openai", "anthropic": "anthropic"}


async def _hello(stack, client, agent_id: str = "agent:sofia") -> tuple[str, dict]:
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")
    response = await client.post("/invoke", json=invocation(channel, agent_id=agent_id))
    return channel, response


async def test_openai_provider_speaks_chat_completions(stack, configure, client):
    configure(AGENT_RUNTIME__LLM__PROVIDER="openai")

    channel, response = await _hello(stack, client)

    assert response.json()["llm_source"] == "llm"
    assert stack.messaging.replies_to(channel)[0]["text"] == "LLM reply to: hello"
    [body] = stack.openai.requests
    assert stack.openai.headers[0]["authorization"] == "Bearer test-key"
    assert body["model"] == "gpt-4" and body["messages"][-1] == {"role": "user", "content": "hello"}
    assert {t["function"]["name"] for t in body["tools"]} == {"create_task", "create_followup", "summarize_channel"}
    assert body["tool_choice"] == "auto" and "TOOL[" not in body["messages"][0]["content"]


async def test_anthropic_provider_speaks_messages(stack, configure, client):
    configure(AGENT_RUNTIME__LLM__PROVIDER="anthropic")

    channel, response = await _hello(stack, client)

    assert response.json()["llm_source"] == "llm"
    assert stack.messaging.replies_to(channel)[0]["text"] == "LLM reply to: hello"
    [body] = stack.anthropic.requests
    headers = stack.anthropic.headers[0]
    assert headers["x-api-key"] == "test-key" and headers["anthropic-version"] == "2023-06-01"
    assert body["system"].startswith("You are Sofia") and all(m["role"] != "system" for m in body["messages"])
    assert body["messages"][-1] == {"role": "user", "content": [{"type": "text", "text": "hello"}]}
    assert {t["name"] for t in body["tools"]} == {"create_task", "create_followup", "summarize_channel"}


@pytest.mark.parametrize("provider", ["proxy", "openai", "anthropic"])
async def test_429_with_retry_after_is_retried(stack, configure, client, provider):
    configure(AGENT_RUNTIME__LLM__PROVIDER=provider)
    fake = getattr(stack, STANDIN[provider])
    fake.faults.set(ROUTE[provider], Fault(status=429, headers={"Retry-After": "0"}, times=1))

    _, response = await _hello(stack, client)

    assert response.json()["llm_source"] == "llm"
    assert fake.faults.calls[ROUTE[provider]] == 2


@pytest.mark.parametrize("provider", ["proxy", "openai", "anthropic"])
async def test_a_retry_after_beyond_the_deadline_is_not_waited_for(stack, configure, client, provider):
    configure(AGENT_RUNTIME__LLM__PROVIDER=provider, AGENT_RUNTIME__LLM__MOCK_FALLBACK="false")
    fake = getattr(stack, STANDIN[provider])
    fake.faults.set(ROUTE[provider], Fault(status=429, headers={"Retry-After": "600"}))

    _, response = await _hello(stack, client)

    assert response.status_code == 503 and response.headers["retry-after"] == "600"
    assert fake.faults.calls[ROUTE[provider]] == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_wrong_api_key_falls_back_to_the_mock(stack, configure, client, provider):
    configure(AGENT_RUNTIME__LLM__PROVIDER=provider)
    getattr(stack, provider).key = "another-key"

    _, response = await _hello(stack, client)

    outcome = response.json()
    assert outcome["llm_source"] == "mock" and "llm_degraded: unauthorized" in outcome["notes"]
    assert "test-key" not in response.text


async def test_the_prompt_is_fitted_to_the_context_window(stack, configure, client):
    configure(
        AGENT_RUNTIME__LLM__MODELS='{"gpt-4": {"context_window": 900, "reply_reserve": 200}}',
        AGENT_RUNTIME__RUNTIME__HISTORY_WINDOW="50",
        AGENT_RUNTIME__AGENTS__ALLOW_UNKNOWN="true",  # the built-in agent: no blueprint's own limits
    )
    channel = stack.channel()
    for i in range(40):
        stack.messaging.add_message(channel, f"message {i:02d} " + "x" * 200)
    trigger = stack.messaging.add_message(channel, "the question")

    outcome = (await client.post("/invoke", json=invocation(channel, agent_id="agent:quiet-owl"))).json()

    [request] = stack.llm.requests
    messages = request["messages"]
    assert messages[0]["role"] == "system" and messages[-1]["content"] == "the question"
    kept = [m["content"][:10] for m in messages[1:-1]]
    assert kept == [f"message {i:02d}" for i in range(40 - len(kept), 40)]  # the newest, in order
    assert outcome["trimmed"] == {"history": 40 - len(kept)} and len(kept) > 0
    assert outcome["prompt_tokens"] <= 700 and request["max_tokens"] == 200
    assert outcome["trigger_message_id"] == trigger["id"]


def test_fit_keeps_instructions_and_final_then_memory_then_newest_history():
    history = [{"role": "user", "content": f"h{i} " + "y" * 80} for i in range(10)]
    final = {"role": "user", "content": "the trigger"}
    memory = ["- most relevant " + "m" * 60, "- less relevant " + "m" * 60, "- least " + "m" * 800]

    fitted = budget.fit(
        system="You are X." * 10, memory=memory, memory_header="Memory:", history=history, final=final, limit=200
    )

    assert fitted.messages[0]["content"].startswith("You are X.") and fitted.messages[-1] == final
    assert fitted.messages[1]["content"] == "Memory:\n" + "\n".join(memory[:2])
    assert fitted.trimmed["memory"] == 1 and fitted.trimmed["history"] >= 1
    assert fitted.messages[2:-1] == history[10 - (10 - fitted.trimmed["history"]) :]
    assert fitted.tokens <= 200
    tiny = budget.fit(system="S" * 4000, memory=memory, memory_header="M", history=history, final=final, limit=10)
    assert [m["role"] for m in tiny.messages] == ["system", "user"]  # instructions and trigger, always


def test_token_estimate_counts_cyrillic_heavier():
    assert budget.estimate("a" * 400) == 100
    assert budget.estimate("я" * 400) == 200
    assert budget.message_tokens({"role": "user", "content": json.dumps({})}) > 0
