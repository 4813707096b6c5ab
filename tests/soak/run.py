"""Chaos soak: exactly one reply per human message, whatever crashes.

    python -m tests.soak                      # 1,000 invocations, 200 channels, ~50/s, with chaos
    python -m tests.soak --invocations 200 --channels 40 --rate 40
    python -m tests.soak --function-outage 120   # function-0 stays down two minutes before its restart

JetStream mode. Two runners (``local_runner.py`` processes) share one durable consumer and the
NATS key-value idempotency bucket; each forwards to its own functions process
(``functions-framework --target agent_runtime``). Stand-ins for messaging, memory and the LLM run
in this process on loopback. The invocations are published at a steady rate, each confirmed by
the stream. While they flow: kill -9 one functions process and restart it (at once, or after
``--function-outage`` seconds: its runner holds what it took meanwhile, the other takes the rest),
kill -9 one runner and restart it, kill -9 the nats-server and restart it on the same storage.

At the end it counts, per triggering message, the replies posted, and checks: every invocation
answered, none answered twice, nothing pending on the consumer, the dead-letter stream empty.
It prints the counts and exits 1 when any check fails. Bounded: every wait has a deadline.
Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SUBJECT = "router.invoke.agent"
STREAM, DLQ_STREAM, DURABLE = "AGENT_INVOCATIONS", "AGENT_INVOCATIONS_DLQ", "agent-runtime"

# Crash recovery is bounded by these: a killed function's claims expire after the in-progress TTL,
# a killed runner's unacknowledged messages come back after the ack wait. Both are short here so
# the soak takes seconds, not minutes; max_deliver covers the 409s seen while a claim is live.
TUNING = {
    "AGENT_RUNTIME__RUNTIME__DEADLINE_S": "5",
    "AGENT_RUNTIME__RUNTIME__IDEMPOTENCY_IN_PROGRESS_TTL_S": "6",
    "AGENT_RUNTIME__RUNNER__ACK_WAIT_S": "6",
    "AGENT_RUNTIME__RUNNER__REQUEST_TIMEOUT_S": "10",
    "AGENT_RUNTIME__RUNNER__MAX_DELIVER": "50",
    "AGENT_RUNTIME__RUNTIME__LOG_FORMAT": "json",
}


@dataclass
class Summary:
    invocations: int
    channels: int
    published: int = 0
    answered: int = 0  # triggering messages with at least one reply
    answered_twice: int = 0  # ... with more than one
    unanswered: int = 0
    posts: int = 0
    pending: int = -1  # on the consumer: not yet delivered + delivered, not acknowledged
    dead_letters: int = -1
    chaos: list[str] = field(default_factory=list)
    in_flight_at_crash: list[int] = field(default_factory=list)  # published, not yet answered
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.published == self.invocations
            and self.answered == self.invocations
            and self.answered_twice == 0
            and self.pending == 0
            and self.dead_letters == 0
        )

    def table(self) -> str:
        rows = [
            ("invocations published", self.published),
            ("channels", self.channels),
            ("answered", self.answered),
            ("answered twice", self.answered_twice),
            ("unanswered", self.unanswered),
            ("replies posted", self.posts),
            ("pending on the consumer", self.pending),
            ("dead letters", self.dead_letters),
            ("chaos", "; ".join(self.chaos) or "none"),
            ("in flight at each crash", ", ".join(map(str, self.in_flight_at_crash)) or "-"),
            ("seconds", f"{self.seconds:.1f}"),
            ("result", "OK" if self.ok else "FAILED"),
        ]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


class Process:
    """A child process we can kill -9 and start again with the same command."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.argv, self.env, self.log = name, argv, env, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, ready: str | None = None, timeout_s: float = 30.0) -> None:
        """Start; with ``ready``, wait for a stdout line starting with it."""
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(  # its own process group: gunicorn forks a worker
                *self.argv, cwd=ROOT, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=err, start_new_session=True
            )
        if ready is not None:
            assert self.proc.stdout is not None
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout_s)
            if not line.startswith(ready.encode()):
                raise RuntimeError(f"{self.name} did not start: {line[:200]!r}; see {self.log}")

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, sig)  # the group we started: the process and what it forked
        except ProcessLookupError:
            pass

    async def kill(self) -> None:
        """kill -9: no drain, no goodbye (gunicorn's worker too, not only its master)."""
        if self.proc is not None:
            self._signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self._signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                pass
        if self.proc is not None:
            await self.kill()  # whatever of the group is left


async def _until(condition, timeout_s: float, what: str, step_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(step_s)


async def _http_up(url: str) -> bool:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=1) as client:
            return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


def _listen(port: int) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port)]


def _runner_args(port: int) -> list[str]:
    return [
        *("--function-url", f"http://127.0.0.1:{port}/invoke", "--port", "0", "--max-in-flight", "32"),
        *("--max-deliver", TUNING["AGENT_RUNTIME__RUNNER__MAX_DELIVER"]),
    ]


def _progress(text: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def soak(
    invocations: int = 1000,
    channels: int = 200,
    rate: float = 50.0,
    *,
    chaos: bool = True,
    function_outage_s: float = 0.0,
    llm_delay_s: float = 0.2,
    settle_timeout_s: float = 120.0,
    workdir: str | None = None,
) -> Summary:
    import nats

    from localstack.embedded import NatsServer, free_port
    from standins.llm import LlmStandIn
    from standins.memory import MemoryStandIn
    from standins.messaging import MessagingStandIn
    from standins.server import Fault, Served

    started = time.monotonic()
    summary = Summary(invocations, channels)
    tmp = tempfile.TemporaryDirectory(prefix="agent-runtime-soak-") if workdir is None else None
    work = Path(workdir or tmp.name)  # type: ignore[union-attr]
    store = str(work / "nats")
    messaging, memory, llm = MessagingStandIn(channels=()), MemoryStandIn(), LlmStandIn()
    if llm_delay_s:  # a model that takes its time: the crashes then land on invocations in flight
        llm.faults.set("proxy", Fault(delay_s=llm_delay_s))
    served = [Served(s.app) for s in (messaging, memory, llm)]
    server = await NatsServer(port=free_port(), store_dir=store).start()
    env = {
        **os.environ,
        **TUNING,
        "NATS_URL": server.url,
        "MESSAGING_SERVICE_URL": served[0].url,
        "AGENT_MEMORY_URL": served[1].url,
        "LLM_PROXY_URL": served[2].url,
        "AGENTS_SERVICE_URL": "",
        "AGENT_RUNTIME__IDEMPOTENCY__BACKEND": "nats",
        "AGENT_RUNTIME__IDEMPOTENCY__NATS_BUCKET": "soak_idempotency",
    }
    ports = [free_port(), free_port()]
    functions = [
        Process(
            f"function-{i}",
            [sys.executable, "-m", "functions_framework", "--target", "agent_runtime", "--asgi", *_listen(port)],
            env,
            work / f"function-{i}.log",
        )
        for i, port in enumerate(ports)
    ]
    runners = [
        Process(
            f"runner-{i}",
            [sys.executable, "local_runner.py", "--mode", "jetstream", "--nats-url", server.url, *_runner_args(port)],
            env,
            work / f"runner-{i}.log",
        )
        for i, port in enumerate(ports)
    ]

    async def start_function(i: int) -> None:
        await functions[i].start()
        await _until(lambda: _http_up(f"http://127.0.0.1:{ports[i]}/health"), 30, f"function {i}")

    nc = None
    try:
        for i in range(2):
            await start_function(i)
        for runner in runners:  # the first creates the streams and the durable consumer
            await runner.start(ready="agent-runtime runner:")

        async def quiet(*_: object) -> None:  # the publisher's reconnects are expected: the nats-server is killed
            return None

        nc = await nats.connect(
            server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=quiet, disconnected_cb=quiet
        )
        js = nc.jetstream()

        channel_ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(channels)]
        for channel in channel_ids:
            messaging.channels[channel] = []
        texts: dict[str, str] = {}  # trigger message id -> its text

        async def publish(body: bytes) -> None:
            """Publish until the stream confirms it (through the nats-server's restart)."""
            deadline = time.monotonic() + 60
            while True:
                try:
                    await js.publish(SUBJECT, body, timeout=2)
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.2)

        events = {}
        restarts: list[asyncio.Task[None]] = []
        if chaos:
            events = {
                int(invocations * 0.2): "function",
                int(invocations * 0.45): "runner",
                int(invocations * 0.7): "nats",
            }
        interval = 1.0 / rate
        next_at = time.monotonic()
        for n in range(invocations):
            if n in events:
                what = events[n]
                summary.in_flight_at_crash.append(n - len(messaging.posts))
                if what == "function":
                    await functions[0].kill()
                    if function_outage_s:  # down that long while the invocations keep coming

                        async def restart_later() -> None:
                            await asyncio.sleep(function_outage_s)
                            await start_function(0)
                            _progress("function-0 restarted")

                        restarts.append(asyncio.create_task(restart_later()))
                        summary.chaos.append(f"kill -9 function-0 at {n}, restarted {function_outage_s:g} s later")
                    else:
                        await start_function(0)
                        summary.chaos.append(f"kill -9 function-0 at {n}, restarted")
                elif what == "runner":
                    await runners[1].kill()
                    await runners[1].start(ready="agent-runtime runner:")
                    summary.chaos.append(f"kill -9 runner-1 at {n}, restarted")
                else:
                    server.kill()
                    server = await NatsServer(port=server.port, store_dir=store).start()
                    summary.chaos.append(f"kill -9 nats-server at {n}, restarted on its storage")
                _progress(summary.chaos[-1])
                next_at = time.monotonic()
            if n and n % 100 == 0:
                _progress(f"published {n}, replies {len(messaging.posts)}")
            channel = channel_ids[n % channels]
            message = messaging.add_message(channel, f"soak message {n}")
            texts[message["id"]] = message["content_preview"]
            body = {
                "agent_id": "agent:sofia",
                "entrypoint": "channel_message",
                "payload": {"channel_id": channel, "message_id": message["id"], "microdao_id": "microdao:daarion"},
            }
            await publish(json.dumps(body).encode())
            summary.published += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

        def replies() -> Counter[str]:
            return Counter(p["text"].removeprefix("LLM reply to: ") for p in messaging.posts)

        async def consumer_pending() -> int:
            try:
                info = await js.consumer_info(STREAM, DURABLE)
            except Exception:
                return -1
            return info.num_pending + info.num_ack_pending

        async def settled() -> bool:
            return len(replies()) >= invocations and await consumer_pending() == 0

        for restart in restarts:
            await restart
        _progress(f"published {summary.published}; waiting for the replies")
        try:
            await _until(settled, settle_timeout_s, "every reply and an empty consumer", step_s=0.25)
        except TimeoutError:
            pass  # counted below
        counts = replies()
        summary.posts = sum(counts.values())
        summary.answered = sum(1 for text in texts.values() if counts[text] >= 1)
        summary.answered_twice = sum(1 for text in texts.values() if counts[text] > 1)
        summary.unanswered = sum(1 for text in texts.values() if counts[text] == 0)
        summary.pending = await consumer_pending()
        try:
            summary.dead_letters = (await js.stream_info(DLQ_STREAM)).state.messages
        except Exception:
            summary.dead_letters = -1
    finally:
        if nc is not None:
            await nc.close()
        for process in runners + functions:
            await process.stop()
        server.stop()
        for s in served:
            s.stop()
        if tmp is not None:
            tmp.cleanup()
    summary.seconds = time.monotonic() - started
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--invocations", type=int, default=1000)
    parser.add_argument("--channels", type=int, default=200)
    parser.add_argument("--rate", type=float, default=50.0, help="invocations published per second")
    parser.add_argument("--no-chaos", action="store_true")
    parser.add_argument(
        "--function-outage", type=float, default=0.0, help="seconds the killed function stays down (0: at once)"
    )
    parser.add_argument("--llm-delay", type=float, default=0.2, help="seconds each LLM call takes")
    parser.add_argument("--settle-timeout", type=float, default=120.0)
    parser.add_argument("--workdir", help="keep the processes' logs and the nats store here")
    args = parser.parse_args(argv)
    summary = asyncio.run(
        soak(
            args.invocations,
            args.channels,
            args.rate,
            chaos=not args.no_chaos,
            function_outage_s=args.function_outage,
            llm_delay_s=args.llm_delay,
            settle_timeout_s=args.settle_timeout,
            workdir=args.workdir,
        )
    )
    print(summary.table(), flush=True)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
