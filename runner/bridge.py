"""The NATS-to-HTTP bridge: take invocations from NATS, call the invoke function, act on its status.

Lifecycle, as nats.py's examples do it: ``start()`` connects and subscribes, ``stop()`` stops
taking messages, finishes (and acknowledges) those in flight within the drain timeout, and
drains the connection. While the function cannot be reached, a circuit breaker (``runner.breaker``)
pauses the intake and holds the messages taken, spending none of their deliveries. With
``runner.stream_subject`` set, the function streams each reply, and ``ReplyStream`` publishes its
pieces on NATS as they are typed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from runner import metrics
from runner.breaker import Breaker
from runner.dispatch import Dispatcher
from runner.forward import Answer, Listener, call_headers, forward, health_url, probe
from shared.delivery import Verdict, decide
from shared.errors import BadInput
from shared.infra import jsoncodec, sse, telemetry
from shared.infra.jetstream import ensure_stream
from shared.infra.nats_connect import NatsRefused, connect, connect_options
from shared.infra.observability import redact_url

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from shared.contracts import Outcome
    from shared.infra.settings import Settings

log = logging.getLogger("agent_runtime.runner")


class Bridge:
    """From ``s.nats`` to the function at ``function_url`` as ``s.runner`` says, sending ``s.runtime.secret``."""

    def __init__(self, s: Settings, function_url: str) -> None:
        self.runner = s.runner
        self.servers = s.nats.url.split(",")
        self.nats_auth = connect_options(s.nats)  # credentials and TLS; unreadable files fail here, at start
        self.subject = s.nats.invocation_subject
        self.dead_letter_subject = s.runner.dlq_subject or f"{self.subject}.dlq"
        self.stream_subject = s.runner.stream_subject
        self.function_url = function_url
        telemetry.configure(f"{s.service}-bridge")  # spans only when an OTLP endpoint is configured
        self.function_secret = s.runtime.secret.get_secret_value() if s.runtime.secret else None
        self.max_body_bytes = s.runtime.max_body_bytes
        self.dispatcher = Dispatcher(s.runner.max_in_flight)
        probe_timeout_s = min(5.0, s.runner.request_timeout_s)
        self.breaker = Breaker(lambda: probe(health_url(function_url), probe_timeout_s))
        # Sees every answer with its trace id and attempt (the console's feed); it must never raise.
        self.on_answer: Callable[[bytes, Answer, str, int], None] | None = None
        self.nc: Client | None = None
        self._subscription: Any = None
        self._fetcher: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_requested = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        self.nc = await _connect_until_up(self.servers, self.nats_auth)
        if self.runner.mode == "jetstream":
            await self._start_jetstream()
        else:
            self._subscription = await self.nc.subscribe(
                self.subject,
                queue=self.runner.queue_group,
                cb=self._on_core_message,
                pending_msgs_limit=self.dispatcher.capacity * 16,
            )
            await flushed(self.nc)  # the server knows the subscription before start() returns
        log.info(
            "bridge started",
            extra={
                "fields": {
                    "mode": self.runner.mode,
                    "subject": self.subject,
                    "function_url": redact_url(self.function_url),
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
        if self._subscription is not None and self.runner.mode == "core":
            with contextlib.suppress(Exception):
                await self._subscription.unsubscribe()
        finished = await self.dispatcher.drain(self.runner.drain_timeout_s)
        await self.breaker.close()
        if self.nc is not None and not self.nc.is_closed:
            # Everything taken is settled by now; send the last acks and close. (nats-py's drain()
            # of a pull subscription can wait its whole drain timeout for nothing.)
            with contextlib.suppress(Exception):
                await flushed(self.nc, timeout_s=2)  # NATS may be down: do not wait nats-py's 10 s
            await self.nc.close()
        await asyncio.to_thread(telemetry.flush)  # the last spans, before the process ends
        log.info("bridge stopped", extra={"fields": {"finished_in_flight": finished}})
        return finished

    def health(self) -> dict[str, Any]:
        connected = bool(self.nc and self.nc.is_connected)
        consumer = self.runner.durable if self.runner.mode == "jetstream" else self.runner.queue_group
        return {
            "status": "ok" if connected and not self.breaker.is_open else "degraded",
            "nats_connected": connected,
            "function": self.breaker.state(),
            "mode": self.runner.mode,
            "subject": self.subject,
            "consumer": consumer,
            "in_flight": self.dispatcher.in_flight,
            "queued": self.dispatcher.pending,
        }

    # --- intake -----------------------------------------------------------------------------

    async def _on_core_message(self, msg: Msg) -> None:
        await self._admit(msg)

    async def _start_jetstream(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        assert self.nc is not None
        js = self.nc.jetstream()
        cfg = self.runner
        for name, subject in ((cfg.stream, self.subject), (f"{cfg.stream}_DLQ", self.dead_letter_subject)):
            # capture the router's plain publishes: it needs no change
            await ensure_stream(js, name, subject, cfg.stream_replicas)
        self._subscription = await js.pull_subscribe(
            self.subject,
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
            if self.breaker.is_open:  # take nothing new while the function cannot answer it
                await self.breaker.wait_closed()
                continue
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
            ids = read_ids(msg.data, self.max_body_bytes)
        except BadInput as exc:
            await self._dead_letter(msg, Verdict("dead_letter", exc.error), status=exc.status, attempt=1)
            return
        except Exception as exc:  # a parser defect must never end the intake loop
            log.exception("unreadable invocation")
            reason = f"unreadable invocation: {type(exc).__name__}"
            await self._dead_letter(msg, Verdict("dead_letter", reason), status=None, attempt=1)
            return
        keep_alive = self._keep_alive(msg) if self.runner.mode == "jetstream" else None
        await self.dispatcher.submit(ids.key, lambda: self._traced(msg, ids, keep_alive))

    # --- one message ------------------------------------------------------------------------

    async def _traced(self, msg: Msg, ids: Ids, keep_alive: asyncio.Task[None] | None) -> None:
        """Process a message in a consumer span, a child of the trace context its headers carry."""
        with telemetry.span(f"process {self.subject}", telemetry.CONSUMER, parent=msg.headers or {}) as span:
            if span.recording:
                span.set("messaging.system", "nats")
                span.set("messaging.operation.type", "process")
                span.set("messaging.destination.name", self.subject)
                span.set("messaging.message.id", (msg.headers or {}).get("Nats-Msg-Id"))
            await self._process(msg, ids, keep_alive)

    async def _process(self, msg: Msg, ids: Ids, keep_alive: asyncio.Task[None] | None) -> None:
        try:
            attempt = msg.metadata.num_delivered if self.runner.mode == "jetstream" else 1
            headers = call_headers(msg.headers, self.function_secret)
            # where the reply's pieces go; none: nowhere to publish them, so none are asked for
            stream_to = reply_subject(self.stream_subject, ids) if self.stream_subject else None
            if stream_to is not None:
                headers["Accept"] = sse.MEDIA_TYPE
            held = False  # this message waited out an outage, and has not reached the function since
            while True:
                if attempt > self.runner.max_deliver:  # redelivered past the limit (a crash loop, say)
                    await self._dead_letter(msg, Verdict("dead_letter", "attempts exhausted"), None, attempt - 1)
                    return
                if not await self._until_reachable():  # stopping with the function down: give it back
                    await self._settle(msg, "nak", 1.0)
                    return
                listener = None if stream_to is None else ReplyStream(self.nc, stream_to, ids)
                answer = await self._call(msg.data, headers, listener)
                if self.on_answer is not None:
                    self.on_answer(msg.data, answer, headers["traceparent"], attempt)
                if not answer.reachable:
                    self.breaker.trip(answer.error)
                    if not held:  # the function's outage, not this message's doing: no delivery spent
                        held = True
                        continue
                    # Unreachable again although a probe just reached the function: this message may be
                    # what brings it down (a worker it crashes, behind a proxy): it spends a delivery.
                else:
                    held = False
                decision = judge(answer, attempt=attempt, max_deliver=self.runner.max_deliver)
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
                if await self._stopped_within(decision.delay_s) and self.runner.mode == "jetstream":
                    await self._settle(msg, "nak", decision.delay_s)
                    return
                attempt += 1
        except Exception:
            log.exception("bridge defect while processing a message")
            if self.runner.mode == "jetstream":
                await self._settle(msg, "nak", 1.0)
        finally:
            if keep_alive is not None:
                keep_alive.cancel()

    async def _until_reachable(self) -> bool:
        """Wait while the function is unreachable; False when the bridge stops meanwhile (JetStream)."""
        if not self.breaker.is_open:
            return True
        if self.runner.mode == "core":  # nowhere to give it back: until the function answers, or the drain ends
            await self.breaker.wait_closed()
            return True
        # a runner that stops gives it back: another one may reach the function
        closed = asyncio.create_task(self.breaker.wait_closed())
        stopping = asyncio.create_task(self._stop_requested.wait())
        try:
            await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            stopping.cancel()
        return not self.breaker.is_open

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait ``seconds``, or less if the bridge is stopping; True when it is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_requested.wait(), seconds)
        return self._stop_requested.is_set()

    async def _call(self, body: bytes, headers: dict[str, str], listener: Listener | None) -> Answer:
        async with self.dispatcher.slot():
            return await self._forward(body, headers, listener)

    async def _forward(self, body: bytes, headers: dict[str, str], listener: Listener | None) -> Answer:
        metrics.in_flight.inc()
        started = time.perf_counter()
        try:
            answer = await forward(self.function_url, body, headers, self.runner.request_timeout_s, listener)
        finally:
            metrics.in_flight.dec()
            metrics.latency.observe(time.perf_counter() - started)
        metrics.forwarded.labels(metrics.status_class(answer.status)).inc()
        return answer

    def _keep_alive(self, msg: Msg) -> asyncio.Task[None]:
        """Tell JetStream the message is being worked on, so a slow LLM call is not redelivered."""

        async def tick() -> None:
            while True:
                await asyncio.sleep(self.runner.ack_wait_s / 3)
                with contextlib.suppress(Exception):
                    await msg.in_progress()

        return asyncio.create_task(tick())

    async def _settle(self, msg: Msg, how: str, delay: float | None = None) -> None:
        if self.runner.mode != "jetstream":
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
        if self.runner.mode == "core" and msg.reply and self.nc is not None:
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
            if self.runner.mode == "jetstream":
                await self.nc.jetstream().publish(self.dead_letter_subject, msg.data, headers=headers)
                await self._settle(msg, "term")
            else:
                await self.nc.publish(self.dead_letter_subject, msg.data, headers=headers)
        except Exception as exc:  # never lose it: JetStream will offer it again
            log.error("dead-letter publish failed", extra={"fields": {"error": type(exc).__name__}})
            await self._settle(msg, "nak", 5.0)
            return
        await self._reply(msg, body or json.dumps({"error": decision.reason}).encode())


class Ids(NamedTuple):
    """What the bridge reads of an invocation: the agent and channel it orders by, and the trigger."""

    agent_id: str
    channel_id: str  # canonical when it is a UUID
    message_id: str | None

    @property
    def key(self) -> str:
        """The (agent, channel) order the message keeps."""
        return f"{self.agent_id}/{self.channel_id}"


def read_ids(data: bytes, max_bytes: int) -> Ids:
    """The ids the bridge orders (and streams) by. The function validates the rest (its 422
    dead-letters); what has no agent and channel cannot be ordered, and is dead-lettered here."""
    if len(data) > max_bytes:
        raise BadInput(413, f"body larger than {max_bytes} bytes")
    try:
        body = jsoncodec.loads(data)
    except RecursionError:
        raise BadInput(400, "body is not JSON: nested too deeply") from None
    except ValueError as exc:
        raise BadInput(400, f"body is not JSON: {exc}") from None
    payload = body.get("payload") if isinstance(body, dict) else None
    payload = payload if isinstance(payload, dict) else {}
    agent_id = body.get("agent_id") if isinstance(body, dict) else None
    channel_id = payload.get("channel_id")
    if not isinstance(agent_id, str) or not isinstance(channel_id, str):
        raise BadInput(422, "invalid invocation: agent_id and payload.channel_id must be strings")
    try:
        channel_id = str(uuid.UUID(channel_id))  # one channel however it is spelled
    except ValueError:
        pass  # the function refuses it
    message_id = payload.get("message_id")
    return Ids(agent_id, channel_id, message_id if isinstance(message_id, str) else None)


_NOT_A_TOKEN = re.compile(r"[\s.*>]")  # what would split a subject token, or make it a wildcard


def reply_subject(prefix: str, ids: Ids) -> str | None:
    """``<prefix>.<agent>.<channel>``; None when either id cannot be one subject token (the function refuses it)."""
    if not ids.agent_id or not ids.channel_id or _NOT_A_TOKEN.search(ids.agent_id + ids.channel_id):
        return None
    return f"{prefix}.{ids.agent_id}.{ids.channel_id}"


class ReplyStream:
    """One call's reply, published on core NATS as the function streams it: best effort, as a piece
    lost must never change what becomes of the invocation."""

    def __init__(self, nc: Client | None, subject: str, ids: Ids) -> None:
        self.nc, self.subject = nc, subject
        self.ids: dict[str, str] = {"agent_id": ids.agent_id, "channel_id": ids.channel_id}
        if ids.message_id is not None:
            self.ids["message_id"] = ids.message_id
        self.headers: dict[str, str] = {}
        self.seq = 0
        self.failed = False

    async def opened(self, headers: Mapping[str, str]) -> None:
        self.headers = {name: headers[name] for name in ("traceparent", "tracestate") if name in headers}
        if "Idempotency-Key" in headers:  # the invocation's Nats-Msg-Id, checked; under that name a
            # stream capturing these subjects would drop every piece after the first as a duplicate
            self.headers["Agent-Runtime-Msg-Id"] = headers["Idempotency-Key"]

    async def piece(self, kind: str, text: str) -> None:
        await self._publish(kind, {"text": text} if kind == "delta" else {})

    async def ended(self, outcome: Outcome | None) -> None:
        if outcome is None:  # no outcome: the pieces are void; a retry streams the reply again
            await self._publish("end", {"status": "failed"})
            return
        end: dict[str, Any] = {"status": outcome.status, "reply_message_id": outcome.message_id}
        if outcome.handed_off_to is not None:
            end["handed_off_to"] = outcome.handed_off_to
        await self._publish("end", end)

    async def _publish(self, kind: str, fields: dict[str, Any]) -> None:
        message = {"type": kind, "seq": self.seq, **fields, **self.ids}
        self.seq += 1
        try:
            assert self.nc is not None
            await self.nc.publish(self.subject, jsoncodec.dumps(message), headers=self.headers)
        except Exception as exc:
            metrics.reply_pieces_lost.inc()
            if not self.failed:  # once per reply: NATS down would otherwise log every piece
                self.failed = True
                log.warning("reply stream publish failed", extra={"fields": {"error": type(exc).__name__}})


async def flushed(nc: Client, timeout_s: float = 10) -> None:
    """Return once the server has processed everything sent so far.

    nats-py writes flush()'s PING straight to the socket, ahead of commands still in its buffer
    (a SUB, say), so one flush can return before they are sent. The second PING follows them.
    """
    await nc.flush(timeout=timeout_s)
    await nc.flush(timeout=timeout_s)


async def _connect_until_up(servers: list[str], auth: dict[str, Any]) -> Client:
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
            return await connect(
                servers,
                auth,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                connect_timeout=2,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
                name="agent-runtime-bridge",
            )
        except NatsRefused as exc:  # wrong credentials or TLS: stop, and say why, rather than wait forever
            log.error("NATS refused the bridge", extra={"fields": {"error": str(exc)}})
            raise
        except Exception as exc:
            delay = min(10.0, 0.5 * 2 ** min(attempt, 5))
            log.warning(
                "NATS not reachable, retrying",
                extra={
                    "fields": {
                        "url": ",".join(redact_url(u) for u in servers),
                        "error": type(exc).__name__,
                        "retry_in_s": delay,
                    }
                },
            )
            await asyncio.sleep(delay)


def judge(answer: Answer, *, attempt: int, max_deliver: int) -> Verdict:
    """What to do with a message the function answered (``shared.delivery.decide``, its Retry-After honoured)."""
    return decide(
        answer.status, attempt=attempt, max_deliver=max_deliver, retry_after=answer.retry_after, error=_why(answer)
    )


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
