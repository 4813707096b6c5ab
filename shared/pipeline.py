"""What happens to an invocation, top to bottom: the seed's steps as named phases over one run.

    answer        the whole of it: one channel at a time, then the phases below, one outcome
    agent         1. the blueprint (and its prompt variant for this channel)
    task          2. what to answer: the triggering message, or the schedule's task
    claim         3. exactly once: claim the record, or recover what a dead run left
    converse      4. memory, the prompt, the LLM and the tools it calls
    deliver       5. mark the record, post the reply, complete the record, store the exchange
    hand_off      5'. or, when the model handed the message on: send the target's invocation

A phase ends the run early by raising ``Skip`` (nothing to do) or a ``Failure`` (errors.py);
``answer`` turns either into the outcome. A run shown as it goes (``typing``) emits its steps and
its reply's text as they happen (streaming.py).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple

from shared import prompt, summary
from shared.blueprints import display_name, pick_variant
from shared.budget import estimate, estimated_usage
from shared.contracts import (
    Blueprint,
    ChannelMessage,
    Invocation,
    Outcome,
    PromptVariant,
    SkipReason,
    Step,
    TokenUsage,
)
from shared.errors import Busy, DependencyError, Failure
from shared.idempotency import ClaimState, record_key, reply_digest
from shared.infra import metrics, telemetry
from shared.infra.deadline import Deadline
from shared.infra.observability import StepTimer, log_outcome
from shared.llm import ChatRequest, Completion, Usage
from shared.runtime import Runtime
from shared.streaming import Typing
from shared.tools import BUILT_IN, Handoff

HANDOFF_MARK = "handoff:"  # a record's marker: a run began to hand the message to this agent
RETURNED = "#returned"  # the record of a message handed back to an agent that handed it on


async def answer(
    invocation: Invocation,
    rt: Runtime,
    *,
    delivery_id: str | None = None,
    typing: Typing | None = None,
    **log_fields: str | None,
) -> Outcome:
    """Answer one invocation and return its outcome (logged with ``log_fields``, e.g. the trace, and
    counted once); ``typing`` shows the run to a caller as it goes."""
    run = Run(invocation, rt)
    run.typing = typing
    # One channel's invocations are answered in arrival order; other channels run in parallel.
    async with rt.locks.hold(f"{run.agent_id}/{run.channel_id}"):
        run.deadline = Deadline(rt.settings.runtime.deadline_s)  # from its turn: the wait for the lock is not spent
        # memory, the LLM and the tools end early enough to leave the post its own timeout
        run.thinking = run.deadline.before(min(rt.settings.messaging.timeout_s, rt.settings.runtime.deadline_s / 4))
        outcome = await _phases(run)
    log_outcome(outcome, delivery_id=delivery_id, **log_fields)
    metrics.record(outcome)
    return outcome


async def _phases(run: Run) -> Outcome:
    try:
        blueprint, variant = await agent(run)
        task = await what_to_answer(run, blueprint)
        await claim(run, task)
        # (a run that took over a record marked for a handoff has it already: no second opinion)
        reply = "" if run.handoff is not None else await converse(run, task, blueprint, variant)
        if run.handoff is not None:  # the model, or the record, handed the message on
            await hand_off(run, task, blueprint, run.handoff)
            return run.handed_off()
        await deliver(run, task, blueprint, reply)
        return run.replied()
    except Skip as skip:
        return run.skipped(skip.reason)
    except StepFailed as failure:
        if run.typing:
            run.typing.reset()  # nothing of it is posted
        if run.handing_off:
            pass  # the record is marked with the handoff: released below, the retry sends that one again
        elif run.side_effects:
            await run.finish_claim()  # a tool acted: never act twice, even if the reply is lost
        elif failure.step == "post" and isinstance(failure.error, DependencyError) and failure.error.uncertain:
            # the post may still land: the record stays marked and busy a while, so the retry looks
            # for the reply only once it could be there
            messaging = run.rt.settings.messaging
            failure.error.retry_after = await run.hold_claim(messaging.timeout_s + messaging.post_settle_s)
        # else the claim is released below
        return run.failed(failure.step, failure.error)
    except Busy as busy:  # another run owns the message (or took it over)
        return run.failed("idempotency", busy)
    except BaseException:  # cancelled, or a defect: a reply or a tool's action may be out already
        if not run.handing_off and (run.posting or run.side_effects):
            await run.finish_claim()
        raise
    finally:
        await run.release_claim()


# --- 1. the agent ----------------------------------------------------------------------------


async def agent(run: Run) -> tuple[Blueprint, PromptVariant | None]:
    """agents-service, else a blueprint file, else the built-in agent; a channel keeps its A/B variant."""
    with run.step("blueprint"):
        loaded = await run.rt.blueprints.load(run.agent_id, run.deadline)
    run.outcome.blueprint_source = loaded.source
    run.outcome.notes.extend(loaded.notes)
    if not loaded.known:
        raise Skip("unknown_agent")  # not answered in a real channel unless agents.allow_unknown says so
    if not loaded.blueprint.active:
        raise Skip("agent_inactive")
    variant = pick_variant(loaded.blueprint, run.channel_id)
    run.outcome.variant = variant.name if variant else None
    return loaded.blueprint, variant


# --- 2. what to answer -----------------------------------------------------------------------


class Task(NamedTuple):
    """What one run answers: a member's message (``trigger``), or a schedule's task (no trigger)."""

    key: str  # the idempotency record: agent and trigger, or agent and schedule firing
    asked: str  # what memory is queried with and the mock answers
    final: dict[str, Any]  # the prompt's last turn
    history: list[ChannelMessage]  # before the trigger
    since: list[ChannelMessage]  # after the trigger (or the firing): where an earlier run's reply would be
    trigger: ChannelMessage | None = None


async def what_to_answer(run: Run, blueprint: Blueprint) -> Task:
    """Read the channel's history; find the triggering message (by id), or the schedule's task."""
    inv, cfg = run.invocation, run.rt.settings.runtime
    payload = inv.payload
    with run.step("history"):
        history = await run.rt.messaging.history(run.channel_id, run.deadline)
    if inv.entrypoint == "cron":
        if payload.task == BUILT_IN and not any(not m.by_agent for m in history):
            raise Skip("nothing_to_do")  # nobody said anything to summarise
        asked = payload.instruction or summary.REQUEST.get(blueprint.language or "en", summary.REQUEST["en"])
        final = {"role": "user", "content": asked[: cfg.max_text_chars]}
        fired = [m for m in history if payload.fire_time is None or m.created_at >= payload.fire_time]
        return Task(record_key(run.agent_id, payload.schedule_key()), asked, final, history, fired)
    trigger = find_trigger(history, str(payload.message_id or "") or None, payload.matrix_event_id)
    if trigger is None:
        raise Skip("trigger_not_found" if payload.message_id or payload.matrix_event_id else "no_human_message")
    run.outcome.trigger_message_id = trigger.id
    if trigger.by_agent:
        raise Skip("agent_message")  # loop guard: agents never answer agents
    at = history.index(trigger)
    final = prompt.turn(trigger, run.agent_id, cfg.max_text_chars)
    handed = payload.handoff
    if handed and handed.note:  # the other agent's words stay the member's side of the prompt, never system text
        final = {**final, "content": f"{final['content']}\n\n({handed.from_agent}, handing this to you: {handed.note})"}
    return Task(
        key=record_key(run.agent_id, trigger.id),
        asked=trigger.text,
        final=final,
        history=history[:at],
        since=history[at + 1 :],
        trigger=trigger,
    )


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


# --- 3. exactly once -------------------------------------------------------------------------


async def claim(run: Run, task: Task) -> None:
    """Own the record: exactly one reply per human message, one run per schedule firing. A message an
    agent handed on and that is handed back to it has a second record: the agent answers it then."""
    cfg = run.rt.settings.runtime
    key = task.key
    with run.step("idempotency"):
        claimed = await run.rt.idempotency.claim(key, cfg.idempotency_in_progress_ttl_s)
        done = claimed.result or {}
        if claimed.state is ClaimState.COMPLETE and done.get("handed_off_to") and run.invocation.payload.handoff:
            key, run.returned = f"{key}{RETURNED}", True
            claimed = await run.rt.idempotency.claim(key, cfg.idempotency_in_progress_ttl_s)
            done = claimed.result or {}
    if claimed.state is ClaimState.COMPLETE:
        run.outcome.message_id = done.get("message_id")
        run.outcome.handed_off_to = done.get("handed_off_to")
        raise Skip("duplicate")
    if claimed.state is ClaimState.IN_PROGRESS:
        # Retry once the claim could have expired: by then it is answered (a duplicate) or its
        # owner died and the retry answers it. Sooner would only find it busy again.
        raise Busy("this message is being answered right now", retry_after=max(1.0, claimed.expires_in_s))
    run.claim = (key, claimed.token)
    if not claimed.posted:
        return
    handed = next((m.removeprefix(HANDOFF_MARK) for m in claimed.posted if m.startswith(HANDOFF_MARK)), None)
    if handed is not None and run.rt.handoff is not None:  # a run before this one began to hand it on: finish that
        run.handoff, run.handing_off, run.marked = Handoff(handed, None), True, claimed.posted
        run.outcome.notes.append("recovered: an earlier run was handing this message on")
        return
    # Runs before this one began to post and died, lost the store, or were not told whether the post
    # landed. A reply of theirs is in the channel if the agent said it after the trigger (a schedule's:
    # after it fired): found, this run is a duplicate; not found, it answers.
    earlier = next(
        (m for m in task.since if m.sender_id == run.agent_id and reply_digest(m.text) in claimed.posted), None
    )
    if earlier is not None:
        run.outcome.message_id = earlier.id
        run.outcome.notes.append("recovered: an earlier run posted this reply")
        await run.finish_claim()
        raise Skip("duplicate")


# --- 4. the conversation ---------------------------------------------------------------------


async def converse(run: Run, task: Task, blueprint: Blueprint, variant: PromptVariant | None) -> str:
    """Memory, then the prompt fitted to the model's window, then the LLM and the tools it calls."""
    rt, inv = run.rt, run.invocation
    cfg = rt.settings
    memory = []
    if task.asked.strip():  # optional: the run goes on without it
        with run.step("memory", optional=True):
            memory = await rt.memory.query(
                agent_id=run.agent_id,
                microdao_id=run.microdao_id,
                channel_id=run.channel_id,
                query=task.asked[: cfg.runtime.max_text_chars],
                k=blueprint.memory.top_k,
                deadline=run.thinking,
            )

    # Instructions and the final turn always, then memory, then history newest first.
    hops = inv.payload.handoff.hops if inv.payload.handoff else 0
    toolbox = rt.toolbox(
        blueprint.tools,
        agent_id=run.agent_id,
        microdao_id=run.microdao_id,
        context={"channel_id": run.channel_id, "trigger": task.key, "entrypoint": inv.entrypoint},
        history=task.history if task.trigger is None else [*task.history, task.trigger],
        # a member's message may be handed on, a bounded number of hops: two agents never pass it back and forth
        # (a message that came back to an agent is answered by it; one an invocation cannot name stays)
        handoff_to=tuple(a for a in blueprint.handoff_to if a != run.agent_id)
        if task.trigger and _naming(task.trigger) and hops < cfg.agents.max_handoffs and not run.returned
        else (),
    )
    run.outcome.tool_calls = toolbox.calls
    limits = cfg.llm.limits(blueprint.model)
    native = rt.llm.native_tools
    fitted = prompt.build(
        instructions=variant.instructions if variant else blueprint.instructions,
        entrypoint=inv.entrypoint,
        language=blueprint.language,
        tool_protocol=None if native else toolbox.text_protocol(),
        rewrite_prompt=inv.payload.rewrite_prompt,
        memory=memory,
        history=[] if inv.payload.task == BUILT_IN else task.history,  # a summary reads the digest
        final=task.final,
        agent_id=run.agent_id,
        window=cfg.runtime.history_window,
        max_chars=cfg.runtime.max_text_chars,
        limit=limits.context_window - limits.reply_reserve,
        overhead=estimate(json.dumps([t.parameters for t in toolbox.specs])) if native else 0,
    )
    run.outcome.prompt_tokens, run.outcome.trimmed = fitted.tokens, fitted.trimmed
    messages = fitted.messages
    if inv.entrypoint == "cron" and inv.payload.task == BUILT_IN:
        messages += toolbox.scheduled_summary()

    # The LLM (the keyword mock once it failed and the fallback is on); the tools it calls run,
    # policy-checked, and their results go back to it: at most max_tool_steps rounds.
    rounds = cfg.tools.max_tool_steps
    for round_ in range(rounds + 1):
        request = ChatRequest(
            model=blueprint.model,
            messages=messages,
            max_tokens=min(blueprint.max_tokens, limits.reply_reserve),
            temperature=blueprint.temperature,
            metadata={"agent_id": run.agent_id, "microdao_id": run.microdao_id, "channel_id": run.channel_id},
            tools=toolbox.specs,
            allow_tools=round_ < rounds,
            tool_marker=None if native else toolbox.marker,
        )
        completion = await ask_llm(run, request, blueprint)
        if not completion.tool_calls:
            break
        if run.typing:
            run.typing.reset()  # what the round said before its tool calls is not the reply
        if round_ == rounds:  # no round left to run them in: not run, and the outcome says so
            toolbox.capped += len(completion.tool_calls)
            break
        with run.step("tools"):
            messages = [*messages, completion.as_message(), *await toolbox.run(completion.tool_calls, run.thinking)]
        run.side_effects = toolbox.side_effects
        if toolbox.handoff is not None:  # another agent answers: nothing more to say here
            run.handoff = toolbox.handoff
            return ""
    if toolbox.capped:
        run.outcome.notes.append(f"tool_calls_capped: {toolbox.capped} not run")
    reply = completion.text
    if not reply:  # the last round said nothing: the mock's words are posted, and the outcome says so
        from shared import mock_llm  # imported once the mock answers: with an LLM that answers, never

        reply = mock_llm.reply(task.asked, blueprint.name, gender=blueprint.gender, default_language=blueprint.language)
        if run.outcome.llm_source == "llm":
            run.outcome.llm_source = "mock"
            run.outcome.notes.append("llm_empty_reply")
    reply = reply[: cfg.runtime.max_reply_chars].rstrip()
    if run.typing:  # the stream ends with the reply as it is posted
        mock = run.outcome.llm_source == "mock"
        await run.typing.settle(reply, in_words=mock, pace_s=cfg.llm.mock_pace_s if mock else 0.0)
    return reply


async def ask_llm(run: Run, request: ChatRequest, agent: Blueprint) -> Completion:
    """The LLM's next turn, its tokens counted; the mock's (which counts none) once the LLM failed and
    the fallback is on, or once the agent spent its daily token budget (noted, counted)."""
    rt = run.rt
    if run.outcome.llm_source != "mock" and rt.llm.configured:  # with no LLM configured the mock is the provider
        if await within_budget(run):
            completion = None
            with run.step("llm", optional=rt.settings.llm.mock_fallback):
                completion = await chat(run, request)
            if completion is not None:
                run.outcome.llm_source = "llm"
                await spend(run, request.model, completion)
                return completion
        metrics.child(metrics.MOCK_FALLBACKS, run.agent_id).inc()
    run.outcome.llm_source = "mock"
    tools = request.tools if request.allow_tools else []
    from shared import mock_llm  # imported once the mock answers: with an LLM that answers, never

    return mock_llm.complete(request.messages, tools, agent.name, gender=agent.gender, default_language=agent.language)


async def chat(run: Run, request: ChatRequest) -> Completion:
    """One LLM call in a span of the GenAI conventions: model, token counts and finish reason; message
    text only when ``telemetry.record_content`` says. Usage the provider did not report is estimated."""
    rt = run.rt
    with telemetry.span(f"chat {request.model}", telemetry.CLIENT) as span:
        if span.recording:
            _describe_request(span, run, request)
        try:
            # a provider that streams shows the text as it comes; one that does not, whole at the end
            on_text = run.typing.piece if run.typing and rt.llm.streams else None
            completion = await rt.llm.complete(request, run.thinking, on_text=on_text)
        except Failure:
            metrics.child(metrics.LLM_CALLS, run.agent_id, rt.llm.name, "error").inc()
            raise
        metrics.child(metrics.LLM_CALLS, run.agent_id, rt.llm.name, "ok").inc()
        completion.usage = usage = completion.usage or estimated_usage(request, completion)
        if span.recording:
            _describe_completion(span, rt, completion, usage)
    return completion


def _describe_request(span: telemetry.Span, run: Run, request: ChatRequest) -> None:
    """The GenAI attributes known before the call."""
    for key, value in (
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", run.rt.llm.system),
        ("gen_ai.system", run.rt.llm.system),
        ("gen_ai.request.model", request.model),
        ("gen_ai.request.max_tokens", request.max_tokens),
        ("gen_ai.request.temperature", request.temperature),
        ("gen_ai.agent.id", run.agent_id),
        ("gen_ai.conversation.id", run.channel_id),
    ):
        span.set(key, value)
    if run.rt.settings.telemetry.record_content:
        span.set("gen_ai.input.messages", json.dumps(request.messages, ensure_ascii=False))


def _describe_completion(span: telemetry.Span, rt: Runtime, completion: Completion, usage: Usage) -> None:
    """The GenAI attributes of the answer: the model, the tokens and why it stopped."""
    span.set("gen_ai.response.model", completion.model)
    span.set("gen_ai.usage.input_tokens", usage.input)
    span.set("gen_ai.usage.output_tokens", usage.output)
    span.set("agent_runtime.usage_estimated", usage.estimated)
    if completion.finish_reason:
        span.set("gen_ai.response.finish_reasons", [completion.finish_reason])
    if rt.settings.telemetry.record_content:
        span.set("gen_ai.output.messages", json.dumps([completion.as_message()], ensure_ascii=False))


# --- tokens: usage, cost and the daily budget ------------------------------------------------

BUDGET_TTL_S = 2 * 86400.0  # a day's counter outlives its day: a run that began before midnight still finds it


def budget_key(agent_id: str) -> str:
    """The counter of the agent's tokens today (UTC), beside the idempotency records."""
    return f"tokens/{agent_id}/{datetime.now(UTC):%Y-%m-%d}"


async def within_budget(run: Run) -> bool:
    """False, and noted, once the agent spent its daily token budget. A counter that cannot be read
    does not stop the agent (noted as ``budget_degraded``)."""
    limit = run.rt.settings.llm.budget(run.agent_id)
    if limit is None:
        return True
    if run.tokens_today is None:
        with run.step("budget", optional=True):
            run.tokens_today = await run.rt.idempotency.add_usage(budget_key(run.agent_id), 0, BUDGET_TTL_S)
    if run.tokens_today is None or run.tokens_today < limit:
        return True
    run.outcome.notes.append("budget_exhausted")
    return False


async def spend(run: Run, requested_model: str, completion: Completion) -> None:
    """Add a call's tokens to the outcome, the metrics (and cost, when its model is priced) and the
    agent's daily counter (when it has a budget)."""
    assert completion.usage is not None
    cfg, usage = run.rt.settings.llm, completion.usage
    so_far = run.outcome.usage
    model = completion.model or requested_model
    run.outcome.usage = TokenUsage(
        input_tokens=usage.input + (so_far.input_tokens if so_far else 0),
        output_tokens=usage.output + (so_far.output_tokens if so_far else 0),
        model=model,
        estimated=usage.estimated or bool(so_far and so_far.estimated),
    )
    price = cfg.prices.get(model) or cfg.prices.get(requested_model)
    cost = (usage.input * price.input + usage.output * price.output) / 1e6 if price else None
    metrics.record_tokens(run.agent_id, model, usage.input, usage.output, cost)
    if cfg.budget(run.agent_id) is not None:
        with run.step("budget", optional=True):
            key = budget_key(run.agent_id)
            run.tokens_today = await run.rt.idempotency.add_usage(key, usage.input + usage.output, BUDGET_TTL_S)


# --- 5. delivery -----------------------------------------------------------------------------


async def deliver(run: Run, task: Task, blueprint: Blueprint, reply: str) -> None:
    """Post the reply once the record says so (a run that takes over after a crash then knows a
    reply may be out), complete the record, and store the exchange in memory (optional)."""
    rt, (key, token) = run.rt, run.claim or (task.key, "")
    with run.step("idempotency"):
        ttl = rt.settings.runtime.idempotency_in_progress_ttl_s
        run.digest = reply_digest(reply)
        ours = await rt.idempotency.posting(key, token, ttl, run.digest)
    if not ours:  # this run stalled past its claim's TTL and another took the message over
        raise Busy("another run took the message over before this one posted; it answers", retry_after=1.0)
    run.posting = True
    with run.step("post"):
        run.outcome.message_id = await rt.messaging.post(run.agent_id, run.channel_id, reply, run.deadline)
    await run.finish_claim()

    if blueprint.memory.writeback:
        with run.step("store", optional=True):
            await rt.memory.store(
                agent_id=run.agent_id,
                microdao_id=run.microdao_id,
                channel_id=run.channel_id,
                content={"user_message": task.asked, "agent_reply": reply},
                metadata={
                    "trigger_message_id": task.trigger.id if task.trigger else None,
                    "schedule": task.key if task.trigger is None else None,
                    "reply_message_id": run.outcome.message_id,
                    "llm_source": run.outcome.llm_source,
                    "entrypoint": run.invocation.entrypoint,
                },
                deadline=run.deadline,
            )


async def hand_off(run: Run, task: Task, blueprint: Blueprint, handoff: Handoff) -> None:
    """Mark the record with the handoff (a run that takes it over sends the same one), send the target
    agent an invocation for the same message the way invocations arrive here, post the blueprint's
    note if it has one, and complete the record: a retry is a duplicate."""
    rt, payload, trigger = run.rt, run.invocation.payload, task.trigger
    assert rt.handoff is not None and trigger is not None  # the tool is offered only then
    key, token = run.claim or (task.key, "")
    ttl = rt.settings.runtime.idempotency_in_progress_ttl_s
    if not run.handing_off:
        with run.step("idempotency"):
            ours = await rt.idempotency.posting(key, token, ttl, HANDOFF_MARK + handoff.to)
        if not ours:
            raise Busy("another run took the message over before this one handed it on", retry_after=1.0)
        run.handing_off = True
    hops = (payload.handoff.hops if payload.handoff else 0) + 1
    body = payload.model_dump(mode="json", exclude_none=True)
    body.pop("message_id", None)
    body.pop("matrix_event_id", None)
    body.update(_naming(trigger), handoff={"from_agent": run.agent_id, "note": handoff.note, "hops": hops})
    invocation = {"agent_id": handoff.to, "entrypoint": run.invocation.entrypoint, "payload": body}
    dedupe = hashlib.sha256(f"{handoff.to}/{trigger.id}/{hops}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
    with run.step("handoff"):
        await rt.handoff.send(invocation, dedupe, run.thinking)
    run.outcome.handed_off_to = handoff.to
    metrics.child(metrics.HANDOFFS, run.agent_id, handoff.to).inc()
    note = blueprint.handoff_note and blueprint.handoff_note.replace("{agent}", display_name(handoff.to))
    if note and reply_digest(note) not in run.marked:  # an earlier run's note may be out: never twice
        with run.step("post", optional=True):  # the target answers either way
            if await rt.idempotency.posting(key, token, ttl, reply_digest(note)):
                run.outcome.message_id = await rt.messaging.post(run.agent_id, run.channel_id, note, run.deadline)
    run.handing_off = False  # sent: the record is completed now
    await run.finish_claim()


def _naming(trigger: ChannelMessage) -> dict[str, str]:
    """How the target's invocation names the message: its id when it is one an invocation can carry."""
    try:
        return {"message_id": str(uuid.UUID(trigger.id))}
    except ValueError:
        return {"matrix_event_id": trigger.matrix_event_id} if trigger.matrix_event_id else {}


# --- one run ---------------------------------------------------------------------------------


class Skip(Exception):
    """Nothing to answer: the run ends ``skipped`` with this reason."""

    def __init__(self, reason: SkipReason) -> None:
        self.reason = reason


class StepFailed(Exception):
    def __init__(self, step: Step, error: Failure) -> None:
        self.step, self.error = step, error


class Run:
    """One invocation's context: who and where, its deadline, its claim, timings and the outcome."""

    def __init__(self, invocation: Invocation, rt: Runtime) -> None:
        self.invocation, self.rt = invocation, rt
        payload = invocation.payload
        self.agent_id = invocation.agent_id
        self.channel_id = str(payload.channel_id)
        self.microdao_id = payload.microdao_id or rt.settings.runtime.default_microdao_id
        self.deadline = self.thinking = Deadline(rt.settings.runtime.deadline_s)
        self.timer = StepTimer()
        self.claim: tuple[str, str] | None = None  # (record key, token) while this run owns it
        self.side_effects = False  # a tool may have acted: a failed run must not run again
        self.digest: str | None = None  # of the reply this run began to post
        self.posting = False  # the reply was sent (or is being sent)
        self.tokens_today: int | None = None  # the agent's daily counter as last read, when it has a budget
        self.typing: Typing | None = None  # the caller watching the run as it goes
        self.handoff: Handoff | None = None  # the model handed the message to another agent
        self.handing_off = False  # the record is marked with the handoff, not yet sent
        self.returned = False  # the message was handed on by this agent and came back to it
        self.marked: tuple[str, ...] = ()  # the markers of a record taken over
        self.outcome = Outcome(
            status="failed", agent_id=self.agent_id, entrypoint=invocation.entrypoint, channel_id=self.channel_id
        )
        if payload.handoff:
            self.outcome.handed_off_from = payload.handoff.from_agent

    def step(self, name: Step, *, optional: bool = False) -> RunStep:
        """Time a step; a failure fails the run, or only notes it when the step is optional."""
        return RunStep(self, name, optional)

    def replied(self) -> Outcome:
        return self._end("replied")

    def handed_off(self) -> Outcome:
        return self._end("handed_off")

    def skipped(self, reason: SkipReason) -> Outcome:
        self.outcome.reason = reason
        return self._end("skipped")

    def failed(self, step: Step, error: Failure) -> Outcome:
        self.outcome.step, self.outcome.kind, self.outcome.retryable = step, error.kind, error.retryable
        self.outcome.error = str(error)
        self.outcome.retry_after_s = error.retry_after
        return self._end("failed")

    async def finish_claim(self) -> None:
        """Record the answer. The reply is out whatever the store says: its failure is only a note."""
        if self.claim:
            key, token = self.claim
            self.claim = None
            result = {"message_id": self.outcome.message_id, "llm_source": self.outcome.llm_source}
            if self.outcome.handed_off_to:
                result["handed_off_to"] = self.outcome.handed_off_to
            with self.step("idempotency", optional=True):
                await self.rt.idempotency.complete(
                    key, token, result, self.rt.settings.runtime.idempotency_complete_ttl_s
                )

    async def hold_claim(self, seconds: float) -> float:
        """Keep the marked record busy for ``seconds`` and let it go: a retry takes it over then and
        looks for this run's reply first. The wait a retry should honour."""
        if self.claim and self.digest:
            key, token = self.claim
            self.claim = None
            with self.step("idempotency", optional=True):
                await self.rt.idempotency.posting(key, token, seconds, self.digest)
        return seconds

    async def release_claim(self) -> None:
        """A run that did not post gives its message back, so a retry can answer it (or, if the
        store is down, the in-progress record expires and a retry answers then)."""
        if self.claim:
            key, token = self.claim
            self.claim = None
            with self.step("idempotency", optional=True):
                await self.rt.idempotency.release(key, token)

    def _end(self, status: str) -> Outcome:
        self.outcome.status = status  # type: ignore[assignment]
        self.outcome.timings_ms = self.timer.total()
        return self.outcome


class RunStep:
    """``with run.step(name):`` a class, not a generator: a run enters seven or more of them. Each is
    a span too, when tracing is on; a failure, even an optional step's, marks it."""

    __slots__ = ("name", "optional", "run", "span", "started")

    def __init__(self, run: Run, name: Step, optional: bool) -> None:
        self.run, self.name, self.optional = run, name, optional

    def __enter__(self) -> None:
        self.span = telemetry.span(self.name).__enter__()
        self.started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        spent = self.run.timer.add(self.name, self.started)
        if self.run.typing:
            self.run.typing.step(self.name, spent)
        self.span.__exit__(kind, exc, tb)
        if not isinstance(exc, Failure):
            return False
        if not self.optional:
            raise StepFailed(self.name, exc) from None
        self.run.outcome.notes.append(f"{self.name}_degraded: {exc.kind}")
        return True  # an optional step's failure: the run goes on without it
