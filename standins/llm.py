"""llm-proxy stand-in: the flat answer (or OpenAI's ``choices``), echoing what it was asked."""

from __future__ import annotations

import re
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from standins.server import FaultTable, check_secret

TOOL_MARKER = re.compile(r"TOOL\[[0-9a-f]+\]:")  # the runtime's per-run tool marker, in its system turn


class LlmStandIn:
    def __init__(self, *, style: Literal["flat", "openai"] = "flat", secret: str | None = None) -> None:
        self.reset(style=style, secret=secret)
        self.app = Starlette(
            routes=[
                Route("/internal/llm/models", self.models, methods=["GET"]),
                Route("/internal/llm/proxy", self.proxy, methods=["POST"]),
            ]
        )

    def reset(self, *, style: Literal["flat", "openai"] = "flat", secret: str | None = None) -> None:
        self.style = style
        self.secret = secret
        self.faults = FaultTable()
        self.requests: list[dict[str, Any]] = []
        self.script: list[str] = []  # the next answers' content, in order; then the echo

    async def models(self, request: Request) -> JSONResponse:
        return JSONResponse({"models": [{"name": "gpt-4"}, {"name": "dagi-local-8b"}]})

    async def proxy(self, request: Request) -> JSONResponse:
        if (denied := await self.faults.apply("proxy", request)) or (denied := check_secret(request, self.secret)):
            return denied
        body = await request.json()
        self.requests.append(body)
        last_user = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
        content = self.script.pop(0) if self.script else f"LLM reply to: {last_user}"
        if "{tool}" in content:  # a model that follows the text tool protocol uses the marker it was given
            marker = TOOL_MARKER.search(next((m["content"] for m in body.get("messages", [])), ""))
            content = content.replace("{tool}", marker.group(0) if marker else "TOOL:")
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        if self.style == "openai":
            return JSONResponse(
                {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}], "usage": usage}
            )
        return JSONResponse(
            {
                "content": content,
                "usage": usage,
                "provider": "local",
                "model_resolved": body.get("model"),
                "latency_ms": 1,
                "cached": False,
            }
        )
