"""Handoffs under Google Cloud: the invocation published on the topic the ``invoke_event`` trigger reads.

One REST publish (``POST /v1/<topic>:publish``) of one message whose data is the router's JSON in
base64 and whose attribute ``key`` carries the key: Pub/Sub delivers it as the CloudEvent that
handlers/cloudevent.py decodes. The function's service account authorizes it, by an OAuth token
from the metadata server, kept until shortly before it expires. Against the emulator
(``PUBSUB_EMULATOR_HOST``) no token is asked for.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared.clients.http import Endpoint
from shared.errors import DependencyError
from shared.handoff.base import DEPENDENCY, InvocationSink
from shared.infra import jsoncodec

if TYPE_CHECKING:
    from shared.infra.deadline import Deadline
    from shared.infra.settings import Settings

# where the function's service account gets its access tokens (overridden in tests)
METADATA_URL = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
# a token is replaced this long before it expires: none lapses between its check and the publish
REFRESH_MARGIN_S = 60.0
PUBLISH_ATTEMPTS = 2  # a publish is repeated only when it provably never left
TOKEN_ATTEMPTS = 2
_TOPIC = re.compile(r"projects/[^/]+/topics/[^/]+")


class PubSubSink(InvocationSink):
    name = "pubsub"

    def __init__(
        self,
        topic: str,
        url: str,
        timeout_s: float,
        *,
        token_url: str | None = METADATA_URL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = topic
        self.url = url
        self.timeout_s = timeout_s
        self._path = f"/v1/{topic}:publish"
        self._clock = clock
        # None: no token (the emulator); the publisher then never changes
        self._metadata = (
            None
            if token_url is None
            else Endpoint("gce-metadata", token_url, None, timeout_s, TOKEN_ATTEMPTS, {"Metadata-Flavor": "Google"})
        )
        self._publisher = Endpoint("pubsub", url, None, timeout_s, PUBLISH_ATTEMPTS)
        self._fresh_until = 0.0 if self._metadata else float("inf")
        self._refreshing = asyncio.Lock()  # concurrent sends with a stale token fetch one new one

    @classmethod
    def from_settings(cls, s: Settings) -> PubSubSink:
        h = s.handoff
        if not _TOPIC.fullmatch(h.pubsub_topic):
            raise ValueError(
                f"handoff.pubsub_topic: expected projects/<project>/topics/<topic>, not {h.pubsub_topic!r}"
            )
        emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
        if emulator:
            return cls(h.pubsub_topic, f"http://{emulator}", h.timeout_s, token_url=None)
        return cls(h.pubsub_topic, h.pubsub_url, h.timeout_s)

    async def send(self, invocation: dict[str, Any], key: str, deadline: Deadline) -> None:
        self._check_open()
        publisher = await self._authorized(deadline)
        message = {"data": base64.b64encode(jsoncodec.dumps(invocation)).decode("ascii"), "attributes": {"key": key}}
        try:
            answer = await publisher.call("POST", self._path, deadline, json_body={"messages": [message]}, retry=False)
        except DependencyError as exc:
            if exc.status == 401:  # revoked or expired early: the next send fetches another
                self._fresh_until = 0.0
                raise DependencyError(
                    DEPENDENCY, "unauthorized", "Pub/Sub refused the token (HTTP 401)", status=401, retryable=True
                ) from None
            if exc.status == 403:
                raise DependencyError(
                    DEPENDENCY,
                    "unauthorized",
                    f"Pub/Sub: HTTP 403 publishing to {self.topic}: the service account needs roles/pubsub.publisher",
                    status=403,
                    retryable=False,
                ) from None
            raise _handoff(exc, f"Pub/Sub publish to {self.topic}") from None
        if not (isinstance(answer, dict) and answer.get("messageIds")):
            raise DependencyError(
                DEPENDENCY, "bad_response", "Pub/Sub named no message id", retryable=True, uncertain=True
            )

    async def _authorized(self, deadline: Deadline) -> Endpoint:
        """The publish endpoint with a token that is not about to expire (fetched when it is)."""
        if self._metadata is None or self._clock() < self._fresh_until:
            return self._publisher
        async with self._refreshing:
            if self._clock() >= self._fresh_until:  # else another send just fetched one
                token, lifetime = await self._token(self._metadata, deadline)
                self._publisher = Endpoint(
                    "pubsub", self.url, None, self.timeout_s, PUBLISH_ATTEMPTS, {"Authorization": f"Bearer {token}"}
                )
                self._fresh_until = self._clock() + lifetime - REFRESH_MARGIN_S
        return self._publisher

    @staticmethod
    async def _token(metadata: Endpoint, deadline: Deadline) -> tuple[str, float]:
        """An access token of the function's service account and its lifetime in seconds."""
        try:
            answer = await metadata.call("GET", "", deadline)
        except DependencyError as exc:  # no publish was made
            raise _handoff(exc, "the metadata server's token", sent=False) from None
        token = answer.get("access_token") if isinstance(answer, dict) else None
        lifetime = answer.get("expires_in") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token or not isinstance(lifetime, int | float):
            raise DependencyError(
                DEPENDENCY, "bad_response", "the metadata server's token: no access_token", retryable=True, sent=False
            )
        return token, float(lifetime)


def _handoff(exc: DependencyError, what: str, *, sent: bool | None = None) -> DependencyError:
    """``exc`` (an endpoint's error) as the handoff's, saying what failed."""
    sent = exc.sent if sent is None else sent
    return DependencyError(
        DEPENDENCY,
        exc.kind,
        f"{what}: {str(exc).removeprefix(exc.dependency + ': ')}",
        status=exc.status,
        retryable=exc.retryable,
        sent=sent,
        retry_after=exc.retry_after,
        # sent with no error status (a timeout, a lost connection, an odd answer): it may be published
        uncertain=exc.uncertain or (sent and exc.status is None),
    )
