"""agent-memory (memory-orchestrator): query for context, store the exchange. Optional."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from shared.clients.http import Endpoint
from shared.contracts import MemoryItem
from shared.errors import DependencyError
from shared.infra.deadline import Deadline

log = logging.getLogger("agent_runtime.memory")
_warned = False


class MemoryClient:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    @property
    def secret_missing(self) -> str | None:
        """Why every call will be refused, when it will: memory-orchestrator always wants a secret
        (its own default is dev-secret-token), and answers 401 without one."""
        if self.endpoint.base_url and not self.endpoint.secret:
            return "no secret configured (MEMORY_ORCHESTRATOR_SECRET)"
        return None

    def warn_without_secret(self) -> None:
        """Say at start, once per process, that memory will be refused: the runs only note it."""
        global _warned
        if not _warned and (missing := self.secret_missing):
            _warned = True
            log.warning(
                f"{missing}: memory-orchestrator answers 401 to every call without one; runs go on without memory"
            )

    async def query(
        self, *, agent_id: str, microdao_id: str, channel_id: str, query: str, k: int, deadline: Deadline
    ) -> list[MemoryItem]:
        data = await self.endpoint.call(
            "POST",
            "/internal/agent-memory/query",
            deadline,
            # the seed names the count k, the deployed service reads limit: send both
            json_body={
                "agent_id": agent_id,
                "microdao_id": microdao_id,
                "channel_id": channel_id,
                "query": query,
                "limit": k,
                "k": k,
            },
        )
        items = data.get("items", data.get("results")) if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise DependencyError("memory", "bad_response", "no items in the answer", retryable=False)
        try:
            return [MemoryItem.model_validate(item) for item in items][:k]
        except ValidationError:
            raise DependencyError("memory", "bad_response", "malformed memory item", retryable=False) from None

    async def store(
        self,
        *,
        agent_id: str,
        microdao_id: str,
        channel_id: str,
        content: dict[str, Any],
        metadata: dict[str, Any],
        deadline: Deadline,
    ) -> None:
        await self.endpoint.call(
            "POST",
            "/internal/agent-memory/store",
            deadline,
            json_body={
                "agent_id": agent_id,
                "microdao_id": microdao_id,
                "channel_id": channel_id,
                "kind": "conversation",
                "content": content,
                "metadata": metadata,
            },
            retry=False,  # a repeated store would duplicate the memory
        )
