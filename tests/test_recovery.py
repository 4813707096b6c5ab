"""Crash recovery through the pipeline, over every idempotency backend: the in-process store, NATS
JetStream KV (a real nats-server) and DynamoDB (moto). A run that died while posting leaves a marked
claim; the run that takes it over finds the reply or posts it, never two, never none."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from localstack.embedded import NatsServer
from shared import runtime
from shared.idempotency import record_key, reply_digest
from shared.idempotency.dynamodb import DynamoDbStore
from shared.infra import settings
from standins.server import Fault
from tests.aws import Clock, create_table, mocked_aws
from tests.conftest import ROOT, free_port, invocation, send_again
from tests.runner_support import eventually


@dataclass
class Backend:
    name: str
    lapse: Callable[[float], Awaitable[None]]  # let this much time pass, as the store counts it


# a post whose fate is unknown holds its message for the post's timeout and the settle time: short here
QUICK_POST = {"AGENT_RUNTIME__MESSAGING__TIMEOUT_S": "1", "AGENT_RUNTIME__MESSAGING__POST_SETTLE_S": "0"}


@pytest.fixture(params=["memory", "nats", "dynamodb"])
async def backend(request, stack, configure, monkeypatch, tmp_path):
    """The runtime, installed with each backend in turn."""
    if request.param == "memory":
        configure(**QUICK_POST)
        yield Backend("memory", asyncio.sleep)
    elif request.param == "nats":
        server = await NatsServer(port=free_port(), store_dir=str(tmp_path / "nats")).start()
        rt = configure(AGENT_RUNTIME__IDEMPOTENCY__BACKEND="nats", NATS_URL=server.url, **QUICK_POST)
        yield Backend("nats", asyncio.sleep)
        await rt.idempotency.close()
        server.stop()
    else:
        clock = Clock()

        async def advance(seconds: float) -> None:
            clock.advance(seconds)

        with mocked_aws(monkeypatch):
            store = DynamoDbStore(create_table(), clock=clock)
            s = settings.load(stack.env(**QUICK_POST), ROOT / "config.yaml")
            runtime.install(runtime.Runtime.from_settings(s, idempotency=store))
            yield Backend("dynamodb", advance)


async def crashed_while_posting(backend: Backend, key: str, reply: str) -> None:
    """What a worker killed in the middle of posting ``reply`` leaves: a marked claim that expires."""
    store = runtime.get().idempotency
    crashed = await store.claim(key, 60)
    assert await store.posting(key, crashed.token, 0.05, reply_digest(reply))
    await backend.lapse(0.1)


async def test_a_run_that_died_after_its_post_landed_is_not_answered_twice(stack, client, backend):
    channel = stack.channel()
    message = stack.messaging.add_message(channel, "hello")
    await crashed_while_posting(backend, record_key("agent:sofia", message["id"]), "the crashed run's reply")
    earlier = stack.messaging.add_message(
        channel, "the crashed run's reply", sender_id="agent:sofia", sender_type="agent"
    )

    outcome = (await client.post("/invoke", json=invocation(channel, message_id=message["id"]))).json()
    again = (await client.post("/invoke", json=invocation(channel, message_id=message["id"]))).json()

    assert outcome["status"] == "skipped" and outcome["reason"] == "duplicate"
    assert outcome["message_id"] == earlier["id"] and "recovered: an earlier run posted this reply" in outcome["notes"]
    assert again["status"] == "skipped" and again["message_id"] == earlier["id"]  # the record is complete now
    assert stack.messaging.replies_to(channel) == [] and stack.llm.requests == []


async def test_a_run_that_died_before_its_post_landed_is_answered(stack, client, backend):
    channel = stack.channel()
    message = stack.messaging.add_message(channel, "hello")
    await crashed_while_posting(backend, record_key("agent:sofia", message["id"]), "the crashed run's reply")
    stack.messaging.add_message(channel, "a later question", sender_id="user:bob")
    # the agent answered the later question meanwhile (another runner): not the lost reply
    stack.messaging.add_message(channel, "an answer to bob", sender_id="agent:sofia", sender_type="agent")

    outcome = (await client.post("/invoke", json=invocation(channel, message_id=message["id"]))).json()

    assert outcome["status"] == "replied"
    assert [p["text"] for p in stack.messaging.replies_to(channel)] == ["LLM reply to: hello"]


@pytest.mark.parametrize("landed", [True, False])
async def test_a_schedule_run_that_died_while_posting_is_found_or_posted(stack, client, backend, landed):
    """A schedule's reply is looked for after the firing: found, nothing more; not found, posted once."""
    channel = stack.channel()
    stack.messaging.add_message(channel, "something to summarise")
    cron = invocation(channel, entrypoint="cron")
    cron["payload"].update(schedule_id="daily", fire_time="2025-01-01T09:00:00Z", instruction="Post the plan.")
    key = record_key("agent:sofia", "cron:daily@2025-01-01T09:00:00+00:00")
    await crashed_while_posting(backend, key, "whatever it was")
    if landed:
        stack.messaging.add_message(channel, "whatever it was", sender_id="agent:sofia", sender_type="agent")

    outcome = (await client.post("/invoke", json=cron)).json()

    if landed:
        assert outcome["status"] == "skipped" and "recovered: an earlier run posted this reply" in outcome["notes"]
        assert stack.messaging.replies_to(channel) == []
    else:
        assert outcome["status"] == "replied" and len(stack.messaging.replies_to(channel)) == 1


async def test_a_claim_that_expired_before_posting_is_answered_whatever_the_channel_says(stack, client, backend):
    channel = stack.channel()
    message = stack.messaging.add_message(channel, "hello")
    await runtime.get().idempotency.claim(record_key("agent:sofia", message["id"]), 0.05)  # died in the LLM call
    await backend.lapse(0.1)
    stack.messaging.add_message(channel, "an answer to someone else", sender_id="agent:sofia", sender_type="agent")

    outcome = (await client.post("/invoke", json=invocation(channel, message_id=message["id"]))).json()

    assert outcome["status"] == "replied" and len(stack.messaging.replies_to(channel)) == 1


@pytest.mark.parametrize("landed", [True, False])
async def test_an_uncertain_post_is_found_or_posted_by_the_retry(stack, client, backend, landed):
    """A proxy answered 502 for the post: it may have reached messaging-service or not."""
    stack.messaging.faults.set("post", Fault(status=502, times=1))
    channel = stack.channel()
    message = stack.messaging.add_message(channel, "hello")
    body = invocation(channel, message_id=message["id"])

    first = await client.post("/invoke", json=body)
    if landed:
        stack.messaging.add_message(channel, "LLM reply to: hello", sender_id="agent:sofia", sender_type="agent")
    busy = await client.post("/invoke", json=body)  # too soon: the post may still be landing
    again = (await send_again(client, body, backend.lapse)).json()

    assert first.json()["step"] == "post" and first.json()["retryable"] is True
    assert busy.status_code == 409 and int(busy.headers["retry-after"]) >= 1
    if landed:
        assert again["status"] == "skipped" and again["reason"] == "duplicate"
        assert "recovered: an earlier run posted this reply" in again["notes"]
        assert stack.messaging.replies_to(channel) == []
    else:
        assert again["status"] == "replied" and len(stack.messaging.replies_to(channel)) == 1


async def test_a_run_cancelled_while_its_post_is_in_flight_is_never_answered_again(stack, client, backend):
    """The post was sent: it may land whenever. The cancelled run completes its record (it does not
    give it back), so the retry that comes before the post lands is a duplicate, not a second reply."""
    stack.messaging.faults.set("post", Fault(delay_s=0.5, times=1))
    channel = stack.channel()
    message = stack.messaging.add_message(channel, "hello")
    body = invocation(channel, message_id=message["id"])

    running = asyncio.create_task(client.post("/invoke", json=body))
    await eventually(lambda: stack.messaging.faults.calls.get("post", 0) == 1, what="the post on its way")
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running
    retry = (await client.post("/invoke", json=body)).json()
    await eventually(lambda: len(stack.messaging.posts) >= 1, what="the held post to land")

    assert retry["status"] == "skipped" and retry["reason"] == "duplicate"
    assert [p["text"] for p in stack.messaging.replies_to(channel)] == ["LLM reply to: hello"]


async def test_the_markers_outlive_a_run_that_took_the_record_over_and_failed(stack, client, backend):
    """Run 1 began to post and died; run 2 took over and failed before posting; run 3 must still look."""
    store = runtime.get().idempotency
    key = record_key("agent:sofia", "m-markers")
    first = await store.claim(key, 60)
    assert await store.posting(key, first.token, 0.05, reply_digest("the first reply"))
    await backend.lapse(0.1)
    second = await store.claim(key, 60)
    await store.release(key, second.token)  # failed before posting (the LLM was down, say)
    third = await store.claim(key, 60)
    assert await store.posting(key, third.token, 0.05, reply_digest("another reply"))
    await backend.lapse(0.1)

    fourth = await store.claim(key, 60)

    assert second.posted == third.posted == (reply_digest("the first reply"),)
    assert fourth.posted == (reply_digest("the first reply"), reply_digest("another reply"))
