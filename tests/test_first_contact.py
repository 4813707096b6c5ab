"""A newcomer's first hour: the mock's grammar and language, the errors that name what is wrong,
agent ids the platform accepts, the post form found by itself, a missing memory secret said aloud."""

from __future__ import annotations

import logging

import pytest

from shared import mock_llm
from shared.clients import memory as memory_client
from shared.contracts import Blueprint
from standins.server import Fault
from tests.conftest import invocation

CRON = {"schedule_id": "daily", "fire_time": "2025-01-01T09:00:00Z"}


def _tool_turns(error: str) -> list[dict]:
    return [
        {"role": "user", "content": "створи задачу: звіт"},
        {"role": "tool", "name": "create_task", "content": f'{{"ok": false, "error": "{error}"}}'},
    ]


# --- the mock: the agent's gender and language ----------------------------------------------


@pytest.mark.parametrize(
    ("gender", "expected"),
    [
        ("feminine", "Я спробувала create_task, але не вийшло: політика доступу цього не дозволяє"),
        ("masculine", "Я спробував create_task, але не вийшло: політика доступу цього не дозволяє"),
        (None, "Не вдалося виконати create_task: політика доступу цього не дозволяє"),
    ],
)
def test_a_failed_tool_is_told_in_the_agents_gender_and_in_ukrainian(gender, expected):
    completion = mock_llm.complete(_tool_turns("not permitted by policy"), [], "Sofia", gender=gender)
    assert completion.text == expected


@pytest.mark.parametrize(
    ("error", "said"),
    [
        ("toolcore is not configured", "сервіс інструментів (toolcore) не налаштовано"),
        ("toolcore: HTTP 500", "сервіс інструментів не відповів як слід"),
        ("not run: at most 3 tool calls a turn and 5 a message", "забагато викликів"),
        ("Project quota exceeded for DAO", "інструмент повернув помилку"),  # toolcore's own words
    ],
)
def test_tool_errors_are_said_in_ukrainian_never_in_english(error, said):
    assert said in mock_llm.complete(_tool_turns(error), [], "Sofia", gender="feminine").text


def test_an_english_conversation_keeps_the_error_as_it_is():
    messages = [
        {"role": "user", "content": "create a task: report"},
        {"role": "tool", "name": "create_task", "content": '{"ok": false, "error": "not permitted by policy"}'},
    ]
    assert (
        mock_llm.complete(messages, [], "Sofia").text
        == "I tried create_task, but it did not work: not permitted by policy"
    )


def test_the_default_reply_follows_the_gender_and_a_wordless_message_the_agents_language():
    assert mock_llm.reply("ну", "Sofia", gender="feminine").startswith("Зрозуміла. Я прочитала")
    assert mock_llm.reply("ну", "Helion", gender="masculine").startswith("Зрозумів. Я прочитав")
    assert mock_llm.reply("ну", "Agent").startswith("Зрозуміло.")  # no gender: an impersonal phrasing
    assert mock_llm.reply("👍", "Sofia", default_language="uk").startswith("Зрозуміло")
    assert mock_llm.reply("👍", "Helion", default_language="en").startswith("Got it")
    assert mock_llm.reply("👍", "Helion", default_language="de").startswith("Got it")  # one it does not speak


def test_the_blueprints_say_their_gender():
    from shared.blueprints import BlueprintChain
    from shared.infra.settings import Settings
    from tests.conftest import ROOT

    files = BlueprintChain(Settings(), None, ROOT / "blueprints").files()
    assert Blueprint.model_validate(files["agent:sofia"]).gender == "feminine"
    assert Blueprint.model_validate(files["agent:helion"]).gender == "masculine"


async def test_sofia_denied_a_tool_says_so_in_her_own_words(stack, configure, client):
    configure(LLM_PROXY_URL="")  # the mock is the provider
    stack.pdp.effect = "deny"
    channel = stack.channel()
    stack.messaging.add_message(channel, "створи задачу: підготувати звіт")

    outcome = (await client.post("/invoke", json=invocation(channel))).json()

    assert outcome["tool_calls"] == [{"tool": "create_task", "result": "denied"}]
    reply = stack.messaging.replies_to(channel)[0]["text"]
    assert reply == "Я спробувала create_task, але не вийшло: політика доступу цього не дозволяє"


async def test_a_created_task_is_named_in_the_reply(stack, configure, client):
    configure(LLM_PROXY_URL="")
    channel = stack.channel()
    stack.messaging.add_message(channel, "створи задачу: підготувати звіт")

    await client.post("/invoke", json=invocation(channel))

    assert [call["args"]["title"] for call in stack.toolcore.calls] == ["підготувати звіт"]
    assert stack.messaging.replies_to(channel)[0]["text"].startswith(
        "Готово: create_task виконано («підготувати звіт», id "
    )


# --- errors that name what is wrong ---------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        ({}, {"payload.schedule_id", "payload.fire_time", "payload.instruction or payload.task"}),
        ({"schedule_id": "daily"}, {"payload.fire_time", "payload.instruction or payload.task"}),
        ({"fire_time": CRON["fire_time"], "task": "summarize_channel"}, {"payload.schedule_id"}),
        ({**CRON}, {"payload.instruction or payload.task"}),
    ],
)
async def test_a_cron_invocation_names_what_is_really_missing(client, stack, payload, fields):
    response = await client.post("/invoke", json=invocation(stack.channel(), entrypoint="cron", **payload))
    assert response.status_code == 422
    assert {d["field"] for d in response.json()["detail"]} == fields


@pytest.mark.parametrize("agent_id", ["agent:Sofia", "agent:sofia.v2", "agent:sofia_2", "helion"])
async def test_ids_no_channel_could_hold_are_refused_at_once(stack, client, agent_id):
    """messaging-service's members match ^(user|agent):[a-z0-9-]+$: any other id could only ever get 403."""
    response = await client.post("/invoke", json=invocation(stack.channel(), agent_id=agent_id))
    assert response.status_code == 422 and "agent_id" in response.json()["error"]
    assert stack.messaging.faults.calls == {}


# --- the post form: auto finds the service's ------------------------------------------------


async def test_auto_sends_the_deployed_form_first(stack, configure, client):
    configure()  # the default: auto
    stack.messaging.accept = "query"
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")

    outcome = (await client.post("/invoke", json=invocation(channel))).json()

    assert outcome["status"] == "replied" and stack.messaging.faults.calls["post"] == 1
    route, path, _ = stack.messaging.faults.seen[-1]
    assert route == "post" and "channel_id=" in path and "text=" in path


async def test_auto_switches_to_the_seeds_form_once_and_keeps_it(stack, configure, client):
    rt = configure()
    stack.messaging.accept = "body"
    first, second = stack.channel(), stack.channel()
    for channel in (first, second):
        stack.messaging.add_message(channel, "hello")

    outcomes = [(await client.post("/invoke", json=invocation(c))).json() for c in (first, second)]

    assert [o["status"] for o in outcomes] == ["replied", "replied"]
    assert stack.messaging.faults.calls["post"] == 3  # the 422 of the query form, then the body form twice
    assert rt.messaging.form == "body"
    assert [len(stack.messaging.replies_to(c)) for c in (first, second)] == [1, 1]


async def test_auto_fails_final_when_neither_form_is_taken(stack, configure, client):
    configure()
    stack.messaging.faults.set("post", Fault(status=422))
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")

    response = await client.post("/invoke", json=invocation(channel))

    assert response.status_code == 424 and response.json()["step"] == "post"
    assert stack.messaging.faults.calls["post"] == 2  # each form once, never more


@pytest.mark.parametrize("status", [403, 500])
async def test_auto_switches_on_a_422_only(stack, configure, client, status):
    configure()
    stack.messaging.faults.set("post", Fault(status=status, times=1))
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")

    await client.post("/invoke", json=invocation(channel))

    assert stack.messaging.faults.calls["post"] == 1


# --- memory without a secret ---------------------------------------------------------------


async def test_deep_health_says_memory_has_no_secret(stack, configure, client):
    configure()
    memory = (await client.get("/health", params={"deep": "1"})).json()["dependencies"]["memory"]
    assert memory["warning"] == "no secret configured (MEMORY_ORCHESTRATOR_SECRET)"

    configure(MEMORY_ORCHESTRATOR_SECRET="s3cret")  # a new runtime: probed afresh
    stack.memory.secret = "s3cret"
    memory = (await client.get("/health", params={"deep": "1"})).json()["dependencies"]["memory"]
    assert "warning" not in memory and memory["ok"]


def test_a_missing_memory_secret_is_warned_once_per_process(configure, logs, monkeypatch):
    monkeypatch.setattr(memory_client, "_warned", False)
    rt = configure()
    rt.memory.warn_without_secret()
    rt.memory.warn_without_secret()
    warned = [r for r in logs.records if r.levelno == logging.WARNING and "MEMORY_ORCHESTRATOR_SECRET" in r.message]
    assert len(warned) == 1


def test_no_warning_with_a_secret(configure, logs, monkeypatch):
    monkeypatch.setattr(memory_client, "_warned", False)
    configure(MEMORY_ORCHESTRATOR_SECRET="s3cret").memory.warn_without_secret()
    assert not [r for r in logs.records if "MEMORY_ORCHESTRATOR_SECRET" in r.message]
