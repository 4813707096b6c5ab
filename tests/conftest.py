"""Fixtures: the stand-in services as real HTTP servers on loopback, and the runtime wired to them."""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from pathlib import Path

import httpx
import pytest

from shared import runtime
from shared.clients import http as shared_http
from shared.infra import settings
from standins.agents import AgentsStandIn
from standins.llm import LlmStandIn
from standins.memory import MemoryStandIn
from standins.messaging import MessagingStandIn
from standins.providers import AnthropicStandIn, OpenAiStandIn
from standins.server import Served
from standins.toolcore import PdpStandIn, ToolcoreStandIn

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The stand-ins, served once per test session and reset for every test."""

    NAMES = ("messaging", "memory", "llm", "agents", "toolcore", "pdp", "openai", "anthropic")

    def __init__(self) -> None:
        self.messaging = MessagingStandIn()
        self.memory = MemoryStandIn()
        self.llm = LlmStandIn()
        self.agents = AgentsStandIn()
        self.toolcore = ToolcoreStandIn()
        self.pdp = PdpStandIn()
        self.openai = OpenAiStandIn()
        self.anthropic = AnthropicStandIn()
        self.servers = {name: Served(getattr(self, name).app) for name in self.NAMES}

    def url(self, name: str) -> str:
        return self.servers[name].url

    def reset(self) -> None:
        for name in self.NAMES:
            getattr(self, name).reset()

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "MESSAGING_SERVICE_URL": self.url("messaging"),
            "AGENT_MEMORY_URL": self.url("memory"),
            "LLM_PROXY_URL": self.url("llm"),
            "AGENTS_SERVICE_URL": self.url("agents"),
            "TOOLCORE_URL": self.url("toolcore"),
            "PDP_SERVICE_URL": self.url("pdp"),
            "OPENAI_BASE_URL": self.url("openai") + "/v1",
            "OPENAI_API_KEY": "test-key",
            "ANTHROPIC_BASE_URL": self.url("anthropic"),
            "ANTHROPIC_API_KEY": "test-key",
            **extra,
        }

    def channel(self) -> str:
        channel_id = str(uuid.uuid4())
        self.messaging.channels[channel_id] = []
        return channel_id

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="session")
def stack_servers():
    stack = Stack()
    yield stack
    stack.stop()


@pytest.fixture
def stack(stack_servers: Stack) -> Stack:
    stack_servers.reset()
    return stack_servers


@pytest.fixture
def configure(stack: Stack):
    """Build and install a runtime from the stand-ins' URLs plus overrides; returns it."""

    def _configure(**env: str) -> runtime.Runtime:
        rt = runtime.Runtime.from_settings(settings.load(stack.env(**env), ROOT / "config.yaml"))
        runtime.install(rt)
        return rt

    _configure()
    yield _configure
    runtime.install(None)


@pytest.fixture
async def nats_server(tmp_path):
    """A real nats-server with JetStream, on a free port, storing under the test's tmp_path."""
    from localstack.embedded import NatsServer

    server = await NatsServer(port=free_port(), store_dir=str(tmp_path / "nats")).start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server):
    """A NATS client of the test's nats-server."""
    import nats

    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
def scripted_function():
    """A scripted invoke function (tests/runner_support.py), served on loopback; its URL is ``.url``."""
    from tests.runner_support import ScriptedFunction

    fn = ScriptedFunction()
    served = Served(fn.app)
    fn.url = f"{served.url}/invoke"
    yield fn
    served.stop()


@pytest.fixture
def logs(caplog):
    """caplog, also fed by the agent_runtime loggers when they do not propagate (once configured)."""
    logger = logging.getLogger("agent_runtime")
    caplog.set_level(logging.INFO, logger="agent_runtime")
    detached = not logger.propagate
    if detached:
        logger.addHandler(caplog.handler)
    yield caplog
    if detached:
        logger.removeHandler(caplog.handler)


@pytest.fixture(autouse=True)
async def _close_http_session():
    yield
    await shared_http.aclose()


@pytest.fixture(scope="session")
def asgi_apps():
    """The real functions-framework ASGI apps, one per target, as an operator's --asgi serves them."""
    from functions_framework.aio import create_asgi_app

    return {
        t: create_asgi_app(target=t, source=str(ROOT / "main.py"))
        for t in ("agent_runtime", "invoke", "health", "test_channel")
    }


@pytest.fixture
async def client(asgi_apps, configure):
    """An HTTP client of the agent_runtime target."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(asgi_apps["agent_runtime"]), base_url="http://agent-runtime"
    ) as c:
        yield c


def invocation(channel_id: str, **payload) -> dict:
    return {
        "agent_id": payload.pop("agent_id", "agent:sofia"),
        "entrypoint": payload.pop("entrypoint", "channel_message"),
        "payload": {"channel_id": channel_id, "microdao_id": "microdao:daarion", **payload},
    }


async def send_again(client, body: dict, lapse=asyncio.sleep):
    """The caller's retry as a transport makes it: once more, after the Retry-After of a busy message
    (``lapse`` lets that time pass, as the store counts it)."""
    response = await client.post("/invoke", json=body)
    if response.status_code == 409:
        await lapse(float(response.headers["retry-after"]))
        response = await client.post("/invoke", json=body)
    return response
