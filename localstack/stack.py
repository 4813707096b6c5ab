"""Start the local stack around the bridge: the settings it changes, and what it started."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

from pydantic import SecretStr

from localstack.embedded import (
    MEMORY_SECRET,
    NatsServer,
    StandIns,
    clear_state,
    port_free,
    reachable,
    write_state,
)
from shared.infra.settings import LlmSettings, MemorySettings, MessagingSettings, Settings
from standins.messaging import DEMO_CHANNEL

STREAM_SUBJECT = "agent.reply.stream"  # where the local bridge shows replies as they are typed (say reads it)
MOCK_PACE_S = 0.04  # the keyword mock types its streamed reply word by word, visibly

log = logging.getLogger("agent_runtime.runner")


def ports_in_use(s: Settings) -> list[int]:
    """The ports this stack must have that something else holds: the function's (when served
    here) and the runner's own; the stand-ins and nats-server fall back to free ones."""
    wanted = ([s.runner.function_port] if not s.runner.function_url else []) + [s.runner.port]
    return [port for port in wanted if port and not port_free(port)]


async def start(s: Settings, cleanup: AsyncExitStack) -> Settings:
    """Start what the settings leave to the local stack (stopped by ``cleanup``); the settings to run with.

    A private nats-server when nothing answers at the NATS URL. When the function is served here (no
    function_url): stand-ins for messaging-service and agent-memory where their URL is the default,
    for toolcore and pdp-service where theirs is empty, and the keyword mock where the LLM's URL is
    the default. Replies stream on ``STREAM_SUBJECT`` and a handoff is published on the invocation
    subject unless the settings say otherwise. Exits with one line when a port it needs is taken.
    """
    if taken := ports_in_use(s):
        raise SystemExit(
            f"port {taken[0]} is in use: the local stack may already be running (stop it first, or "
            "choose other ports: --function-port, --port)"
        )
    updates: dict[str, Any] = {}
    if not await reachable(s.nats.url.split(",")[0]):
        server = await NatsServer().start()
        cleanup.callback(server.stop)
        updates["nats"] = s.nats.model_copy(update={"url": server.url})
        log.info("embedded nats-server started", extra={"fields": {"url": server.url}})
    if not s.runner.stream_subject:
        updates["runner"] = s.runner.model_copy(update={"stream_subject": STREAM_SUBJECT})
    if s.runner.function_url:
        return s.model_copy(update=updates)

    needed = {
        "messaging": s.messaging.url == MessagingSettings().url,
        "memory": s.memory.url == MemorySettings().url,
        "toolcore": not s.tools.url,
        "pdp": not s.tools.pdp_url,
    }
    memory_secret = s.memory.secret.get_secret_value() if s.memory.secret else MEMORY_SECRET
    standins = StandIns({name for name, yes in needed.items() if yes}, memory_secret=memory_secret)
    cleanup.callback(standins.stop)
    urls = standins.urls
    if "messaging" in urls:
        updates["messaging"] = s.messaging.model_copy(update={"url": urls["messaging"]})
    if "memory" in urls:
        updates["memory"] = s.memory.model_copy(update={"url": urls["memory"], "secret": SecretStr(memory_secret)})
    tools = {key: urls[name] for name, key in (("toolcore", "url"), ("pdp", "pdp_url")) if name in urls}
    if tools:
        updates["tools"] = s.tools.model_copy(update=tools)
    if s.llm.url == LlmSettings().url:  # the keyword mock answers, typing as it goes
        updates["llm"] = s.llm.model_copy(update={"url": "", "mock_pace_s": s.llm.mock_pace_s or MOCK_PACE_S})
    if s.handoff.sink == "none":  # a handoff goes where the router's invocations go
        updates["handoff"] = s.handoff.model_copy(update={"sink": "nats"})
    s = s.model_copy(update=updates)
    if "messaging" in urls:
        write_state(
            nats_url=s.nats.url,
            messaging_url=s.messaging.url,
            channel=DEMO_CHANNEL,
            stream_subject=s.runner.stream_subject or "",
        )
        cleanup.callback(clear_state)
    log.info("local stack", extra={"fields": {**urls, "llm": s.llm.url or "mock"}})
    return s
