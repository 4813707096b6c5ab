"""The health body every trigger answers: the seed's fields, plus what each dependency says when asked.

Deep results are shared and kept for ``DEEP_TTL_S``: however many ask at once, one probe of each
dependency is in flight, so deep health cannot be turned into a flood of calls that carry secrets.
The body names a dependency and its state, never an address.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from shared.clients.http import Endpoint
from shared.errors import DependencyError
from shared.infra.deadline import Deadline
from shared.runtime import Runtime

DEEP_TTL_S = 5.0
_deep: tuple[Runtime, float, asyncio.Future[dict[str, Any]]] | None = None  # runtime, asked at, answer


async def report(rt: Runtime, *, deep: bool) -> dict[str, Any]:
    s = rt.settings
    body: dict[str, Any] = {
        "status": "ok",
        "service": s.service,
        "version": s.version,
        "nats_connected": rt.nats_connected(),
    }
    backend = s.idempotency.backend
    if backend != "memory":  # a shared store: what its last call said, at no cost
        failing = rt.idempotency.failing
        body["idempotency"] = {"backend": backend, "ok": failing is None, **({"kind": failing} if failing else {})}
        if failing:
            body["status"] = "degraded"
    if deep:
        body["dependencies"] = await _dependencies(rt)
        if not all(d["ok"] for d in body["dependencies"].values()):
            body["status"] = "degraded"
    return body


async def _dependencies(rt: Runtime) -> dict[str, Any]:
    """The probes' answer, from the last DEEP_TTL_S or a probe already under way."""
    global _deep
    now = time.monotonic()
    if _deep is None or _deep[0] is not rt or now - _deep[1] > DEEP_TTL_S:
        _deep = (rt, now, asyncio.ensure_future(_probe(rt)))
    return dict(await asyncio.shield(_deep[2]))


async def _probe(rt: Runtime) -> dict[str, Any]:
    deadline = Deadline(min(5.0, rt.settings.runtime.deadline_s))
    probes = {
        "messaging": _state(rt.messaging.endpoint, "/health", deadline),
        "memory": _memory(rt, deadline),
        "llm": _state(rt.llm.endpoint, rt.llm.probe_path, deadline) if rt.llm.configured else _mock(),
    }
    if rt.settings.idempotency.backend != "memory":
        probes["idempotency"] = _store(rt, deadline)
    return dict(zip(probes, await asyncio.gather(*probes.values()), strict=True))


async def _store(rt: Runtime, deadline: Deadline) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(rt.idempotency.probe(), deadline.remaining())
        state: dict[str, Any] = {"ok": True}
    except (DependencyError, TimeoutError) as exc:
        state = {"ok": False, "kind": getattr(exc, "kind", "timeout")}
    state["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return state


async def _memory(rt: Runtime, deadline: Deadline) -> dict[str, Any]:
    """memory-orchestrator's /health asks for no secret, its calls always do: a missing one is said."""
    state = await _state(rt.memory.endpoint, "/health", deadline)
    if missing := rt.memory.secret_missing:
        state["warning"] = missing
    return state


async def _mock() -> dict[str, Any]:
    return {"ok": True, "provider": "mock"}  # no LLM configured: the keyword mock answers


async def _state(endpoint: Endpoint, path: str, deadline: Deadline) -> dict[str, Any]:
    """What one dependency answers: ok, or the kind of failure and its status; not the error's text,
    which can name an internal address."""
    answer = await endpoint.probe(path, deadline)
    return {key: value for key, value in answer.items() if key != "error"}
