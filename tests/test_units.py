"""Pure parts of the core: settings precedence, the mock LLM, history parsing, the trigger rule."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest

from shared import mock_llm
from shared.contracts import ChannelMessage, MemoryItem
from shared.infra import settings
from shared.pipeline import find_trigger


def test_settings_defaults_file_then_environment(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("llm:\n  default_model: deepseek-r1\n  max_tokens: 200\nmessaging:\n  post_style: query\n")

    loaded = settings.load(
        {"LLM_PROXY_URL": "http://llm:1", "AGENT_RUNTIME__LLM__MAX_TOKENS": "300", "LLM_PROXY_SECRET": "abc"}, config
    )

    assert loaded.llm.default_model == "deepseek-r1"  # file beats default
    assert loaded.llm.max_tokens == 300  # environment beats file
    assert loaded.llm.url == "http://llm:1"  # the seed's variable names work
    assert loaded.messaging.post_style == "query"
    assert loaded.memory.url == "http://agent-memory:7008"  # built-in default
    assert loaded.llm.secret.get_secret_value() == "abc" and "abc" not in repr(loaded)


def test_settings_name_the_bad_key(tmp_path):
    with pytest.raises(ValueError, match="post_style"):
        settings.load({"AGENT_RUNTIME__MESSAGING__POST_STYLE": "carrier-pigeon"})
    with pytest.raises(FileNotFoundError):
        settings.load({"AGENT_RUNTIME_CONFIG": str(tmp_path / "missing.yaml")})


def test_the_shipped_config_is_the_defaults():
    assert settings.load({}) == settings.Settings()


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("this", "default"),
        ("which way", "default"),
        ("think about it", "default"),
        ("shipping", "default"),
        ("hi", "greeting"),
        ("Hello there", "greeting"),
        ("Привіт усім", "greeting"),
        ("Вітаю!", "greeting"),
        ("can you help me", "help"),
        ("Допоможіть будь ласка", "help"),
        ("потрібна допомога", "help"),
        ("thanks!", "thanks"),
        ("Thank you", "thanks"),
        ("дякую", "thanks"),
        ("what about phase 2", "phase2"),
        ("розкажи про фазу 2", "phase2"),
        ("is it ready?", "question"),
        ("коли реліз?", "question"),
    ],
)
def test_mock_categories_match_words_not_substrings(text, category):
    assert mock_llm.category(text) == category


def test_mock_answers_in_the_language_of_the_message():
    assert mock_llm.language("Привіт, як справи?") == "uk"
    assert mock_llm.language("hello") == "en"
    assert mock_llm.reply("привіт", "Sofia").startswith("Привіт! Я Sofia")
    assert mock_llm.reply("hello", "Sofia").startswith("Hello! I'm Sofia")
    assert mock_llm.reply("дякую") != mock_llm.reply("thanks")


def _message(i: int, **fields) -> ChannelMessage:
    return ChannelMessage.model_validate(
        {
            "id": f"m{i}",
            "sender_id": "user:a",
            "sender_type": "human",
            "content_preview": f"text {i}",
            "created_at": datetime(2026, 1, 1, 0, i, tzinfo=UTC),
            **fields,
        }
    )


@pytest.mark.parametrize("field", ["body", "content", "text", "content_preview"])
def test_history_text_from_any_field(field):
    message = ChannelMessage.model_validate({"id": "1", field: "hi", "created_at": "2026-01-01T00:00:00"})
    assert message.text == "hi" and message.created_at.tzinfo is not None


def test_memory_item_text_or_content():
    assert MemoryItem.model_validate({"text": "a"}).content == "a"
    assert MemoryItem.model_validate({"content": {"k": 1}, "id": 5}).content == '{"k": 1}'


def test_trigger_rule():
    history = [_message(1), _message(2, matrix_event_id="$e2"), _message(3, sender_id="agent:x", sender_type="agent")]
    assert find_trigger(history, "m1", None).id == "m1"
    assert find_trigger(history, None, "$e2").id == "m2"
    assert find_trigger(history, None, None).id == "m2"  # the newest human message
    assert find_trigger(history, "missing", "$e2") is None  # a named id that is absent is not guessed
    assert find_trigger([], None, None) is None


def test_json_codec_reads_and_writes_what_the_stdlib_did():
    from shared.infra import jsoncodec

    # a service that cut an emoji in half, NaN, a byte-order mark: orjson refuses, the stdlib reads them
    assert jsoncodec.loads(b'["nice \\ud83d"]') == ["nice \ud83d"]
    assert math.isnan(jsoncodec.loads("NaN"))
    assert jsoncodec.loads('\ufeff{"a": 1}'.encode()) == {"a": 1}
    with pytest.raises(ValueError):
        jsoncodec.loads(b"{not json")
    with pytest.raises(ValueError):  # a dependency's answer nested past any recursion limit: not JSON, not a crash
        jsoncodec.loads(b"[" * 200_000)
    # non-string keys and lone surrogates: valid JSON bytes either way
    assert json.loads(jsoncodec.dumps({1: "x"})) == {"1": "x"}
    assert json.loads(jsoncodec.dumps({"t": "a\ud800b"})) == {"t": "a\ud800b"}
    assert jsoncodec.dumps({"t": "привіт"}) == '{"t":"привіт"}'.encode()


def test_an_event_stream_of_endless_empty_data_lines_hits_the_size_limit():
    from shared.infra import sse

    decoder = sse.Decoder()
    with pytest.raises(sse.StreamError):
        decoder.feed(b"data:\n" * (sse.MAX_EVENT_BYTES + 1))  # each line counts, though it holds nothing
    whole = sse.Decoder().feed(b'event: delta\r\ndata: {"text": "a"}\r\n\r\n: comment\n\ndata: x\ndata: y\n\n')
    assert whole == [sse.Event("delta", '{"text": "a"}'), sse.Event("message", "x\ny")]


def test_typing_shows_the_reply_as_posted_within_its_limit():
    from shared.streaming import Typing

    shown: list[tuple[str, dict]] = []
    typing = Typing(lambda name, data: shown.append((name, data)), max_chars=5)
    for piece in ["  aa", "aa ", "    " * 1000, "bbbb"]:
        typing.piece(piece)
    assert typing.shown == "aaaa" and len(typing._held) <= 1  # whitespace past the limit is never held
    assert [d["text"] for _, d in shown] == ["aa", "aa"]  # cut at the limit without the space: no reset needed
