"""Start the local stack around the bridge: the settings it changes, and what it started."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

from localstack.embedded import NatsServer, StandIns, clear_state, reachable, write_state
from shared.infra.settings import LlmSettings, MemorySettings, MessagingSettings, Settings
from standins.messaging import DEMO_CHANNEL

log = logging.getLogger("agent_runtime.runner")


async def start(s: Settings, cleanup: AsyncExitStack) -> Settings:
    """Start what the settings leave to the local stack (stopped by ``cleanup``); the settings to run with.

    A private nats-server when nothing answers at the NATS URL. When the function is served here (no
    function_url): stand-ins for messaging-service and agent-memory where their URL is the default,
    and the keyword mock where the LLM's is.
    """
    updates: dict[str, Any] = {}
    if not await reachable(s.nats.url.split(",")[0]):
        server = await NatsServer().start()
        cleanup.callback(server.stop)
        updates["nats"] = s.nats.model_copy(update={"url": server.url})
        log.info("embedded nats-server started", extra={"fields": {"url": server.url}})
    if s.runner.function_url:
        return s.model_copy(update=updates)

    standins = StandIns(
        messaging=s.messaging.url == MessagingSettings().url, memory=s.memory.url == MemorySettings().url
    )
    cleanup.callback(standins.stop)
    for name, url in standins.urls.items():
        updates[name] = getattr(s, name).model_copy(update={"url": url})
    if s.llm.url == LlmSettings().url:
        updates["llm"] = s.llm.model_copy(update={"url": ""})  # the keyword mock answers
    s = s.model_copy(update=updates)
    if "messaging" in standins.urls:
        write_state(nats_url=s.nats.url, messaging_url=s.messaging.url, channel=DEMO_CHANNEL)
        cleanup.callback(clear_state)
    log.info("local stack", extra={"fields": {**standins.urls, "llm": s.llm.url or "mock"}})
    return s
