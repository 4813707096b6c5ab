"""Handoff sinks: how one agent's run sends another agent an invocation, one module per platform.

``SINKS`` is the registry that ``handoff.sink`` names ("none": no sink, no handoff offered). Each
sink's module is imported when it is chosen, and its client library (nats-py, boto3) on its first
send. A new sink is a module with an ``InvocationSink`` subclass and one line here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.handoff.base import InvocationSink
from shared.infra import registry

if TYPE_CHECKING:
    from shared.infra.settings import Settings

SINKS: dict[str, str] = {
    "nats": "shared.handoff.nats:NatsSink",
    "sqs": "shared.handoff.sqs:SqsSink",
    "pubsub": "shared.handoff.pubsub:PubSubSink",
}
NONE = "none"

__all__ = ["NONE", "SINKS", "InvocationSink", "build"]


def build(s: Settings) -> InvocationSink | None:
    """The configured sink (``handoff.sink``), None for "none", or a clear error naming the setting."""
    if s.handoff.sink == NONE:
        return None
    return registry.load(SINKS, "handoff.sink", s.handoff.sink, others=(NONE,)).from_settings(s)
