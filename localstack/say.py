"""``local_runner.py say "привіт"``: talk to the agent of the running local stack, as the router would.

Posts a human message into the demo channel, publishes the invocation on NATS exactly as the
router does (plain core publish, no headers), and prints the agent's reply when it arrives.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime

from localstack.embedded import read_state
from shared.clients import http
from standins.messaging import DEMO_CHANNEL


async def say(
    text: str,
    *,
    agent_id: str,
    nats_url: str | None,
    messaging_url: str | None,
    channel: str | None,
    subject: str,
    timeout_s: float,
) -> int:
    import nats

    state = read_state()
    nats_url = nats_url or state.get("nats_url") or "nats://127.0.0.1:4222"
    messaging_url = (messaging_url or state.get("messaging_url") or "http://127.0.0.1:7004").rstrip("/")
    channel = channel or state.get("channel") or DEMO_CHANNEL
    history_url = f"{messaging_url}/api/messaging/channels/{channel}/messages"
    try:
        async with http.session().post(history_url, json={"text": text, "sender_id": "user:you"}) as response:
            if response.status != 201:
                print(f"could not post the message: HTTP {response.status} from {messaging_url}")
                return 1
            message = await response.json()
        print(f"you: {text}")

        nc = await nats.connect(nats_url, connect_timeout=3, max_reconnect_attempts=0)
        invocation = {
            "agent_id": agent_id,
            "entrypoint": "channel_message",
            "payload": {
                "channel_id": channel,
                "message_id": message["id"],
                "matrix_event_id": message["matrix_event_id"],
                "microdao_id": "microdao:daarion",
                "rewrite_prompt": None,
            },
        }
        await nc.publish(subject, json.dumps(invocation).encode())
        await nc.flush()
        await nc.close()

        sent_at = datetime.fromisoformat(message["created_at"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:  # the stand-in has no push channel to us: look every 200 ms
            async with http.session().get(history_url, params={"limit": "20"}) as response:
                for m in await response.json():
                    if m["sender_id"] == agent_id and datetime.fromisoformat(m["created_at"]) > sent_at:
                        print(f"{agent_id}: {m['content_preview']}")
                        return 0
            await asyncio.sleep(0.2)
        print(f"no reply from {agent_id} within {timeout_s:.0f}s")
        return 1
    except OSError as exc:
        print(f"the local stack is not reachable ({exc}); start it with: python local_runner.py local")
        return 1
    finally:
        await http.aclose()
