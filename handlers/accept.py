"""The one accept → run → respond step every trigger shares: authenticate, parse, run the pipeline,
and turn what happened into a status, a body and the delivery verdict. A crash becomes a 500 here
and nowhere else."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared import delivery, pipeline, runtime
from shared.contracts import Invocation, Outcome
from shared.errors import BadInput
from shared.health import report
from shared.infra import telemetry, tracing
from shared.intake import check_auth, parse_invocation
from shared.streaming import Typing

log = logging.getLogger("agent_runtime.accept")


@dataclass(frozen=True)
class Answer:
    """What became of one invocation: the HTTP status, body and headers, and the outcome if it ran."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    outcome: Outcome | None = None

    def verdict(self) -> delivery.Verdict:
        """What a queue transport does with it: ack, retry later, or dead-letter."""
        if self.outcome is not None:
            return delivery.verdict(self.outcome)
        return delivery.decide(self.status, error=self.body.get("error"))


Read = Callable[[], Awaitable[bytes | str | dict[str, Any] | Invocation]]


async def run(
    read: Read,
    *,
    headers: Mapping[str, Any] | None = None,
    authenticate: bool = True,
    delivery_id: str | None = None,
    typing: Typing | None = None,
    **log_fields: str | None,
) -> Answer:
    """Accept one invocation (``read`` gives its body, once authenticated) and answer it, in a server
    span whose parent is the trace context the trigger carried (headers, attributes, extensions);
    ``typing`` shows the run as it goes."""
    rt = runtime.get()
    headers = headers or {}
    with telemetry.span("invoke_agent", telemetry.SERVER, parent=headers) as span:
        answer = await _answer(rt, read, headers, authenticate, delivery_id, typing, log_fields)
        if span.recording:
            _describe(span, answer)
    return answer


async def admit(read: Read, headers: Mapping[str, Any], *, authenticate: bool = True) -> Invocation:
    """The invocation, once its caller is authenticated and its body parsed; else ``BadInput``."""
    rt = runtime.get()
    if authenticate:
        secret = rt.settings.runtime.secret
        check_auth(secret.get_secret_value() if secret else None, headers)
    return parse_invocation(await read(), rt.settings.runtime.max_body_bytes)


async def _answer(
    rt: runtime.Runtime,
    read: Read,
    headers: Mapping[str, Any],
    authenticate: bool,
    delivery_id: str | None,
    typing: Typing | None,
    log_fields: dict[str, str | None],
) -> Answer:
    try:
        invocation = await admit(read, headers, authenticate=authenticate)
    except BadInput as exc:
        return Answer(exc.status, exc.body())
    try:
        outcome = await pipeline.answer(
            invocation,
            rt,
            delivery_id=delivery_id or headers.get("idempotency-key"),
            typing=typing,
            **log_fields,
            **tracing.log_fields(headers),
        )
    except Exception:
        fields = {"agent_id": invocation.agent_id, "delivery_id": delivery_id}
        log.exception("defect while running invocation", extra={"fields": fields})
        return Answer(500, {"error": "internal error"})
    return Answer(
        delivery.http_status(outcome), outcome.model_dump(exclude_none=True), delivery.retry_headers(outcome), outcome
    )


def _describe(span: telemetry.Span, answer: Answer) -> None:
    """What the invocation was and what became of it: ids, statuses and token counts, never text."""
    span.set("http.response.status_code", answer.status)
    outcome = answer.outcome
    if answer.status >= 500:
        span.fail(outcome.kind if outcome and outcome.kind else str(answer.status))
    if outcome is None:
        return
    span.rename(f"invoke_agent {outcome.agent_id}")
    for key, value in (
        ("gen_ai.operation.name", "invoke_agent"),
        ("gen_ai.agent.id", outcome.agent_id),
        ("gen_ai.conversation.id", outcome.channel_id),
        ("agent_runtime.entrypoint", outcome.entrypoint),
        ("agent_runtime.outcome", outcome.status),
        ("agent_runtime.reason", outcome.reason),
        ("agent_runtime.llm_source", outcome.llm_source),
        ("agent_runtime.handed_off_to", outcome.handed_off_to),
        ("agent_runtime.handed_off_from", outcome.handed_off_from),
    ):
        span.set(key, value)
    if outcome.usage:
        span.set("gen_ai.usage.input_tokens", outcome.usage.input_tokens)
        span.set("gen_ai.usage.output_tokens", outcome.usage.output_tokens)


async def health(query: Mapping[str, Any], headers: Mapping[str, Any]) -> Answer:
    """The health body; ``?deep=1`` asks every dependency, and needs the secret when one is set."""
    rt = runtime.get()
    deep = query.get("deep") in ("1", "true", "yes")
    if deep:
        secret = rt.settings.runtime.secret
        try:
            check_auth(secret.get_secret_value() if secret else None, headers)
        except BadInput as exc:
            return Answer(exc.status, exc.body())
    return Answer(200, await report(rt, deep=deep))
