"""The process's runtime: settings and one client per dependency, built once."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field

from shared import handoff as sinks
from shared import idempotency as backends
from shared import llm
from shared.blueprints import BlueprintChain, blueprint_dir
from shared.clients.http import Endpoint
from shared.clients.memory import MemoryClient
from shared.clients.messaging import MessagingClient
from shared.contracts import ChannelMessage
from shared.handoff import InvocationSink
from shared.idempotency import IdempotencyStore
from shared.infra import settings as settings_module
from shared.infra.ordering import KeyedLocks
from shared.infra.settings import ServiceSettings, Settings
from shared.llm import Provider
from shared.tools import Toolbox


def endpoint(name: str, service: ServiceSettings) -> Endpoint:
    secret = service.secret.get_secret_value() if service.secret else None
    return Endpoint(name, service.url, secret, service.timeout_s, service.attempts)


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
    handoff: InvocationSink | None = None  # where a handoff's invocation goes; none: no handoff offered
    locks: KeyedLocks = field(default_factory=KeyedLocks)

    def toolbox(
        self,
        names: list[str],
        *,
        agent_id: str,
        microdao_id: str,
        context: dict,
        history: list[ChannelMessage],
        handoff_to: tuple[str, ...] = (),
    ) -> Toolbox:
        """One run's tools: the blueprint's names (and the handoff tool, when the run may hand off),
        run through toolcore after the PDP permits."""
        t = self.settings.tools
        return Toolbox(
            self.toolcore,
            self.pdp,
            t.toolcore_ids,
            names,
            agent_id,
            microdao_id,
            context,
            history,
            t.max_result_chars,
            max_calls_per_turn=t.max_calls_per_turn,
            max_calls_per_run=t.max_calls_per_run,
            handoff_to=handoff_to if self.handoff is not None else (),
        )

    async def aclose(self) -> None:
        """Close the connections this runtime opened itself (the handoff sink's); HTTP pools close with
        ``shared.clients.http.aclose``."""
        if self.handoff is not None:
            await self.handoff.aclose()

    def nats_connected(self) -> bool | None:
        """The live state of this process's NATS connection; None when it has none."""
        return getattr(self.idempotency, "nats_connected", None)

    @classmethod
    def from_settings(cls, s: Settings, *, idempotency: IdempotencyStore | None = None) -> Runtime:
        rt = cls(
            settings=s,
            messaging=MessagingClient(
                endpoint("messaging", s.messaging),
                post_style=s.messaging.post_style,
                history_limit=s.messaging.history_limit,
            ),
            memory=MemoryClient(endpoint("memory", s.memory)),
            llm=llm.build(s.llm),
            blueprints=BlueprintChain(
                s,
                endpoint("agents", s.agents) if s.agents.url else None,
                blueprint_dir(s),
            ),
            idempotency=idempotency or backends.build(s),
            toolcore=endpoint("toolcore", s.tools),
            pdp=Endpoint(
                "pdp",
                s.tools.pdp_url,
                s.tools.pdp_secret.get_secret_value() if s.tools.pdp_secret else None,
                s.tools.pdp_timeout_s,
                2,
            ),
            handoff=sinks.build(s),
        )
        rt.memory.warn_without_secret()  # once per process: runs only note the refusals
        _warn_if_open(s)
        return rt


_current: Runtime | None = None
_warned_open = False


def _warn_if_open(s: Settings) -> None:
    """Say once per process that no inbound secret is set: every endpoint answers anyone."""
    global _warned_open
    if not s.runtime.secret and not _warned_open:
        _warned_open = True
        logging.getLogger("agent_runtime").warning(
            "AGENT_RUNTIME_SECRET is not set: every endpoint but health answers unauthenticated callers"
        )


def install(rt: Runtime | None) -> None:
    """Use this runtime for the process (the local stack and tests build their own)."""
    global _current
    _current = rt


def get() -> Runtime:
    """The runtime of this process, built on first use from the process's settings."""
    global _current
    if _current is None:
        from shared.infra import observability, telemetry

        s = settings_module.get()
        observability.configure(s.runtime.log_format)
        telemetry.configure(s.service)  # spans only when an OTLP endpoint is configured
        _current = Runtime.from_settings(s)
        settle_gc()
    return _current


# Collections are rare per invocation, but each one that reaches the older generations walks a
# heap full of what start-up loaded: freezing that and collecting the young generation less often
# cuts the function's CPU per invocation (docs/performance.md has the figures).
GC_YOUNG_GENERATION = 20_000


def settle_gc() -> None:
    """Once the process has loaded what it serves with: move that out of every later collection
    (gc.freeze, without a full collection first, which the first request would pay for) and
    collect the young generation less often."""
    global _gc_settled
    if _gc_settled:
        return
    _gc_settled = True
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_GENERATION, older, oldest)


_gc_settled = False
