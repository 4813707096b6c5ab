"""The NATS-to-HTTP bridge: take invocations from NATS, call the invoke function, act on its status.

Lifecycle, as nats.py's examples do it: ``start()`` connects and subscribes, ``stop()`` stops
taking messages, finishes (and acknowledges) those in flight within the drain timeout, and
drains the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner import metrics
from runner.dispatch import Dispatcher
from runner.forward import Answer, call_headers, forward
from shared.delivery import Verdict, decide
from shared.errors import BadInput
from shared.infra.observability import redact_url
from shared.intake import parse_invocation

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

log = logging.getLogger("agent_runtime.runner")


@dataclass(frozen=True)
class BridgeConfig:
    nats_servers: list[str]
    subject: str
    function_url: str
    mode: str = "core"
    queue_group: str = "agent-runtime"
    max_in_flight: int = 64
    max_deliver: int = 5
    request_timeout_s: float = 90.0
    ack_wait_s: float = 120.0
    drain_timeout_s: float = 30.0
    stream: str = "AGENT_INVOCATIONS"
    durable: str = "agent-runtime"
    dlq_subject: str | None = None
    function_secret: str | None = None
    max_body_bytes: int = 256 * 1024

    @property
    def dead_letter_subject(self) -> str:
        return self.dlq_subject or f"{self.subject}.dlq"


class Bridge:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.dispatcher = Dispatcher(config.max_in_flight)
        self.nc: Client | None = None
        self._subscription: Any = None
        self._fetcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_requested = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        import nats

        self.nc = await _connect_until_up(nats, self.config.nats_servers)
        if self.config.mode == "jetstream":
            await self._start_jetstream()
        else:
            self._subscription = await self.nc.subscribe(
                self.config.subject,
                queue=self.config.queue_group,
                cb=self._on_core_message,
                pending_msgs_limit=self.dispatcher.capacity * 16,
            )
            await flushed(self.nc)  # the server knows the subscription before start() returns
        log.info(
            "bridge started",
            extra={
                "fields": {
                    "mode": self.config.mode,
                    "subject": self.config.subject,
                    "function_url": redact_url(self.config.function_url),
                }
            },
        )

    async def stop(self) -> bool:
        """Stop taking messages, finish those in flight; False when the drain timeout cut some short."""
        self._stopping = True
        self._stop_requested.set()
        if self._fetcher is not None:
            self._fetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fetcher
        if self._subscription is not None and self.config.mode == "core":
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        finished = await self.dispatcher.drain(self.config.drain_timeout_s)
        if self.nc is not None and not self.nc.is_closed:
            # Everything taken is settled by now; send the last acks and close. (nats-py's drain()
            # of a pull subscription can wait its whole drain timeout for nothing.)
            with contextlib.suppress(Exception):
                await flushed(self.nc, timeout_s=2)  # NATS may be down: do not wait nats-py's 10 s
            await self.nc.close()
        log.info("bridge stopped", extra={"fields": {"finished_in_flight": finished}})
        return finished

    def health(self) -> dict[str, Any]:
        connected = bool(self.nc and self.nc.is_connected)
        consumer = self.config.durable if self.config.mode == "jetstream" else self.config.queue_group
        return {
            "status": "ok" if connected else "degraded",
            "nats_connected": connected,
            "mode": self.config.mode,
            "subject": self.config.subject,
            "consumer": consumer,
            "in_flight": self.dispatcher.in_flight,
            "queued": self.dispatcher.pending,
        }

    # --- intake -----------------------------------------------------------------------------

    async def _on_core_message(self, msg: Msg) -> None:
        await self._admit(msg)

    async def _start_jetstream(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType
        from nats.js.errors import NotFoundError

        assert self.nc is not None
        js = self.nc.jetstream()
        cfg = self.config
        for name, subject in ((cfg.stream, cfg.subject), (f"{cfg.stream}_DLQ", cfg.dead_letter_subject)):
            try:
                await js.stream_info(name)
            except NotFoundError:  # capture the router's plain publishes: it needs no change
                await js.add_stream(name=name, subjects=[subject], storage=StorageType.FILE)
        self._subscription = await js.pull_subscribe(
            cfg.subject,
            durable=cfg.durable,
            stream=cfg.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=cfg.ack_wait_s,
                max_deliver=-1,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=self.dispatcher.capacity * 2,
            ),
        )
        self._fetcher = asyncio.create_task(self._fetch_loop())

    async def _fetch_loop(self) -> None:
        import nats.errors

        failures = 0
        while not self._stopping:
            batch = min(64, self.dispatcher.free())
            if batch <= 0:
                await asyncio.sleep(0.01)  # the bounded queue is full: let it drain
                continue
            try:
                messages = await self._subscription.fetch(batch, timeout=1.0)
                failures = 0
            except nats.errors.TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # disconnected, server restarting: resume when it is back
                failures += 1
                log.warning("fetch failed, retrying", extra={"fields": {"error": type(exc).__name__}})
                await asyncio.sleep(min(5.0, 0.2 * 2 ** min(failures, 5)))
                continue
            for msg in messages:
                await self._admit(msg)

    async def _admit(self, msg: Msg) -> None:
        metrics.received.inc()
        try:
            invocation = parse_invocation(msg.data, self.config.max_body_bytes)
        except BadInput as exc:
            await self._dead_letter(msg, Verdict("dead_letter", exc.error), status=exc.status, attempt=1)
            return
        except Exception as exc:  # a parser defect must never end the intake loop
            log.exception("unreadable invocation")
            reason = f"unreadable invocation: {type(exc).__name__}"
            await self._dead_letter(msg, Verdict("dead_letter", reason), status=None, attempt=1)
            return
        key = f"{invocation.agent_id}/{invocation.payload.channel_id}"
        keep_alive = self._keep_alive(msg) if self.config.mode == "jetstream" else None
        await self.dispatcher.submit(key, lambda: self._process(msg, keep_alive))

    # --- one message ------------------------------------------------------------------------

    async def _process(self, msg: Msg, keep_alive: asyncio.Task[None] | None) -> None:
        try:
            attempt = msg.metadata.num_delivered if self.config.mode == "jetstream" else 1
            headers = call_headers(msg.headers, self.config.function_secret)
            while True:
                if attempt > self.config.max_deliver:  # redelivered past the limit (a crash loop, say)
                    await self._dead_letter(msg, Verdict("dead_letter", "attempts exhausted"), None, attempt - 1)
                    return
                answer = await self._call(msg.data, headers)
                decision = decide(
                    answer.status,
                    attempt=attempt,
                    max_deliver=self.config.max_deliver,
                    retry_after=answer.retry_after,
                    error=_why(answer),
                )
                if decision.action == "ack":
                    await self._settle(msg, "ack")
                    await self._reply(msg, answer.body)
                    return
                if decision.action == "dead_letter":
                    await self._dead_letter(msg, decision, answer.status, attempt, answer.body)
                    return
                metrics.retried.inc()
                log.info(
                    "retrying invocation",
                    extra={
                        "fields": {"reason": decision.reason, "attempt": attempt, "delay_s": round(decision.delay_s, 2)}
                    },
                )
                # Retried here, in both modes, so the channel's later invocations keep waiting their
                # turn (a nak would let them overtake). The wait holds no call slot; JetStream is
                # kept from redelivering by the keep-alive, and told to do it itself if we stop.
                if await self._stopped_within(decision.delay_s) and self.config.mode == "jetstream":
                    await self._settle(msg, "nak", decision.delay_s)
                    return
                attempt += 1
        except Exception:
            log.exception("bridge defect while processing a message")
            if self.config.mode == "jetstream":
                await self._settle(msg, "nak", 1.0)
        finally:
            if keep_alive is not None:
                keep_alive.cancel()

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if the bridge is stopping; True when it is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), seconds)
        return self._stop_requested.is_set()

    async def _call(self, body: bytes, headers: dict[str, str]) -> Answer:
        async with self.dispatcher.slot():
            return await self._forward(body, headers)

    async def _forward(self, body: bytes, headers: dict[str, str]) -> Answer:
        metrics.in_flight.inc()
        started = time.perf_counter()
        try:
            answer = await forward(self.config.function_url, body, headers, self.config.request_timeout_s)
        finally:
            metrics.in_flight.dec()
            metrics.latency.observe(time.perf_counter() - started)
        metrics.forwarded.labels(metrics.status_class(answer.status)).inc()
        return answer

    def _keep_alive(self, msg: Msg) -> asyncio.Task[None]:
        """Tell JetStream the message is being worked on, so a slow LLM call is not redelivered."""

        async def tick() -> None:
            while True:
                await asyncio.sleep(self.config.ack_wait_s / 3)
                with contextlib.suppress(Exception):
                    await msg.in_progress()

        return asyncio.create_task(tick())

    async def _settle(self, msg: Msg, how: str, delay: float | None = None) -> None:
        if self.config.mode != "jetstream":
            return
        try:
            if how == "ack":
                await msg.ack()
            elif how == "nak":
                await msg.nak(delay=delay)
            else:
                await msg.term()
        except Exception as exc:  # JetStream redelivers what it did not hear about
            log.warning("could not %s a message", how, extra={"fields": {"error": type(exc).__name__}})

    async def _reply(self, msg: Msg, body: bytes) -> None:
        """Request/reply: answer a core-NATS requester with the function's response."""
        if self.config.mode == "core" and msg.reply and self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.publish(msg.reply, body)

    async def _dead_letter(
        self, msg: Msg, decision: Verdict, status: int | None, attempt: int, body: bytes = b""
    ) -> None:
        metrics.dead_lettered.labels(metrics.status_class(status)).inc()
        headers = {
            "Agent-Runtime-Reason": _header(decision.reason),
            "Agent-Runtime-Attempts": str(attempt),
            "Agent-Runtime-Subject": _header(msg.subject),
        }
        if status is not None:
            headers["Agent-Runtime-Status"] = str(status)
        log.warning(
            "invocation dead-lettered",
            extra={"fields": {"reason": decision.reason, "status": status, "attempts": attempt}},
        )
        assert self.nc is not None
        try:
            if self.config.mode == "jetstream":
                await self.nc.jetstream().publish(self.config.dead_letter_subject, msg.data, headers=headers)
                await self._settle(msg, "term")
            else:
                await self.nc.publish(self.config.dead_letter_subject, msg.data, headers=headers)
        except Exception as exc:  # never lose it: JetStream will offer it again
            log.error("dead-letter publish failed", extra={"fields": {"error": type(exc).__name__}})
            await self._settle(msg, "nak", 5.0)
            return
        await self._reply(msg, body or json.dumps({"error": decision.reason}).encode())


async def flushed(nc: Client, timeout_s: float = 10) -> None:
    """Return once the server has processed everything sent so far.

    nats-py writes flush()'s PING straight to the socket, ahead of commands still in its buffer
    (a SUB, say), so one flush can return before they are sent. The second PING follows them.
    """
    await nc.flush(timeout=timeout_s)
    await nc.flush(timeout=timeout_s)


async def _connect_until_up(nats: Any, servers: list[str]) -> Client:
    async def disconnected() -> None:
        log.warning("NATS disconnected")

    async def reconnected() -> None:
        log.info("NATS reconnected")

    async def error(exc: Exception) -> None:
        log.warning("NATS error", extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}})

    attempt = 0
    while True:
        attempt += 1
        try:
            return await nats.connect(
                servers=servers,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                connect_timeout=2,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
                name="agent-runtime-bridge",
            )
        except Exception as exc:
            delay = min(10.0, 0.5 * 2 ** min(attempt, 5))
            log.warning(
                "NATS not reachable, retrying", extra={"fields": {"error": type(exc).__name__, "retry_in_s": delay}}
            )
            await asyncio.sleep(delay)


def _why(answer: Answer) -> str | None:
    """What went wrong, in the function's words when it said (its errors never carry secrets)."""
    if answer.error:
        return answer.error
    try:
        error = json.loads(answer.body).get("error")
    except (ValueError, AttributeError):
        error = None
    return f"HTTP {answer.status}: {error}" if error else None


def _header(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")[:500]
