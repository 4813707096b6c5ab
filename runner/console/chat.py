"""The console's chat box: what ``local_runner.py say`` does, from the page.

It posts a human message into messaging-service's history (only the local messaging stand-in takes
such a POST: the published service has no such route), publishes the invocation on the invocation
subject as the router does, and waits for its outcome in the feed. The reply's text is read back
from the channel's history. Where another runner took the invocation, the feed never sees it: the
history then shows the agent's reply.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from runner.console.feed import Entry, Feed
from shared.clients import http

SENDER = "user:console"
HISTORY_POLL_S = 1.0  # how often the history is read for a reply another runner posted


class ChatError(Exception):
    """Why nothing could be said: the page shows it as it is (it names no secret)."""


class Chat:
    """Say something to an agent in a channel; ``nc`` returns the bridge's connection."""

    def __init__(
        self, nc: Callable[[], Any], subject: str, messaging_url: str, secret: str | None, feed: Feed, timeout_s: float
    ) -> None:
        self._nc = nc
        self.subject = subject
        self.messaging_url = messaging_url.rstrip("/")
        self._headers = {"X-Internal-Secret": secret} if secret else {}
        self.feed = feed
        self.timeout_s = timeout_s

    async def say(self, agent_id: str, channel_id: str, text: str) -> dict[str, Any]:
        """The human message as posted, the run's outcome (None: none seen in time) and the reply's text."""
        nc = self._nc()
        if nc is None or not nc.is_connected:
            raise ChatError("NATS is not connected")
        history = f"{self.messaging_url}/api/messaging/channels/{channel_id}/messages"
        message = await self._post(history, text)
        invocation = {
            "agent_id": agent_id,
            "entrypoint": "channel_message",
            "payload": {
                "channel_id": channel_id,
                "message_id": message["id"],
                "matrix_event_id": message.get("matrix_event_id"),
                "microdao_id": "microdao:daarion",
                "rewrite_prompt": None,
            },
        }
        subscriber = self.feed.subscribe()  # before publishing: the outcome may come at once
        try:
            await nc.publish(self.subject, json.dumps(invocation).encode())
            await nc.flush(timeout=5)
            outcome, reply = await self._answer(subscriber, history, agent_id, message)
        finally:
            if subscriber is not None:
                self.feed.unsubscribe(subscriber)
        if outcome is not None and outcome["status"] == "replied" and reply is None:
            reply = await self._reply_text(history, outcome["message_id"])
        return {"message": message, "outcome": outcome, "reply": reply}

    async def _post(self, history: str, text: str) -> dict[str, Any]:
        import aiohttp

        where = self.messaging_url
        try:
            async with http.session().post(
                history, json={"text": text, "sender_id": SENDER}, headers=self._headers, timeout=_timeout(10)
            ) as response:
                if response.status != 201:
                    raise ChatError(
                        f"messaging-service at {where} did not take a human message (HTTP {response.status}): "
                        "the chat needs the local messaging stand-in (local_runner.py local)"
                    )
                message = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ChatError(f"messaging-service at {where} is not reachable ({type(exc).__name__})") from None
        if not isinstance(message, dict) or not isinstance(message.get("id"), str):
            raise ChatError(f"messaging-service at {where} answered the post without a message id")
        return message

    async def _answer(
        self, subscriber: Any, history: str, agent_id: str, message: dict[str, Any]
    ) -> tuple[Entry | None, str | None]:
        """The final outcome for our message from the feed, or the agent's reply found in the history."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        last: Entry | None = None
        next_look = loop.time() + HISTORY_POLL_S
        while (left := deadline - loop.time()) > 0:
            if subscriber is not None and not subscriber.closed:
                entry = await subscriber.next(min(left, HISTORY_POLL_S))
                if entry is not None and entry["trigger_message_id"] == message["id"]:
                    last = entry
                    if _final(entry):
                        return entry, None
            else:
                await asyncio.sleep(min(left, HISTORY_POLL_S))
            if loop.time() >= next_look:
                next_look = loop.time() + HISTORY_POLL_S
                if (reply := await self._reply_after(history, agent_id, message)) is not None:
                    return last, reply
        return last, None

    async def _reply_after(self, history: str, agent_id: str, message: dict[str, Any]) -> str | None:
        """The agent's message posted after ours, if there is one (the answer another runner gave)."""
        try:
            sent_at = datetime.fromisoformat(message["created_at"])
            for m in await self._history(history):
                if m.get("sender_id") == agent_id and datetime.fromisoformat(m["created_at"]) > sent_at:
                    return str(m.get("content_preview"))
        except (KeyError, TypeError, ValueError):
            return None
        return None

    async def _reply_text(self, history: str, message_id: str | None) -> str | None:
        for m in await self._history(history):
            if m.get("id") == message_id:
                return str(m.get("content_preview"))
        return None

    async def _history(self, history: str) -> list[dict[str, Any]]:
        import aiohttp

        try:
            async with http.session().get(
                history, params={"limit": "50"}, headers=self._headers, timeout=_timeout(10)
            ) as response:
                page = await response.json() if response.status == 200 else []
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return []
        return [m for m in page if isinstance(m, dict)] if isinstance(page, list) else []


def _final(entry: Entry) -> bool:
    """Will no other attempt follow (a retryable failure is tried again)?"""
    return entry["status"] not in ("unreachable", "no_answer") and not (
        entry["status"] == "failed" and entry["retryable"]
    )


def _timeout(seconds: float) -> Any:
    import aiohttp

    return aiohttp.ClientTimeout(total=seconds)
