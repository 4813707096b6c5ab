"""Streaming replies: POST /invoke with ``Accept: text/event-stream`` through the real functions-framework
process, against fake LLM servers that really stream (chunked, with pauses)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from shared.infra.sse import Decoder
from tests.conftest import free_port, invocation
from tests.runner_support import FunctionProcess, eventually

STREAM = {"Accept": "text/event-stream"}


async def _events(response: httpx.Response, on_delta: Any = None) -> list[tuple[str, dict[str, Any]]]:
    """The events of a streamed answer, as they arrive; ``on_delta`` sees each delta when it arrives."""
    decoder, events = Decoder(), []
    async for chunk in response.aiter_raw():
        for event in decoder.feed(chunk):
            data = json.loads(event.data)
            if event.name == "delta" and on_delta is not None:
                on_delta(data["text"])
            events.append((event.name, data))
    return events


async def _streamed(served: FunctionProcess, body: dict[str, Any], on_delta: Any = None) -> list[tuple[str, dict]]:
    """POST the invocation asking for the event stream; its events, as they arrived."""
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{served.url}/invoke", json=body, headers=STREAM) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            return await _events(response, on_delta)


async def _hang_up_at_the_first_delta(served: FunctionProcess, body: dict[str, Any]) -> None:
    """Ask for the stream, and close the connection as soon as the reply begins."""
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream("POST", f"{served.url}/invoke", json=body, headers=STREAM) as response:
            decoder = Decoder()
            async for chunk in response.aiter_raw():
                if any(e.name == "delta" for e in decoder.feed(chunk)):
                    return


def _typed(events: list[tuple[str, dict[str, Any]]]) -> str:
    """The deltas after the last reset, joined: what the caller was shown as the reply."""
    text = ""
    for name, data in events:
        if name == "reset":
            text = ""
        elif name == "delta":
            text += data["text"]
    return text


def _posted(stack: Any, channel: str) -> list[dict[str, Any]]:
    return [m for m in stack.messaging.channels[channel] if m["sender_id"].startswith("agent:")]


@pytest.fixture
async def function(stack):
    """The function as an operator serves it, with the fakes' URLs; the LLM picked per test."""
    started: list[FunctionProcess] = []

    async def start(**env: str) -> FunctionProcess:
        process = await FunctionProcess(free_port(), stack.env(**env)).start()
        started.append(process)
        return process

    yield start
    for process in started:
        await process.kill()


async def _ask(stack: Any, text: str) -> tuple[str, dict[str, Any]]:
    channel = stack.channel()
    message = stack.messaging.add_message(channel, text, sender_id="user:alice")
    return channel, invocation(channel, message_id=message["id"])


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_streamed_reply_arrives_in_pieces_before_it_is_posted(stack, function, provider):
    fake = getattr(stack, provider)
    fake.script = ["Treasury holds 1200 DAAR; the next payout is on Friday, after the vote closes."]
    served = await function(AGENT_RUNTIME__LLM__PROVIDER=provider)
    channel, body = await _ask(stack, "what is in the treasury?")
    posted_while_typing = []

    events = await _streamed(served, body, lambda _: posted_while_typing.append(len(_posted(stack, channel))))

    names = [name for name, _ in events]
    assert names[-1] == "outcome" and names.count("outcome") == 1
    assert names.count("delta") > 1  # in pieces, as the model typed them
    assert posted_while_typing and set(posted_while_typing) == {0}  # shown before the post was made
    assert names.index("delta") < names.index("outcome")
    assert {"blueprint", "history", "llm", "post"} <= {data["step"] for name, data in events if name == "step"}
    outcome = events[-1][1]
    assert outcome["status"] == "replied" and outcome["llm_source"] == "llm"
    [reply] = _posted(stack, channel)
    assert _typed(events) == reply["content_preview"]
    assert outcome["message_id"] == reply["id"]
    assert fake.requests[-1]["stream"] is True


async def test_without_the_header_the_answer_is_the_json_outcome(stack, function):
    served = await function(AGENT_RUNTIME__LLM__PROVIDER="openai")
    _, body = await _ask(stack, "hello")
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{served.url}/invoke", json=body)
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["status"] == "replied"
    assert "stream" not in stack.openai.requests[-1]


async def test_bad_input_is_answered_as_json_naming_the_field_before_any_event(stack, function):
    served = await function()
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{served.url}/invoke", json={"agent_id": "agent:sofia", "payload": {}}, headers=STREAM
        )
    assert response.status_code == 422
    assert "payload.channel_id" in response.json()["error"]


async def test_the_keyword_mock_types_its_reply_word_by_word(stack, function):
    served = await function(LLM_PROXY_URL="", AGENT_RUNTIME__LLM__MOCK_PACE_S="0.01")
    channel, body = await _ask(stack, "привіт")
    events = await _streamed(served, body)
    [reply] = _posted(stack, channel)
    deltas = [data["text"] for name, data in events if name == "delta"]
    assert len(deltas) == len(reply["content_preview"].split())
    assert _typed(events) == reply["content_preview"]
    assert events[-1][1]["llm_source"] == "mock"


async def test_a_tool_round_is_not_shown_only_the_final_round_is(stack, function):
    stack.openai.script = [[("create_task", {"title": "report"})], "Done: the task «report» is created."]
    served = await function(AGENT_RUNTIME__LLM__PROVIDER="openai")
    channel, body = await _ask(stack, "create a task: report")
    events = await _streamed(served, body)
    [reply] = _posted(stack, channel)
    assert _typed(events) == reply["content_preview"] == "Done: the task «report» is created."
    assert events[-1][1]["tool_calls"] == [{"tool": "create_task", "result": "ok"}]


async def test_a_stream_cut_by_the_llm_is_replaced_by_the_fallback_and_the_caller_told(stack, function):
    stack.openai.script = ["A long answer that the model never gets to finish because its connection drops."]
    stack.openai.cut_after = 3
    served = await function(AGENT_RUNTIME__LLM__PROVIDER="openai")
    channel, body = await _ask(stack, "hello")
    events = await _streamed(served, body)
    names = [name for name, _ in events]
    assert "reset" in names and names.index("delta") < names.index("reset")  # shown, then withdrawn
    [reply] = _posted(stack, channel)
    assert _typed(events) == reply["content_preview"]
    assert events[-1][1]["llm_source"] == "mock"


async def test_a_caller_that_hangs_up_mid_stream_still_gets_exactly_one_post(stack, function):
    stack.openai.script = ["One reply, posted once, whoever is still listening when it is done."]
    stack.openai.stream_pause_s = 0.1
    served = await function(AGENT_RUNTIME__LLM__PROVIDER="openai")
    channel, body = await _ask(stack, "hello")
    await _hang_up_at_the_first_delta(served, body)
    assert not _posted(stack, channel)  # the run was still typing when the caller left

    await eventually(lambda: len(_posted(stack, channel)) == 1, timeout_s=20)
    [reply] = _posted(stack, channel)
    assert reply["content_preview"] == "One reply, posted once, whoever is still listening when it is done."

    # the router's retry of the same message: a duplicate streams no reply, only its outcome
    events = await _streamed(served, body)
    assert not [name for name, _ in events if name in ("delta", "reset")]
    assert events[-1][1]["status"] == "skipped" and events[-1][1]["reason"] == "duplicate"
    assert len(_posted(stack, channel)) == 1


async def test_a_server_stopping_finishes_a_streamed_run_whose_caller_hung_up(stack, function):
    stack.openai.script = ["Posted even though the caller left and the server was told to stop."]
    stack.openai.stream_pause_s = 0.1
    served = await function(AGENT_RUNTIME__LLM__PROVIDER="openai")
    channel, body = await _ask(stack, "hello")
    await _hang_up_at_the_first_delta(served, body)
    assert not _posted(stack, channel)
    await served.stop()  # SIGTERM: gunicorn's worker drains what is in flight
    [reply] = _posted(stack, channel)
    assert reply["content_preview"] == "Posted even though the caller left and the server was told to stop."
