"""messaging-service: read a channel's history, post an agent's reply."""

from __future__ import annotations

import logging
from urllib.parse import quote

from pydantic import TypeAdapter, ValidationError

from shared.clients.http import Endpoint
from shared.contracts import ChannelMessage, FailureKind
from shared.errors import DependencyError
from shared.infra.deadline import Deadline

log = logging.getLogger("agent_runtime.messaging")
_HISTORY = TypeAdapter(list[ChannelMessage])


REFUSED_FORM = frozenset({422, 414, 431})  # refused before anything was posted


class MessagingClient:
    def __init__(self, endpoint: Endpoint, *, post_style: str = "auto", history_limit: int = 50) -> None:
        self.endpoint = endpoint
        self.post_style = post_style
        self.history_limit = history_limit
        # the form a post is sent in; ``auto`` starts with the deployed service's and keeps what worked
        self.form = "query" if post_style == "auto" else post_style

    async def history(self, channel_id: str, deadline: Deadline) -> list[ChannelMessage]:
        """Recent messages, oldest first, whatever order the service answers in."""
        data = await self.endpoint.call(
            "GET",
            f"/api/messaging/channels/{quote(channel_id, safe='')}/messages",
            deadline,
            params={"limit": str(self.history_limit)},
        )
        if not isinstance(data, list):
            raise DependencyError("messaging", "bad_response", "history is not a JSON array", retryable=True)
        try:
            messages = _HISTORY.validate_python(data)  # the usual case: one call for the whole list
        except ValidationError:
            messages = _valid_elements(data)
            if not messages:  # not an empty channel: a broken answer, which a retry may fix
                raise DependencyError(
                    "messaging", "bad_response", "no element of the history is a message", retryable=True
                ) from None
        messages.sort(key=lambda m: m.created_at)
        return messages

    async def post(self, agent_id: str, channel_id: str, text: str, deadline: Deadline) -> str:
        """Post a reply and return its message id. Not idempotent: never retried once sent."""
        try:
            return await self._post(self.form, agent_id, channel_id, text, deadline)
        except DependencyError as exc:
            if self.post_style != "auto" or exc.status not in REFUSED_FORM:
                raise
        # auto: a 422 is the request refused before anything was posted (the seed's service and the
        # deployed one each refuse the other's form so), and a reply too long for a URL is refused
        # whole (414, 431): the other form is tried once
        other = "body" if self.form == "query" else "query"
        message_id = await self._post(other, agent_id, channel_id, text, deadline)
        log.info(
            "messaging-service takes the post in the other form: sending it so from now on",
            extra={"fields": {"post_style": other}},
        )
        self.form = other
        return message_id

    async def _post(self, form: str, agent_id: str, channel_id: str, text: str, deadline: Deadline) -> str:
        """One post in ``form``: a JSON body, or query parameters."""
        fields = {"channel_id": channel_id, "text": text}
        try:
            data = await self.endpoint.call(
                "POST",
                f"/internal/agents/{quote(agent_id, safe=':')}/post-to-channel",
                deadline,
                json_body=fields if form == "body" else None,
                params=fields if form == "query" else None,
                retry=False,
            )
        except DependencyError as exc:
            if exc.sent and exc.status is None:
                raise _uncertain(exc.kind, f"{exc.kind} after sending") from None
            if exc.status is not None and exc.status >= 500:
                # messaging-service's own 500 means nothing was posted, but a proxy in front of it may
                # answer 5xx for a request it already forwarded: the retry looks before posting
                raise _uncertain(exc.kind, f"answered HTTP {exc.status}") from None
            raise  # a 4xx: nothing was posted
        message_id = data.get("message_id") if isinstance(data, dict) else None
        if not message_id:
            raise _uncertain("bad_response", "answered without a message_id")
        return str(message_id)


def _valid_elements(data: list) -> list[ChannelMessage]:
    """The elements that are messages; the others are dropped, with one log line per read (not one
    per element: a broken service must not flood the logs)."""
    messages, dropped, why = [], 0, ""
    for element in data:
        try:
            messages.append(ChannelMessage.model_validate(element))
        except ValidationError as exc:
            dropped += 1
            why = why or exc.errors(include_input=False, include_url=False)[0]["msg"]
    log.warning("history elements dropped", extra={"fields": {"dropped": dropped, "first_error": why}})
    return messages


def _uncertain(kind: FailureKind, what: str) -> DependencyError:
    # The request reached the service, so the reply may be in the channel: a retry looks for it
    # (the record is marked) and posts only if it is not there.
    return DependencyError(
        "messaging", kind, f"post {what}; the reply may be posted: a retry looks first", retryable=True, uncertain=True
    )
