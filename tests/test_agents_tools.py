"""Tools: a round trip through the PDP and toolcore, their failures, the built-in summary, the mock."""

from __future__ import annotations

import json

from standins.server import Fault
from tests.conftest import invocation

CREATE = '{tool} create_task {"title": "Write the budget"}'  # {tool}: the run's marker


async def _ask(stack, client, text: str = "please make a task for the budget") -> tuple[str, dict]:
    channel = stack.channel()
    stack.messaging.add_message(channel, text)
    response = await client.post("/invoke", json=invocation(channel))
    return channel, response.json()


def _tool_result(request: dict) -> dict:
    """The tool's result as the LLM saw it (llm-proxy's text protocol)."""
    [line] = [m["content"] for m in request["messages"] if m["content"].startswith("TOOL RESULT")]
    return json.loads(line.split(": ", 1)[1])


async def test_a_permitted_tool_runs_and_its_result_goes_back_to_the_llm(stack, client):
    stack.llm.script = [CREATE, "Created the task."]

    channel, outcome = await _ask(stack, client)

    assert outcome["status"] == "replied" and outcome["tool_calls"] == [{"tool": "create_task", "result": "ok"}]
    [evaluation] = stack.pdp.requests
    assert evaluation["action"] == "exec_tool" and evaluation["resource"] == {"type": "tool", "id": "task.create"}
    assert evaluation["actor"]["actor_id"] == "agent:sofia" and evaluation["actor"]["actor_type"] == "agent"
    [call] = stack.toolcore.calls
    assert call["tool_id"] == "task.create" and call["args"] == {"title": "Write the budget"}
    assert call["agent_id"] == "agent:sofia" and call["microdao_id"] == "microdao:daarion"
    first, second = stack.llm.requests
    assert "TOOL[" in first["messages"][0]["content"]  # the protocol is explained to llm-proxy
    assert _tool_result(second)["ok"] is True and _tool_result(second)["result"]["title"] == "Write the budget"
    assert stack.messaging.replies_to(channel)[0]["text"] == "Created the task."


async def test_a_denied_tool_does_not_run(stack, client):
    stack.pdp.effect = "deny"
    stack.llm.script = [CREATE, "I may not create tasks here."]

    channel, outcome = await _ask(stack, client)

    assert outcome["status"] == "replied" and outcome["tool_calls"] == [{"tool": "create_task", "result": "denied"}]
    assert stack.toolcore.calls == []
    assert _tool_result(stack.llm.requests[1]) == {"ok": False, "error": "not permitted by policy"}
    assert stack.messaging.replies_to(channel)[0]["text"] == "I may not create tasks here."


async def test_a_failing_toolcore_never_fails_the_invocation(stack, client):
    stack.toolcore.faults.set("call", Fault(status=500))
    stack.llm.script = [CREATE, "The tracker is down, I'll retry later."]

    channel, outcome = await _ask(stack, client)

    assert outcome["status"] == "replied" and outcome["tool_calls"] == [{"tool": "create_task", "result": "error"}]
    assert _tool_result(stack.llm.requests[1]) == {"ok": False, "error": "toolcore: HTTP 500"}
    assert stack.toolcore.faults.calls["call"] == 1  # a call that reached toolcore is never repeated
    assert len(stack.messaging.replies_to(channel)) == 1


async def test_a_tool_that_acted_is_not_run_again_when_the_post_fails(stack, client):
    stack.messaging.faults.set("post", Fault(status=500, times=1))
    stack.llm.script = [CREATE, "Created."]
    channel = stack.channel()
    message = stack.messaging.add_message(channel, "make a task")
    body = invocation(channel, message_id=message["id"])

    failed = await client.post("/invoke", json=body)
    again = (await client.post("/invoke", json=body)).json()

    assert failed.status_code == 503 and again["status"] == "skipped" and again["reason"] == "duplicate"
    assert len(stack.toolcore.calls) == 1


async def test_summarize_channel_is_built_in(stack, client):
    stack.llm.script = ["{tool} summarize_channel {}", "Here is the gist."]

    _, outcome = await _ask(stack, client, "summarise the channel please")

    assert outcome["tool_calls"] == [{"tool": "summarize_channel", "result": "ok"}]
    assert stack.toolcore.calls == [] and stack.pdp.requests[0]["resource"]["id"] == "summarize_channel"
    digest = _tool_result(stack.llm.requests[1])["result"]
    assert digest.startswith("1 messages from 1 participants") and "summarise the channel please" in digest


async def test_tool_rounds_stop_after_max_tool_steps(stack, configure, client):
    configure(AGENT_RUNTIME__LLM__PROVIDER="openai", AGENT_RUNTIME__TOOLS__MAX_TOOL_STEPS="2")
    stack.openai.script = [[("create_task", {"title": f"t{i}"})] for i in range(3)] + ["never asked"]

    _, outcome = await _ask(stack, client)

    assert outcome["status"] == "replied" and len(stack.toolcore.calls) == 2
    assert [r["tool_choice"] for r in stack.openai.requests] == ["auto", "auto", "none"]
    tool_turns = [m for m in stack.openai.requests[1]["messages"] if m["role"] == "tool"]
    assert tool_turns[0]["tool_call_id"] == "call_0" and "name" not in tool_turns[0]


async def test_anthropic_tool_use_round_trip(stack, configure, client):
    configure(AGENT_RUNTIME__LLM__PROVIDER="anthropic")
    stack.anthropic.script = [[("create_task", {"title": "Ship it"})], "Task created."]

    channel, outcome = await _ask(stack, client)

    assert outcome["tool_calls"] == [{"tool": "create_task", "result": "ok"}]
    last = stack.anthropic.requests[1]["messages"]
    assert last[-2]["content"][-1] == {
        "type": "tool_use",
        "id": "toolu_0",
        "name": "create_task",
        "input": {"title": "Ship it"},
    }
    assert last[-1]["content"][0]["type"] == "tool_result" and last[-1]["content"][0]["tool_use_id"] == "toolu_0"
    assert stack.messaging.replies_to(channel)[0]["text"] == "Task created."


async def test_the_mock_creates_a_task_without_an_llm(stack, configure, client):
    configure(LLM_PROXY_URL="")

    channel, outcome = await _ask(stack, client, "Створи задачу: підготувати звіт для DAO")

    assert outcome["llm_source"] == "mock" and outcome["tool_calls"] == [{"tool": "create_task", "result": "ok"}]
    assert stack.toolcore.calls[0]["args"] == {"title": "підготувати звіт для DAO"}
    reply = stack.messaging.replies_to(channel)[0]["text"]
    assert reply.startswith("Готово: create_task виконано («підготувати звіт для DAO», id ")  # what it created


async def test_a_tool_the_blueprint_lacks_is_refused(stack, client):
    stack.llm.script = ["{tool} list_projects {}", "ok"]  # Sofia has no list_projects

    _, outcome = await _ask(stack, client)

    assert outcome["tool_calls"] == [{"tool": "list_projects", "result": "error"}] and stack.pdp.requests == []
