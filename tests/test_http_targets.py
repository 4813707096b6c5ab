"""The HTTP surface: bad input, auth, health, every target, and the real functions-framework command."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import free_port, invocation
from tests.runner_support import FunctionProcess

CHANNEL = "7c72d497-27aa-4e75-bb2f-4a4a21d4f91f"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        (b'{"entrypoint": "channel_message", "payload": {"channel_id": "' + CHANNEL.encode() + b'"}}', 422, "agent_id"),
        (b'{"agent_id": "agent:sofia", "payload": {"channel_id": "not-a-uuid"}}', 422, "payload.channel_id"),
        (b'{"agent_id": "agent:sofia", "payload": {"channel_id": "../../admin"}}', 422, "payload.channel_id"),
        (b'{"agent_id": "sofia", "payload": {"channel_id": "' + CHANNEL.encode() + b'"}}', 422, "agent_id"),
        (b'{"agent_id": "agent:../x", "payload": {"channel_id": "' + CHANNEL.encode() + b'"}}', 422, "agent_id"),
        (
            b'{"agent_id": "agent:sofia", "entrypoint": "dance", "payload": {"channel_id": "'
            + CHANNEL.encode()
            + b'"}}',
            422,
            "entrypoint",
        ),
        (b'{"agent_id": "agent:sofia"}', 422, "payload"),
        (b"[1, 2]", 422, "body"),
    ],
)
async def test_bad_input_names_the_problem(stack, client, body, status, field):
    response = await client.post("/invoke", content=body, headers={"content-type": "application/json"})

    assert response.status_code == status
    error = response.json()
    if field:
        assert field in [d["field"] for d in error["detail"]]
        assert field in error["error"]
    assert stack.messaging.faults.calls == {}  # nothing reached a dependency


async def test_oversized_body_is_413(client):
    body = invocation(CHANNEL, padding="x" * (256 * 1024))
    response = await client.post("/invoke", json=body)
    assert response.status_code == 413 and "262144" in response.json()["error"]


async def test_unknown_payload_keys_are_tolerated(stack, client):
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")
    response = await client.post("/invoke", json=invocation(channel, router_hint={"x": 1}, rewrite_prompt=None))
    assert response.json()["status"] == "replied"


async def test_unknown_path_and_wrong_method(client):
    assert (await client.get("/nope")).status_code == 404
    assert (await client.get("/invoke")).status_code == 405
    assert (await client.post("/health")).status_code == 405


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Internal-Secret": "wrong"}, 403),
        ({"Authorization": "Bearer wrong"}, 403),
        ({"X-Internal-Secret": "s3cret-value"}, 200),
        ({"Authorization": "Bearer s3cret-value"}, 200),
    ],
)
async def test_auth_when_a_secret_is_set(stack, configure, client, headers, status):
    configure(AGENT_RUNTIME_SECRET="s3cret-value")
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")

    for path in ("/invoke", "/internal/agent-runtime/test-channel"):
        response = await client.post(path, json=invocation(channel), headers=headers)
        assert response.status_code == status
        assert "s3cret-value" not in response.text
    assert (await client.get("/health")).status_code == 200  # health stays open
    assert len(stack.messaging.posts) == (1 if status == 200 else 0)


async def test_no_secret_means_no_auth(stack, client):
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")
    response = await client.post("/invoke", json=invocation(channel))
    assert response.status_code == 200 and response.json()["status"] == "replied"  # answered, not only let in
    assert [p["text"] for p in stack.messaging.replies_to(channel)] == ["LLM reply to: hello"]


async def test_health_body_and_deep_probe(stack, configure, client):
    body = (await client.get("/health")).json()
    assert body == {"status": "ok", "service": "agent-runtime", "version": "1.0.0", "nats_connected": None}

    deep = (await client.get("/health?deep=1")).json()
    assert deep["status"] == "ok"
    assert {name: d["ok"] for name, d in deep["dependencies"].items()} == {
        "messaging": True,
        "memory": True,
        "llm": True,
    }

    configure(AGENT_MEMORY_URL=f"http://127.0.0.1:{free_port()}")
    degraded = (await client.get("/health?deep=1")).json()
    assert degraded["status"] == "degraded"
    assert degraded["dependencies"]["memory"] == {
        **degraded["dependencies"]["memory"],
        "ok": False,
        "kind": "unavailable",
    }


@pytest.mark.parametrize(
    ("target", "method", "path"),
    [
        ("invoke", "POST", "/"),
        ("test_channel", "POST", "/"),
        ("health", "GET", "/"),
    ],
)
async def test_single_targets(stack, configure, asgi_apps, target, method, path):
    channel = stack.channel()
    stack.messaging.add_message(channel, "hello")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(asgi_apps[target]), base_url="http://fn") as c:
        response = await c.request(method, path, json=invocation(channel) if method == "POST" else None)
    assert response.status_code == 200
    assert response.json()["status"] in ("replied", "ok")


async def test_functions_framework_command_serves_the_seed_paths(stack):
    """The operator's command, as a subprocess: functions-framework --target agent_runtime --asgi."""
    function = FunctionProcess(free_port(), stack.env(AGENT_RUNTIME__RUNTIME__LOG_FORMAT="json"), capture_stderr=True)
    await function.start()
    try:
        async with httpx.AsyncClient(base_url=function.url, timeout=30) as http:
            assert (await http.get("/health")).json()["service"] == "agent-runtime"
            channel = stack.channel()
            stack.messaging.add_message(channel, "hello there")
            response = await http.post("/internal/agent-runtime/test-channel", json=invocation(channel))
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "replied"
        assert stack.messaging.replies_to(channel)[0]["text"] == "LLM reply to: hello there"
    finally:
        stderr = await function.stop()
    # one JSON line for the invocation, with ids and timings, and no message text
    lines = [line for line in stderr.decode().splitlines() if '"invocation replied"' in line]
    assert len(lines) == 1 and channel in lines[0] and "hello there" not in lines[0]
