"""agent-memory (memory-orchestrator) stand-in: the deployed request and answer shapes."""

from __future__ import annotations

import re
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from standins.server import FaultTable, check_secret

KINDS = {"conversation", "kb", "task", "dao-event", "channel-context"}
_WORD = re.compile(r"\w+", re.UNICODE)


def _missing(field: str) -> JSONResponse:
    return JSONResponse(
        {"detail": [{"loc": ["body", field], "msg": "Field required", "type": "missing"}]}, status_code=422
    )


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


class MemoryStandIn:
    def __init__(self, *, secret: str | None = None) -> None:
        self._lock = threading.Lock()
        self.reset(secret=secret)
        self.app = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/internal/agent-memory/query", self.query, methods=["POST"]),
                Route("/internal/agent-memory/store", self.store, methods=["POST"]),
            ]
        )

    def reset(self, *, secret: str | None = None) -> None:
        self.secret = secret
        self.faults = FaultTable()
        self.items: list[dict[str, Any]] = []
        self.queries: list[dict[str, Any]] = []
        self.stores: list[dict[str, Any]] = []

    def remember(self, agent_id: str, content: str, *, kind: str = "kb") -> None:
        with self._lock:
            self.items.append(
                {
                    "id": str(uuid.uuid4()),
                    "agent_id": agent_id,
                    "kind": kind,
                    "content": content,
                    "meta": {},
                    "created_at": datetime.now(UTC).isoformat(),
                }
            )

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "service": "memory-orchestrator"})

    async def query(self, request: Request) -> JSONResponse:
        if (denied := await self.faults.apply("query", request)) or (denied := check_secret(request, self.secret)):
            return denied
        body = await request.json()
        for field in ("agent_id", "microdao_id", "query"):
            if not body.get(field):
                return _missing(field)
        limit = int(body.get("limit", 5))
        self.queries.append(body)
        wanted = _words(body["query"])
        with self._lock:
            scored = [
                (len(wanted & _words(i["content"])) / (len(wanted) or 1), i)
                for i in self.items
                if i["agent_id"] == body["agent_id"]
            ]
        hits = sorted((s for s in scored if s[0] > 0), key=lambda s: -s[0])[:limit]
        items = [{k: v for k, v in i.items() if k != "agent_id"} | {"score": round(score, 3)} for score, i in hits]
        return JSONResponse({"items": items, "total": len(items), "query": body["query"]})

    async def store(self, request: Request) -> JSONResponse:
        if (denied := await self.faults.apply("store", request)) or (denied := check_secret(request, self.secret)):
            return denied
        body = await request.json()
        for field in ("agent_id", "microdao_id", "kind", "content"):
            if not body.get(field):
                return _missing(field)
        if body["kind"] not in KINDS:
            return JSONResponse({"detail": [{"loc": ["body", "kind"], "msg": "bad kind"}]}, status_code=422)
        self.stores.append(body)
        content = body["content"]
        text = " ".join(str(v) for v in content.values()) if isinstance(content, dict) else str(content)
        self.remember(body["agent_id"], text, kind=body["kind"])
        return JSONResponse({"ok": True, "id": self.items[-1]["id"]})
