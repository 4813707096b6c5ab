"""Handoff between agents: the built-in tool, the invocation it sends, the hop limit, exactly one reply.

Through a real nats-server: in process (the function's NATS sink, the invocation read off the
subject), and end to end (the bridge and the function as an operator runs them).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import free_port, invocation
from tests.runner_support import FunctionProcess, bridge, eventually

SUBJECT = "router.invoke.agent"


def _said(stack: Any, channel: str) -> list[tuple[str, str]]:
    """What the agents posted in the channel: (who, text)."""
    return [
        (m["sender_id"], m["content_preview"])
        for m in stack.messaging.channels[channel]
        if m["sender_id"].startswith("agent:")
    ]


@pytest.fixture
async def published(nc):
    """The invocations published on the router's subject, as the function's sink sent them."""
    seen: list[Any] = []

    async def keep(msg: Any) -> None:
        seen.append(msg)

    await nc.subscribe(SUBJECT, cb=keep)
    await nc.flush()
    return seen


@pytest.fixture
def handing(configure, nats_server):
    """The runtime in this process with the keyword mock and the NATS sink (core mode)."""

    def on(**env: str):
        return configure(LLM_PROXY_URL="", NATS_URL=nats_server.url, AGENT_RUNTIME__HANDOFF__SINK="nats", **env)

    return on


async def _ask(
    stack: Any, client: Any, text: str, agent: str = "agent:sofia", **payload: Any
) -> tuple[str, dict, dict]:
    channel = stack.channel()
    message = stack.messaging.add_message(channel, text, sender_id="user:alice")
    body = invocation(channel, agent_id=agent, message_id=message["id"], **payload)
    response = await client.post("/invoke", json=body)
    assert response.status_code == 200, response.text
    return channel, message, response.json()


async def test_sofia_hands_a_treasury_question_to_helion_who_answers_it_once(stack, client, handing, published):
    handing()
    channel, message, outcome = await _ask(stack, client, "ask Helion: how much is in the treasury?")

    assert outcome["status"] == "handed_off" and outcome["handed_off_to"] == "agent:helion"
    assert outcome["tool_calls"] == [{"tool": "handoff", "result": "ok"}]
    await eventually(lambda: len(published) == 1, what="the handoff's invocation")
    sent = json.loads(published[0].data)
    assert sent["agent_id"] == "agent:helion" and sent["entrypoint"] == "channel_message"
    assert sent["payload"]["message_id"] == message["id"] and sent["payload"]["channel_id"] == channel
    assert sent["payload"]["handoff"] == {"from_agent": "agent:sofia", "note": "how much is in the treasury", "hops": 1}
    assert published[0].headers["Nats-Msg-Id"]
    # Sofia's blueprint says so in the channel; the answer is Helion's
    assert _said(stack, channel) == [("agent:sofia", "Передаю це питання Helion: він відповість тут.")]

    answered = (await client.post("/invoke", json=sent)).json()
    assert answered["status"] == "replied" and answered["handed_off_from"] == "agent:sofia"
    assert [who for who, _ in _said(stack, channel)] == ["agent:sofia", "agent:helion"]
    assert answered["trigger_message_id"] == message["id"]

    # the router's retry of Sofia's invocation, and the sink's duplicate of Helion's: nothing more
    again = (await client.post("/invoke", json=invocation(channel, message_id=message["id"]))).json()
    assert again["status"] == "skipped" and again["reason"] == "duplicate" and again["handed_off_to"] == "agent:helion"
    twice = (await client.post("/invoke", json=sent)).json()
    assert twice["status"] == "skipped" and twice["reason"] == "duplicate"
    assert len(published) == 1 and len(_said(stack, channel)) == 2


async def test_past_the_hop_limit_the_tool_is_not_offered(stack, client, handing, published):
    handing()
    _, _, outcome = await _ask(
        stack,
        client,
        "ask Helion: how much is in the treasury?",
        handoff={"from_agent": "agent:helion", "hops": 2},
    )
    assert outcome["status"] == "replied" and outcome["handed_off_from"] == "agent:helion"
    assert outcome["tool_calls"] == [] and not published


async def test_no_sink_configured_means_no_handoff_offered(stack, client, configure):
    configure(LLM_PROXY_URL="")  # handoff.sink: none
    _, _, outcome = await _ask(stack, client, "ask Helion: how much is in the treasury?")
    assert outcome["status"] == "replied" and outcome["tool_calls"] == []


async def test_the_policy_decision_point_is_asked_and_a_deny_keeps_the_message(stack, client, handing, published):
    handing()
    stack.pdp.policy = {"agent:sofia": {"task.create"}}  # no agent.handoff
    channel, _, outcome = await _ask(stack, client, "ask Helion: how much is in the treasury?")
    assert outcome["status"] == "replied" and outcome["tool_calls"] == [{"tool": "handoff", "result": "denied"}]
    assert not published and [who for who, _ in _said(stack, channel)] == ["agent:sofia"]


async def test_only_listed_agents_can_be_named(stack, client, handing, published):
    handing(AGENT_RUNTIME__LLM__PROVIDER="openai")
    stack.openai.script = [[("handoff", {"agent_id": "agent:treasurer", "note": "pay me"})], "I will answer it myself."]
    _, _, outcome = await _ask(stack, client, "who holds the keys?")
    assert outcome["status"] == "replied" and outcome["tool_calls"] == [{"tool": "handoff", "result": "error"}]
    offered = stack.openai.requests[0]["tools"]
    [spec] = [t["function"] for t in offered if t["function"]["name"] == "handoff"]
    assert spec["parameters"]["properties"]["agent_id"]["enum"] == ["agent:helion"]
    assert "agent:helion" in stack.openai.requests[1]["messages"][-1]["content"]  # the error names who may be named
    assert not published


async def test_a_sink_that_fails_fails_the_run_retryably_and_the_retry_hands_off(
    stack, client, configure, nats_server, published
):
    configure(LLM_PROXY_URL="", NATS_URL="nats://127.0.0.1:1", AGENT_RUNTIME__HANDOFF__SINK="nats")
    channel = stack.channel()
    message = stack.messaging.add_message(channel, "ask Helion: how much is in the treasury?", sender_id="user:alice")
    response = await client.post("/invoke", json=invocation(channel, message_id=message["id"]))
    outcome = response.json()
    assert response.status_code == 503 and outcome["step"] == "handoff" and outcome["retryable"] is True
    assert _said(stack, channel) == []  # no note before the handoff is out

    configure(LLM_PROXY_URL="", NATS_URL=nats_server.url, AGENT_RUNTIME__HANDOFF__SINK="nats")
    again = (await client.post("/invoke", json=invocation(channel, message_id=message["id"]))).json()
    assert again["status"] == "handed_off"
    await eventually(lambda: len(published) == 1, what="the handoff's invocation")


# --- end to end: the bridge and the function as an operator runs them -------------------------


@pytest.fixture
async def served(stack, nats_server):
    """A function process with the NATS sink, and a bridge from the subject to it."""
    env = stack.env(LLM_PROXY_URL="", NATS_URL=nats_server.url, AGENT_RUNTIME__HANDOFF__SINK="nats")
    function = await FunctionProcess(free_port(), env).start()
    b = bridge(nats_server.url, function.url + "/invoke")
    await b.start()
    yield b
    assert await b.stop()
    await function.kill()


async def test_through_nats_sofia_hands_off_and_exactly_one_reply_comes_from_helion(stack, nc, served, published):
    channel = stack.channel()
    message = stack.messaging.add_message(channel, "запитай Helion: скільки в казні?", sender_id="user:alice")
    await nc.publish(SUBJECT, json.dumps(invocation(channel, message_id=message["id"])).encode())

    await eventually(lambda: any(who == "agent:helion" for who, _ in _said(stack, channel)), what="Helion's reply")
    await eventually(lambda: len(published) == 2, what="the router's invocation and the handoff")
    said = _said(stack, channel)
    assert [who for who, _ in said] == ["agent:sofia", "agent:helion"]  # Sofia's note, then the one reply
    assert said[0][1].startswith("Передаю це питання Helion")
    assert json.loads(published[1].data)["payload"]["message_id"] == message["id"]


async def test_a_ping_pong_pair_stops_at_the_hop_limit(stack, nc, served, published):
    stack.agents.add_agent("agent:ping", name="Ping", instructions="Ping.", handoff_to=["agent:pong"])
    stack.agents.add_agent("agent:pong", name="Pong", instructions="Pong.", handoff_to=["agent:ping"])
    channel = stack.channel()
    message = stack.messaging.add_message(channel, "ask pong, ask ping, and so on for ever", sender_id="user:alice")
    await nc.publish(SUBJECT, json.dumps(invocation(channel, agent_id="agent:ping", message_id=message["id"])).encode())

    await eventually(lambda: _said(stack, channel), what="a reply")
    await eventually(lambda: len(published) == 3, what="two hops")  # the router's, ping → pong, pong → ping
    hops = [json.loads(m.data)["payload"].get("handoff", {}).get("hops") for m in published]
    assert hops == [None, 1, 2]
    [(who, _)] = _said(stack, channel)  # the second time ping has it, it answers: no third hop
    assert who == "agent:ping"


# --- exactly once, whatever arrives and whatever fails -----------------------------------------


async def test_a_direct_answer_is_not_repeated_for_a_handoff_or_a_forged_hop(stack, client, handing):
    handing()
    channel, message, outcome = await _ask(stack, client, "how much is in the treasury?", agent="agent:helion")
    assert outcome["status"] == "replied"
    for hops in (1, 2, 5):  # Sofia's handoff of the same message, and hop counts nobody sent
        body = invocation(
            channel,
            agent_id="agent:helion",
            message_id=message["id"],
            handoff={"from_agent": "agent:sofia", "hops": hops},
        )
        again = (await client.post("/invoke", json=body)).json()
        assert again["status"] == "skipped" and again["reason"] == "duplicate"
    assert [who for who, _ in _said(stack, channel)] == ["agent:helion"]


async def test_an_agent_cannot_be_handed_a_message_by_itself(stack, client, handing):
    handing()
    channel = stack.channel()
    body = invocation(channel, agent_id="agent:sofia", handoff={"from_agent": "agent:sofia", "hops": 1})
    response = await client.post("/invoke", json=body)
    assert response.status_code == 422 and "payload.handoff.from_agent" in response.json()["error"]


def _sink(stack: Any, nats_url: str) -> Any:
    from shared import handoff
    from shared.infra import settings
    from tests.conftest import ROOT

    return handoff.build(
        settings.load(stack.env(NATS_URL=nats_url, AGENT_RUNTIME__HANDOFF__SINK="nats"), ROOT / "config.yaml")
    )


async def test_a_retry_after_a_failed_handoff_sends_that_handoff_without_asking_the_model_again(
    stack, client, configure, nats_server, published
):
    rt = configure(
        NATS_URL="nats://127.0.0.1:1", AGENT_RUNTIME__HANDOFF__SINK="nats", AGENT_RUNTIME__LLM__PROVIDER="openai"
    )
    # the first answer creates a task, then hands off; asked again, the model would answer itself
    stack.openai.script = [
        [("create_task", {"title": "check the treasury"})],
        [("handoff", {"agent_id": "agent:helion", "note": "treasury"})],
        "I will answer it myself after all.",
    ]
    channel = stack.channel()
    message = stack.messaging.add_message(channel, "how much is in the treasury?", sender_id="user:alice")
    body = invocation(channel, message_id=message["id"])
    first = await client.post("/invoke", json=body)
    assert first.status_code == 503 and first.json()["step"] == "handoff"
    asked = len(stack.openai.requests)

    rt.handoff = _sink(stack, nats_server.url)  # NATS is back
    again = (await client.post("/invoke", json=body)).json()

    assert again["status"] == "handed_off" and again["handed_off_to"] == "agent:helion"
    assert "recovered: an earlier run was handing this message on" in again["notes"]
    assert len(stack.openai.requests) == asked  # no second opinion: the decision is the record's
    assert len(stack.toolcore.calls) == 1  # the task was created once
    await eventually(lambda: len(published) == 1, what="the handoff's invocation")
    assert json.loads(published[0].data)["agent_id"] == "agent:helion"
    assert [who for who, _ in _said(stack, channel)] == ["agent:sofia"]  # the note, and no reply of Sofia's
    third = (await client.post("/invoke", json=body)).json()
    assert third["status"] == "skipped" and third["handed_off_to"] == "agent:helion"


async def test_a_handoff_left_unsent_is_answered_by_the_agent_once_handoffs_are_switched_off(stack, client, configure):
    rt = configure(LLM_PROXY_URL="", NATS_URL="nats://127.0.0.1:1", AGENT_RUNTIME__HANDOFF__SINK="nats")
    channel = stack.channel()
    message = stack.messaging.add_message(channel, "ask Helion: how much is in the treasury?", sender_id="user:alice")
    body = invocation(channel, message_id=message["id"])
    assert (await client.post("/invoke", json=body)).status_code == 503  # marked, never sent
    rt.handoff = None  # the operator switched handoffs off (handoff.sink: none)
    again = (await client.post("/invoke", json=body)).json()
    assert again["status"] == "replied" and again["tool_calls"] == []
    assert [who for who, _ in _said(stack, channel)] == ["agent:sofia"]
