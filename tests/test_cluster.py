"""Past one NATS server: the stream, its dead letters and the KV bucket with configurable replicas,
made idempotently; a three-node JetStream cluster losing a node mid-run loses no invocation."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import nats
import pytest

from localstack.embedded import nats_server_binary, reachable
from shared.idempotency import ClaimState
from shared.idempotency.nats import NatsKvStore
from shared.infra.jetstream import ensure_stream
from standins.server import Served
from tests.conftest import free_port, invocation
from tests.runner_support import FunctionProcess, ScriptedFunction, bridge, eventually

SUBJECT = "router.invoke.agent"
STREAM, DLQ_STREAM, DURABLE = "AGENT_INVOCATIONS", "AGENT_INVOCATIONS_DLQ", "agent-runtime"
BUCKET = "cluster_idem"


class NatsCluster:
    """Three nats-servers on loopback forming one JetStream cluster, each storing in its own directory
    (the configuration docs/on-prem.md shows)."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.directory = directory
        self.names = [f"n{i + 1}" for i in range(size)]
        self.ports = {name: free_port() for name in self.names}
        self.routes = {name: free_port() for name in self.names}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.servers = [f"nats://127.0.0.1:{port}" for port in self.ports.values()]
        self.url = ",".join(self.servers)  # as NATS_URL names them

    def config(self, name: str) -> str:
        routes = ", ".join(f"nats-route://127.0.0.1:{port}" for port in self.routes.values())
        return (
            f"server_name: {name}\n"
            f"listen: 127.0.0.1:{self.ports[name]}\n"
            f'jetstream {{ store_dir: "{self.directory / name}" }}\n'
            f"cluster {{\n  name: agent-runtime\n  listen: 127.0.0.1:{self.routes[name]}\n  routes: [{routes}]\n}}\n"
        )

    async def start(self, timeout_s: float = 30.0) -> NatsCluster:
        try:
            return await self._start(timeout_s)
        except BaseException:  # no node outlives a cluster that did not form
            self.stop()
            raise

    async def _start(self, timeout_s: float) -> NatsCluster:
        for name in self.names:
            path = self.directory / f"{name}.conf"
            path.write_text(self.config(name))
            self.processes[name] = subprocess.Popen(
                [nats_server_binary(), "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        for name, port in self.ports.items():
            await eventually(lambda p=port: reachable(f"nats://127.0.0.1:{p}", 0.5), timeout_s, f"{name} to listen")
        nc = await nats.connect(self.servers)
        try:  # a meta leader elected, and every peer in the group: a stream with three copies can be made
            js = nc.jetstream()

            async def replicated_stream_made() -> bool:
                try:
                    await js.add_stream(name="CLUSTER_READY", subjects=["cluster.ready"], num_replicas=3)
                except Exception:
                    return False
                return True

            await eventually(replicated_stream_made, timeout_s, "a JetStream meta leader and three peers")
            await js.delete_stream("CLUSTER_READY")
        finally:
            await nc.close()
        return self

    def kill(self, name: str) -> None:
        """kill -9 one node."""
        process = self.processes[name]
        process.kill()
        process.wait(10)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()


@pytest.fixture
async def cluster(tmp_path):
    made = await NatsCluster(tmp_path).start()
    yield made
    made.stop()


# --- made idempotently, with the configured replicas ------------------------------------------


async def test_two_runners_starting_at_once_make_the_streams_once(nats_server):
    function = ScriptedFunction()
    served = Served(function.app)
    runners = [bridge(nats_server.url, f"{served.url}/invoke", mode="jetstream") for _ in range(2)]
    try:
        await asyncio.gather(*(r.start() for r in runners))
        for r in runners:
            assert await r.stop()
    finally:
        served.stop()
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        assert (await js.stream_info(STREAM)).config.num_replicas == 1
        assert (await js.stream_info(DLQ_STREAM)).config.num_replicas == 1
    finally:
        await nc.close()


async def test_replicas_a_lone_server_cannot_hold_are_said_once_and_the_stream_kept(nats_server, logs):
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, STREAM, SUBJECT, 1)
        await ensure_stream(js, STREAM, SUBJECT, 3)  # exists with one copy: the server refuses three
        assert (await js.stream_info(STREAM)).config.num_replicas == 1
    finally:
        await nc.close()
    [line] = [r for r in logs.records if r.msg == "stream replicas not changed"]
    assert line.fields["stream"] == STREAM and line.fields["replicas"] == 1 and line.fields["configured"] == 3
    assert line.fields["error"]  # the server's reason


# --- a cluster losing a node ------------------------------------------------------------------


@pytest.mark.slow
async def test_a_claim_waits_out_the_buckets_election(cluster):
    """The node leading the bucket dies: until the other two elect a leader, writes find nobody to
    take them. A claim waits for the election (latency) instead of failing (a delivery spent)."""
    store = NatsKvStore(cluster.servers, BUCKET, 3600, replicas=3)
    try:
        assert (await store.claim("agent:sofia/before", 60)).state is ClaimState.NEW
        nc = await nats.connect(cluster.servers)
        try:
            leader = (await nc.jetstream().stream_info(f"KV_{BUCKET}")).cluster.leader
        finally:
            await nc.close()
        cluster.kill(leader)
        assert (await store.claim("agent:sofia/during", 60)).state is ClaimState.NEW
        assert (await store.claim("agent:sofia/before", 60)).state is ClaimState.IN_PROGRESS  # nothing lost
    finally:
        await store.close()


@pytest.mark.slow
async def test_a_cluster_losing_a_node_mid_run_answers_every_invocation_once(stack, cluster):
    """Two runners and two function processes on a three-node cluster, stream and KV bucket with
    three copies; kill -9 of the node leading both while invocations arrive."""
    env = stack.env(
        NATS_URL=cluster.url,
        AGENT_RUNTIME__IDEMPOTENCY__BACKEND="nats",
        AGENT_RUNTIME__IDEMPOTENCY__NATS_BUCKET=BUCKET,
        AGENT_RUNTIME__IDEMPOTENCY__NATS_REPLICAS="3",
        # a claim whose completion was lost with the node waits out its TTL: shorter here than by default
        AGENT_RUNTIME__RUNTIME__DEADLINE_S="20",
        AGENT_RUNTIME__RUNTIME__IDEMPOTENCY_IN_PROGRESS_TTL_S="25",
    )
    nc = await nats.connect(cluster.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    reasons: list[str] = []

    async def dead_letter(msg) -> None:
        reasons.append(msg.headers["Agent-Runtime-Reason"])

    await nc.subscribe(f"{SUBJECT}.dlq", cb=dead_letter)
    # a bucket from the days of one server, with one copy: the functions raise it to three
    await js.create_key_value(bucket=BUCKET, history=1, ttl=3600, replicas=1)
    functions = [FunctionProcess(free_port(), env) for _ in range(2)]
    runners = [
        bridge(cluster.url, f"{f.url}/invoke", mode="jetstream", stream_replicas=3, ack_wait_s=5) for f in functions
    ]
    texts: list[str] = []
    published = 0

    async def publish(count: int, rate: float) -> None:
        nonlocal published
        channels = [stack.channel() for _ in range(10)]
        for n in range(count):
            message = stack.messaging.add_message(channels[n % len(channels)], f"cluster {n}")
            texts.append(message["content_preview"])
            body = json.dumps(invocation(message["channel_id"], message_id=message["id"])).encode()
            deadline = asyncio.get_running_loop().time() + 30
            while True:  # until the stream confirms it, through the election (the id makes a retry a no-op)
                try:
                    await js.publish(SUBJECT, body, timeout=2, headers={"Nats-Msg-Id": message["id"]})
                    break
                except Exception:
                    assert asyncio.get_running_loop().time() < deadline, "the cluster took no publish for 30 s"
                    await asyncio.sleep(0.1)
            published += 1
            await asyncio.sleep(1 / rate)

    publisher: asyncio.Task[None] | None = None
    try:
        for f in functions:
            await f.start()
        for r in runners:
            await r.start()
        publisher = asyncio.create_task(publish(200, rate=25.0))
        await eventually(lambda: published >= 60 and len(stack.messaging.posts) >= 30, 30, "the run under way")
        # the node leading the KV bucket, made to lead the stream too: both elect anew when it dies
        leader = (await js.stream_info(f"KV_{BUCKET}")).cluster.leader
        await nc.request(
            f"$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}", json.dumps({"placement": {"preferred": leader}}).encode()
        )

        async def leads_the_stream() -> bool:
            return (await js.stream_info(STREAM)).cluster.leader == leader

        await eventually(leads_the_stream, 10, "the stream's leadership to move")
        cluster.kill(leader)
        await publisher
        await eventually(lambda: len(stack.messaging.posts) >= len(texts), 90, "every reply")

        async def settled() -> bool:
            try:
                info = await js.consumer_info(STREAM, DURABLE)
            except Exception:
                return False
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(settled, 60, "the consumer to settle")
        stream, dead_letters = await js.stream_info(STREAM), await js.stream_info(DLQ_STREAM)
        bucket = await js.stream_info(f"KV_{BUCKET}")
    finally:
        if publisher is not None:
            publisher.cancel()
        for r in runners:
            await r.stop()
        for f in functions:
            await f.kill()
        await nc.close()
    replies = sorted(p["text"].removeprefix("LLM reply to: ") for p in stack.messaging.posts)
    assert replies == sorted(texts)  # every one, exactly once
    assert reasons == [] and dead_letters.state.messages == 0
    assert stream.config.num_replicas == dead_letters.config.num_replicas == bucket.config.num_replicas == 3
    assert leader not in (stream.cluster.leader, bucket.cluster.leader)  # new leaders took over
