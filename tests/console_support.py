"""Support for the console tests: a bridge with its console served as local_runner.py serves it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx
import nats

from runner.bridge import Bridge
from runner.console.app import Console
from runner.console.feed import Feed
from runner.serve import Serving, status_app
from shared.infra.settings import MessagingSettings, NatsSettings, RunnerSettings, RuntimeSettings, Settings

SECRET = "console-test-secret"
SUBJECT = "router.invoke.agent"


@dataclass
class ConsoleRun:
    """A started bridge, its feed and its status app (console included) on ``url``; ``nc`` for the test."""

    bridge: Bridge
    feed: Feed
    serving: Serving
    url: str
    nc: Any

    async def stop(self) -> None:
        self.feed.close()  # as local_runner.py does: open event streams end before the server stops
        await self.serving.stop()
        await self.bridge.stop()
        await self.nc.close()

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client of the runner's port, with the secret in a header unless told otherwise."""
        headers = kwargs.pop("headers", {"X-Internal-Secret": SECRET})
        return httpx.AsyncClient(base_url=self.url, headers=headers, **kwargs)

    async def say(self, messaging: Any, channel: str, text: str, agent_id: str = "agent:sofia", **headers: str) -> str:
        """What the router does after a human speaks: the message in history, the invocation on NATS."""
        message = messaging.add_message(channel, text, sender_id="user:test")
        invocation = {
            "agent_id": agent_id,
            "entrypoint": "channel_message",
            "payload": {"channel_id": channel, "message_id": message["id"], "microdao_id": "microdao:daarion"},
        }
        await self.nc.publish(SUBJECT, json.dumps(invocation).encode(), headers=headers or None)
        await self.nc.flush()
        return message["id"]


async def start_console(
    nats_url: str, function_url: str, messaging_url: str, *, secret: str | None = SECRET, **runner: Any
) -> ConsoleRun:
    s = Settings(
        nats=NatsSettings(url=nats_url),
        runner=RunnerSettings(**runner),
        runtime=RuntimeSettings(secret=secret),
        messaging=MessagingSettings(url=messaging_url),
    )
    bridge = Bridge(s, function_url)
    feed = Feed()
    bridge.on_answer = feed.record
    app = status_app(bridge.health, secret=secret, console=Console.for_bridge(bridge, s, feed))
    serving = await Serving.start(app, "127.0.0.1", 0)
    await bridge.start()
    nc = await nats.connect(nats_url)
    return ConsoleRun(bridge, feed, serving, f"http://127.0.0.1:{serving.port}", nc)
