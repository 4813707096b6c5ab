"""The bridge streams replies onto NATS as they are typed: a real nats-server, the real bridge, and a
function that answers with server-sent events over real HTTP, pausing between them."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

import pytest

from runner import metrics
from runner.bridge import flushed
from shared.clients import http as shared_http
from shared.infra import sse
from standins.server import Served
from tests.conftest import invocation
from tests.runner_support import Streamed, body_for, bridge, dead_letters, eventually

SUBJECT = "router.invoke.agent"
STREAM_SUBJECT = "agent.reply.stream"
STREAM, DURABLE = "AGENT_INVOCATIONS", "agent-runtime"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
MODES = ["core", "jetstream"]


async def all_acked(nc: Any) -> bool:
    """Every invocation the durable consumer took is acknowledged, and none waits."""
    info = await nc.jetstream().consumer_info(STREAM, DURABLE)
    return info.num_ack_pending == 0 and info.num_pending == 0


@pytest.fixture
def function(scripted_function):
    return scripted_function


async def pieces(nc) -> list:
    """Every message on the stream subjects from now on, as it arrives."""
    received: list = []

    async def keep(msg) -> None:
        received.append(msg)

    await nc.subscribe(f"{STREAM_SUBJECT}.>", cb=keep)
    await flushed(nc)
    return received


def kinds(received: list) -> list[str]:
    return [json.loads(m.data)["type"] for m in received]


def replied(channel: str, **fields) -> dict:
    """The function's outcome of a run that posted its reply."""
    return {"status": "replied", "agent_id": "agent:sofia", "channel_id": channel, "llm_source": "llm", **fields}


def typed(*texts: str) -> list:
    """The deltas of a reply typed in ``texts``, a short pause after each."""
    return [item for text in texts for item in (("delta", {"text": text}), 0.05)]


def parsed(received: list) -> list[dict]:
    return [json.loads(m.data) for m in received]


@pytest.mark.parametrize("mode", MODES)
async def test_the_reply_is_published_as_it_is_typed_before_the_invocation_is_settled(nats_server, nc, function, mode):
    """Held at a gate before its outcome, the function has sent every delta: they are on NATS, in
    order, while the invocation is neither answered nor acknowledged; then `end`, with the reply's id."""
    channel, trigger, reply_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    body = body_for(channel, message_id=trigger)
    gate = threading.Event()
    events = [
        ("step", {"step": "history", "ms": 1.5}),
        *typed("Let me look", " that up."),
        ("reset", {}),  # a tool round: what was typed is void
        *typed("Привіт", ", світе!"),
        gate,
        ("outcome", replied(channel, trigger_message_id=trigger, message_id=reply_id)),
    ]
    function.script = {1: (200, Streamed(events), {})}
    received = await pieces(nc)
    b = bridge(nats_server.url, function.url, mode=mode, stream_subject=STREAM_SUBJECT)
    await b.start()
    try:
        headers = {"Nats-Msg-Id": "msg-1", "traceparent": TRACEPARENT, "tracestate": "a=b"}
        if mode == "core":
            request = asyncio.create_task(nc.request(SUBJECT, body, timeout=15, headers=headers))
        else:
            await nc.publish(SUBJECT, body, headers=headers)
        await eventually(lambda: len(received) == 5, what="the deltas and the reset")
        if mode == "core":
            assert not request.done()  # not answered yet
        else:
            info = await nc.jetstream().consumer_info(STREAM, DURABLE)
            assert info.num_ack_pending == 1  # not acknowledged yet
        assert function.completed == []
        gate.set()
        if mode == "core":
            answer = await request
            assert json.loads(answer.data)["message_id"] == reply_id
        else:
            await eventually(lambda: all_acked(nc), what="the ack")
        await eventually(lambda: len(received) == 6, what="the end")
    finally:
        await b.stop()
    messages = parsed(received)
    assert kinds(received) == ["delta", "delta", "reset", "delta", "delta", "end"]  # no step
    assert [m["seq"] for m in messages] == list(range(6))
    assert {m.subject for m in received} == {f"{STREAM_SUBJECT}.agent:sofia.{channel}"}
    assert all(
        m["agent_id"] == "agent:sofia" and m["channel_id"] == channel and m["message_id"] == trigger for m in messages
    )
    last_reset = max(i for i, m in enumerate(messages) if m["type"] == "reset")
    assert "".join(m["text"] for m in messages[last_reset + 1 : -1]) == "Привіт, світе!"
    assert "text" not in messages[last_reset]
    end = messages[-1]
    assert end["status"] == "replied" and end["reply_message_id"] == reply_id and "handed_off_to" not in end
    for msg in received:
        assert msg.headers["traceparent"].split("-")[1] == TRACE_ID and msg.headers["tracestate"] == "a=b"
        assert msg.headers["Agent-Runtime-Msg-Id"] == "msg-1"
    assert sse.MEDIA_TYPE in function.calls[0]["headers"]["accept"]


async def test_a_stream_cut_before_its_outcome_is_held_like_an_outage(nats_server, nc, function, logs):
    """max_deliver=1: a delivery spent on the cut would dead-letter. The retry streams the reply anew."""
    channel = str(uuid.uuid4())
    body = body_for(channel)
    function.script = {
        1: (200, Streamed(typed("half a rep")), {}),  # the function went away mid-reply
        2: (200, Streamed([*typed("whole"), ("outcome", replied(channel, message_id="m-2"))]), {}),
    }
    letters = await dead_letters(nc)
    received = await pieces(nc)
    b = bridge(nats_server.url, function.url, mode="jetstream", max_deliver=1, stream_subject=STREAM_SUBJECT)
    await b.start()
    try:
        await nc.publish(SUBJECT, body)
        await eventually(lambda: function.calls_for(body) == 2, what="the call after the outage")

        await eventually(lambda: all_acked(nc), what="the ack")
        await eventually(lambda: len(received) == 4, what="both calls' pieces")
    finally:
        assert await b.stop()
    assert letters == []
    assert any(r.msg == "function unreachable: intake paused" for r in logs.records)  # the breaker, not a verdict
    messages = parsed(received)
    assert [(m["type"], m["seq"], m.get("status")) for m in messages] == [
        ("delta", 0, None),
        ("end", 1, "failed"),  # the pieces so far are void
        ("delta", 0, None),
        ("end", 1, "replied"),
    ]


async def test_an_error_event_is_judged_as_a_500(nats_server, nc, function):
    body = body_for()
    error = ("error", {"status": 500, "error": "internal error"})
    function.script = {1: (200, Streamed([*typed("Hi"), error]), {})}
    letters = await dead_letters(nc)
    received = await pieces(nc)
    b = bridge(nats_server.url, function.url, mode="jetstream", max_deliver=1, stream_subject=STREAM_SUBJECT)
    await b.start()
    try:
        await nc.publish(SUBJECT, body)
        await eventually(lambda: len(letters) == 1, what="the dead letter")
        await eventually(lambda: len(received) == 2, what="the pieces")
    finally:
        assert await b.stop()
    assert function.calls_for(body) == 1
    assert letters[0].headers["Agent-Runtime-Status"] == "500"
    assert letters[0].headers["Agent-Runtime-Reason"] == "HTTP 500: internal error; gave up after 1 attempts"
    assert [(m["type"], m.get("status")) for m in parsed(received)] == [("delta", None), ("end", "failed")]


async def test_a_streamed_outcome_is_judged_as_its_json_would_be(nats_server, nc, function, logs):
    """A busy claim's 409 honours its Retry-After; a dependency's refusal (424) is dead-lettered."""
    channel = str(uuid.uuid4())
    body = body_for(channel)
    busy = {"status": "failed", "agent_id": "agent:sofia", "retryable": True, "kind": "in_progress"}
    refused = {"status": "failed", "agent_id": "agent:sofia", "retryable": False, "kind": "unauthorized"}
    function.script = {
        1: (200, Streamed([("outcome", {**busy, "step": "idempotency", "retry_after_s": 0.2})]), {}),
        2: (200, Streamed([("outcome", {**refused, "step": "llm", "error": "llm: HTTP 401"})]), {}),
    }
    letters = await dead_letters(nc)
    b = bridge(nats_server.url, function.url, mode="jetstream", stream_subject=STREAM_SUBJECT)
    await b.start()
    try:
        await nc.publish(SUBJECT, body)
        await eventually(lambda: len(letters) == 1, what="the dead letter")
    finally:
        assert await b.stop()
    [retrying] = [r for r in logs.records if r.msg == "retrying invocation"]
    assert retrying.fields["delay_s"] == 1.0  # the outcome's wait, in whole seconds: its Retry-After
    assert retrying.fields["reason"] == "HTTP 409"
    assert letters[0].headers["Agent-Runtime-Status"] == "424"
    assert letters[0].headers["Agent-Runtime-Attempts"] == "2"
    assert letters[0].headers["Agent-Runtime-Reason"] == "HTTP 424: llm: HTTP 401"


@pytest.mark.parametrize("agent_id", ["agent.sofia", "agent:*", "agent:>", "agent: sofia", ""])
async def test_an_id_that_is_no_subject_token_publishes_nothing_and_the_422_dead_letters(
    nats_server, nc, function, agent_id
):
    body = json.dumps(invocation(str(uuid.uuid4()), agent_id=agent_id)).encode()
    function.script = {1: (422, {"error": "invalid invocation: agent_id"}, {})}
    letters = await dead_letters(nc)
    received = await pieces(nc)
    b = bridge(nats_server.url, function.url, stream_subject=STREAM_SUBJECT)
    await b.start()
    try:
        await nc.publish(SUBJECT, body)
        await eventually(lambda: len(letters) == 1, what="the dead letter")
        await flushed(nc)
    finally:
        assert await b.stop()
    assert letters[0].headers["Agent-Runtime-Status"] == "422"
    assert received == []
    assert not sse.wants_stream(function.calls[0]["headers"].get("accept"))  # nowhere to publish: not asked


@pytest.mark.parametrize(
    ("stream_subject", "answer"),
    [
        (None, "streams when asked"),  # the function would stream: it is not asked to
        (STREAM_SUBJECT, "ignores the header"),  # asked, it answers JSON all the same
    ],
)
async def test_a_json_answer_is_judged_as_today(nats_server, nc, function, stream_subject, answer):
    channel = str(uuid.uuid4())
    body = body_for(channel)
    outcome = replied(channel, message_id="m-1")
    if answer == "streams when asked":
        function.script = {1: (200, Streamed([*typed("Hello"), ("outcome", outcome)]), {})}
    else:
        function.script = {1: (200, outcome, {})}
    received = await pieces(nc)
    b = bridge(nats_server.url, function.url, stream_subject=stream_subject)
    await b.start()
    try:
        reply = await nc.request(SUBJECT, body, timeout=15)
        await flushed(nc)
    finally:
        assert await b.stop()
    assert json.loads(reply.data) == outcome
    assert function.calls_for(body) == 1
    assert received == []
    asked = sse.wants_stream(function.calls[0]["headers"].get("accept"))
    assert asked is (stream_subject is not None)


async def test_the_request_timeout_bounds_the_whole_stream(nats_server, nc, function):
    """Each pause is shorter than the timeout; the stream as a whole is longer."""
    channel = str(uuid.uuid4())
    body = body_for(channel)
    slow = [("delta", {"text": "a"}), 0.4, ("delta", {"text": "b"}), 0.4, ("delta", {"text": "c"}), 0.4]
    function.script = {1: (200, Streamed([*slow, ("outcome", replied(channel))]), {})}
    letters = await dead_letters(nc)
    b = bridge(nats_server.url, function.url, max_deliver=1, request_timeout_s=1.0, stream_subject=STREAM_SUBJECT)
    await b.start()
    try:
        await nc.publish(SUBJECT, body)
        await eventually(lambda: len(letters) == 1, what="the dead letter")
    finally:
        assert await b.stop()
    assert letters[0].headers["Agent-Runtime-Reason"] == "no answer within 1s; gave up after 1 attempts"


async def test_a_piece_that_cannot_be_published_changes_nothing(nats_server, nc, function, logs):
    """A delta past NATS's payload limit (within the event limit): lost, counted, logged once; the
    reply's other pieces and the invocation go on."""
    channel = str(uuid.uuid4())
    body = body_for(channel)
    huge = "x" * (sse.MAX_EVENT_BYTES - 64)
    assert len(huge) + 100 > nc.max_payload  # the message (with its ids) is past the server's limit
    events = [("delta", {"text": huge}), ("delta", {"text": huge}), *typed("ok"), ("outcome", replied(channel))]
    function.script = {1: (200, Streamed(events), {})}
    received = await pieces(nc)
    lost = metrics.registry.get_sample_value("runner_reply_stream_publish_failures_total") or 0.0
    b = bridge(nats_server.url, function.url, stream_subject=STREAM_SUBJECT)
    await b.start()
    try:
        reply = await nc.request(SUBJECT, body, timeout=15)
        await eventually(lambda: len(received) == 2, what="the pieces that fit")
    finally:
        assert await b.stop()
    assert json.loads(reply.data)["status"] == "replied"
    assert [(m["type"], m["seq"]) for m in parsed(received)] == [("delta", 2), ("end", 3)]
    assert metrics.registry.get_sample_value("runner_reply_stream_publish_failures_total") - lost == 2
    assert sum(r.msg == "reply stream publish failed" for r in logs.records) == 1


async def test_the_real_functions_stream_adds_up_to_the_posted_reply(stack, nats_server, nc, asgi_apps, configure):
    """The agent_runtime target itself, streaming: the deltas after the last reset are the reply it
    posted, and `end` names the post."""
    served = Served(asgi_apps["agent_runtime"], on_stop=shared_http.aclose)
    channel = stack.channel()
    trigger = stack.messaging.add_message(channel, "hello there")
    received = await pieces(nc)
    b = bridge(nats_server.url, f"{served.url}/invoke", stream_subject=STREAM_SUBJECT)
    await b.start()
    try:
        body = json.dumps(invocation(channel, message_id=trigger["id"])).encode()
        outcome = json.loads((await nc.request(SUBJECT, body, timeout=30)).data)
        await eventually(lambda: "end" in kinds(received), what="the end")
    finally:
        await b.stop()
        served.stop()
    [post] = stack.messaging.posts
    messages = parsed(received)
    resets = [i for i, m in enumerate(messages) if m["type"] == "reset"]
    after = messages[resets[-1] + 1 if resets else 0 : -1]
    assert after and "".join(m["text"] for m in after) == post["text"]
    assert messages[-1]["status"] == outcome["status"] == "replied"
    assert messages[-1]["reply_message_id"] == outcome["message_id"] == post["message_id"]
    assert all(m["message_id"] == trigger["id"] for m in messages)


async def test_an_outcome_saying_what_this_bridge_does_not_know_is_judged_by_its_status(nats_server, nc, function):
    """A function newer than the bridge (a status or source its contract does not list) is still acked."""
    body = body_for()
    newer = {"status": "replied", "agent_id": "agent:sofia", "llm_source": "cache", "message_id": "m-1"}
    function.script = {1: (200, Streamed([*typed("Hi"), ("outcome", newer)]), {})}
    letters = await dead_letters(nc)
    b = bridge(nats_server.url, function.url, mode="jetstream", max_deliver=1, stream_subject=STREAM_SUBJECT)
    await b.start()
    try:
        await nc.publish(SUBJECT, body)
        await eventually(lambda: function.calls_for(body) == 1, what="the call")
        await eventually(lambda: all_acked(nc), what="the ack")
    finally:
        assert await b.stop()
    assert letters == [] and function.calls_for(body) == 1
