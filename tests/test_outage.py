"""The function unreachable: the bridge's circuit breaker holds the messages, spends none of their
deliveries, says so in /health and /metrics, and answers every one once the function is back."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from runner import metrics
from runner.forward import answered, health_url
from standins.server import Served
from tests.conftest import free_port, invocation
from tests.runner_support import FunctionProcess, ScriptedFunction, body_for, bridge, dead_letters, eventually, failed

SUBJECT = "router.invoke.agent"
DLQ = f"{SUBJECT}.dlq"
STREAM, DURABLE = "AGENT_INVOCATIONS", "agent-runtime"
MODES = ["core", "jetstream"]


class Restartable:
    """A scripted function on a fixed port that goes away and comes back."""

    def __init__(self) -> None:
        self.fn = ScriptedFunction()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/invoke"
        self._served: Served | None = None

    def up(self) -> None:
        self._served = Served(self.fn.app, port=self.port)

    def down(self) -> None:
        if self._served is not None:
            self._served.stop()
            self._served = None


@pytest.fixture
def function():
    f = Restartable()
    yield f
    f.down()


def sample(name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


# --- the one rule: who answered ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "reachable"),
    [
        (200, b'{"status": "replied"}', True),
        (503, json.dumps(failed("messaging: HTTP 503")).encode(), True),  # the function's verdict: a dependency
        (502, json.dumps(failed("llm: bad answer")).encode(), True),
        (504, json.dumps(failed("llm: timeout")).encode(), True),
        (500, b"Internal Server Error", True),  # a defect of the function, not a gateway
        (424, b'{"status": "failed"}', True),
        (502, b"<html><body>502 Bad Gateway</body></html>", False),  # a proxy with nothing behind it
        (503, b"no healthy upstream", False),
        (504, b"", False),
        (503, b'{"message": "Service Unavailable"}', False),  # a gateway's own JSON is not an outcome
        (503, b'{"status": 503, "error": "Service Unavailable"}', False),
    ],
)
def test_a_gateway_error_without_the_functions_outcome_means_unreachable(status, body, reachable):
    assert answered(status, body).reachable is reachable


@pytest.mark.parametrize(
    ("function_url", "health"),
    [
        ("http://agent-runtime:7006/invoke", "http://agent-runtime:7006/health"),
        ("https://gw.example/agents/runtime/invoke?x=1", "https://gw.example/agents/runtime/health"),
        ("http://fn:8080/", "http://fn:8080/health"),
    ],
)
def test_the_probe_asks_health_beside_the_invoke_path(function_url, health):
    assert health_url(function_url) == health


# --- the breaker, against a function that goes away -----------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_messages_taken_while_the_function_is_down_are_held_and_answered_when_it_is_back(
    nats_server, nc, function, mode
):
    """max_deliver=1: a single spent delivery would dead-letter. The outage outlasts the ack wait."""
    letters = await dead_letters(nc)
    channel = str(uuid.uuid4())
    bodies = [body_for(channel, rewrite_prompt=f"n{i}") for i in range(4)] + [body_for() for _ in range(4)]
    b = bridge(nats_server.url, function.url, mode=mode, max_deliver=1, ack_wait_s=1.0)
    await b.start()
    opened_for = sample("runner_function_breaker_open_seconds_total")
    try:
        for body in bodies:
            await nc.publish(SUBJECT, body)
        await nc.flush()
        await eventually(lambda: b.breaker.is_open, what="the breaker to open")
        health = b.health()
        assert health["status"] == "degraded" and health["nats_connected"] is True
        assert health["function"]["reachable"] is False
        assert "connection failed" in health["function"]["reason"]
        assert sample("runner_function_breaker_open") == 1
        # held past the ack wait: JetStream is kept from redelivering them meanwhile
        await eventually(
            lambda: sample("runner_function_breaker_open_seconds_total") - opened_for > 2.5, what="a long outage"
        )
        function.up()
        await eventually(lambda: len(function.fn.completed) == len(bodies), what="every invocation answered")
        await eventually(lambda: not b.breaker.is_open, what="the breaker to close")
        assert b.health()["status"] == "ok" and sample("runner_function_breaker_open") == 0
    finally:
        assert await b.stop()
    assert sorted(function.fn.completed) == sorted(bodies)  # each once: held, not retried
    mine = [c for c in function.fn.completed if c in bodies[:4]]
    assert mine == bodies[:4]  # the channel's order holds through the outage
    assert letters == []
    if mode == "jetstream":
        info = await nc.jetstream().consumer_info(STREAM, DURABLE)
        assert info.num_redelivered == 0 and info.num_ack_pending == 0 and info.num_pending == 0


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        ((502, "<html>502 Bad Gateway</html>", {}), "answered"),  # a proxy: the function is down
        ((503, failed("messaging: HTTP 503"), {}), "dead-lettered"),  # the function: a dependency is down
    ],
)
async def test_only_the_functions_own_5xx_spends_a_delivery(nats_server, nc, function, answer, outcome):
    letters = await dead_letters(nc)
    function.fn.script = {1: answer}
    function.up()
    body = body_for()
    b = bridge(nats_server.url, function.url, mode="jetstream", max_deliver=1)
    await b.start()
    try:
        await nc.publish(SUBJECT, body)
        if outcome == "answered":
            await eventually(lambda: function.fn.calls_for(body) == 2, what="the answer after the outage")
        else:
            await eventually(lambda: len(letters) == 1, what="the dead letter")
    finally:
        assert await b.stop()
    if outcome == "dead-lettered":
        assert function.fn.calls_for(body) == 1
        assert letters[0].headers["Agent-Runtime-Status"] == "503"
    else:
        assert letters == []


async def test_a_message_that_brings_the_function_down_is_still_dead_lettered(nats_server, nc, function):
    """Behind a proxy, a message whose call kills the worker looks like an outage; but once a probe
    finds the function up and the message finds it down again, it spends its deliveries."""
    letters = await dead_letters(nc)
    poison, fine = body_for(), [body_for() for _ in range(3)]
    function.fn.scripts[poison] = {n: (502, "Bad Gateway", {}) for n in range(1, 20)}
    function.up()
    b = bridge(nats_server.url, function.url, mode="jetstream", max_deliver=3)
    await b.start()
    try:
        for body in [poison, *fine]:
            await nc.publish(SUBJECT, body)
        await eventually(lambda: len(letters) == 1, what="the poison's dead letter")
        await eventually(lambda: all(function.fn.calls_for(f) == 1 for f in fine), what="the others")
    finally:
        assert await b.stop()
    assert letters[0].data == poison
    assert letters[0].headers["Agent-Runtime-Attempts"] == "3"
    assert "from a gateway" in letters[0].headers["Agent-Runtime-Reason"]
    assert function.fn.calls_for(poison) == 4  # one outage on the house, then its three deliveries


async def test_a_runner_stopped_during_an_outage_gives_its_messages_back(nats_server, nc, function):
    letters = await dead_letters(nc)
    body = body_for()
    first = bridge(nats_server.url, function.url, mode="jetstream", drain_timeout_s=60)
    await first.start()
    try:
        await nc.publish(SUBJECT, body)
        await eventually(lambda: first.breaker.is_open, what="the breaker to open")
    finally:
        assert await first.stop()  # not held until the drain timeout: given back
    function.up()
    second = bridge(nats_server.url, function.url, mode="jetstream")
    await second.start()
    try:
        await eventually(lambda: function.fn.calls_for(body) == 1, what="the redelivery")
    finally:
        assert await second.stop()
    assert letters == []


async def test_core_mode_keeps_what_it_took_until_the_drain_timeout(nats_server, nc, function):
    """Core NATS cannot give a message back: held until the function answers, or lost when the
    drain timeout ends the run first (the runner then exits 1)."""
    kept, lost = body_for(), body_for()
    b = bridge(nats_server.url, function.url, mode="core", drain_timeout_s=0.5)
    await b.start()
    try:
        await nc.publish(SUBJECT, kept)
        await eventually(lambda: b.breaker.is_open, what="the breaker to open")
        function.up()
        await eventually(lambda: function.fn.calls_for(kept) == 1, what="the held message answered")
        function.down()
        await nc.publish(SUBJECT, lost)
        await eventually(lambda: b.breaker.is_open, what="the breaker to open again")
    finally:
        assert not await b.stop()
    assert function.fn.calls_for(lost) == 0


# --- the real thing: a function process killed while invocations flow ---------------------------


@pytest.mark.slow
async def test_a_function_killed_for_twelve_seconds_loses_nothing(stack, nats_server, nc):
    """JetStream, one runner, one function process on the shared KV store, killed -9 while
    invocations arrive and kept down 12 s: every invocation is answered exactly once and nothing is
    dead-lettered, except the one the function rejects (at once). max_deliver=1: a single delivery
    spent on the outage would dead-letter."""
    rate, outage_s = 20.0, 12.0
    env = stack.env(
        NATS_URL=nats_server.url,
        AGENT_RUNTIME__IDEMPOTENCY__BACKEND="nats",
        AGENT_RUNTIME__IDEMPOTENCY__NATS_BUCKET="outage_idem",
        # a run killed in flight leaves its claim in progress: its retry waits this long, not the default's
        AGENT_RUNTIME__RUNTIME__DEADLINE_S="3",
        AGENT_RUNTIME__RUNTIME__IDEMPOTENCY_IN_PROGRESS_TTL_S="4",
    )
    function = FunctionProcess(free_port(), env)
    await function.start()
    b = bridge(nats_server.url, f"{function.url}/invoke", mode="jetstream", max_deliver=1)
    await b.start()
    js = nc.jetstream()
    channels = [stack.channel() for _ in range(20)]
    triggers: list[str] = []
    published = 0
    rejected = body_for("not-a-uuid")  # the function's 422: its own verdict, dead-lettered at once

    async def publish(total: int) -> None:
        nonlocal published
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for n in range(total):
            message = stack.messaging.add_message(channels[n % len(channels)], f"outage {n}")
            triggers.append(message["content_preview"])
            body = json.dumps(invocation(message["channel_id"], message_id=message["id"])).encode()
            await js.publish(SUBJECT, body)
            published += 1
            next_at += 1 / rate
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    kill_at, back_at = int(2 * rate), int((2 + outage_s) * rate)
    publisher = asyncio.create_task(publish(back_at + int(2 * rate)))
    try:
        await eventually(lambda: published >= kill_at, what="the first invocations")
        await function.kill()
        await eventually(lambda: b.breaker.is_open, what="the breaker to open")
        await js.publish(SUBJECT, rejected)
        await eventually(lambda: published >= back_at, timeout_s=outage_s + 10, what="the outage's invocations")
        assert b.health()["status"] == "degraded" and not b.health()["function"]["reachable"]
        await function.start()
        await publisher
        await eventually(lambda: len(stack.messaging.posts) >= len(triggers), timeout_s=90, what="every reply")

        async def settled() -> bool:
            info = await js.consumer_info(STREAM, DURABLE)
            return info.num_pending == 0 and info.num_ack_pending == 0

        deadline = asyncio.get_running_loop().time() + 30
        while not await settled():
            assert asyncio.get_running_loop().time() < deadline, "the consumer did not settle"
            await asyncio.sleep(0.1)
        dead = (await js.stream_info(f"{STREAM}_DLQ")).state.messages
        letter = await js.get_last_msg(f"{STREAM}_DLQ", DLQ)
    finally:
        publisher.cancel()
        await b.stop()
        await function.kill()
    replies = sorted(p["text"].removeprefix("LLM reply to: ") for p in stack.messaging.posts)
    assert replies == sorted(triggers)  # every one, exactly once
    assert dead == 1 and letter.data == rejected
    assert letter.headers["Agent-Runtime-Status"] == "422" and letter.headers["Agent-Runtime-Attempts"] == "1"
