"""What happens to an invocation, top to bottom: the seed's steps in one function."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from shared import mock_llm, prompt
from shared.blueprints import pick_variant
from shared.contracts import ChannelMessage, Invocation, Outcome, SkipReason, Step
from shared.deadline import Deadline
from shared.http import DependencyError
from shared.idempotency import ClaimState, record_key
from shared.observability import StepTimer, log_outcome
from shared.runtime import Runtime


async def run(
    invocation: Invocation, rt: Runtime, *, delivery_id: str | None = None, **log_fields: str | None
) -> Outcome:
    """Answer one invocation and return its outcome (logged here, once, with ``log_fields`` such as the trace)."""
    outcome = await _answer(invocation, rt, Run(invocation))
    log_outcome(outcome, delivery_id=delivery_id, **log_fields)
    return outcome


async def _answer(inv: Invocation, rt: Runtime, run: Run) -> Outcome:
    cfg = rt.settings
    payload = inv.payload
    channel_id = str(payload.channel_id)
    microdao_id = payload.microdao_id or cfg.runtime.default_microdao_id
    deadline = Deadline(cfg.runtime.deadline_s)

    # One channel's invocations are answered in arrival order; other channels run in parallel.
    async with rt.locks.hold(f"{inv.agent_id}/{channel_id}"):
        try:
            # 1. Load the blueprint: agents-service, else a blueprint file, else the built-in agent.
            #    A channel keeps the prompt variant (A/B) it is assigned.
            with run.step("blueprint"):
                loaded = await rt.blueprints.load(inv.agent_id, deadline)
            blueprint = loaded.blueprint
            run.outcome.blueprint_source = loaded.source
            run.outcome.notes.extend(loaded.notes)
            if not blueprint.active:
                return run.skipped("agent_inactive")
            variant = pick_variant(blueprint, channel_id)
            run.outcome.variant = variant.name if variant else None
            if inv.entrypoint == "cron":
                return run.skipped("nothing_to_do")

            # 2. Read the channel's history and find the message to answer.
            with run.step("history"):
                history = await rt.messaging.history(channel_id, deadline)
            trigger = find_trigger(history, str(payload.message_id or "") or None, payload.matrix_event_id)
            if trigger is None:
                named = payload.message_id or payload.matrix_event_id
                return run.skipped("trigger_not_found" if named else "no_human_message")
            run.outcome.trigger_message_id = trigger.id
            if trigger.by_agent:
                return run.skipped("agent_message")  # loop guard: agents never answer agents

            # 3. Claim the message: exactly one reply per human message.
            key = record_key(inv.agent_id, trigger.id)
            claim = await rt.idempotency.claim(key, cfg.runtime.idempotency_in_progress_ttl_s)
            if claim.state is ClaimState.COMPLETE:
                run.outcome.message_id = (claim.result or {}).get("message_id")
                return run.skipped("duplicate")
            if claim.state is ClaimState.IN_PROGRESS:
                return run.failed(
                    "idempotency",
                    DependencyError(
                        "runtime",
                        "in_progress",
                        "this message is being answered right now",
                        retryable=True,
                        retry_after=1.0,
                    ),
                )
            run.claim = (key, claim.token)

            # 4. Query memory with the message's text (optional: the run goes on without it).
            memory = []
            if trigger.text.strip():
                with run.step("memory", optional=True):
                    memory = await rt.memory.query(
                        agent_id=inv.agent_id,
                        microdao_id=microdao_id,
                        channel_id=channel_id,
                        query=trigger.text[: cfg.runtime.max_text_chars],
                        k=blueprint.memory.top_k,
                        deadline=deadline,
                    )

            # 5. Build the prompt.
            messages = prompt.build(
                instructions=variant.instructions if variant else blueprint.instructions,
                agent_id=inv.agent_id,
                rewrite_prompt=payload.rewrite_prompt,
                memory=memory,
                history=history,
                trigger=trigger,
                window=cfg.runtime.history_window,
                max_chars=cfg.runtime.max_text_chars,
            )

            # 6. Ask the LLM; the keyword mock answers when it fails and the fallback is on.
            reply = None
            with run.step("llm", optional=cfg.llm.mock_fallback):
                reply = await rt.llm.complete(
                    model=blueprint.model,
                    messages=messages,
                    max_tokens=blueprint.max_tokens,
                    temperature=blueprint.temperature,
                    deadline=deadline,
                    metadata={"agent_id": inv.agent_id, "microdao_id": microdao_id, "channel_id": channel_id},
                )
                run.outcome.llm_source = "llm"
            if reply is None:
                reply = mock_llm.reply(trigger.text, blueprint.name)
                run.outcome.llm_source = "mock"
            reply = reply[: cfg.runtime.max_reply_chars]

            # 7. Post the reply into the channel.
            with run.step("post"):
                run.outcome.message_id = await rt.messaging.post(inv.agent_id, channel_id, reply, deadline)
            await run.complete(rt, cfg.runtime.idempotency_complete_ttl_s)

            # 8. Store the exchange in memory (optional: a failed store does not fail the run).
            if blueprint.memory.writeback:
                with run.step("store", optional=True):
                    await rt.memory.store(
                        agent_id=inv.agent_id,
                        microdao_id=microdao_id,
                        channel_id=channel_id,
                        content={"user_message": trigger.text, "agent_reply": reply},
                        metadata={
                            "trigger_message_id": trigger.id,
                            "reply_message_id": run.outcome.message_id,
                            "llm_source": run.outcome.llm_source,
                            "entrypoint": inv.entrypoint,
                        },
                        deadline=deadline,
                    )
            return run.replied()
        except StepFailed as failure:
            if failure.error.uncertain:
                await run.complete(rt, cfg.runtime.idempotency_complete_ttl_s)  # never post twice
            return run.failed(failure.step, failure.error)
        finally:
            await run.release(rt)


def find_trigger(
    history: list[ChannelMessage], message_id: str | None, matrix_event_id: str | None
) -> ChannelMessage | None:
    """The message to answer: by id, else by Matrix event id, else the newest human message."""
    if message_id or matrix_event_id:
        for message in reversed(history):
            if (message_id and message.id == message_id) or (
                not message_id and matrix_event_id and message.matrix_event_id == matrix_event_id
            ):
                return message
        return None
    return next((m for m in reversed(history) if not m.by_agent), None)


class StepFailed(Exception):
    def __init__(self, step: Step, error: DependencyError) -> None:
        self.step, self.error = step, error


class Run:
    """The bookkeeping of one run: timings, notes, the idempotency claim, the outcome."""

    def __init__(self, inv: Invocation) -> None:
        self.timer = StepTimer()
        self.claim: tuple[str, str] | None = None
        self.outcome = Outcome(
            status="failed", agent_id=inv.agent_id, entrypoint=inv.entrypoint, channel_id=str(inv.payload.channel_id)
        )

    @contextmanager
    def step(self, name: Step, *, optional: bool = False) -> Iterator[None]:
        """Time a step; a dependency failure fails the run, or only notes it when optional."""
        with self.timer.step(name):
            try:
                yield
            except DependencyError as exc:
                if not optional:
                    raise StepFailed(name, exc) from None
                self.outcome.notes.append(f"{name}_degraded: {exc.kind}")

    def replied(self) -> Outcome:
        return self._end("replied")

    def skipped(self, reason: SkipReason) -> Outcome:
        self.outcome.reason = reason
        return self._end("skipped")

    def failed(self, step: Step, error: DependencyError) -> Outcome:
        self.outcome.step, self.outcome.kind, self.outcome.retryable = step, error.kind, error.retryable
        self.outcome.error = str(error)
        self.outcome.retry_after_s = error.retry_after
        return self._end("failed")

    async def complete(self, rt: Runtime, ttl_s: float) -> None:
        if self.claim:
            key, token = self.claim
            self.claim = None
            await rt.idempotency.complete(
                key, token, {"message_id": self.outcome.message_id, "llm_source": self.outcome.llm_source}, ttl_s
            )

    async def release(self, rt: Runtime) -> None:
        """A run that did not post gives its message back, so a retry can answer it."""
        if self.claim:
            key, token = self.claim
            self.claim = None
            await rt.idempotency.release(key, token)

    def _end(self, status: str) -> Outcome:
        self.outcome.status = status  # type: ignore[assignment]
        self.outcome.timings_ms = self.timer.total()
        return self.outcome
