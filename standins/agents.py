"""agents-service stand-in: ``GET /agents/{agent_id}`` in the deployed record shape, or 404."""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from standins.server import FaultTable, check_secret


class AgentsStandIn:
    def __init__(self, *, secret: str | None = None) -> None:
        self.reset(secret=secret)
        self.app = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/agents/{agent_id}", self.agent, methods=["GET"]),
            ]
        )

    def reset(self, *, secret: str | None = None) -> None:
        self.secret = secret
        self.faults = FaultTable()
        self.agents: dict[str, dict[str, Any]] = {}

    def add_agent(self, agent_id: str, **fields: Any) -> dict[str, Any]:
        """An agent record as the deployed service answers it; ``fields`` override the defaults."""
        record = {
            "id": f"uuid-of-{agent_id}",
            "external_id": agent_id,
            "name": agent_id.removeprefix("agent:").title(),
            "kind": "assistant",
            "description": None,
            "microdao_id": "microdao:daarion",
            "model": "gpt-4",
            "tools_enabled": [],
            "system_prompt": None,
            "is_active": True,
            **fields,
        }
        self.agents[agent_id] = record
        return record

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "service": "agents-service"})

    async def agent(self, request: Request) -> JSONResponse:
        if (denied := await self.faults.apply("agent", request)) or (denied := check_secret(request, self.secret)):
            return denied
        record = self.agents.get(request.path_params["agent_id"])
        if record is None:
            return JSONResponse({"detail": "Agent not found"}, status_code=404)
        return JSONResponse(record)
