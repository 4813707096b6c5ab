"""The entrypoints: channel_message (tested throughout), direct, cron; and the metrics they add up to."""

from __future__ import annotations

import re

from tests.conftest import free_port, invocation

FIRED = "2026-03-01T09:00:00Z"


def cron(channel: str, **payload) -> dict:
    return invocation(channel, entrypoint="cron", schedule_id="daily-digest", fire_time=FIRED, **payload)


async def test_direct_message_is_answered_in_the_dm_channel(stack, client):
    dm = stack.channel()
    message = stack.messaging.add_message(dm, "hi, a private question?")

    outcome = (await client.post("/invoke", json=invocation(dm, entrypoint="direct", message_id=message["id"]))).json()

    assert outcome["status"] == "replied" and outcome["entrypoint"] == "direct"
    assert stack.messaging.replies_to(dm)[0]["text"] == "LLM reply to: hi, a private question?"
    assert "direct, private conversation" in stack.llm.requests[0]["messages"][0]["content"]


async def test_cron_instruction_posts_the_result(stack, client):
    channel = stack.channel()
    stack.messaging.add_message(channel, "we shipped the voting page")

    outcome = (await client.post("/invoke", json=cron(channel, instruction="Post a short weekly plan."))).json()

    assert outcome["status"] == "replied" and outcome["entrypoint"] == "cron"
    assert stack.messaging.replies_to(channel)[0]["text"] == "LLM reply to: Post a short weekly plan."
    messages = stack.llm.requests[0]["messages"]
    assert "scheduled run" in messages[0]["content"]
    assert {"role": "user", "content": "we shipped the voting page"} in messages  # the channel as context


async def test_cron_summarize_channel_digests_the_history(stack, client):
    channel = stack.channel()
    stack.messaging.add_message(channel, "Budget proposal is up for vote", sender_id="user:alice")
    stack.messaging.add_message(channel, "I will review it tomorrow", sender_id="user:bob")
    stack.llm.script = ["Summary: a budget vote is open; Bob reviews it tomorrow."]

    outcome = (await client.post("/invoke", json=cron(channel, task="summarize_channel"))).json()

    assert outcome["status"] == "replied" and outcome["tool_calls"] == [{"tool": "summarize_channel", "result": "ok"}]
    assert stack.messaging.replies_to(channel)[0]["text"] == "Summary: a budget vote is open; Bob reviews it tomorrow."
    # the LLM got the runtime's digest as the tool's result (llm-proxy speaks the text protocol)
    [digest] = [m["content"] for m in stack.llm.requests[0]["messages"] if m["content"].startswith("TOOL RESULT")]
    assert "2 messages from 2 participants" in digest and "user:bob: I will review it tomorrow" in digest


async def test_cron_summary_without_an_llm_posts_the_digest(stack, configure, client):
    configure(LLM_PROXY_URL="")
    channel = stack.channel()
    stack.messaging.add_message(channel, "Budget proposal is up for vote", sender_id="user:alice")

    outcome = (await client.post("/invoke", json=cron(channel, task="summarize_channel"))).json()

    assert outcome["llm_source"] == "mock"
    text = stack.messaging.replies_to(channel)[0]["text"]
    assert text.startswith("1 messages from 1 participants") and "user:alice: Budget proposal" in text


async def test_cron_runs_once_per_schedule_and_fire_time(stack, client):
    channel = stack.channel()
    body = cron(channel, instruction="Remind everyone about the vote.")

    first = (await client.post("/invoke", json=body)).json()
    again = (await client.post("/invoke", json=body)).json()
    later = cron(channel, instruction="Remind everyone about the vote.")
    later["payload"]["fire_time"] = "2026-03-02T09:00:00Z"
    next_day = (await client.post("/invoke", json=later)).json()

    assert (first["status"], again["status"], again["reason"], next_day["status"]) == (
        "replied",
        "skipped",
        "duplicate",
        "replied",
    )
    assert len(stack.messaging.replies_to(channel)) == 2


async def test_cron_payload_must_name_its_schedule(client, stack):
    body = invocation(stack.channel(), entrypoint="cron", instruction="x")

    response = await client.post("/invoke", json=body)

    assert response.status_code == 422
    assert {d["field"] for d in response.json()["detail"]} == {"payload.schedule_id", "payload.fire_time"}


async def test_metrics_count_invocations_llm_calls_tools_and_fallbacks(stack, configure, client):
    channel = stack.channel()
    before = _samples((await client.get("/metrics")).text)
    for text in ("hello", "how are you?"):
        stack.messaging.add_message(channel, text)
        await client.post("/invoke", json=invocation(channel, agent_id="agent:helion"))
    await client.post("/invoke", json=invocation(channel, agent_id="agent:helion"))  # a duplicate
    configure(LLM_PROXY_URL=f"http://127.0.0.1:{free_port()}")  # unreachable: the call fails, the mock answers
    stack.messaging.add_message(channel, "and now?")
    await client.post("/invoke", json=invocation(channel, agent_id="agent:helion"))

    response = await client.get("/metrics")

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = _samples(response.text)

    def added(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    helion = {"agent_id": "agent:helion"}
    assert added("agent_runtime_invocations_total", **helion, entrypoint="channel_message", outcome="replied") == 3
    assert added("agent_runtime_invocations_total", **helion, entrypoint="channel_message", outcome="skipped") == 1
    assert added("agent_runtime_llm_calls_total", **helion, provider="proxy", result="ok") == 2
    assert added("agent_runtime_llm_calls_total", **helion, provider="proxy", result="error") == 1
    assert added("agent_runtime_mock_fallbacks_total", **helion) == 1
    assert added("agent_runtime_response_seconds_count", **helion) == 4
    assert added("agent_runtime_memory_query_seconds_count") == 3


async def test_metrics_need_the_secret_when_one_is_set(configure, client):
    configure(AGENT_RUNTIME_SECRET="s3cret")
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})).status_code == 200


_SAMPLE = re.compile(r"^(\w+)(?:\{(.*)\})? (\S+)$")


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for line in text.splitlines():
        if (match := _SAMPLE.match(line)) and not line.startswith("#"):
            labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', match.group(2) or "")))
            out[(match.group(1), labels)] = float(match.group(3))
    return out
