"""Handoff sinks against the real thing: a nats-server (core and JetStream), SQS in moto, and
Pub/Sub's REST API and the metadata server's tokens as a loopback HTTP server; every failure a
``DependencyError`` that says whether a retry can help and whether anything was sent."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import boto3
import nats
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from handlers import cloudevent
from shared import handoff
from shared.contracts import Invocation
from shared.errors import DependencyError
from shared.handoff.nats import NatsSink
from shared.handoff.pubsub import REFRESH_MARGIN_S, PubSubSink
from shared.infra import settings
from shared.infra.deadline import Deadline
from shared.infra.jetstream import ensure_stream
from shared.intake import parse_invocation
from standins.server import Served
from tests.aws import mocked_aws
from tests.conftest import free_port, invocation
from tests.test_nats_auth import ConfiguredNats

TOPIC = "projects/daarion/topics/agent-invocations"


def handed(**payload: Any) -> dict[str, Any]:
    """An invocation one agent hands another, as the pipeline sends it."""
    return invocation(
        str(uuid.uuid4()),
        agent_id="agent:helion",
        message_id=str(uuid.uuid4()),
        handoff={"from_agent": "agent:sofia", "note": "про бюджет", "hops": 1},
        **payload,
    )


def load(**env: str) -> settings.Settings:
    return settings.load({"AGENT_RUNTIME__HANDOFF__TIMEOUT_S": "2", **env})


# --- build ---------------------------------------------------------------------------------------


def test_build_names_the_setting_and_none_means_no_sink():
    assert handoff.build(load()) is None  # the default: no handoff offered
    with pytest.raises(ValueError, match=r"handoff\.sink: unknown sink 'kafka' \(known: none, nats, sqs, pubsub\)"):
        handoff.build(load(AGENT_RUNTIME__HANDOFF__SINK="kafka"))
    with pytest.raises(ValueError, match=r"handoff\.sqs_queue_url \(INVOCATION_QUEUE_URL\)"):
        handoff.build(load(AGENT_RUNTIME__HANDOFF__SINK="sqs"))
    with pytest.raises(ValueError, match=r"handoff\.pubsub_topic"):
        handoff.build(load(AGENT_RUNTIME__HANDOFF__SINK="pubsub", AGENT_RUNTIME__HANDOFF__PUBSUB_TOPIC="invocations"))


# --- NATS ----------------------------------------------------------------------------------------


def nats_sink(url: str, mode: str = "core", **env: str) -> NatsSink:
    sink = handoff.build(
        load(NATS_URL=url, AGENT_RUNTIME__HANDOFF__SINK="nats", AGENT_RUNTIME__RUNNER__MODE=mode, **env)
    )
    assert isinstance(sink, NatsSink)
    return sink


async def test_core_nats_publishes_the_json_on_the_invocation_subject_with_the_key(nats_server):
    listener = await nats.connect(nats_server.url)
    received = await listener.subscribe("router.invoke.agent")  # nats.invocation_subject: where the router publishes
    await listener.flush()
    sink, body = nats_sink(nats_server.url), handed()
    try:
        await sink.send(body, "handoff-1", Deadline(10))
        msg = await received.next_msg(timeout=2)
    finally:
        await sink.aclose()
        await listener.close()
    assert json.loads(msg.data) == body
    assert msg.headers == {"Nats-Msg-Id": "handoff-1"}


async def test_jetstream_stores_a_repeated_key_once(nats_server):
    subject = "handoffs.test"
    listener = await nats.connect(nats_server.url)
    js = listener.jetstream()
    await ensure_stream(js, "HANDOFFS", subject, 1)  # as the runner in jetstream mode makes its stream
    sink, body = nats_sink(nats_server.url, "jetstream", AGENT_RUNTIME__HANDOFF__SUBJECT=subject), handed()
    try:
        await sink.send(body, "handoff-1", Deadline(10))
        await sink.send(body, "handoff-1", Deadline(10))  # a retry of the same handoff
        await sink.send(handed(), "handoff-2", Deadline(10))
        stored = (await js.stream_info("HANDOFFS")).state.messages
        first = (await (await js.pull_subscribe(subject, durable="reader")).fetch(1, timeout=2))[0]
    finally:
        await sink.aclose()
        await listener.close()
    assert stored == 2
    assert json.loads(first.data) == body
    assert first.headers == {"Nats-Msg-Id": "handoff-1"}


async def test_jetstream_without_a_stream_sent_nothing(nats_server):
    sink = nats_sink(nats_server.url, "jetstream", AGENT_RUNTIME__HANDOFF__SUBJECT="handoffs.nowhere")
    try:
        with pytest.raises(DependencyError) as failed:
            await sink.send(handed(), "handoff-1", Deadline(10))
    finally:
        await sink.aclose()
    assert (failed.value.kind, failed.value.retryable, failed.value.sent) == ("unavailable", True, False)
    assert "no stream captures handoffs.nowhere" in str(failed.value)


async def test_a_server_that_is_down_is_a_retryable_failure_that_sent_nothing_and_names_no_secret():
    sink = nats_sink(f"nats://runtime:hunter2@127.0.0.1:{free_port()}", AGENT_RUNTIME__HANDOFF__TIMEOUT_S="0.5")
    started = time.monotonic()
    with pytest.raises(DependencyError) as failed:
        await sink.send(handed(), "handoff-1", Deadline(10))
    assert time.monotonic() - started < 2  # bounded by handoff.timeout_s
    assert (failed.value.dependency, failed.value.kind, failed.value.retryable) == ("handoff", "unavailable", True)
    assert failed.value.sent is False
    assert "not reachable" in str(failed.value) and "hunter2" not in str(failed.value)
    await sink.aclose()


async def test_refused_credentials_are_not_retryable_and_name_the_settings_not_the_password(tmp_path):
    server = await ConfiguredNats(tmp_path, 'authorization { user: runtime, password: "right-one" }').start()
    sink = nats_sink(server.url(), NATS_USER="runtime", NATS_PASSWORD="wrong-0ne")
    try:
        with pytest.raises(DependencyError) as failed:
            await sink.send(handed(), "handoff-1", Deadline(10))
    finally:
        await sink.aclose()
        server.stop()
    assert (failed.value.kind, failed.value.retryable, failed.value.sent) == ("unauthorized", False, False)
    assert "nats.user and nats.password" in str(failed.value) and "wrong-0ne" not in str(failed.value)


async def test_a_closed_sink_closed_its_connection_and_never_reopens_it(nats_server):
    sink = nats_sink(nats_server.url)
    await sink.send(handed(), "handoff-1", Deadline(10))
    connection = sink._nc
    await sink.aclose()
    assert connection is not None and connection.is_closed
    with pytest.raises(DependencyError) as failed:
        await sink.send(handed(), "handoff-2", Deadline(10))
    assert failed.value.sent is False and sink._nc is None


# --- SQS -----------------------------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch):
    with mocked_aws(monkeypatch):
        yield boto3.client("sqs")


async def test_sqs_sends_the_json_to_the_invocation_queue_with_the_key(aws):
    queue = aws.create_queue(QueueName="invocations")["QueueUrl"]
    sink, body = handoff.build(load(AGENT_RUNTIME__HANDOFF__SINK="sqs", INVOCATION_QUEUE_URL=queue)), handed()
    assert sink is not None
    await sink.send(body, "handoff-1", Deadline(10))
    await sink.aclose()
    [message] = aws.receive_message(QueueUrl=queue, MessageAttributeNames=["All"])["Messages"]
    assert json.loads(message["Body"]) == body
    assert message["MessageAttributes"]["key"]["StringValue"] == "handoff-1"


async def test_sqs_spent_deadline_sends_nothing(aws):
    queue = aws.create_queue(QueueName="invocations")["QueueUrl"]
    sink = handoff.build(load(AGENT_RUNTIME__HANDOFF__SINK="sqs", INVOCATION_QUEUE_URL=queue))
    assert sink is not None
    with pytest.raises(DependencyError) as failed:
        await sink.send(handed(), "handoff-1", Deadline(0))
    assert (failed.value.kind, failed.value.sent) == ("timeout", False)
    assert "Messages" not in aws.receive_message(QueueUrl=queue)


async def test_sqs_missing_queue_is_not_retryable(aws):
    missing = aws.create_queue(QueueName="gone")["QueueUrl"]
    aws.delete_queue(QueueUrl=missing)
    sink = handoff.build(load(AGENT_RUNTIME__HANDOFF__SINK="sqs", INVOCATION_QUEUE_URL=missing))
    assert sink is not None
    with pytest.raises(DependencyError) as failed:
        await sink.send(handed(), "handoff-1", Deadline(10))
    assert (failed.value.dependency, failed.value.kind, failed.value.retryable) == ("handoff", "rejected", False)


def sqs_refusing(status: int, code: str) -> Served:
    """SQS's JSON protocol answering every call with this error."""

    async def refuse(request: Request) -> Response:
        await request.body()
        return JSONResponse(
            {"__type": f"com.amazonaws.sqs#{code}", "message": "refused"},
            status_code=status,
            headers={"x-amzn-query-error": f"{code};Sender"},
            media_type="application/x-amz-json-1.0",
        )

    return Served(Starlette(routes=[Route("/{rest:path}", refuse, methods=["POST"])]))


@pytest.mark.parametrize(
    ("status", "code", "kind", "retryable"),
    [
        (403, "AccessDenied", "unauthorized", False),
        (400, "RequestThrottled", "unavailable", True),
        (500, "InternalError", "unavailable", True),
        (400, "InvalidMessageContents", "rejected", False),
    ],
)
async def test_sqs_errors_say_whether_a_retry_can_help(monkeypatch, status, code, kind, retryable):
    server = sqs_refusing(status, code)
    with mocked_aws(monkeypatch):
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", server.url)  # past moto, to the server above
        sink = handoff.build(load(AGENT_RUNTIME__HANDOFF__SINK="sqs", INVOCATION_QUEUE_URL=server.url + "/q"))
        assert sink is not None
        try:
            with pytest.raises(DependencyError) as failed:
                await sink.send(handed(), "handoff-1", Deadline(10))
        finally:
            await sink.aclose()
            server.stop()
    assert (failed.value.kind, failed.value.retryable, failed.value.status) == (kind, retryable, status)
    assert code in str(failed.value)


async def test_sqs_unreachable_sent_nothing(monkeypatch):
    with mocked_aws(monkeypatch):
        monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", f"http://127.0.0.1:{free_port()}")
        sink = handoff.build(load(AGENT_RUNTIME__HANDOFF__SINK="sqs", INVOCATION_QUEUE_URL="http://nowhere/q"))
        assert sink is not None
        with pytest.raises(DependencyError) as failed:
            await sink.send(handed(), "handoff-1", Deadline(10))
    assert (failed.value.kind, failed.value.retryable, failed.value.sent) == ("unavailable", True, False)


# --- Pub/Sub -------------------------------------------------------------------------------------


class Google:
    """The metadata server's token endpoint and Pub/Sub's publish, on one loopback server."""

    def __init__(self) -> None:
        self.expires_in = 3600
        self.token_status = 200
        self.publish_status = 200
        self.publish_delay_s = 0.0
        self.issued: list[str] = []
        self.valid: set[str] = set()
        self.published: list[tuple[str, str | None, dict[str, Any]]] = []  # (path, Authorization, body)
        self.server = Served(
            Starlette(
                routes=[
                    Route("/token", self.token),
                    Route("/v1/{rest:path}", self.publish, methods=["POST"]),
                ]
            )
        )
        self.url = self.server.url

    async def token(self, request: Request) -> Response:
        if request.headers.get("metadata-flavor") != "Google":  # the metadata server's own rule
            return JSONResponse({"error": "missing Metadata-Flavor"}, status_code=403)
        if self.token_status != 200:
            return JSONResponse({"error": "no"}, status_code=self.token_status)
        token = f"ya29.token-{len(self.issued) + 1}"
        self.issued.append(token)
        self.valid.add(token)
        return JSONResponse({"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"})

    async def publish(self, request: Request) -> Response:
        authorization = request.headers.get("authorization")
        self.published.append((request.url.path, authorization, await request.json()))
        await asyncio.sleep(self.publish_delay_s)
        if self.valid and authorization not in {f"Bearer {t}" for t in self.valid}:
            return JSONResponse({"error": {"code": 401, "status": "UNAUTHENTICATED"}}, status_code=401)
        if self.publish_status != 200:
            return JSONResponse({"error": {"code": self.publish_status}}, status_code=self.publish_status)
        return JSONResponse({"messageIds": [str(len(self.published))]})


@pytest.fixture
def google():
    fake = Google()
    yield fake
    fake.server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pubsub_sink(google: Google, clock: Clock | None = None, timeout_s: float = 2.0) -> PubSubSink:
    return PubSubSink(TOPIC, google.url, timeout_s, token_url=google.url + "/token", clock=clock or Clock())


async def test_pubsub_publishes_base64_json_with_a_bearer_token_as_invoke_event_reads_it(google):
    sink, body = pubsub_sink(google), handed()
    await sink.send(body, "handoff-1", Deadline(10))

    [(path, authorization, published)] = google.published
    assert path == f"/v1/{TOPIC}:publish"
    assert authorization == "Bearer ya29.token-1"
    [message] = published["messages"]
    assert message["attributes"] == {"key": "handoff-1"}
    assert json.loads(base64.b64decode(message["data"])) == body
    # delivered by Pub/Sub to the invoke_event trigger: a messagePublished CloudEvent's data
    delivered = {
        "message": {**message, "messageId": "1", "publishTime": "2025-01-01T00:00:00Z"},
        "subscription": "projects/daarion/subscriptions/agent-invocations",
    }
    assert parse_invocation(cloudevent._invocation_data(delivered), 256 * 1024) == Invocation.model_validate(body)


async def test_pubsub_keeps_its_token_until_shortly_before_it_expires(google):
    clock = Clock()
    sink = pubsub_sink(google, clock)
    await asyncio.gather(*(sink.send(handed(), f"handoff-{n}", Deadline(10)) for n in range(5)))
    clock.now += google.expires_in - REFRESH_MARGIN_S - 1
    await sink.send(handed(), "handoff-5", Deadline(10))
    assert google.issued == ["ya29.token-1"]  # one token for all six, concurrent ones included

    clock.now += 1  # within the margin of its expiry: a new one
    await sink.send(handed(), "handoff-6", Deadline(10))
    assert google.issued == ["ya29.token-1", "ya29.token-2"]
    assert google.published[-1][1] == "Bearer ya29.token-2"


async def test_pubsub_refused_token_is_replaced_on_the_next_send(google):
    sink = pubsub_sink(google)
    await sink.send(handed(), "handoff-1", Deadline(10))
    google.valid = {"ya29.someone-else"}  # revoked
    with pytest.raises(DependencyError) as failed:
        await sink.send(handed(), "handoff-2", Deadline(10))
    assert (failed.value.kind, failed.value.status, failed.value.retryable) == ("unauthorized", 401, True)
    await sink.send(handed(), "handoff-2", Deadline(10))
    assert google.published[-1][1] == "Bearer ya29.token-2"


async def test_pubsub_403_is_not_retried_and_says_what_to_grant(google):
    google.publish_status = 403
    sink = pubsub_sink(google)
    with pytest.raises(DependencyError) as failed:
        await sink.send(handed(), "handoff-1", Deadline(10))
    error = failed.value
    assert (error.dependency, error.kind, error.retryable, error.status) == ("handoff", "unauthorized", False, 403)
    assert "roles/pubsub.publisher" in str(error) and "ya29" not in str(error)
    assert len(google.published) == 1


async def test_pubsub_unanswered_publish_is_not_repeated_and_may_have_landed(google):
    google.publish_delay_s = 1.0
    sink = pubsub_sink(google, timeout_s=0.3)
    with pytest.raises(DependencyError) as failed:
        await sink.send(handed(), "handoff-1", Deadline(10))
    assert (failed.value.kind, failed.value.retryable, failed.value.uncertain) == ("timeout", True, True)
    assert len(google.published) == 1  # a second publish would be a second message


async def test_pubsub_without_a_token_publishes_nothing(google):
    google.token_status = 404  # not on Google Cloud
    sink = pubsub_sink(google)
    with pytest.raises(DependencyError) as failed:
        await sink.send(handed(), "handoff-1", Deadline(10))
    assert (failed.value.dependency, failed.value.sent, failed.value.status) == ("handoff", False, 404)
    assert "metadata server" in str(failed.value)
    assert google.published == []


async def test_pubsub_emulator_needs_no_token(google, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", google.url.removeprefix("http://"))
    sink = handoff.build(load(AGENT_RUNTIME__HANDOFF__SINK="pubsub", AGENT_RUNTIME__HANDOFF__PUBSUB_TOPIC=TOPIC))
    assert sink is not None
    await sink.send(handed(), "handoff-1", Deadline(10))
    [(path, authorization, _)] = google.published
    assert (path, authorization, google.issued) == (f"/v1/{TOPIC}:publish", None, [])
