"""The CloudEvent trigger (Eventarc, Pub/Sub, Knative): an invocation as the event's data.

The data is the invocation itself, or a Pub/Sub ``messagePublished`` body whose ``message.data``
is the invocation in base64. The platform redelivers an event whose handler fails, so a verdict of
retry (shared/delivery.py) raises; bad input and a failure no retry fixes are logged and acknowledged.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import TYPE_CHECKING, Any

from handlers import accept
from shared.errors import BadInput

if TYPE_CHECKING:
    from cloudevents.abstract import CloudEvent

log = logging.getLogger("agent_runtime.cloudevent")


class RetryLater(Exception):
    """Raised for an outcome a retry can help: the platform answers 500 and redelivers the event."""


async def invoke_event(event: CloudEvent) -> None:
    async def data() -> Any:
        return _invocation_data(event.get_data())

    answer = await accept.run(data, headers=event, authenticate=False, delivery_id=event["id"])
    verdict = answer.verdict()
    if verdict.action == "retry":
        raise RetryLater(f"{verdict.reason}: the event will be redelivered")
    if verdict.action == "dead_letter" and answer.outcome is None:  # a run logs its own outcome
        fields = {"event_id": event["id"], "event_type": event["type"], "status": answer.status}
        log.warning("bad invocation event, acknowledged", extra={"fields": {**fields, "error": verdict.reason}})


def _invocation_data(data: Any) -> Any:
    """The invocation: the data itself, or the base64 ``message.data`` of a Pub/Sub push."""
    if data is None or data in ("", b""):
        raise BadInput(400, "the event has no data")
    if isinstance(data, dict) and isinstance(data.get("message"), dict):
        encoded = data["message"].get("data")
        if not isinstance(encoded, str) or not encoded:
            raise BadInput(400, "the Pub/Sub message has no data")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput(400, "the Pub/Sub message data is not base64") from None
    return data
