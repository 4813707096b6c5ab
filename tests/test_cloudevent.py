"""The invoke_event CloudEvent target through functions-framework's real ASGI app: plain and Pub/Sub-wrapped."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
import pytest

from standins.server import Fault
from tests.conftest import ROOT, invocation

PUBSUB = "google.cloud.pubsub.topic.v1.messagePublished"


@pytest.fixture(scope="module")
def app():
    from functions_framework.aio import create_asgi_app

    return create_asgi_app(target="invoke_event", source=str(ROOT / "main.py"))


@pytest.fixture
async def post(app, configure):
    """POST one CloudEvent in binary mode, as Eventarc and Knative deliver it."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://fn") as client:

        async def _post(data: Any, *, type_: str = "com.daarion.agent.invoke", **extensions: str) -> httpx.Response:
            headers = {
                "ce-specversion": "1.0",
                "ce-id": str(uuid.uuid4()),
                "ce-source": "//daarion/router",
                "ce-type": type_,
                "content-type": "application/json",
                **{f"ce-{name}": value for name, value in extensions.items()},
            }
            return await client.post("/", content=json.dumps(data), headers=headers)

        yield _post


def pubsub(data: bytes | str) -> dict[str, Any]:
    encoded = base64.b64encode(data).decode() if isinstance(data, bytes) else data
    return {
        "message": {"data": encoded, "messageId": "1234", "attributes": {}},
        "subscription": "projects/daarion/subscriptions/agent-invocations",
    }


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "pubsub"])
async def test_an_invocation_event_is_answered(stack, post, logs, wrapped):
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")
    body = invocation(channel)
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"

    response = await (
        post(pubsub(json.dumps(body).encode()), type_=PUBSUB, traceparent=f"00-{trace}-00f067aa0ba902b7-01")
        if wrapped
        else post(body, traceparent=f"00-{trace}-00f067aa0ba902b7-01")
    )

    assert response.status_code == 200
    assert [p["text"] for p in stack.messaging.replies_to(channel)] == ["LLM reply to: hello"]
    [line] = [r for r in logs.records if r.getMessage() == "invocation replied"]
    assert line.fields["trace_id"] == trace and line.fields["channel_id"] == channel


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"agent_id": "agent:sofia", "payload": {"channel_id": "../../admin"}}, "payload.channel_id"),
        (pubsub(b"{not json"), "not JSON"),
        (pubsub("%%% not base64 %%%"), "not base64"),
        (pubsub(""), "no data"),
        ({"message": {"attributes": {}}}, "no data"),
    ],
)
async def test_bad_input_is_logged_and_acknowledged(stack, post, logs, data, error):
    response = await post(data, type_=PUBSUB if "message" in data else "com.daarion.agent.invoke")

    assert response.status_code == 200  # acknowledged: no retry fixes it
    [warning] = [r for r in logs.records if r.getMessage() == "bad invocation event, acknowledged"]
    assert error in warning.fields["error"]
    assert stack.messaging.faults.calls == {}


async def test_a_failure_a_retry_can_help_is_redelivered_and_then_answered(stack, post):
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")
    stack.messaging.faults.set("history", Fault(status=503))

    failed = await post(invocation(channel))
    stack.messaging.faults.set("history", None)
    redelivered = await post(invocation(channel))

    assert failed.status_code == 500  # the platform redelivers
    assert redelivered.status_code == 200
    assert len(stack.messaging.replies_to(channel)) == 1


async def test_a_failure_no_retry_fixes_is_acknowledged(stack, post, logs):
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")
    stack.messaging.members = {}  # the agent is not a member: 403 on post

    response = await post(invocation(channel))

    assert response.status_code == 200
    [line] = [r for r in logs.records if r.getMessage() == "invocation failed"]
    assert line.fields["retryable"] is False and line.fields["step"] == "post"
    assert stack.messaging.replies_to(channel) == []
