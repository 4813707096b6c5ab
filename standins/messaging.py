"""messaging-service stand-in: history newest first with content_preview, and both post forms."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from standins.server import FaultTable, check_secret

DEMO_CHANNEL = "7c72d497-27aa-4e75-bb2f-4a4a21d4f91f"  # the seed's example channel


def _uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
        return True
    except ValueError:
        return False


def _unprocessable(loc: list[str], msg: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": loc, "msg": msg, "type": "value_error"}]}, status_code=422)


class MessagingStandIn:
    """``accept``: which post form it takes. ``query`` is the deployed service, ``body`` the seed's."""

    def __init__(
        self,
        *,
        accept: Literal["body", "query", "both"] = "both",
        secret: str | None = None,
        channels: tuple[str, ...] = (DEMO_CHANNEL,),
    ) -> None:
        self._lock = threading.Lock()
        self.reset(accept=accept, secret=secret, channels=channels)
        self.app = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/api/messaging/channels/{channel_id}/messages", self.history, methods=["GET"]),
                Route("/api/messaging/channels/{channel_id}/messages", self.send, methods=["POST"]),
                Route("/internal/agents/{agent_id}/post-to-channel", self.post, methods=["POST"]),
            ]
        )

    def reset(
        self,
        *,
        accept: Literal["body", "query", "both"] = "both",
        secret: str | None = None,
        channels: tuple[str, ...] = (DEMO_CHANNEL,),
    ) -> None:
        self.accept = accept
        self.secret = secret
        self.faults = FaultTable()
        self.channels: dict[str, list[dict[str, Any]]] = {c: [] for c in channels}
        self.posts: list[dict[str, Any]] = []  # every agent post, in order
        self.members: dict[str, set[str]] | None = None  # channel -> agents allowed; None: everyone
        self.oldest_first = False  # the deployed service answers newest first; the runtime must not care
        self.ignore_limit = False  # answer the whole channel whatever ?limit= says (a misbehaving service)
        self.on_message: Callable[[dict[str, Any]], None] | None = None  # called for every new message
        self._clock = datetime.now(UTC)

    def add_message(
        self,
        channel_id: str,
        text: str,
        *,
        sender_id: str = "user:alice",
        sender_type: str = "human",
        created_at: datetime | None = None,
    ) -> dict[str, Any]:
        with self._lock:
            # strictly increasing timestamps, so order is well defined even within a millisecond
            self._clock = max(self._clock + timedelta(milliseconds=1), created_at or datetime.now(UTC))
            message = {
                "id": str(uuid.uuid4()),
                "channel_id": channel_id,
                "matrix_event_id": f"${uuid.uuid4().hex}:daarion.local",
                "sender_id": sender_id,
                "sender_type": sender_type,
                "content_preview": text[:500],
                "content_type": "text",
                "thread_id": None,
                "created_at": self._clock.isoformat(),
            }
            self.channels.setdefault(channel_id, []).append(message)
        if self.on_message:
            self.on_message(message)
        return message

    def replies_to(self, channel_id: str) -> list[dict[str, Any]]:
        return [p for p in self.posts if p["channel_id"] == channel_id]

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "service": "messaging-service"})

    async def history(self, request: Request) -> JSONResponse:
        if (denied := await self.faults.apply("history", request)) or (denied := check_secret(request, self.secret)):
            return denied
        channel_id = request.path_params["channel_id"]
        if not _uuid(channel_id):
            return _unprocessable(["path", "channel_id"], "Input should be a valid UUID")
        try:
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            return _unprocessable(["query", "limit"], "Input should be a valid integer")
        with self._lock:
            page = list(reversed(self.channels.get(channel_id, [])))[: None if self.ignore_limit else limit]
        return JSONResponse(page[::-1] if self.oldest_first else page)

    async def send(self, request: Request) -> JSONResponse:
        """A human's message (the local stack's ``say``)."""
        channel_id = request.path_params["channel_id"]
        body = await request.json()
        if not _uuid(channel_id) or not isinstance(body.get("text"), str) or not body["text"].strip():
            return _unprocessable(["body", "text"], "a channel UUID and a non-empty text are required")
        message = self.add_message(channel_id, body["text"], sender_id=body.get("sender_id", "user:alice"))
        return JSONResponse(message, status_code=201)

    async def post(self, request: Request) -> JSONResponse:
        if (denied := await self.faults.apply("post", request)) or (denied := check_secret(request, self.secret)):
            return denied
        agent_id = request.path_params["agent_id"]
        fields: dict[str, Any] = {}
        if self.accept in ("query", "both"):
            fields = dict(request.query_params)
        if not fields and self.accept in ("body", "both"):
            try:
                fields = await request.json()
            except ValueError:
                fields = {}
        if not isinstance(fields, dict) or "channel_id" not in fields:
            where = "query" if self.accept == "query" else "body"
            return _unprocessable([where, "channel_id"], "Field required")
        channel_id, text = str(fields["channel_id"]), fields.get("text")
        if not isinstance(text, str) or not text:
            return _unprocessable(["query" if self.accept == "query" else "body", "text"], "Field required")
        if channel_id not in self.channels:
            return JSONResponse({"detail": "Channel not found"}, status_code=404)
        if self.members is not None and agent_id not in self.members.get(channel_id, set()):
            return JSONResponse({"detail": "Agent is not a member of this channel"}, status_code=403)
        message = self.add_message(channel_id, text, sender_id=agent_id, sender_type="agent")
        self.posts.append({"agent_id": agent_id, "channel_id": channel_id, "text": text, "message_id": message["id"]})
        return JSONResponse({"status": "posted", "message_id": message["id"]})
