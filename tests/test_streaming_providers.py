"""LLM providers streaming their answers, against the fake OpenAI and Anthropic servers on loopback:
the text reaches ``on_text`` as it arrives, and the completion is the one a plain call gives."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.clients.http import Endpoint
from shared.errors import DependencyError
from shared.infra.deadline import Deadline
from shared.llm import ChatRequest, Completion, Provider, ToolCall, Usage
from shared.llm.anthropic import AnthropicProvider
from shared.llm.openai import OpenAiProvider
from shared.llm.proxy import ProxyProvider
from standins.server import Fault

REQUEST = ChatRequest(
    model="gpt-4", messages=[{"role": "user", "content": "hi"}], max_tokens=10, temperature=0.5, metadata={}
)
TEXT = "  Hello there, this reply streams.  "
TOOLS = [("create_task", {"title": "report", "due": "friday"}), ("summarize_channel", {})]
PROVIDERS = ["openai", "anthropic"]


def _provider(stack, kind: str) -> Provider:
    """The provider against its fake, three attempts per call."""
    if kind == "openai":
        return OpenAiProvider(
            Endpoint("llm", stack.url("openai") + "/v1", None, 5.0, 3, {"Authorization": "Bearer test-key"})
        )
    headers = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}
    return AnthropicProvider(Endpoint("llm", stack.url("anthropic"), None, 5.0, 3, headers))


async def _streamed(provider: Provider) -> tuple[Completion, list[str]]:
    pieces: list[str] = []
    completion = await provider.complete(REQUEST, Deadline(10), on_text=pieces.append)
    return completion, pieces


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_the_text_arrives_in_pieces_before_the_stream_ends(stack, kind):
    fake = getattr(stack, kind)
    fake.script = [TEXT, TEXT]
    fake.hold_end = seen = threading.Event()  # the fake sends its end only once a piece reached on_text
    pieces: list[str] = []

    def on_text(piece: str) -> None:
        pieces.append(piece)
        seen.set()

    streamed = await _provider(stack, kind).complete(REQUEST, Deadline(10), on_text=on_text)
    whole = await _provider(stack, kind).complete(REQUEST, Deadline(10))

    assert fake.end_released is True and len(pieces) > 3
    assert "".join(pieces).strip() == streamed.text == TEXT.strip()
    assert streamed == whole  # text, usage, model and finish reason as a plain call gives them
    assert streamed.usage == (Usage(21, 7) if kind == "openai" else Usage(33, 9)) and streamed.model == "gpt-4"
    asked = fake.requests[0]
    assert asked["stream"] is True and "stream" not in fake.requests[1]
    if kind == "openai":
        assert asked["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_tool_calls_gather_from_their_pieces_and_are_never_text(stack, kind):
    fake = getattr(stack, kind)
    fake.script = [TOOLS, TOOLS]

    streamed, pieces = await _streamed(_provider(stack, kind))
    whole = await _provider(stack, kind).complete(REQUEST, Deadline(10))

    assert pieces == []
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [(n, a) for n, a in TOOLS]
    assert streamed == whole


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_usage_not_reported_stays_unknown(stack, kind):
    fake = getattr(stack, kind)
    fake.report_usage = False

    streamed, _ = await _streamed(_provider(stack, kind))

    assert (streamed.text, streamed.usage, streamed.model) == ("LLM reply to: hi", None, None)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_stream_cut_after_a_piece_is_a_bad_response_and_not_repeated(stack, kind):
    fake = getattr(stack, kind)
    fake.script = [TEXT]
    fake.cut_after = 5  # a few pieces of text, then the connection drops

    pieces: list[str] = []
    with pytest.raises(DependencyError) as failed:
        await _provider(stack, kind).complete(REQUEST, Deadline(10), on_text=pieces.append)

    assert (failed.value.kind, str(failed.value), failed.value.retryable) == (
        "bad_response",
        "llm: stream cut short",
        True,
    )
    assert pieces and len(fake.requests) == 1  # the caller has shown the pieces: a retry would show them twice


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("failure", ["503", "cut"])
async def test_a_stream_that_fails_before_any_piece_is_repeated(stack, kind, failure):
    fake = getattr(stack, kind)
    if failure == "503":
        fake.faults.set("complete", Fault(status=503, headers={"Retry-After": "0"}, times=1))
    else:
        fake.cut_after = 1  # its first event, no text yet

    completion, pieces = await _streamed(_provider(stack, kind))

    assert fake.faults.calls["complete"] == 2
    assert "".join(pieces) == completion.text == "LLM reply to: hi"  # nothing of the failed attempt


async def test_an_anthropic_error_event_is_a_dependency_error_repeated_only_before_a_piece(stack):
    fake = stack.anthropic
    fake.error, fake.cut_after = "overloaded_error", 1  # after message_start

    completion, pieces = await _streamed(_provider(stack, "anthropic"))

    assert fake.faults.calls["complete"] == 2 and "".join(pieces) == completion.text

    fake.error, fake.cut_after = "api_error", 5
    with pytest.raises(DependencyError) as failed:
        await _streamed(_provider(stack, "anthropic"))
    assert failed.value.kind == "bad_response" and fake.faults.calls["complete"] == 3

    fake.error, fake.cut_after = "overloaded_error", 5
    with pytest.raises(DependencyError) as failed:
        await _streamed(_provider(stack, "anthropic"))
    assert (failed.value.kind, failed.value.retryable) == ("unavailable", True) and fake.faults.calls["complete"] == 4


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_server_that_answers_a_stream_request_whole_is_read_as_ever(stack, kind):
    fake = getattr(stack, kind)
    fake.ignore_stream = True

    completion, pieces = await _streamed(_provider(stack, kind))

    assert pieces == [] and completion.text == "LLM reply to: hi" and completion.usage is not None
    assert fake.requests[0]["stream"] is True


async def test_llm_proxy_does_not_stream(stack):
    provider = ProxyProvider(Endpoint("llm", stack.url("llm"), None, 5.0, 1))

    completion, pieces = await _streamed(provider)

    assert provider.streams is False and OpenAiProvider.streams and AnthropicProvider.streams
    assert pieces == [] and completion.text and "stream" not in stack.llm.requests[0]


def _data(value: object) -> bytes:
    return b"data: " + json.dumps(value).encode() + b"\n\n"


def _fed(provider: Provider, events: list[object]) -> Completion | None:
    """What a provider's stream reader makes of these events (raw bytes, or the data of one), fed a byte at a time."""
    reader = provider.reader(REQUEST, lambda piece: None)
    raw = b"".join(e if isinstance(e, bytes) else _data(e) for e in events)
    for byte in raw:
        reader.feed(bytes([byte]))
    reader.finish()
    return reader.completion()


def test_what_is_malformed_in_a_stream_is_skipped():
    def piece(index: object, **call: object) -> dict:
        return {"choices": [{"delta": {"tool_calls": [{"index": index, **call}]}}]}

    openai = OpenAiProvider(Endpoint("llm", "http://127.0.0.1:9", None, 1.0, 1))
    completion = _fed(
        openai,
        [
            b": a comment\n\ndata: 7\n\n",
            {"choices": None, "usage": [1]},
            {"choices": [{"delta": {"content": ["no"], "tool_calls": [5]}}]},
            piece(None, id="x"),
            piece(0, id="c", function={"name": "t"}),
            piece(0, function={"arguments": "{,"}),
            {"choices": [{"delta": {"content": "ок"}, "finish_reason": "stop"}]},
            b"data: [DONE]\n\n",
        ],
    )
    assert completion == Completion("ок", [ToolCall("c", "t", None)], None, None, "stop")  # split mid-letter too

    def delta(index: object, kind: str, **fields: object) -> dict:
        return {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}}

    anthropic = AnthropicProvider(Endpoint("llm", "http://127.0.0.1:9", None, 1.0, 1))
    completion = _fed(
        anthropic,
        [
            {"type": "message_start", "message": {"usage": "many"}},
            {"type": "content_block_start", "index": [0]},
            {"type": "content_block_start", "index": 1, "content_block": {"type": "thinking"}},
            delta(1, "thinking_delta", thinking="x"),
            {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}},
            delta(2, "input_json_delta", partial_json="{"),
            delta(2, "text_delta", text="ok"),
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
            {"type": "message_stop"},
        ],
    )
    assert completion == Completion("ok", [], None, None, "end_turn")

    with pytest.raises(DependencyError) as unreadable:
        _fed(anthropic, [b"data: {not json\n\n"])
    assert unreadable.value.kind == "bad_response"


# the APIs' own keys and types, so that the events come near to the shapes the readers look for
_words = st.sampled_from(
    """type index delta content_block message usage text partial_json input id name function arguments
    tool_calls choices content finish_reason model error stop_reason text_delta input_json_delta tool_use
    message_start content_block_start content_block_delta message_delta message_stop overloaded_error
    input_tokens output_tokens prompt_tokens""".split()
)
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2) | st.text(max_size=4) | _words,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_words, inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from([None, "error", "ping"]), _values), max_size=10), st.integers(1, 7))
def test_a_stream_of_anything_gives_a_completion_or_a_dependency_error(events, step):
    raw = b"".join((f"event: {name}\n".encode() if name else b"") + _data(value) for name, value in events)
    raw += b"data: [DONE]\n\n"
    for kind in (OpenAiProvider, AnthropicProvider):
        reader = kind(Endpoint("llm", "http://127.0.0.1:9", None, 1.0, 1)).reader(REQUEST, lambda piece: None)
        try:
            for at in range(0, len(raw), step):
                reader.feed(raw[at : at + step])
            reader.finish()
            completion = reader.completion()
        except DependencyError:
            continue
        assert completion is None or all(
            c.arguments is None or isinstance(c.arguments, dict) for c in completion.tool_calls
        )


async def test_a_server_refusing_to_stream_is_asked_for_whole_answers_from_then_on(stack):
    stack.openai.refuse_stream = True
    stack.openai.script = ["Whole answer.", "Another."]
    provider = _provider(stack, "openai")
    completion, pieces = await _streamed(provider)
    assert completion.text == "Whole answer." and pieces == [] and provider.streams is False
    assert (await provider.complete(REQUEST, Deadline(10))).text == "Another."
    assert ["stream" in r for r in stack.openai.requests] == [True, False, False]  # refused once, then whole
