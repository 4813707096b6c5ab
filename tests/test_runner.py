"""local_runner.py's bridge against a real nats-server: modes, retries, dead letters, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid

import httpx
import nats
import pytest

from localstack.embedded import NatsServer
from runner.bridge import judge
from runner.forward import Answer
from shared.clients import http as shared_http
from standins.server import Served
from tests.conftest import ROOT, free_port, invocation
from tests.runner_support import (
    ScriptedFunction,
    body_for,
    bridge,
    dead_letters,
    eventually,
    failed,
    runner_waiting_for_nats,
)

SUBJECT = "router.invoke.agent"
DLQ = "router.invoke.agent.dlq"
MODES = ["core", "jetstream"]


@pytest.fixture
def function(scripted_function):
    return scripted_function


@pytest.fixture
def agent_function(asgi_apps, configure):
    """The real agent_runtime target, served on loopback, wired to the stand-ins."""
    served = Served(asgi_apps["agent_runtime"], on_stop=shared_http.aclose)
    yield f"{served.url}/invoke"
    served.stop()


async def publish(nc, body: bytes, mode: str, headers: dict | None = None) -> None:
    # the router publishes with plain core NATS; in jetstream mode a stream captures it
    await nc.publish(SUBJECT, body, headers=headers)
    await nc.flush()


@pytest.mark.parametrize("mode", MODES)
async def test_end_to_end_replies_once_per_message(stack, nats_server, nc, agent_function, mode):
    channels = [stack.channel() for _ in range(3)]
    messages = [stack.messaging.add_message(c, f"question {i}") for i, c in enumerate(channels * 2)]
    b = bridge(nats_server.url, agent_function, mode=mode)
    await b.start()
    try:
        for m in messages:
            await publish(nc, json.dumps(invocation(m["channel_id"], message_id=m["id"])).encode(), mode)
        await eventually(lambda: len(stack.messaging.posts) == len(messages), what="all replies")
    finally:
        assert await b.stop()
    answered = sorted(p["text"] for p in stack.messaging.posts)
    assert answered == sorted(f"LLM reply to: {m['content_preview']}" for m in messages)
    if mode == "jetstream":
        info = await nc.jetstream().consumer_info("AGENT_INVOCATIONS", "agent-runtime")
        assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_two_runners_in_a_queue_group_split_the_load(nats_server, nc):
    functions = [ScriptedFunction(), ScriptedFunction()]
    served = [Served(f.app) for f in functions]
    bridges = [bridge(nats_server.url, f"{s.url}/invoke") for s in served]
    try:
        for b in bridges:
            await b.start()
        bodies = [body_for() for _ in range(60)]
        for body in bodies:
            await publish(nc, body, "core")
        await eventually(lambda: sum(len(f.calls) for f in functions) == len(bodies), what="every invocation")
        for b in bridges:
            await b.stop()
    finally:
        for s in served:
            s.stop()
    forwarded = [c["body"] for f in functions for c in f.calls]
    assert sorted(forwarded) == sorted(bodies)  # each exactly once
    assert all(len(f.calls) > 0 for f in functions)  # both took a share


@pytest.mark.parametrize("mode", MODES)
async def test_a_5xx_is_retried_then_succeeds(nats_server, nc, function, mode):
    body = body_for()
    function.script = {1: (503, failed("llm: HTTP 503"), {"Retry-After": "0"})}
    b = bridge(nats_server.url, function.url, mode=mode)
    await b.start()
    try:
        await publish(nc, body, mode)
        await eventually(lambda: function.calls_for(body) == 2 and len(function.completed) == 2, what="the retry")
    finally:
        await b.stop()
    if mode == "jetstream":
        info = await nc.jetstream().consumer_info("AGENT_INVOCATIONS", "agent-runtime")
        assert info.num_ack_pending == 0 and info.num_pending == 0


@pytest.mark.parametrize("mode", MODES)
async def test_retries_stop_at_max_deliver_and_dead_letter(nats_server, nc, function, mode):
    body = body_for()
    function.script = {n: (503, failed("messaging: HTTP 503"), {"Retry-After": "0"}) for n in range(1, 10)}
    letters = await dead_letters(nc)
    b = bridge(nats_server.url, function.url, mode=mode, max_deliver=3)
    await b.start()
    try:
        await publish(nc, body, mode)
        await eventually(lambda: len(letters) == 1, what="the dead letter")
    finally:
        await b.stop()
    assert function.calls_for(body) == 3
    assert letters[0].data == body
    assert letters[0].headers["Agent-Runtime-Attempts"] == "3"
    assert "gave up after 3 attempts" in letters[0].headers["Agent-Runtime-Reason"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_4xx_is_dead_lettered_with_the_reason(nats_server, nc, function, mode):
    body = body_for()
    function.script = {1: (424, {"error": "llm: HTTP 401: check the configured secret"}, {})}
    letters = await dead_letters(nc)
    b = bridge(nats_server.url, function.url, mode=mode)
    await b.start()
    try:
        await publish(nc, body, mode)
        await eventually(lambda: len(letters) == 1, what="the dead letter")
    finally:
        await b.stop()
    assert function.calls_for(body) == 1  # never retried
    assert letters[0].data == body
    assert letters[0].headers["Agent-Runtime-Status"] == "424"
    assert letters[0].headers["Agent-Runtime-Reason"] == "HTTP 424: llm: HTTP 401: check the configured secret"
    if mode == "jetstream":
        info = await nc.jetstream().consumer_info("AGENT_INVOCATIONS", "agent-runtime")
        assert info.num_ack_pending == 0  # terminated, not left to redeliver
        dlq = await nc.jetstream().stream_info("AGENT_INVOCATIONS_DLQ")
        assert dlq.state.messages == 1  # dead letters are kept


@pytest.mark.parametrize("mode", MODES)
async def test_malformed_messages_are_dead_lettered_and_the_loop_goes_on(nats_server, nc, function, mode):
    letters = await dead_letters(nc)
    b = bridge(nats_server.url, function.url, mode=mode)
    await b.start()
    good = body_for()
    try:
        for bad in (b"\x00\xff binary", b'{"agent_id": 5}', b"[]", b"x" * 300_000):
            await publish(nc, bad, mode)
        await publish(nc, good, mode)
        await eventually(lambda: len(letters) == 4 and function.calls_for(good) == 1, what="letters and the good one")
    finally:
        await b.stop()
    reasons = sorted(m.headers["Agent-Runtime-Reason"] for m in letters)
    assert any(r.startswith("body is not JSON") for r in reasons)
    assert any("agent_id" in r and "payload" in r for r in reasons)
    assert any("larger than" in r for r in reasons)
    assert [c["body"] for c in function.calls] == [good]  # nothing malformed reached the function


async def test_request_reply_gets_the_functions_response(stack, nats_server, nc, agent_function):
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")
    b = bridge(nats_server.url, agent_function)
    await b.start()
    try:
        reply = await nc.request(SUBJECT, json.dumps(invocation(channel)).encode(), timeout=10)
    finally:
        await b.stop()
    outcome = json.loads(reply.data)
    assert outcome["status"] == "replied" and outcome["message_id"] == stack.messaging.posts[0]["message_id"]


async def test_headers_are_forwarded(nats_server, nc, function):
    b = bridge(nats_server.url, function.url, function_secret="fn-secret")
    await b.start()
    try:
        trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        await publish(nc, body_for(), "core", {"Nats-Msg-Id": "msg-1", "traceparent": trace, "tracestate": "a=b"})
        await publish(nc, body_for(), "core", {"traceparent": "00-bad\r\nX-Evil: 1"})
        await eventually(lambda: len(function.calls) == 2, what="two calls")
    finally:
        await b.stop()
    first, second = (c["headers"] for c in function.calls)
    assert first["idempotency-key"] == "msg-1" and first["traceparent"] == trace and first["tracestate"] == "a=b"
    assert first["x-internal-secret"] == "fn-secret"
    assert "x-evil" not in second and second["traceparent"] != trace  # a fresh, valid one
    assert len(second["traceparent"].split("-")) == 4


async def test_one_channel_is_forwarded_in_order(nats_server, nc, function):
    function.delay_s = 0.02
    channel = str(uuid.uuid4())
    bodies = [body_for(channel, rewrite_prompt=f"n{i}") for i in range(8)]
    others = [body_for() for _ in range(8)]
    b = bridge(nats_server.url, function.url, max_in_flight=16)
    await b.start()
    try:
        for mine, other in zip(bodies, others, strict=True):
            await publish(nc, mine, "core")
            await publish(nc, other, "core")
        await eventually(lambda: len(function.completed) == 16, what="all calls")
    finally:
        await b.stop()
    assert [c for c in function.completed if c in bodies] == bodies


async def test_jetstream_survives_a_nats_server_restart(stack, tmp_path, agent_function):
    store = str(tmp_path / "js")
    server = await NatsServer(port=free_port(), store_dir=store).start()
    channel = stack.channel()
    messages = [stack.messaging.add_message(channel, f"m{i}") for i in range(20)]
    bodies = [json.dumps(invocation(channel, message_id=m["id"])).encode() for m in messages]
    b = bridge(server.url, agent_function, mode="jetstream")
    await b.start()
    try:
        nc = await nats.connect(server.url)
        for body in bodies[:10]:
            await nc.jetstream().publish(SUBJECT, body)
        await nc.close()
        await eventually(lambda: len(stack.messaging.posts) >= 3, what="the first replies")
        server.kill()  # kill -9, mid-run
        server = await NatsServer(port=server.port, store_dir=store).start()
        await eventually(lambda: b.health()["nats_connected"], what="the reconnect")
        nc = await nats.connect(server.url)
        for body in bodies[10:]:
            await nc.jetstream().publish(SUBJECT, body)
        await nc.close()
        await eventually(lambda: len(stack.messaging.posts) >= 20, timeout_s=30, what="every reply")
    finally:
        await b.stop()
        server.stop()
    per_trigger = [p["text"] for p in stack.messaging.posts]
    assert sorted(per_trigger) == sorted(f"LLM reply to: m{i}" for i in range(20))  # each exactly once


async def test_runner_health_and_metrics(nats_server, nc, function):
    from runner.serve import Serving, status_app

    b = bridge(nats_server.url, function.url)
    await b.start()
    status = await Serving.start(status_app(b.health, secret=None), "127.0.0.1", 0)
    try:
        await publish(nc, body_for(), "core")
        await eventually(lambda: len(function.completed) == 1, what="one call")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{status.port}") as http:
            health = (await http.get("/health")).json()
            metrics = (await http.get("/metrics")).text
            assert health["nats_connected"] is True and health["mode"] == "core"
            assert "runner_invocations_received_total" in metrics
            assert 'runner_invocations_forwarded_total{status_class="2xx"}' in metrics
            assert "runner_forward_latency_seconds_bucket" in metrics
            nats_server.kill()
            await eventually(lambda: not b.health()["nats_connected"], what="the disconnect")
            down = await http.get("/health")
            assert down.status_code == 503 and down.json()["nats_connected"] is False  # live, not from start-up
    finally:
        await status.stop()
        await b.stop()


async def test_sigterm_finishes_invocations_in_flight(nats_server, nc, function):
    """The real command: SIGTERM with calls in flight → they finish, the runner exits 0."""
    function.delay_s = 1.0
    env = {**os.environ, "AGENT_RUNTIME__RUNTIME__LOG_FORMAT": "json"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "local_runner.py",
        "--nats-url",
        nats_server.url,
        "--function-url",
        function.url,
        "--port",
        "0",
        "--max-in-flight",
        "8",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    bodies = [body_for() for _ in range(5)]
    try:
        started = await asyncio.wait_for(process.stdout.readline(), 30)
        assert started.startswith(b"agent-runtime runner:")  # printed once subscribed
        for body in bodies:
            await publish(nc, body, "core")
        await eventually(lambda: len(function.calls) == 5, what="every call to start")
        assert function.completed == []  # all five are in flight
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert sorted(function.completed) == sorted(bodies)


async def test_a_slow_call_is_kept_alive_not_redelivered(nats_server, nc, function):
    """A call longer than the ack wait: in_progress() keeps JetStream from handing it out again."""
    function.delay_s = 2.5
    body = body_for()
    b = bridge(nats_server.url, function.url, mode="jetstream", ack_wait_s=1.0)
    await b.start()
    try:
        await publish(nc, body, "jetstream")
        await eventually(lambda: len(function.completed) == 1, what="the slow call")
        info = await nc.jetstream().consumer_info("AGENT_INVOCATIONS", "agent-runtime")
    finally:
        await b.stop()
    assert function.calls_for(body) == 1  # never redelivered while it ran
    assert info.num_redelivered == 0


@pytest.mark.parametrize("mode", MODES)
async def test_a_retried_invocation_keeps_its_place_in_the_channel(nats_server, nc, function, mode):
    """A retry waits in place: the channel's next invocation does not overtake it."""
    channel = str(uuid.uuid4())
    first, second = body_for(channel, rewrite_prompt="first"), body_for(channel, rewrite_prompt="second")
    function.script = {1: (503, failed("llm: HTTP 503"), {"Retry-After": "0.3"})}  # per body: first call of each
    b = bridge(nats_server.url, function.url, mode=mode)
    await b.start()
    try:
        await publish(nc, first, mode)
        await publish(nc, second, mode)
        await eventually(lambda: len(function.completed) == 4, what="both, each retried once")
    finally:
        await b.stop()
    assert function.completed == [first, first, second, second]


async def test_a_configured_runner_waits_for_its_nats_and_never_starts_its_own(function):
    """With --function-url (a deployment), an unreachable NATS is retried, not replaced by a private one."""
    async with runner_waiting_for_nats("--function-url", function.url) as (process, seen):
        process.send_signal(signal.SIGTERM)  # and a stop request still ends it at once
        assert await asyncio.wait_for(process.wait(), 10) == 0
    assert not any(b"embedded nats-server" in line for line in seen)


# --- what the bridge does with the function's answer -------------------------------------------

OUTCOME_503 = json.dumps(failed("llm: HTTP 503")).encode()


@pytest.mark.parametrize(
    ("answer", "attempt", "action", "delay_s"),
    [
        (Answer(200, b'{"status": "replied"}', "5"), 1, "ack", 0.0),
        (Answer(409, b'{"status": "failed"}', "14"), 1, "retry", 14.0),  # the claim's owner may have died
        (Answer(429, b"", "3"), 2, "retry", 3.0),
        (Answer(503, OUTCOME_503, "0"), 1, "retry", 0.0),
        (Answer(503, OUTCOME_503, "600"), 1, "retry", 300.0),  # an announced wait is capped
        (Answer(503, OUTCOME_503, "Wed, 21 Oct 2015 07:28:00 GMT"), 1, "retry", None),  # a date: our backoff
        (Answer(503, OUTCOME_503), 3, "retry", None),
        (Answer(None, error="no answer within 90s"), 1, "retry", None),  # a timeout: the function may be working
        (Answer(409, b'{"status": "failed"}', "14"), 5, "dead_letter", 0.0),  # the last delivery
        (Answer(424, b'{"status": "failed", "error": "llm: HTTP 401"}'), 1, "dead_letter", 0.0),
        (Answer(422, b'{"detail": "payload.channel_id"}'), 1, "dead_letter", 0.0),
    ],
)
def test_the_bridge_honours_the_functions_verdict_and_its_retry_after(answer, attempt, action, delay_s):
    verdict = judge(answer, attempt=attempt, max_deliver=5)

    assert verdict.action == action
    if delay_s is None:  # our backoff: full jitter under a cap that grows with the attempt
        assert not verdict.announced and 0 <= verdict.delay_s <= 0.5 * 2 ** (attempt - 1)
    else:
        assert verdict.delay_s == delay_s and verdict.announced is (action == "retry")


def test_a_dead_letters_reason_is_the_functions_error():
    answer = Answer(424, b'{"status": "failed", "error": "llm: HTTP 401: check the configured secret"}')
    assert judge(answer, attempt=1, max_deliver=5).reason == "HTTP 424: llm: HTTP 401: check the configured secret"


async def test_a_stop_during_a_retry_wait_gives_the_message_back_at_once(nats_server, nc, function, logs):
    """The announced wait outlasts the drain timeout: stop() must not wait it out, and JetStream gets
    the message back (nak'd with the rest of the wait) for the next runner."""
    body = body_for()
    function.script = {1: (503, failed("llm: HTTP 503"), {"Retry-After": "3"})}
    first = bridge(nats_server.url, function.url, mode="jetstream", drain_timeout_s=2)
    await first.start()
    try:
        await publish(nc, body, "jetstream")
        await eventually(lambda: any(r.msg == "retrying invocation" for r in logs.records), what="the retry wait")
    finally:
        assert await first.stop()  # finished: nothing left running at the drain timeout
    [waiting] = [r for r in logs.records if r.msg == "retrying invocation"]
    assert waiting.fields["delay_s"] == 3.0  # the function's Retry-After, not our backoff
    assert function.calls_for(body) == 1  # not retried on the way out
    second = bridge(nats_server.url, function.url, mode="jetstream")
    await second.start()
    try:
        await eventually(lambda: function.calls_for(body) == 2, what="the redelivery to the next runner")
    finally:
        await second.stop()


async def test_a_message_that_crashes_its_runner_every_time_is_dead_lettered(nats_server, nc, function):
    """Runners that die holding a message never settle it: JetStream counts the deliveries, and the
    bridge acts on that count, not on its own, or the message would go round for ever."""
    body = body_for()
    letters = await dead_letters(nc)
    setup = bridge(nats_server.url, function.url, mode="jetstream", max_deliver=3)
    await setup.start()  # the stream and the durable consumer
    await setup.stop()
    await publish(nc, body, "jetstream")
    crashed = await nc.jetstream().pull_subscribe(SUBJECT, durable="agent-runtime", stream="AGENT_INVOCATIONS")
    for _ in range(3):  # three runners took it and died (a nak stands in for their ack wait running out)
        [msg] = await crashed.fetch(1, timeout=5)
        await msg.nak()
    b = bridge(nats_server.url, function.url, mode="jetstream", max_deliver=3)
    await b.start()
    try:
        await eventually(lambda: len(letters) == 1, what="the dead letter")
    finally:
        await b.stop()
    assert function.calls == []  # the fourth delivery is past max_deliver: not tried again
    assert letters[0].headers["Agent-Runtime-Reason"] == "attempts exhausted"
    assert letters[0].headers["Agent-Runtime-Attempts"] == "3"


async def test_a_dead_letter_that_cannot_be_stored_is_not_lost(nats_server, nc, function, logs):
    """The dead-letter stream is gone (deleted, out of space): the message is nak'd, not acknowledged,
    and dead-lettered once the stream takes it again."""
    body = body_for()
    function.script = {n: (424, failed("llm: HTTP 401", retryable=False), {}) for n in range(1, 5)}
    b = bridge(nats_server.url, function.url, mode="jetstream")
    await b.start()
    js = nc.jetstream()
    try:
        await js.delete_stream("AGENT_INVOCATIONS_DLQ")
        await publish(nc, body, "jetstream")
        await eventually(lambda: "dead-letter publish failed" in logs.text, what="the failed dead letter")
        await js.add_stream(name="AGENT_INVOCATIONS_DLQ", subjects=[DLQ])
        await eventually(lambda: function.calls_for(body) == 2, what="the redelivery")

        async def stored() -> bool:
            return (await js.stream_info("AGENT_INVOCATIONS_DLQ")).state.messages == 1

        await eventually(stored, what="the dead letter stored")
    finally:
        await b.stop()
    info = await js.consumer_info("AGENT_INVOCATIONS", "agent-runtime")
    assert info.num_ack_pending == 0 and info.num_pending == 0
