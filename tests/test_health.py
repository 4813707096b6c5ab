"""Deep health: it needs the secret when one is set, it cannot be turned into a flood of outbound
calls, and its body names a dependency and its state, never an address."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from tests.conftest import free_port

SECRET = "health-secret"


@pytest.fixture
async def counted():
    """A dependency whose /health answers slowly and counts how often it is asked."""
    asked = []

    async def health(request: web.Request) -> web.Response:
        asked.append(request.headers.get("X-Internal-Secret"))
        await asyncio.sleep(0.2)
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", asked
    await runner.cleanup()


async def test_deep_health_needs_the_secret_when_one_is_set(stack, configure, client):
    configure(AGENT_RUNTIME_SECRET=SECRET)

    assert (await client.get("/health")).status_code == 200  # shallow health stays open
    assert (await client.get("/health?deep=1")).status_code == 401
    assert (await client.get("/health?deep=1", headers={"X-Internal-Secret": "wrong"})).status_code == 403
    deep = await client.get("/health?deep=1", headers={"X-Internal-Secret": SECRET})
    assert deep.status_code == 200 and set(deep.json()["dependencies"]) == {"messaging", "memory", "llm"}


async def test_many_deep_health_requests_make_one_probe(stack, configure, client, counted):
    url, asked = counted
    configure(AGENT_MEMORY_URL=url, MEMORY_ORCHESTRATOR_SECRET="memory-secret")

    answers = await asyncio.gather(*(client.get("/health?deep=1") for _ in range(200)))
    again = await client.get("/health?deep=1")

    assert {a.status_code for a in answers} == {200} and again.status_code == 200
    assert all(a.json()["dependencies"]["memory"]["ok"] for a in [*answers, again])
    assert asked == ["memory-secret"]  # one call carrying the secret, not one per request


async def test_deep_health_names_no_address(stack, configure, client):
    port = free_port()
    configure(AGENT_MEMORY_URL=f"http://127.0.0.1:{port}")

    body = (await client.get("/health?deep=1")).json()

    assert body["status"] == "degraded"
    assert body["dependencies"]["memory"]["ok"] is False and body["dependencies"]["memory"]["kind"] == "unavailable"
    text = str(body)
    assert "127.0.0.1" not in text and str(port) not in text


LLM_ERRORS = 'agent_runtime_llm_calls_total{agent_id="agent:sofia",provider="proxy",result="error"}'


async def _llm_errors(client) -> float:
    lines = (await client.get("/metrics")).text.splitlines()
    return next((float(line.split()[-1]) for line in lines if line.startswith(LLM_ERRORS + " ")), 0.0)


async def _answer(stack, client) -> dict:
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")
    return (await client.post("/invoke", json={"agent_id": "agent:sofia", "payload": {"channel_id": channel}})).json()


async def test_with_no_llm_configured_the_mock_is_the_provider(stack, configure, client):
    configure(LLM_PROXY_URL="")
    errors = await _llm_errors(client)

    health = (await client.get("/health?deep=1")).json()
    outcome = await _answer(stack, client)

    assert health["status"] == "ok" and health["dependencies"]["llm"] == {"ok": True, "provider": "mock"}
    assert outcome["status"] == "replied" and outcome["llm_source"] == "mock"
    assert not any(note.startswith("llm_degraded") for note in outcome["notes"])
    assert await _llm_errors(client) == errors


async def test_a_configured_llm_that_fails_is_still_degraded_noted_and_counted(stack, configure, client):
    configure(LLM_PROXY_URL=f"http://127.0.0.1:{free_port()}")
    errors = await _llm_errors(client)

    health = (await client.get("/health?deep=1")).json()
    outcome = await _answer(stack, client)

    assert health["status"] == "degraded" and health["dependencies"]["llm"]["ok"] is False
    assert outcome["llm_source"] == "mock" and "llm_degraded: unavailable" in outcome["notes"]
    assert await _llm_errors(client) == errors + 1


async def test_health_tells_when_the_shared_store_is_down(stack, configure, client):
    """NATS KV down: every invocation fails, and health says so (from the last call, not a probe per request)."""
    configure(AGENT_RUNTIME__IDEMPOTENCY__BACKEND="nats", NATS_URL=f"nats://127.0.0.1:{free_port()}")
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")

    failed = await client.post("/invoke", json={"agent_id": "agent:sofia", "payload": {"channel_id": channel}})
    shallow = (await client.get("/health")).json()
    deep = (await client.get("/health?deep=1")).json()

    assert failed.status_code == 503 and failed.json()["step"] == "idempotency"
    assert shallow["status"] == "degraded"
    assert shallow["idempotency"] == {"backend": "nats", "ok": False, "kind": "unavailable"}
    assert deep["dependencies"]["idempotency"]["ok"] is False


async def test_health_of_a_working_shared_store(stack, configure, client, nats_server):
    configure(AGENT_RUNTIME__IDEMPOTENCY__BACKEND="nats", NATS_URL=nats_server.url)

    deep = (await client.get("/health?deep=1")).json()
    shallow = (await client.get("/health")).json()

    assert deep["status"] == "ok" and deep["dependencies"]["idempotency"]["ok"] is True
    assert shallow["idempotency"] == {"backend": "nats", "ok": True}
