"""The console on the runner's port: its feed and figures, its auth, the live stream, dead letters,
the chat, and the page itself driven in a real headless Chromium (Debian's package)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid

import httpx
import pytest

from runner.console.auth import COOKIE, FAILURE_WINDOW_S, MAX_FAILURES, Sessions
from runner.console.feed import Feed, entry_of
from runner.console.stats import MAX_AGENTS, OTHER, AgentStats, bucket_of, percentile
from runner.forward import Answer
from shared.clients import http as shared_http
from standins.messaging import DEMO_CHANNEL
from standins.server import Served
from tests.console_support import SECRET, ConsoleRun, start_console
from tests.runner_support import eventually

TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE}-b7ad6b7169203331-01"
DLQ_STREAM = "AGENT_INVOCATIONS_DLQ"


def answer(http_status: int = 200, **outcome) -> Answer:
    body = {"status": "replied", "agent_id": "agent:sofia", "timings_ms": {"llm": 5.0, "total": 9.0}} | outcome
    return Answer(http_status, json.dumps(body).encode())


def invocation_bytes(channel: str | None = None, agent_id: str = "agent:sofia") -> bytes:
    return json.dumps({"agent_id": agent_id, "payload": {"channel_id": channel or str(uuid.uuid4())}}).encode()


@pytest.fixture
def agent_function(asgi_apps, configure):
    """The real agent_runtime target on loopback, wired to the stand-ins, wanting the console's secret."""
    configure(AGENT_RUNTIME_SECRET=SECRET)
    served = Served(asgi_apps["agent_runtime"], on_stop=shared_http.aclose)
    yield f"{served.url}/invoke"
    served.stop()


@pytest.fixture
async def console(stack, nats_server, agent_function):
    """The bridge in jetstream mode (dead letters kept) with its console, to the real function."""
    run = await start_console(nats_server.url, agent_function, stack.url("messaging"), mode="jetstream")
    yield run
    await run.stop()


# --- the feed and its figures ---------------------------------------------------------------


async def test_the_ring_is_bounded_and_a_slow_subscriber_is_let_go_without_waiting():
    feed = Feed(size=3, queue_size=2)
    slow = feed.subscribe()
    for _ in range(5):
        feed.record(invocation_bytes(), answer(), TRACEPARENT, 1)  # never awaits: the bridge goes on
    assert [e["id"] for e in feed.recent()] == [3, 4, 5]
    assert [e["id"] for e in feed.recent(after=4)] == [5]
    assert slow is not None and slow.closed  # its queue filled: dropped, not waited for
    assert await slow.next(0.1) is None
    assert feed.subscribe() is not None  # a new one is taken


def test_subscribers_are_capped():
    feed = Feed(max_subscribers=2)
    assert feed.subscribe() and feed.subscribe()
    assert feed.subscribe() is None


def test_an_entry_carries_the_outcome_its_trace_and_attempt():
    channel = str(uuid.uuid4())
    usage = {"input_tokens": 10, "output_tokens": 5, "model": "gpt-4", "estimated": False}
    e = entry_of(
        invocation_bytes(channel),
        answer(channel_id=channel, llm_source="llm", usage=usage, tool_calls=[{"tool": "create_task", "result": "ok"}]),
        TRACEPARENT,
        2,
    )
    assert (e["status"], e["agent_id"], e["channel_id"], e["llm_source"]) == ("replied", "agent:sofia", channel, "llm")
    assert (e["trace_id"], e["attempt"], e["total_ms"]) == (TRACE, 2, 9.0)
    assert e["timings_ms"] == {"llm": 5.0, "total": 9.0}
    assert e["usage"] == usage and e["tool_calls"] == [{"tool": "create_task", "result": "ok"}]

    refused = entry_of(invocation_bytes(channel), Answer(422, b'{"error": "invalid invocation: payload"}'), "", 1)
    assert (refused["status"], refused["channel_id"], refused["trace_id"]) == ("rejected", channel, None)
    down = entry_of(invocation_bytes(), Answer(None, error="connection failed", reachable=False), TRACEPARENT, 1)
    assert (down["status"], down["error"]) == ("unreachable", "connection failed")
    garbage = entry_of(b"\xff", Answer(200, b"[1, 2"), TRACEPARENT, 1)
    assert garbage["status"] == "rejected" and garbage["agent_id"] is None  # read without raising


def test_agent_figures_cover_the_last_hour():
    now = [10_000 * 60.0]
    stats = AgentStats(clock=lambda: now[0])

    def add(status: str, total_ms: float, at: float, **more) -> None:
        e = entry_of(invocation_bytes(), answer(status=status, timings_ms={"total": total_ms}, **more), TRACEPARENT, 1)
        stats.add(e | {"at": at})

    add("replied", 100, now[0] - 3 * 3600)  # long gone
    for i in range(1, 101):
        add("replied", i, now[0] - 30)
    add("handed_off", 4, now[0] - 30, handed_off_to="agent:helion")
    add("skipped", 5, now[0] - 600, reason="duplicate")
    add("failed", 7, now[0], llm_source="mock", notes=["llm_degraded: unavailable"], usage={"input_tokens": 3})
    [sofia] = stats.summary()
    assert (sofia["invocations"], sofia["replied"], sofia["skipped"], sofia["failed"]) == (103, 100, 1, 1)
    assert sofia["handed_off"] == 1 and sofia["series"]["handed_off"][-2] == 1  # a minute ago, its own colour
    assert (sofia["mock_fallbacks"], sofia["with_usage"], sofia["input_tokens"]) == (1, 1, 3)
    assert 49 <= sofia["p50_ms"] <= 49 * 1.1 and 95 <= sofia["p95_ms"] <= 95 * 1.1  # within a bucket of the truth
    assert len(sofia["series"]["replied"]) == 60 and sum(sofia["series"]["replied"]) == 100
    assert sofia["series"]["skipped"][-11] == 1  # ten minutes ago
    now[0] += 3600
    assert stats.summary() == []  # an hour later, nothing is left in the window


def test_agents_past_the_cap_are_counted_as_other():
    stats = AgentStats()
    for i in range(MAX_AGENTS + 5):
        stats.add(entry_of(invocation_bytes(), answer(agent_id=f"agent:a{i}"), TRACEPARENT, 1))
    summary = {a["agent_id"]: a for a in stats.summary()}
    assert len(summary) == MAX_AGENTS + 1 and summary[OTHER]["invocations"] == 5


def test_latency_buckets_are_a_tenth_apart():
    for ms in (0.4, 1, 7, 100, 2500, 90_000):
        assert ms <= 1.1 ** bucket_of(ms) < max(ms, 1) * 1.1 + 1e-9
    assert percentile({}, 0.5) is None


# --- auth -------------------------------------------------------------------------------------


async def test_guessing_the_secret_is_slowed_for_everyone_and_header_auth_is_not(stack):
    run_nats_free = await _console_without_nats(stack)
    try:
        async with run_nats_free.client(headers={}, follow_redirects=False) as c:
            for _ in range(MAX_FAILURES):
                assert (await c.post("/login", data={"secret": "guess"})).status_code == 403
            held = await c.post("/login", data={"secret": SECRET})  # even the right one waits now
            assert held.status_code == 429 and COOKIE not in held.cookies
            assert 1 <= int(held.headers["retry-after"]) <= FAILURE_WINDOW_S
            assert "Too many wrong secrets" in held.text
        async with run_nats_free.client() as scripts:  # the secret in a header is not held
            assert (await scripts.get("/console/api/info")).status_code == 200
    finally:
        await run_nats_free.serving.stop()


def test_logins_wait_only_until_the_oldest_wrong_secret_leaves_the_window():
    now = [1000.0]
    sessions = Sessions("right", clock=lambda: now[0])
    for _ in range(MAX_FAILURES):
        now[0] += 1
        assert sessions.login("wrong") is None
    assert sessions.wait_s() == FAILURE_WINDOW_S - (MAX_FAILURES - 1)
    now[0] += sessions.wait_s()
    assert sessions.wait_s() == 0.0 and sessions.login("right") is not None


async def test_the_console_wants_the_secret_and_its_cookie_is_a_session_not_the_secret(stack):
    run_nats_free = await _console_without_nats(stack)
    try:
        async with run_nats_free.client(headers={}, follow_redirects=False) as c:
            page = await c.get("/")
            assert page.status_code == 200 and 'action="/login"' in page.text and "console.js" not in page.text
            assert (await c.get("/health")).status_code in (200, 503)  # open, whatever it says
            assert (await c.get("/metrics")).status_code == 401  # its own auth, as before
            assert (await c.get("/console/api/outcomes")).status_code == 401
            assert (await c.get("/console/events")).status_code == 401

            wrong = await c.post("/login", data={"secret": "guess"})
            assert wrong.status_code == 403 and COOKIE not in wrong.cookies

            right = await c.post("/login", data={"secret": SECRET})
            assert right.status_code == 303 and right.headers["location"] == "/"
            cookie = right.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
            token = right.cookies[COOKIE]
            assert SECRET not in cookie and SECRET not in right.headers["location"] and len(token) >= 32

            c.cookies.set(COOKIE, token)
            page = await c.get("/")
            assert "console.js" in page.text and "default-src 'self'" in page.headers["content-security-policy"]
            assert (await c.get("/console/api/outcomes")).json() == {"outcomes": []}
            assert (await c.get("/console/static/console.css")).status_code == 200
            assert (await c.get("/console/static/../app.py")).status_code == 404
            form = await c.post("/console/api/chat", data={"text": "x"})  # what a form on another site could send
            assert form.status_code == 415

            await c.post("/logout")
            c.cookies.set(COOKIE, token)
            assert (await c.get("/console/api/outcomes")).status_code == 401  # that session is over
        async with run_nats_free.client() as scripts:  # the secret in a header, as the function's callers send it
            assert (await scripts.get("/console/api/info")).json()["mode"] == "core"
    finally:
        await run_nats_free.serving.stop()


async def _console_without_nats(stack) -> ConsoleRun:
    """Only the status app with its console: the bridge is not started (no NATS needed)."""
    from runner.bridge import Bridge
    from runner.console.app import Console
    from runner.serve import Serving, status_app
    from shared.infra.settings import MessagingSettings, RuntimeSettings, Settings

    s = Settings(runtime=RuntimeSettings(secret=SECRET), messaging=MessagingSettings(url=stack.url("messaging")))
    bridge = Bridge(s, "http://127.0.0.1:9/invoke")
    feed = Feed()
    serving = await Serving.start(
        status_app(bridge.health, secret=SECRET, console=Console.for_bridge(bridge, s, feed)), "127.0.0.1", 0
    )
    return ConsoleRun(bridge, feed, serving, f"http://127.0.0.1:{serving.port}", None)


# --- live, dead letters, chat over a real nats-server and the real function ------------------------


async def test_outcomes_stream_live_with_their_steps_and_trace_id(stack, console):
    channel = stack.channel()
    async with console.client(timeout=10) as c, c.stream("GET", "/console/events") as events:
        assert events.headers["content-type"].startswith("text/event-stream")
        lines = events.aiter_lines()
        assert await anext(lines) == "retry: 2000"
        message_id = await console.say(stack.messaging, channel, "hello there", traceparent=TRACEPARENT)

        async def outcome() -> dict:
            async for line in lines:
                if line.startswith("data: "):
                    return json.loads(line[6:])
            raise AssertionError("the stream ended")

        entry = await asyncio.wait_for(outcome(), 15)
    assert entry["status"] == "replied" and entry["trigger_message_id"] == message_id
    assert entry["trace_id"] == TRACE  # the trace the bridge forwarded
    assert {"blueprint", "history", "idempotency", "llm", "post", "total"} <= set(entry["timings_ms"])
    assert entry["llm_source"] == "llm" and entry["channel_id"] == channel


async def test_a_reconnecting_page_gets_what_it_missed(stack, console):
    channel = stack.channel()
    first = await console.say(stack.messaging, channel, "one")
    await eventually(lambda: len(console.feed.recent()) == 1, what="the first outcome")
    second = await console.say(stack.messaging, channel, "two")
    await eventually(lambda: len(console.feed.recent()) == 2, what="the second outcome")
    seen = console.feed.recent()[0]["id"]
    async with console.client(timeout=10) as c:
        missed = (await c.get("/console/api/outcomes", params={"after": seen})).json()["outcomes"]
        async with c.stream("GET", "/console/events", headers={"Last-Event-ID": str(seen)}) as events:
            data = [line async for line in _first_data_lines(events, 1)]
    assert [e["trigger_message_id"] for e in missed] == [second]
    assert json.loads(data[0][6:])["trigger_message_id"] == second != first


async def _first_data_lines(response: httpx.Response, n: int):
    got = 0
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            yield line
            got += 1
            if got == n:
                return


async def test_dead_letters_are_listed_replayed_once_and_discarded(stack, console):
    channel = stack.channel()
    stack.messaging.members = {channel: set()}  # the agent is not in the channel: 403, a 424, no retry
    refused = await console.say(stack.messaging, channel, "let me in")
    dropped = await console.say(stack.messaging, channel, "never mind")
    async with console.client(timeout=10) as c:

        async def letters() -> dict:
            return (await c.get("/console/api/dead-letters")).json()

        await eventually(lambda: _count(letters), what="two dead letters")
        listed = await letters()
        assert listed["kept"] and listed["count"] == 2
        first, second = listed["letters"]
        assert first["reason"].startswith("HTTP 424") and first["status"] == 424 and first["attempts"] == 1
        assert first["agent_id"] == "agent:sofia" and first["channel_id"] == channel
        assert refused in first["preview"] and dropped in second["preview"]

        discard = await c.post("/console/api/dead-letters/discard", json={"seq": second["seq"]})
        assert discard.json() == {"discarded": 1}
        gone = await c.post("/console/api/dead-letters/discard", json={"seq": second["seq"]})
        assert gone.status_code == 404, gone.text

        stack.messaging.members = None  # the agent joined: the replay is answered
        assert (await c.post("/console/api/dead-letters/replay", json={"seq": first["seq"]})).json() == {"replayed": 1}
        await eventually(lambda: len(stack.messaging.replies_to(channel)) == 1, what="the replayed reply")
        assert (await letters())["count"] == 0

        # Replayed again (the same bytes dead-lettered once more): the function's record makes it a duplicate.
        js = console.nc.jetstream()
        ack = await js.publish(console.bridge.dead_letter_subject, _body_of(console, refused))
        assert (await c.post("/console/api/dead-letters/replay", json={"all": True})).json() == {"replayed": 1}
        await eventually(
            lambda: any(
                e["reason"] == "duplicate" and e["trigger_message_id"] == refused for e in console.feed.recent()
            ),
            what="the duplicate",
        )
        assert len(stack.messaging.replies_to(channel)) == 1  # one human message, one reply
        assert (await c.post("/console/api/dead-letters/replay", json={"seq": ack.seq})).status_code == 404
        assert (await c.post("/console/api/dead-letters/replay", json={})).status_code == 422


async def _count(letters) -> bool:
    return (await letters())["count"] == 2


def _body_of(run: ConsoleRun, message_id: str) -> bytes:
    """The invocation the router published for ``message_id`` (as the bridge forwarded it)."""
    entry = next(e for e in run.feed.recent() if e["trigger_message_id"] == message_id)
    return json.dumps(
        {
            "agent_id": entry["agent_id"],
            "entrypoint": "channel_message",
            "payload": {"channel_id": entry["channel_id"], "message_id": message_id, "microdao_id": "microdao:daarion"},
        }
    ).encode()


async def test_the_chat_says_it_and_shows_the_reply(stack, console):
    async with console.client(timeout=30) as c:
        said = await c.post(
            "/console/api/chat", json={"agent_id": "agent:sofia", "channel_id": DEMO_CHANNEL, "text": "привіт"}
        )
        assert said.status_code == 200, said.text
        body = said.json()
        assert body["reply"] == "LLM reply to: привіт"
        assert body["outcome"]["status"] == "replied" and body["outcome"]["trigger_message_id"] == body["message"]["id"]
        assert stack.messaging.channels[DEMO_CHANNEL][0]["sender_id"] == "user:console"

        bad = await c.post("/console/api/chat", json={"agent_id": "sofia", "channel_id": "x", "text": ""})
        assert bad.status_code == 422 and "agent_id" in bad.json()["error"] and "channel_id" in bad.json()["error"]


async def test_the_chat_finds_a_reply_another_runner_gave_in_the_history(stack, console):
    console.bridge.on_answer = None  # as if another runner took the invocation: this feed never sees it
    async with console.client(timeout=30) as c:
        said = await c.post(
            "/console/api/chat", json={"agent_id": "agent:sofia", "channel_id": DEMO_CHANNEL, "text": "anyone?"}
        )
    assert said.json()["outcome"] is None and said.json()["reply"] == "LLM reply to: anyone?"


async def test_the_chat_says_when_messaging_takes_no_human_message(stack, nats_server, agent_function):
    elsewhere = Served(_no_post_app())  # a published messaging-service has no such POST
    run = await start_console(nats_server.url, agent_function, elsewhere.url)
    try:
        async with run.client(timeout=10) as c:
            said = await c.post(
                "/console/api/chat", json={"agent_id": "agent:sofia", "channel_id": DEMO_CHANNEL, "text": "hi"}
            )
        assert said.status_code == 424
        assert "local messaging stand-in" in said.json()["error"] and "HTTP 405" in said.json()["error"]
    finally:
        await run.stop()
        elsewhere.stop()


def _no_post_app():
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def history(request):
        return JSONResponse([])

    return Starlette(routes=[Route("/api/messaging/channels/{channel_id}/messages", history, methods=["GET"])])


async def test_core_mode_keeps_no_dead_letters(stack, nats_server, agent_function):
    run = await start_console(nats_server.url, agent_function, stack.url("messaging"), mode="core")
    try:
        async with run.client() as c:
            assert (await c.get("/console/api/dead-letters")).json() == {"kept": False, "count": 0, "letters": []}
            replay = await c.post("/console/api/dead-letters/replay", json={"all": True})
            assert replay.status_code == 409 and "jetstream" in replay.json()["error"]
    finally:
        await run.stop()


async def test_stopping_ends_open_event_streams(stack, nats_server, agent_function):
    run = await start_console(nats_server.url, agent_function, stack.url("messaging"), mode="core")
    async with run.client(timeout=10) as c, c.stream("GET", "/console/events") as events:
        assert await anext(events.aiter_lines()) == "retry: 2000"
        await asyncio.wait_for(run.stop(), 10)  # an open stream would hold the server's stop for ever


# --- the page, in a real browser ----------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


async def test_the_console_in_a_browser(stack, console, tmp_path):
    """Log in, watch an invocation arrive live and open its waterfall, chat, see the agents, replay a
    dead letter and see it answered; a screenshot of each view lands in tmp_path."""
    try:
        from playwright.async_api import async_playwright, expect
    except ImportError:
        pytest.skip("playwright is not installed (requirements-dev.txt)")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed: apt-get install -y chromium (.ci/run does)")

    stack.messaging.members = {DEMO_CHANNEL: set()}  # a first invocation is refused: a dead letter
    refused = await console.say(stack.messaging, DEMO_CHANNEL, "are you there?")
    await eventually(lambda: any(e["status"] == "failed" for e in console.feed.recent()), what="the refusal")
    stack.messaging.members = None

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 820})
            page.set_default_timeout(15_000)
            errors: list[str] = []  # script errors and CSP refusals: the page must have none
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            await page.goto(console.url)
            await expect(page.get_by_label("Runtime secret")).to_be_focused()
            await page.screenshot(path=tmp_path / "login.png")
            await page.get_by_label("Runtime secret").fill(SECRET)
            await page.keyboard.press("Enter")
            await expect(page.locator("#live-state")).to_have_text("live")
            assert SECRET not in page.url and all(SECRET not in c["value"] for c in await page.context.cookies())

            # Live: an invocation appears without a reload, and its steps open from the keyboard.
            message_id = await console.say(stack.messaging, DEMO_CHANNEL, "how is the report going?")
            row = page.locator("#feed tbody tr", has_text="replied").first
            await expect(row).to_be_visible()
            await row.get_by_role("button").focus()
            await page.keyboard.press("Enter")
            detail = page.locator("#detail")
            await expect(detail).to_be_visible()
            entry = next(e for e in console.feed.recent() if e["trigger_message_id"] == message_id)
            await expect(detail).to_contain_text(entry["trace_id"])
            for step in ("blueprint", "history", "idempotency", "llm", "post", "total"):
                await expect(page.locator(f'.wf-row[data-step="{step}"] .wf-bar')).to_be_visible()
            llm = await page.locator('.wf-row[data-step="llm"] .wf-bar').bounding_box()
            total = await page.locator('.wf-row[data-step="total"] .wf-bar').bounding_box()
            assert llm and total and 0 < llm["width"] <= total["width"]  # to scale
            await page.screenshot(path=tmp_path / "live.png", full_page=True)

            # Chat: type, Enter, the reply appears.
            await page.get_by_role("tab", name="Chat").click()
            await expect(page.get_by_label("Channel")).to_have_value(DEMO_CHANNEL)
            await page.get_by_label("Message").fill("привіт з консолі")
            await page.get_by_label("Message").press("Enter")
            await expect(page.locator("#transcript li.agent .text")).to_have_text("LLM reply to: привіт з консолі")
            await page.screenshot(path=tmp_path / "chat.png", full_page=True)

            # Agents: the last hour's figures and a chart.
            await page.get_by_role("tab", name="Agents").click()
            card = page.locator('article[data-agent="agent:sofia"]')
            await expect(card).to_be_visible()
            await expect(card.locator("svg.chart rect").first).to_be_attached()
            await expect(card).to_contain_text("invocations")
            await page.screenshot(path=tmp_path / "agents.png", full_page=True)

            # Dead letters: the refusal, with its reason; replayed, it is answered.
            await page.get_by_role("tab", name="Dead letters").click()
            letter = page.locator("#letters tbody tr")
            await expect(letter).to_have_count(1)
            await expect(letter).to_contain_text("HTTP 424")
            await page.screenshot(path=tmp_path / "dead-letters.png", full_page=True)
            await letter.get_by_role("button", name="Replay").click()
            await expect(page.locator("#letters-status")).to_contain_text("replayed")
            await expect(letter).to_have_count(0)
            await eventually(
                lambda: any(
                    e["trigger_message_id"] == refused and e["status"] == "replied" for e in console.feed.recent()
                ),
                what="the replayed invocation answered",
            )
            await page.get_by_role("tab", name="Live").click()
            await expect(page.locator("#feed tbody tr", has_text="replied")).to_have_count(3)

            # A phone.
            await page.set_viewport_size({"width": 390, "height": 844})
            await page.screenshot(path=tmp_path / "live-phone.png", full_page=True)
            assert errors == []
        finally:
            await browser.close()
    assert len(stack.messaging.replies_to(DEMO_CHANNEL)) == 3
    print(f"screenshots: {tmp_path}")  # -s shows where to look
