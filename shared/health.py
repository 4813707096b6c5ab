"""The health body every trigger answers: the seed's fields, plus what each dependency says when asked."""

from __future__ import annotations

import asyncio
from typing import Any

from shared.infra.deadline import Deadline
from shared.runtime import Runtime


async def report(rt: Runtime, *, deep: bool) -> dict[str, Any]:
    s = rt.settings
    body: dict[str, Any] = {
        "status": "ok",
        "service": s.service,
        "version": s.version,
        "nats_connected": rt.nats_connected(),
    }
    if deep:
        deadline = Deadline(min(5.0, s.runtime.deadline_s))
        names = ("messaging", "memory", "llm")
        probes = (
            rt.messaging.endpoint.probe("/health", deadline),
            rt.memory.endpoint.probe("/health", deadline),
            rt.llm.endpoint.probe(rt.llm.probe_path, deadline),
        )
        body["dependencies"] = dict(zip(names, await asyncio.gather(*probes), strict=True))
        if not all(d["ok"] for d in body["dependencies"].values()):
            body["status"] = "degraded"
    return body
