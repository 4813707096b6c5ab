"""The outcomes the bridge sees: a bounded ring of the latest, per-agent figures over the last hour,
and a fan-out to live subscribers whose queues are bounded (a slow one is dropped, never waited for)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from runner.console.stats import AgentStats
from shared.infra import jsoncodec, telemetry

if TYPE_CHECKING:
    from runner.forward import Answer

log = logging.getLogger("agent_runtime.runner")

Entry = dict[str, Any]
OUTCOMES = frozenset({"replied", "handed_off", "skipped", "failed"})
MAX_TEXT = 300  # characters of an error or reason kept: a line in the page, not a log
MAX_TOOLS = 10


class Subscriber:
    """One live reader: its bounded queue, and whether the feed let it go."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[Entry | None] = asyncio.Queue(size)
        self.closed = False

    async def next(self, timeout_s: float) -> Entry | None:
        """The next entry; None when it timed out or the feed let this subscriber go."""
        try:
            entry = await asyncio.wait_for(self.queue.get(), timeout_s)
        except TimeoutError:
            return None
        return None if self.closed else entry


class Feed:
    """What every console reads from: the bridge calls ``record`` with each answer it gets."""

    def __init__(self, size: int = 500, *, max_subscribers: int = 32, queue_size: int = 256) -> None:
        self._ring: deque[Entry] = deque(maxlen=size)
        self._last_id = 0
        self._subscribers: set[Subscriber] = set()
        self.max_subscribers = max_subscribers
        self.queue_size = queue_size
        self.stats = AgentStats()

    def record(self, body: bytes, answer: Answer, traceparent: str, attempt: int) -> None:
        """Keep one answer of the function (never raises: the bridge must not pay for the console)."""
        try:
            entry = entry_of(body, answer, traceparent, attempt)
        except Exception:
            log.exception("console: an answer could not be read")
            return
        self._last_id += 1
        entry["id"] = self._last_id
        self._ring.append(entry)
        self.stats.add(entry)
        for subscriber in list(self._subscribers):
            try:
                subscriber.queue.put_nowait(entry)
            except asyncio.QueueFull:  # too slow: let it go (its page reconnects and catches up)
                self._let_go(subscriber)

    def recent(self, after: int = 0) -> list[Entry]:
        """The ring's entries newer than ``after``, oldest first."""
        return [e for e in self._ring if e["id"] > after]

    def subscribe(self) -> Subscriber | None:
        """A new live reader; None when there are too many already."""
        if len(self._subscribers) >= self.max_subscribers:
            return None
        subscriber = Subscriber(self.queue_size)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def close(self) -> None:
        """End every live reader (the runner is stopping: an open stream would hold its server up)."""
        for subscriber in list(self._subscribers):
            self._let_go(subscriber)

    def _let_go(self, subscriber: Subscriber) -> None:
        subscriber.closed = True
        self._subscribers.discard(subscriber)
        if not subscriber.queue.full():
            subscriber.queue.put_nowait(None)  # wake it; a full queue wakes it anyway


def entry_of(body: bytes, answer: Answer, traceparent: str, attempt: int) -> Entry:
    """What the console shows of one answer: the outcome's fields, the call's trace id and attempt."""
    invocation = _json(body)
    outcome = _json(answer.body)
    if outcome.get("status") in OUTCOMES:
        status = outcome["status"]
    elif not answer.reachable:
        status = "unreachable"
    elif answer.status is None:
        status = "no_answer"
    else:
        status = "rejected"  # bad input, auth: the function refused it before any run
    payload = invocation.get("payload") if isinstance(invocation.get("payload"), dict) else {}
    timings = outcome.get("timings_ms") if isinstance(outcome.get("timings_ms"), dict) else {}
    timings = {str(k): float(v) for k, v in timings.items() if isinstance(v, int | float)}
    usage = outcome.get("usage") if isinstance(outcome.get("usage"), dict) else None
    tools = outcome.get("tool_calls") if isinstance(outcome.get("tool_calls"), list) else []
    parts = traceparent.split("-")
    traced = telemetry.ids()  # with tracing on, the bridge's span: the trace the function joined
    return {
        "at": time.time(),
        "agent_id": _text(outcome.get("agent_id") or invocation.get("agent_id")),
        "channel_id": _text(outcome.get("channel_id") or payload.get("channel_id")),
        "trigger_message_id": _text(outcome.get("trigger_message_id") or payload.get("message_id")),
        "message_id": _text(outcome.get("message_id")),
        "status": status,
        "http_status": answer.status,
        "reason": _text(outcome.get("reason")),
        "step": _text(outcome.get("step")),
        "kind": _text(outcome.get("kind")),
        "retryable": outcome.get("retryable") if isinstance(outcome.get("retryable"), bool) else None,
        "error": _text(outcome.get("error") or answer.error),
        "llm_source": _text(outcome.get("llm_source")),
        "total_ms": timings.get("total"),
        "timings_ms": timings,
        "usage": _usage(usage),
        "tool_calls": [
            {"tool": _text(c.get("tool")), "result": _text(c.get("result"))}
            for c in tools[:MAX_TOOLS]
            if isinstance(c, dict)
        ],
        "notes": [_text(n) for n in outcome.get("notes") or [] if isinstance(n, str)][:MAX_TOOLS],
        "trace_id": traced[0] if traced else parts[1] if len(parts) == 4 else None,
        "attempt": attempt,
    }


def _json(data: bytes) -> dict[str, Any]:
    try:
        value = jsoncodec.loads(data) if data else {}
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) else None


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": _count(usage.get("input_tokens")),
        "output_tokens": _count(usage.get("output_tokens")),
        "model": _text(usage.get("model")),
        "estimated": usage.get("estimated") is True,
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
