"""toolcore and pdp-service stand-ins: ``POST /internal/tools/call`` and ``POST /internal/pdp/evaluate``."""

from __future__ import annotations

import uuid
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from standins.server import FaultTable, check_secret

TOOL_IDS = {"projects.list", "task.create", "followup.create"}


class ToolcoreStandIn:
    def __init__(self, *, secret: str | None = None) -> None:
        self.reset(secret=secret)
        self.app = Starlette(routes=[Route("/internal/tools/call", self.call, methods=["POST"])])

    def reset(self, *, secret: str | None = None) -> None:
        self.secret = secret
        self.faults = FaultTable()
        self.calls: list[dict[str, Any]] = []  # every call that ran
        self.forbidden: set[str] = set()  # tool ids this agent may not use: 403

    async def call(self, request: Request) -> JSONResponse:
        if (denied := await self.faults.apply("call", request)) or (denied := check_secret(request, self.secret)):
            return denied
        body = await request.json()
        tool_id = body.get("tool_id")
        if tool_id not in TOOL_IDS:
            return JSONResponse({"detail": f"Unknown tool {tool_id}"}, status_code=404)
        if tool_id in self.forbidden:
            return JSONResponse({"detail": "Tool not allowed for this agent"}, status_code=403)
        self.calls.append(body)
        result = {"task_id": str(uuid.uuid4()), **body["args"]} if tool_id != "projects.list" else [{"id": "p1"}]
        return JSONResponse({"ok": True, "result": result, "error": None, "tool_id": tool_id, "latency_ms": 1})


class PdpStandIn:
    """``policy``: agent id → the tool ids it may run, anything else denied; None: ``effect`` for all."""

    def __init__(self, policy: dict[str, set[str]] | None = None) -> None:
        self.reset(policy)
        self.app = Starlette(routes=[Route("/internal/pdp/evaluate", self.evaluate, methods=["POST"])])

    def reset(self, policy: dict[str, set[str]] | None = None) -> None:
        self.faults = FaultTable()
        self.requests: list[dict[str, Any]] = []
        self.effect = "permit"  # what every evaluation answers when there is no policy
        self.policy = policy

    async def evaluate(self, request: Request) -> JSONResponse:
        if denied := await self.faults.apply("evaluate", request):
            return denied
        body = await request.json()
        self.requests.append(body)
        if self.policy is None:
            return JSONResponse({"effect": self.effect, "reason": "stand-in policy"})
        actor, resource = body.get("actor") or {}, body.get("resource") or {}
        permitted = resource.get("id") in self.policy.get(actor.get("actor_id"), set())
        return JSONResponse({"effect": "permit" if permitted else "deny", "reason": "local policy"})
