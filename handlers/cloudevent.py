"""The CloudEvent trigger (Eventarc, Pub/Sub, Knative): an invocation as the event's data.

The data is the invocation itself, or a Pub/Sub ``messagePublished`` body whose ``message.data``
is the invocation in base64. The platform redelivers an event whose handler fails, so a failure
a retry can help raises; bad input and a failure no retry fixes are logged and acknowledged.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import TYPE_CHECKING, Any

from shared import pipeline, runtime
from shared.errors import BadInput
from shared.infra import tracing
from shared.intake import parse_invocation

if TYPE_CHECKING:
    from cloudevents.abstract import CloudEvent

log = logging.getLogger("agent_runtime.cloudevent")


class RetryLater(Exception):
    """Raised for an outcome a retry can help: the platform answers 500 and redelivers the event."""


async def invoke_event(event: CloudEvent) -> None:
    rt = runtime.get()
    trace = tracing.log_fields(event)
    try:
        invocation = parse_invocation(_invocation_data(event.get_data()), rt.settings.runtime.max_body_bytes)
    except BadInput as exc:
        fields = {"event_id": event["id"], "event_type": event["type"], "status": exc.status, "error": exc.error}
        log.warning("bad invocation event, acknowledged", extra={"fields": {**fields, **trace}})
        return
    outcome = await pipeline.run(invocation, rt, delivery_id=event["id"], **trace)
    if outcome.status == "failed" and outcome.retryable:
        raise RetryLater(f"{outcome.step} failed ({outcome.kind}): the event will be redelivered")


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
