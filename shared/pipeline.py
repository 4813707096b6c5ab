"""What happens to an invocation, top to bottom: the seed's steps in one function."""

from __future__ import annotations

import json
import time

from shared import mock_llm, prompt, summary
from shared.blueprints import pick_variant
from shared.budget import estimate
from shared.contracts import ChannelMessage, Invocation, Outcome, SkipReason, Step
from shared.errors import DependencyError
from shared.idempotency import ClaimState, record_key, reply_digest
from shared.infra import metrics
from shared.infra.deadline import Deadline
from shared.infra.observability import StepTimer, log_outcome
from shared.llm import ChatRequest, Completion
from shared.runtime import Runtime
from shared.tools import BUILT_IN


async def run(
    invocation: Invocation, rt: Runtime, *, delivery_id: str | None = None, **log_fields: str | None
) -> Outcome:
    """Answer one invocation and return its outcome (logged with ``log_fields``, e.g. the trace, and counted once)."""
    outcome = await _answer(invocation, rt, Run(invocation))
    log_outcome(outcome, delivery_id=delivery_id, **log_fields)
    metrics.record(outcome)
    return outcome


async def _answer(inv: Invocation, rt: Runtime, run: Run) -> Outcome:
    cfg = rt.settings
    payload = inv.payload
    channel_id = str(payload.channel_id)
    microdao_id = payload.microdao_id or cfg.runtime.default_microdao_id
    # One channel's invocations are answered in arrival order; other channels run in parallel.
    async with rt.locks.hold(f"{inv.agent_id}/{channel_id}"):
        deadline = Deadline(cfg.runtime.deadline_s)  # from its turn: the wait for the lock is not spent
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

            # 2. Read the channel's history and find what to answer: the triggering message
            #    (channel_message; direct, in the DM channel), or the schedule's task (cron).
            with run.step("history"):
                history = await rt.messaging.history(channel_id, deadline)
            if inv.entrypoint == "cron":
                trigger = None
                if payload.task == BUILT_IN and not any(not m.by_agent for m in history):
                    return run.skipped("nothing_to_do")  # nobody said anything to summarise
                key = record_key(inv.agent_id, payload.schedule_key())
                asked = payload.instruction or summary.REQUEST.get(blueprint.language or "en", summary.REQUEST["en"])
                final = {"role": "user", "content": asked[: cfg.runtime.max_text_chars]}
                since = []
            else:
                trigger = find_trigger(history, str(payload.message_id or "") or None, payload.matrix_event_id)
                if trigger is None:
                    named = payload.message_id or payload.matrix_event_id
                    return run.skipped("trigger_not_found" if named else "no_human_message")
                run.outcome.trigger_message_id = trigger.id
                if trigger.by_agent:
                    return run.skipped("agent_message")  # loop guard: agents never answer agents
                key = record_key(inv.agent_id, trigger.id)
                asked = trigger.text
                final = prompt.turn(trigger, inv.agent_id, cfg.runtime.max_text_chars)
                at = history.index(trigger)
                history, since = history[:at], history[at + 1 :]

            # 3. Claim it: exactly one reply per human message, one run per schedule firing.
            with run.step("idempotency"):
                claim = await rt.idempotency.claim(key, cfg.runtime.idempotency_in_progress_ttl_s)
            if claim.state is ClaimState.COMPLETE:
                run.outcome.message_id = (claim.result or {}).get("message_id")
                return run.skipped("duplicate")
            if claim.state is ClaimState.IN_PROGRESS:
                # Retry once the claim could have expired: by then it is answered (a duplicate) or
                # its owner died and the retry answers it. Sooner would only find it busy again.
                busy = DependencyError(
                    "runtime",
                    "in_progress",
                    "this message is being answered right now",
                    retryable=True,
                    retry_after=max(1.0, claim.expires_in_s),
                )
                return run.failed("idempotency", busy)
            run.claim = (key, claim.token)
            if claim.posted is not None:
                # The run before this one died (or lost the store) while posting. Its reply is in
                # the channel if the agent said it after the trigger; a schedule's run has no
                # trigger to look after, so it is not posted again: never two replies.
                earlier = next(
                    (m for m in since if m.sender_id == inv.agent_id and reply_digest(m.text) == claim.posted), None
                )
                if earlier is not None or trigger is None:
                    run.outcome.message_id = earlier.id if earlier else None
                    run.outcome.notes.append(
                        "recovered: an earlier run posted this reply"
                        if earlier
                        else "recovered: an earlier run may have posted"
                    )
                    await run.complete(rt, cfg.runtime.idempotency_complete_ttl_s)
                    return run.skipped("duplicate")

            # 4. Query memory with what is asked (optional: the run goes on without it).
            memory = []
            if asked.strip():
                with run.step("memory", optional=True):
                    memory = await rt.memory.query(
                        agent_id=inv.agent_id,
                        microdao_id=microdao_id,
                        channel_id=channel_id,
                        query=asked[: cfg.runtime.max_text_chars],
                        k=blueprint.memory.top_k,
                        deadline=deadline,
                    )

            # 5. Build the prompt, fitted to the model's context window less the reply's reserve:
            #    instructions and the final turn always, then memory, then history newest first.
            toolbox = rt.toolbox(
                blueprint.tools,
                agent_id=inv.agent_id,
                microdao_id=microdao_id,
                context={"channel_id": channel_id, "trigger": key, "entrypoint": inv.entrypoint},
                history=history if trigger is None else [*history, trigger],
            )
            run.outcome.tool_calls = toolbox.calls
            limits = cfg.llm.limits(blueprint.model)
            native = rt.llm.native_tools
            fitted = prompt.build(
                instructions=variant.instructions if variant else blueprint.instructions,
                entrypoint=inv.entrypoint,
                language=blueprint.language,
                tool_protocol=None if native else toolbox.text_protocol(),
                rewrite_prompt=payload.rewrite_prompt,
                memory=memory,
                history=[] if payload.task == BUILT_IN else history,  # a summary reads the digest
                final=final,
                agent_id=inv.agent_id,
                window=cfg.runtime.history_window,
                max_chars=cfg.runtime.max_text_chars,
                limit=limits.context_window - limits.reply_reserve,
                overhead=estimate(json.dumps([t.parameters for t in toolbox.specs])) if native else 0,
            )
            run.outcome.prompt_tokens, run.outcome.trimmed = fitted.tokens, fitted.trimmed
            messages = fitted.messages
            if inv.entrypoint == "cron" and payload.task == BUILT_IN:
                messages += toolbox.scheduled_summary()

            # 6. Ask the LLM (the keyword mock when it fails and the fallback is on). The tools it
            #    calls run, policy-checked, and their results go back to it: at most max_tool_steps rounds.
            steps = cfg.tools.max_tool_steps
            for step in range(steps + 1):
                request = ChatRequest(
                    model=blueprint.model,
                    messages=messages,
                    max_tokens=min(blueprint.max_tokens, limits.reply_reserve),
                    temperature=blueprint.temperature,
                    metadata={"agent_id": inv.agent_id, "microdao_id": microdao_id, "channel_id": channel_id},
                    tools=toolbox.specs,
                    allow_tools=step < steps,
                )
                completion = await _complete(rt, run, request, blueprint.name, deadline)
                if not completion.tool_calls or step == steps:
                    break
                with run.step("tools"):
                    messages = [*messages, completion.as_message(), *await toolbox.run(completion.tool_calls, deadline)]
                run.side_effects = toolbox.side_effects
            reply = completion.text or mock_llm.reply(asked, blueprint.name)
            reply = reply[: cfg.runtime.max_reply_chars]

            # 7. Post the reply into the channel, once the record says so: a run that takes over
            #    after a crash then knows a reply may be out.
            with run.step("idempotency"):
                ours = await rt.idempotency.posting(
                    key, claim.token, cfg.runtime.idempotency_in_progress_ttl_s, reply_digest(reply)
                )
            if not ours:  # this run stalled past its claim's TTL and another took the message over
                lost = DependencyError(
                    "runtime",
                    "in_progress",
                    "another run took the message over before this one posted; it answers",
                    retryable=True,
                    retry_after=1.0,
                )
                return run.failed("idempotency", lost)
            run.posting = True
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
                        content={"user_message": asked, "agent_reply": reply},
                        metadata={
                            "trigger_message_id": trigger.id if trigger else None,
                            "schedule": key if trigger is None else None,
                            "reply_message_id": run.outcome.message_id,
                            "llm_source": run.outcome.llm_source,
                            "entrypoint": inv.entrypoint,
                        },
                        deadline=deadline,
                    )
            return run.replied()
        except StepFailed as failure:
            if failure.error.uncertain or run.side_effects:
                await run.complete(rt, cfg.runtime.idempotency_complete_ttl_s)  # never post or act twice
            return run.failed(failure.step, failure.error)
        except BaseException:  # cancelled, or a defect: a reply or a tool's action may be out already
            if run.posting or run.side_effects:
                await run.complete(rt, cfg.runtime.idempotency_complete_ttl_s)
            raise
        finally:
            await run.release(rt)


async def _complete(rt: Runtime, run: Run, request: ChatRequest, agent_name: str, deadline: Deadline) -> Completion:
    """The LLM's next turn; the mock's once the LLM failed and the fallback is on (noted, counted)."""
    agent_id = request.metadata["agent_id"]
    if run.outcome.llm_source != "mock":
        with run.step("llm", optional=rt.settings.llm.mock_fallback):
            try:
                completion = await rt.llm.complete(request, deadline)
            except DependencyError:
                metrics.child(metrics.LLM_CALLS, agent_id, rt.llm.name, "error").inc()
                raise
            metrics.child(metrics.LLM_CALLS, agent_id, rt.llm.name, "ok").inc()
            run.outcome.llm_source = "llm"
            return completion
        metrics.child(metrics.MOCK_FALLBACKS, agent_id).inc()
    run.outcome.llm_source = "mock"
    return mock_llm.complete(request.messages, [t.name for t in request.tools if request.allow_tools], agent_name)


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
        self.side_effects = False  # a tool may have acted: a failed run must not run again
        self.posting = False  # the reply was sent (or is being sent)
        self.outcome = Outcome(
            status="failed", agent_id=inv.agent_id, entrypoint=inv.entrypoint, channel_id=str(inv.payload.channel_id)
        )

    def step(self, name: Step, *, optional: bool = False) -> RunStep:
        """Time a step; a dependency failure fails the run, or only notes it when optional."""
        return RunStep(self, name, optional)

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
        """Record the answer. The reply is out whatever the store says: its failure is only a note."""
        if self.claim:
            key, token = self.claim
            self.claim = None
            result = {"message_id": self.outcome.message_id, "llm_source": self.outcome.llm_source}
            with self.step("idempotency", optional=True):
                await rt.idempotency.complete(key, token, result, ttl_s)

    async def release(self, rt: Runtime) -> None:
        """A run that did not post gives its message back, so a retry can answer it (or, if the
        store is down, the in-progress record expires and a retry answers then)."""
        if self.claim:
            key, token = self.claim
            self.claim = None
            with self.step("idempotency", optional=True):
                await rt.idempotency.release(key, token)

    def _end(self, status: str) -> Outcome:
        self.outcome.status = status  # type: ignore[assignment]
        self.outcome.timings_ms = self.timer.total()
        return self.outcome


class RunStep:
    """``with run.step(name):`` a class, not a generator: a run enters seven or more of them."""

    __slots__ = ("name", "optional", "run", "started")

    def __init__(self, run: Run, name: Step, optional: bool) -> None:
        self.run, self.name, self.optional = run, name, optional

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        self.run.timer.add(self.name, self.started)
        if not isinstance(exc, DependencyError):
            return False
        if not self.optional:
            raise StepFailed(self.name, exc) from None
        self.run.outcome.notes.append(f"{self.name}_degraded: {exc.kind}")
        return True  # an optional step's failure: the run goes on without it
