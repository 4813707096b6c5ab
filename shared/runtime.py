"""The process's runtime: settings and one client per dependency, built once."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

from shared import settings as settings_module
from shared.blueprints import BlueprintChain
from shared.contracts import ChannelMessage
from shared.http import Endpoint
from shared.idempotency import IdempotencyStore, InProcessStore
from shared.llm import PROVIDERS, Provider
from shared.memory import MemoryClient
from shared.messaging import MessagingClient
from shared.ordering import KeyedLocks
from shared.settings import LlmSettings, ServiceSettings, Settings
from shared.tools import Toolbox


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


def llm_provider(s: LlmSettings) -> Provider:
    """The configured provider; its API key travels in the header that provider reads."""
    if s.provider == "openai":
        key = s.openai_api_key.get_secret_value() if s.openai_api_key else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        where = Endpoint("llm", s.openai_url, None, s.timeout_s, s.attempts, headers)
    elif s.provider == "anthropic":
        key = s.anthropic_api_key.get_secret_value() if s.anthropic_api_key else ""
        headers = {"x-api-key": key, "anthropic-version": s.anthropic_version}
        where = Endpoint("llm", s.anthropic_url, None, s.timeout_s, s.attempts, headers)
    else:
        where = endpoint("llm", s)
    return PROVIDERS[s.provider](where)


@dataclass
class Runtime:
    settings: Settings
    messaging: MessagingClient
    memory: MemoryClient
    llm: Provider
    blueprints: BlueprintChain
    idempotency: IdempotencyStore
    toolcore: Endpoint
    pdp: Endpoint
    locks: KeyedLocks = field(default_factory=KeyedLocks)

    def toolbox(
        self, names: list[str], *, agent_id: str, microdao_id: str, context: dict, history: list[ChannelMessage]
    ) -> Toolbox:
        """One run's tools: the blueprint's names, run through toolcore after the PDP permits."""
        t = self.settings.tools
        return Toolbox(
            self.toolcore, self.pdp, t.toolcore_ids, names, agent_id, microdao_id, context, history, t.max_result_chars
        )

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
            llm=llm_provider(s.llm),
            blueprints=BlueprintChain(
                s,
                endpoint("agents", s.agents) if s.agents.url else None,
                settings_module.DEFAULT_CONFIG.parent / Path(s.agents.blueprints_dir),
            ),
            idempotency=idempotency or idempotency_store(s),
            toolcore=endpoint("toolcore", s.tools),
            pdp=Endpoint(
                "pdp",
                s.tools.pdp_url,
                s.tools.pdp_secret.get_secret_value() if s.tools.pdp_secret else None,
                s.tools.pdp_timeout_s,
                2,
            ),
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
        settle_gc()
    return _current


# Collections are rare per invocation (0.06 with the default 700), but each one that reaches the
# older generations walks a heap full of what start-up loaded: freezing that and collecting the
# young generation less often cut the function's CPU per invocation by about a sixth (README).
GC_YOUNG_GENERATION = 20_000


def settle_gc() -> None:
    """Once the process has loaded what it serves with: move that out of every later collection
    (gc.freeze, without a full collection first: that would cost the first request ≈ 20 ms) and
    collect the young generation less often. bench/ shows the effect."""
    global _gc_settled
    if _gc_settled:
        return
    _gc_settled = True
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_GENERATION, older, oldest)


_gc_settled = False
