"""The process's runtime: settings and one client per dependency, built once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shared import settings as settings_module
from shared.blueprints import BlueprintChain
from shared.http import Endpoint
from shared.idempotency import IdempotencyStore, InProcessStore
from shared.llm import LlmClient
from shared.memory import MemoryClient
from shared.messaging import MessagingClient
from shared.ordering import KeyedLocks
from shared.settings import ServiceSettings, Settings


def idempotency_store(s: Settings) -> IdempotencyStore:
    """The configured backend; the shared ones import their client library only when chosen."""
    if s.idempotency.backend == "nats":
        from shared.idempotency_nats import NatsKvStore

        return NatsKvStore.from_settings(s)
    if s.idempotency.backend == "dynamodb":
        from shared.idempotency_dynamodb import DynamoDbStore

        return DynamoDbStore.from_settings(s)
    return InProcessStore()


def endpoint(name: str, service: ServiceSettings) -> Endpoint:
    secret = service.secret.get_secret_value() if service.secret else None
    return Endpoint(name, service.url, secret, service.timeout_s, service.attempts)


@dataclass
class Runtime:
    settings: Settings
    messaging: MessagingClient
    memory: MemoryClient
    llm: LlmClient
    blueprints: BlueprintChain
    idempotency: IdempotencyStore
    locks: KeyedLocks = field(default_factory=KeyedLocks)

    def nats_connected(self) -> bool | None:
        """The live state of this process's NATS connection; None when it has none."""
        return getattr(self.idempotency, "nats_connected", None)

    @classmethod
    def from_settings(cls, s: Settings, *, idempotency: IdempotencyStore | None = None) -> Runtime:
        return cls(
            settings=s,
            messaging=MessagingClient(
                endpoint("messaging", s.messaging),
                post_style=s.messaging.post_style,
                history_limit=s.messaging.history_limit,
            ),
            memory=MemoryClient(endpoint("memory", s.memory)),
            llm=LlmClient(endpoint("llm", s.llm)),
            blueprints=BlueprintChain(
                s,
                endpoint("agents", s.agents) if s.agents.url else None,
                settings_module.DEFAULT_CONFIG.parent / Path(s.agents.blueprints_dir),
            ),
            idempotency=idempotency or idempotency_store(s),
        )


_current: Runtime | None = None


def install(rt: Runtime | None) -> None:
    """Use this runtime for the process (the local stack and tests build their own)."""
    global _current
    _current = rt


def get() -> Runtime:
    """The runtime of this process, built on first use from the process's settings."""
    global _current
    if _current is None:
        from shared import observability

        s = settings_module.get()
        observability.configure(s.runtime.log_format)
        _current = Runtime.from_settings(s)
    return _current
