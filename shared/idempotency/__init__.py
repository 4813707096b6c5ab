"""Exactly one reply per human message: the records (``base``) and their backends, one module each.

``BACKENDS`` is the registry that ``idempotency.backend`` names; a backend's module (and its client
library: nats-py, boto3) is imported only when it is chosen. A new backend is a module with a
``from_settings`` class and one line here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.idempotency.base import Claim, ClaimState, IdempotencyStore, new_token, record_key, reply_digest
from shared.infra import registry

if TYPE_CHECKING:
    from shared.infra.settings import Settings

BACKENDS: dict[str, str] = {
    "memory": "shared.idempotency.memory:InProcessStore",
    "nats": "shared.idempotency.nats:NatsKvStore",
    "dynamodb": "shared.idempotency.dynamodb:DynamoDbStore",
}

__all__ = ["BACKENDS", "Claim", "ClaimState", "IdempotencyStore", "build", "new_token", "record_key", "reply_digest"]


def build(s: Settings) -> IdempotencyStore:
    """The configured backend (``idempotency.backend``), or a clear error naming the setting."""
    return registry.load(BACKENDS, "idempotency.backend", s.idempotency.backend).from_settings(s)
