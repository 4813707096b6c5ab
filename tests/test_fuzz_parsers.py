"""hypothesis against what reads untrusted input: the invocation parser, the history and memory
parsers, the LLM answer parsers and the keyword mock. None of them may raise anything but the
error it is documented to raise, and that error names the problem."""

from __future__ import annotations

import asyncio
import json
import string
from datetime import UTC
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import mock_llm
from shared import tools as tools_module
from shared.clients.memory import MemoryClient
from shared.clients.messaging import MessagingClient
from shared.contracts import ChannelMessage, Invocation
from shared.errors import BadInput, DependencyError
from shared.infra.deadline import Deadline
from shared.intake import parse_invocation
from shared.llm import ChatRequest, Completion, text_tools
from shared.llm.anthropic import AnthropicProvider
from shared.llm.openai import OpenAiProvider
from shared.llm.proxy import ProxyProvider
from shared.llm.text_tools import new_marker, parse_tool_lines

FAST = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
MAX = 4096

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=25,
)
uuids = st.uuids().map(str)
ids = st.one_of(uuids, st.text(max_size=30), st.integers(), st.none())
datetimes = st.one_of(
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
    st.text(max_size=30),
    st.integers(),
)


def near_invocation() -> st.SearchStrategy[dict[str, Any]]:
    """Invocations with every field sometimes right, sometimes wrong: the parser's interesting edge."""
    payload = st.fixed_dictionaries(
        {"channel_id": uuids | json_values},
        optional={
            "message_id": ids,
            "matrix_event_id": st.text(max_size=600) | json_scalars,
            "microdao_id": st.text(max_size=300) | json_scalars,
            "rewrite_prompt": st.text(max_size=2100) | json_scalars,
            "schedule_id": st.text(alphabet=string.printable, max_size=210) | json_scalars,
            "fire_time": datetimes,
            "instruction": st.text(max_size=50) | json_scalars,
            "task": st.sampled_from(["summarize_channel", "other"]) | json_scalars,
            "extra": json_values,
        },
    )
    return st.fixed_dictionaries(
        {
            "agent_id": st.from_regex(r"agent:[A-Za-z0-9._-]{0,130}", fullmatch=True)
            | st.text(max_size=20)
            | json_scalars,
            "payload": payload | json_values,
        },
        optional={"entrypoint": st.sampled_from(["channel_message", "direct", "cron", "dance"]) | json_scalars},
    )


def check_parse(raw: Any) -> None:
    try:
        invocation = parse_invocation(raw, MAX)
    except BadInput as exc:
        assert exc.status in (400, 413, 422) and exc.error
        if exc.status == 422:
            assert exc.detail and all(d["field"] and d["message"] for d in exc.detail)
            assert all(d["field"] in exc.error for d in exc.detail)  # the error names every field
        json.dumps(exc.body())  # and is JSON, whatever the input was
        return
    assert isinstance(invocation, Invocation)
    invocation.model_dump_json()
    if invocation.entrypoint == "cron":
        assert invocation.payload.schedule_key().startswith("cron:")


@FAST
@given(st.binary(max_size=MAX + 64))
def test_any_bytes(raw):
    check_parse(raw)


@FAST
@given(st.text(max_size=MAX + 64))
def test_any_text(raw):
    check_parse(raw)


@FAST
@given(json_values)
def test_any_json_value(value):
    check_parse(json.dumps(value))
    check_parse(value if isinstance(value, dict) else {"value": value})


@FAST
@given(near_invocation())
def test_near_invocations(value):
    check_parse(json.dumps(value))


@FAST
@given(st.integers(min_value=1, max_value=5000), st.sampled_from("[{"))
def test_deep_nesting(depth, bracket):
    check_parse(bracket * depth)
    check_parse(('{"a":' * depth) + "1" + "}" * depth)


class Answering:
    """An endpoint that answers whatever the test says (the parsing is under test, not the HTTP)."""

    def __init__(self, data: Any) -> None:
        self.data = data

    async def call(self, *args: Any, **kwargs: Any) -> Any:
        return self.data


history_element = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"id": ids, "created_at": datetimes},
        optional={
            "sender_id": st.text(max_size=20) | json_scalars,
            "sender_type": st.sampled_from(["human", "agent"]) | json_scalars,
            "content_preview": json_values,
            "body": json_values,
            "matrix_event_id": json_scalars,
        },
    ),
)


def _is_message(element: Any) -> bool:
    try:
        ChannelMessage.model_validate(element)
    except ValueError:
        return False
    return True


@FAST
@given(st.lists(history_element, max_size=20) | json_values)
def test_history_parser(data):
    client = MessagingClient(Answering(data))  # type: ignore[arg-type]
    try:
        messages = asyncio.run(client.history("7c72d497-27aa-4e75-bb2f-4a4a21d4f91f", Deadline(5)))
    except DependencyError as exc:
        # not a list, or a list in which nothing is a message: a bad answer, never an empty channel
        assert exc.kind == "bad_response" and exc.retryable
        assert not isinstance(data, list) or (data and not any(_is_message(e) for e in data))
        return
    assert all(isinstance(m, ChannelMessage) and isinstance(m.text, str) for m in messages)
    assert all(m.created_at.tzinfo is not None and m.created_at.utcoffset().total_seconds() == 0 for m in messages)
    assert [m.created_at for m in messages] == sorted(m.created_at.astimezone(UTC) for m in messages)


@FAST
@given(json_values | st.fixed_dictionaries({"items": st.lists(json_values, max_size=6)}))
def test_memory_parser(data):
    client = MemoryClient(Answering(data))  # type: ignore[arg-type]
    try:
        items = asyncio.run(
            client.query(agent_id="agent:a", microdao_id="m", channel_id="c", query="q", k=5, deadline=Deadline(5))
        )
    except DependencyError as exc:
        assert exc.kind == "bad_response"
        return
    assert len(items) <= 5 and all(isinstance(i.content, str) for i in items)


llm_answer = st.one_of(
    json_values,
    st.fixed_dictionaries({"content": json_values}),
    st.fixed_dictionaries(
        {
            "choices": st.lists(
                st.fixed_dictionaries(
                    {
                        "message": st.fixed_dictionaries(
                            {},
                            optional={
                                "content": json_values,
                                "tool_calls": json_values
                                | st.lists(
                                    st.fixed_dictionaries(
                                        {},
                                        optional={
                                            "id": json_scalars,
                                            "function": json_values
                                            | st.fixed_dictionaries(
                                                {"name": json_scalars, "arguments": json_values | st.text(max_size=30)}
                                            ),
                                        },
                                    )
                                    | json_values,
                                    max_size=3,
                                ),
                            },
                        )
                        | json_values
                    }
                )
                | json_values,
                max_size=2,
            )
            | json_values
        }
    ),
    st.fixed_dictionaries(
        {
            "content": st.lists(
                st.fixed_dictionaries(
                    {"type": st.sampled_from(["text", "tool_use"]) | json_scalars},
                    optional={"text": json_values, "id": json_values, "name": json_values, "input": json_values},
                )
                | json_values,
                max_size=4,
            )
        }
    ),
)


@FAST
@given(llm_answer)
def test_llm_answer_parsers(data):
    for provider in (ProxyProvider, OpenAiProvider, AnthropicProvider):
        if not isinstance(data, dict):
            continue
        completion = provider(None).parse(data, REQUEST)  # type: ignore[arg-type]
        assert completion is None or (
            isinstance(completion, Completion)
            and isinstance(completion.text, str)
            and all(
                isinstance(c.name, str) and (c.arguments is None or isinstance(c.arguments, dict))
                for c in completion.tool_calls
            )
        )
        if completion is not None:
            json.dumps(completion.as_message())  # what goes back to the provider next round


MARKER = new_marker()
REQUEST = ChatRequest("gpt-4", [], 10, 0.5, {}, tool_marker=MARKER)


@FAST
@given(st.text(max_size=500), st.lists(st.text(max_size=60), max_size=3))
def test_tool_lines(text, requests):
    mixed = "\n".join([text, *(f"{MARKER} {r}" for r in requests)])
    completion = parse_tool_lines(mixed, MARKER)
    assert not text_tools._pattern(MARKER).search(completion.text)  # every request is taken out of the text
    assert all(c.arguments is None or isinstance(c.arguments, dict) for c in completion.tool_calls)
    assert parse_tool_lines(text, None).tool_calls == []  # no marker, no tools


@FAST
@given(st.text(max_size=500), st.text(max_size=30))
def test_mock_reply(text, name):
    answer = mock_llm.reply(text, name)
    assert isinstance(answer, str) and answer.strip()
    assert mock_llm.language(text) in ("uk", "en")


message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]) | json_scalars},
    optional={"content": json_values | st.text(max_size=100), "name": json_values},
)


@FAST
@given(st.lists(message, max_size=6), st.lists(st.sampled_from(["create_task", "list_projects"]), max_size=2))
def test_mock_conversation(messages, tools):
    completion = mock_llm.complete(messages, [tools_module.spec(name) for name in tools], "Sofia")
    assert isinstance(completion, Completion) and isinstance(completion.text, str)
    assert completion.text.strip() or completion.tool_calls
