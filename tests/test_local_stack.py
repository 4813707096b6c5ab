"""The local developer stack (./dev run): what it starts, the local policy, `say`, and a second start."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from contextlib import AsyncExitStack

import aiohttp
import pytest

from localstack import embedded, stack
from localstack.say import say
from runner.bridge import Bridge
from shared import runtime
from shared.blueprints import BlueprintChain
from shared.clients import http as shared_http
from shared.infra.settings import NatsSettings, RunnerSettings, Settings
from standins.messaging import DEMO_CHANNEL, MessagingStandIn
from standins.server import Served
from standins.toolcore import PdpStandIn
from tests.conftest import ROOT, free_port


@pytest.fixture(params=["core"])
async def local_stack(request, nats_server, asgi_apps, tmp_path, monkeypatch):
    """What `local_runner.py local` starts, in this process: on free ports, with its state file under
    tmp_path; in core mode unless a test asks for another (indirect parametrization)."""
    monkeypatch.setattr(embedded, "STATE_FILE", tmp_path / "local-stack.json")
    monkeypatch.setattr(embedded, "SEED_PORTS", {})  # never the seed's ports: a developer's stack may want them
    runner = RunnerSettings(port=free_port(), mode=request.param)
    s = Settings(nats=NatsSettings(url=nats_server.url), runner=runner)
    async with AsyncExitStack() as cleanup:
        s = await stack.start(s, cleanup)
        runtime.install(runtime.Runtime.from_settings(s))
        cleanup.callback(runtime.install, None)
        served = Served(asgi_apps["agent_runtime"], on_stop=shared_http.aclose)
        cleanup.callback(served.stop)
        bridge = Bridge(s, f"{served.url}/invoke")
        await bridge.start()
        cleanup.push_async_callback(bridge.stop)
        yield s, served.url


async def tell(s: Settings, text: str, agent: str = "agent:sofia") -> int:
    return await say(
        text,
        agent_id=agent,
        nats_url=None,
        messaging_url=None,
        channel=None,
        subject=s.nats.invocation_subject,
        timeout_s=20,
    )


# --- what it starts ------------------------------------------------------------------------


async def test_every_dependency_has_a_stand_in_and_nothing_is_degraded(local_stack):
    s, function_url = local_stack
    assert s.tools.url and s.tools.pdp_url  # toolcore and pdp-service: tools run locally
    assert s.memory.secret is not None  # memory-orchestrator's stand-in asks for one, as the service does
    async with aiohttp.ClientSession() as client, client.get(f"{function_url}/health?deep=1") as response:
        health = await response.json()
    assert health["status"] == "ok", health
    assert all("warning" not in d for d in health["dependencies"].values())


async def test_say_create_a_task_runs_it_through_the_local_toolcore(local_stack, capsys):
    s, _ = local_stack
    assert await tell(s, "створи задачу: підготувати звіт") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("agent:sofia: Готово: create_task виконано («підготувати звіт», id ")
    assert out[2:] == ["  tool create_task: ok"]  # and no note: nothing degraded


async def test_say_prints_the_reply_as_it_is_typed_in_pieces(local_stack, nc, capsys):
    s, _ = local_stack
    pieces: list[dict] = []

    async def keep(msg) -> None:
        pieces.append(json.loads(msg.data))

    await nc.subscribe(f"{s.runner.stream_subject}.agent:sofia.{DEMO_CHANNEL}", cb=keep)
    await nc.flush()
    assert await tell(s, "привіт") == 0
    said = capsys.readouterr().out.splitlines()[1]
    deltas = [p["text"] for p in pieces if p["type"] == "delta"]
    assert len(deltas) > 1 and pieces[-1]["type"] == "end"  # the mock types word by word
    assert (
        said
        == "agent:sofia: " + "".join(deltas)
        == "agent:sofia: Привіт! Я Sofia. Розкажіть, над чим працюєте, і я спробую допомогти."
    )


async def test_say_follows_a_handoff_to_the_agent_that_answers(local_stack, capsys):
    s, _ = local_stack
    assert await tell(s, "запитай Helion: скільки в казні?") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "agent:sofia: Передаю це питання Helion: він відповість тут."
    assert out[2].startswith("agent:helion: Гарне питання.") and len(out) == 3


@pytest.mark.parametrize("local_stack", ["jetstream"], indirect=True)
async def test_say_follows_a_handoff_in_jetstream_mode_too(local_stack, capsys):
    s, _ = local_stack
    assert await tell(s, "ask Helion: how much is in the treasury?") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:3] == ["agent:sofia handed it to agent:helion", out[2]]
    assert out[2].startswith("agent:helion: Good question.") and len(out) == 3


async def test_say_takes_a_bare_agent_name(local_stack, capsys):
    s, _ = local_stack
    assert await tell(s, "hello", agent="helion") == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("agent:helion: Hello! I'm Helion")


async def test_say_tells_a_rejected_invocation_at_once_with_the_reason(local_stack, capsys):
    s, _ = local_stack
    assert await tell(s, "hello", agent="Helion") == 1
    said = capsys.readouterr().out.splitlines()[1]
    assert said.startswith("the invocation was rejected: invalid invocation: agent_id (agent_id: ")


async def test_say_tells_a_skip(local_stack, capsys):
    s, _ = local_stack
    assert await tell(s, "hello", agent="nobody") == 1
    assert capsys.readouterr().out.splitlines()[1] == "agent:nobody did not answer: unknown_agent"


async def test_say_without_a_stack_suggests_dev_run(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(embedded, "STATE_FILE", tmp_path / "none.json")
    code = await say(
        "hi",
        agent_id="sofia",
        nats_url=f"nats://127.0.0.1:{free_port()}",
        messaging_url=f"http://127.0.0.1:{free_port()}",
        channel=None,
        subject="router.invoke.agent",
        timeout_s=5,
    )
    assert code == 1 and capsys.readouterr().out.rstrip().endswith("start it with: ./dev run")


async def test_say_with_no_bridge_says_nothing_takes_invocations(nats_server, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(embedded, "STATE_FILE", tmp_path / "none.json")
    messaging = MessagingStandIn()
    served = Served(messaging.app)
    try:
        code = await say(
            "hi",
            agent_id="sofia",
            nats_url=nats_server.url,
            messaging_url=served.url,
            channel=DEMO_CHANNEL,
            subject="router.invoke.agent",
            timeout_s=5,
        )
    finally:
        served.stop()
    assert code == 1 and "nothing takes invocations on router.invoke.agent" in capsys.readouterr().out


# --- the local policy ----------------------------------------------------------------------


def test_the_local_policy_permits_every_tool_of_the_demo_agents():
    s, policy = Settings(), embedded.load_policy()
    for agent_id, blueprint in BlueprintChain(s, None, ROOT / "blueprints").files().items():
        ids = {s.tools.toolcore_ids.get(name, name) for name in blueprint["tools"]}
        assert ids <= policy[agent_id], agent_id


async def test_the_pdp_stand_in_permits_only_what_the_policy_lists():
    pdp = PdpStandIn({"agent:sofia": {"task.create"}})
    served = Served(pdp.app)

    async def effect(client: aiohttp.ClientSession, agent_id: str, tool_id: str) -> str:
        body = {"actor": {"actor_id": agent_id}, "action": "exec_tool", "resource": {"type": "tool", "id": tool_id}}
        async with client.post(f"{served.url}/internal/pdp/evaluate", json=body) as response:
            return (await response.json())["effect"]

    try:
        async with aiohttp.ClientSession() as client:
            effects = [
                await effect(client, "agent:sofia", "task.create"),
                await effect(client, "agent:sofia", "projects.list"),
                await effect(client, "agent:helion", "task.create"),
            ]
    finally:
        served.stop()
    assert effects == ["permit", "deny", "deny"]


def test_a_policy_that_is_not_a_mapping_of_lists_is_refused(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("agent:sofia: task.create\n")
    with pytest.raises(ValueError, match="expected a mapping of agent id to a list of tool ids"):
        embedded.load_policy(path)


# --- serving, starting twice, stopping -----------------------------------------------------


async def test_stand_ins_set_tcp_nodelay_on_accepted_connections():
    """Without it a kept-alive connection waits for the client's delayed ACK on every response."""
    messaging = MessagingStandIn()
    served = Served(messaging.app)
    try:
        async with aiohttp.ClientSession() as client:
            for _ in range(2):
                async with client.get(f"{served.url}/health") as response:
                    assert response.status == 200
            connections = list(served._server.server_state.connections)
            options = [
                c.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                for c in connections
            ]
    finally:
        served.stop()
    assert options and all(options)


async def test_the_private_nats_server_is_out_of_the_terminals_process_group(nats_server):
    """Ctrl-C reaches the stack, which stops the server last; not the server first."""
    assert os.getpgid(nats_server.process.pid) != os.getpgid(0)


async def test_a_second_stack_says_in_one_line_that_a_port_is_taken():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "local_runner.py",
            "local",
            "--function-port",
            str(port),
            "--port",
            "0",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode != 0 and out == b""
    assert err.decode().splitlines() == [
        f"port {port} is in use: the local stack may already be running (stop it first, or choose other ports: "
        "--function-port, --port)"
    ]
