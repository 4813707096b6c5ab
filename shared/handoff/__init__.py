"""Handoff sinks: how one agent's run sends another agent an invocation, one module per platform.

``SINKS`` is the registry that ``handoff.sink`` names ("none": no sink, no handoff offered). Each
sink's client library (nats-py, boto3) is imported on its first send, so choosing one costs a cold
start nothing. A new sink is a module with an ``InvocationSink`` subclass and one line here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.handoff.base import InvocationSink
from shared.handoff.nats import NatsSink
from shared.handoff.pubsub import PubSubSink
from shared.handoff.sqs import SqsSink

if TYPE_CHECKING:
    from shared.infra.settings import Settings

SINKS: dict[str, type[InvocationSink]] = {
    "nats": NatsSink,
    "sqs": SqsSink,
    "pubsub": PubSubSink,
}
NONE = "none"

__all__ = ["NONE", "SINKS", "InvocationSink", "build"]


def build(s: Settings) -> InvocationSink | None:
    """The configured sink (``handoff.sink``), None for "none", or a clear error naming the setting."""
    if s.handoff.sink == NONE:
        return None
    try:
        kind = SINKS[s.handoff.sink]
    except KeyError:
        known = ", ".join([NONE, *SINKS])
        raise ValueError(f"handoff.sink: unknown sink {s.handoff.sink!r} (known: {known})") from None
    return kind.from_settings(s)
