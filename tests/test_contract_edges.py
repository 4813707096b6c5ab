"""Edges of the contracts the usual fixtures never reach: an agent known by one sign only (the loop
guard), and the exact request each post form sends."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shared.infra.deadline import Deadline
from standins.server import Served
from tests.conftest import invocation


@pytest.mark.parametrize(
    ("sender_id", "sender_type"),
    [
        ("agent:helion", ""),  # a service that sends no sender_type: the id says it
        ("agent:helion", "human"),  # a sender_type that is wrong: the id still says it
        ("@helion:daarion.local", "agent"),  # a Matrix id: the type says it
    ],
)
async def test_the_loop_guard_needs_only_one_sign_of_an_agent(stack, client, sender_id, sender_type):
    channel = stack.channel()
    human = stack.messaging.add_message(channel, "a question")
    agent = stack.messaging.add_message(channel, "an agent speaking", sender_id=sender_id, sender_type=sender_type)

    named = (await client.post("/invoke", json=invocation(channel, message_id=agent["id"]))).json()
    newest = (await client.post("/invoke", json=invocation(channel))).json()

    assert named["status"] == "skipped" and named["reason"] == "agent_message"
    assert newest["status"] == "replied" and newest["trigger_message_id"] == human["id"]  # not the agent's
    assert [p["text"] for p in stack.messaging.posts] == ["LLM reply to: a question"]


@pytest.fixture
def recorder():
    """messaging-service's post route, recording exactly what arrives."""
    seen: list[dict] = []

    async def post(request: Request) -> JSONResponse:
        seen.append(
            {
                "query": dict(request.query_params),
                "body": await request.body(),
                "content_type": request.headers.get("content-type"),
            }
        )
        return JSONResponse({"status": "posted", "message_id": "m-1"})

    served = Served(Starlette(routes=[Route("/internal/agents/{agent_id}/post-to-channel", post, methods=["POST"])]))
    served.seen = seen
    yield served
    served.stop()


@pytest.mark.parametrize("post_style", ["body", "query"])
async def test_each_post_form_sends_its_fields_one_way_only(configure, recorder, post_style):
    """The deployed service (query) reads the query string; a JSON body beside it is not its contract."""
    rt = configure(AGENT_RUNTIME__MESSAGING__POST_STYLE=post_style, MESSAGING_SERVICE_URL=recorder.url)
    channel = "7c72d497-27aa-4e75-bb2f-4a4a21d4f91f"

    assert await rt.messaging.post("agent:sofia", channel, "hello there", Deadline(5)) == "m-1"

    [request] = recorder.seen
    fields = {"channel_id": channel, "text": "hello there"}
    if post_style == "query":
        assert request["query"] == fields and request["body"] == b""
        assert request["content_type"] != "application/json"
    else:
        assert request["query"] == {} and request["content_type"] == "application/json"
        assert json.loads(request["body"]) == fields
