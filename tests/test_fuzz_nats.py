"""Malformed NATS messages never stop the bridge: binary, huge, deeply nested, wrong types, random
bytes. The bridge reads only the two fields it orders by (agent_id, payload.channel_id): a message
without them is dead-lettered with the reason and never reaches the function; one with them is the
function's to validate. The good message published after them is still answered (in jetstream mode
the fetch loop must survive them)."""

from __future__ import annotations

import json
import random

import nats
import pytest

from runner.bridge import flushed
from standins.server import Served
from tests.conftest import invocation
from tests.runner_support import ScriptedFunction, bridge, eventually

SUBJECT = "router.invoke.agent"
CHANNEL = "7c72d497-27aa-4e75-bb2f-4a4a21d4f91f"
NASTY = [
    b"",
    b"\x00" * 64,
    b"\xff\xfe\xfd not utf-8",
    b"[" * 100_000,  # RecursionError in json.loads, once
    b'{"a":' * 50_000,
    b"null",
    b"42",
    b'"a string"',
    b"[]",
    json.dumps({"agent_id": ["agent:sofia"], "payload": {"channel_id": CHANNEL}}).encode(),
    json.dumps({"agent_id": "agent:sofia", "payload": "a string"}).encode(),
    json.dumps({"agent_id": "agent:sofia", "payload": {"channel_id": 12345}}).encode(),
    b"x" * 900_000,  # past the body limit, within NATS's max payload
]
# Orderable (both fields are strings) but not an invocation: forwarded, and the function's 422 decides.
FOR_THE_FUNCTION = json.dumps(
    {
        "agent_id": "agent:sofia",
        "entrypoint": "cron",
        "payload": {"channel_id": CHANNEL, "schedule_id": "s", "fire_time": "0001-01-01T00:00+01:00", "task": 1},
    }
).encode()
RANDOM = [random.Random(seed).randbytes(random.Random(seed).randint(1, 2048)) for seed in range(40)]


@pytest.mark.parametrize("mode", ["core", "jetstream"])
async def test_malformed_messages_never_stop_the_bridge(nats_server, mode):
    fn = ScriptedFunction()
    fn.script = {1: (422, {"error": "invalid invocation: payload.fire_time, payload.task"}, {})}
    served = Served(fn.app)
    nc = await nats.connect(nats_server.url)
    letters: list = []

    async def keep(msg) -> None:
        letters.append(msg)

    await nc.subscribe(f"{SUBJECT}.dlq", cb=keep)
    await flushed(nc)
    b = bridge(nats_server.url, f"{served.url}/invoke", mode=mode)
    await b.start()
    bad = NASTY + [r for r in RANDOM if not r.lstrip().startswith(b"{")]
    good = json.dumps(invocation(CHANNEL)).encode()
    try:
        for body in bad:
            await nc.publish(SUBJECT, body)
        await nc.publish(SUBJECT, FOR_THE_FUNCTION)
        await eventually(lambda: len(letters) == len(bad) + 1, what="the letters")
        fn.script = {}
        await nc.publish(SUBJECT, good)
        await nc.flush()
        await eventually(lambda: len(fn.completed) == 2, what="the good one")
        assert b.health()["nats_connected"] and (mode == "core" or not b._fetcher.done())
    finally:
        await b.stop()
        await nc.close()
        served.stop()
    assert [c["body"] for c in fn.calls] == [FOR_THE_FUNCTION, good]  # nothing unorderable reached it
    assert sorted(m.data for m in letters) == sorted([*bad, FOR_THE_FUNCTION])  # each kept as it came
    reasons = [m.headers["Agent-Runtime-Reason"] for m in letters]
    assert all(r and "\n" not in r for r in reasons)
    assert sum("nested too deeply" in r for r in reasons) == 2
