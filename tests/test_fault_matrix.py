"""The fault matrix: every dependency × every way it fails, in one table.

Each cell runs one invocation over HTTP against the stand-ins with that one fault, and checks
  * the outcome: ``replied`` (clean), ``degraded`` (replied, with the dependency's note),
    ``retryable`` (failed, 502/503/504, a retry can help) or ``final`` (424, no retry fixes it);
  * how many calls reached the dependency (``down``: none can; retried reads: ``attempts``;
    calls that are never repeated once sent: one);
  * that it ends within the invocation's deadline (a bound on the wait, not a timing assertion);
  * then, with the fault gone, the caller's retry (the bridge, SQS or Pub/Sub sending the same
    invocation again): the message ends up answered exactly once, and nothing is ever posted
    twice. A post whose answer does not say it was posted (no answer, a 5xx, garbage) is retried
    with the record marked: the retry looks for the reply in the channel and posts only if it is
    not there.

Cells covered elsewhere with other assertions: 404s and partial failures (``times=1``) in
test_pipeline.py, the providers' 429 handling in test_agents_llm.py, tool side effects in
test_agents_tools.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable
from typing import Any

import pytest

from shared import runtime
from shared.clients.memory import MemoryClient
from shared.clients.messaging import MessagingClient
from standins.server import Fault
from tests.conftest import invocation, send_again
from tests.runner_support import eventually

DEADLINE_S = 4.0
TIMEOUT_S = "0.3"
HUGE = {"pad": "x" * (5 * 1024 * 1024)}  # past the 4 MiB cap on any dependency's answer
CREATE = '{tool} create_task {"title": "Write the budget"}'  # {tool}: the run's marker

FAULTS: dict[str, Callable[[], Fault] | None] = {
    "down": None,  # nothing listens where the dependency should be
    "slow": lambda: Fault(delay_s=1.0),  # past the 0.3 s timeout; then it does answer (and a post is made)
    "5xx": lambda: Fault(status=503),
    "429": lambda: Fault(status=429, headers={"Retry-After": "1"}),
    "401": lambda: Fault(status=401),
    "malformed": lambda: Fault(malformed=True),
    "huge": lambda: Fault(status=200, body=HUGE),
}
KIND = {
    "down": "unavailable",
    "slow": "timeout",
    "5xx": "unavailable",
    "429": "unavailable",
    "401": "unauthorized",
    "malformed": "bad_response",
    "huge": "bad_response",
}
RETRYABLE_STATUS = {"unavailable": 503, "timeout": 504, "bad_response": 502}


@dataclasses.dataclass(frozen=True)
class Dependency:
    standin: str  # attribute of the stack
    route: str  # its FaultTable route
    attempts: int  # calls of a retried read; 1: never repeated once sent
    note: str | None  # the outcome's note when it is optional ("memory" → "memory_degraded: …")
    uses_tool: bool = False
    env: tuple[tuple[str, str], ...] = ()


DEPENDENCIES = {
    "history": Dependency("messaging", "history", 3, None),
    "memory query": Dependency("memory", "query", 2, "memory"),
    "memory store": Dependency("memory", "store", 1, "store"),
    "llm": Dependency("llm", "proxy", 2, "llm"),
    "llm, no fallback": Dependency("llm", "proxy", 2, None, env=(("AGENT_RUNTIME__LLM__MOCK_FALLBACK", "false"),)),
    "post": Dependency("messaging", "post", 1, None),
    "agents-service": Dependency("agents", "agent", 2, "blueprint"),
    "toolcore": Dependency("toolcore", "call", 1, None, uses_tool=True),
    "pdp": Dependency("pdp", "evaluate", 2, None, uses_tool=True),
}

# What happens: (outcome, calls reaching the dependency). "A" = the dependency's attempts.
# Optional dependencies (memory, store, llm with the mock fallback, agents-service) only ever degrade;
# a tool's failure goes back to the LLM (toolcore: "error", the PDP: "denied") and the run replies.
_READ = {
    "down": ("retryable", 0),
    "slow": ("retryable", "A"),
    "5xx": ("retryable", "A"),
    "429": ("retryable", "A"),
    "401": ("final", 1),
    "malformed": ("retryable", "A"),
    "huge": ("final", 1),
}
_OPTIONAL = {fault: ("degraded", calls) for fault, (_, calls) in _READ.items()}
EXPECTED: dict[str, dict[str, tuple[str, int | str]]] = {
    "history": _READ,
    "memory query": _OPTIONAL,
    "memory store": {fault: ("degraded", 0 if fault == "down" else 1) for fault in FAULTS},
    "llm": _OPTIONAL,
    "llm, no fallback": _READ,
    "post": {
        "down": ("retryable", 0),  # never reached the service: safe to send again
        # sent, and the answer does not say it was posted: the retry looks for the reply first
        "slow": ("retryable", 1),
        "5xx": ("retryable", 1),
        "429": ("retryable", 1),
        "401": ("final", 1),
        "malformed": ("retryable", 1),
        "huge": ("retryable", 1),
    },
    "agents-service": _OPTIONAL,
    "toolcore": {fault: ("tool error", 0 if fault == "down" else 1) for fault in FAULTS},
    "pdp": {fault: ("tool denied", calls) for fault, (_, calls) in _READ.items()},
}
# Faults after which the first run's post did land (slow: the stand-in posts once its delay is
# over): the retry finds that reply in the history and answers nothing more.
LANDED = {("post", "slow")}

# What a call leaves behind in its stand-in once answered: a slow call finishes after the run gave up
# on it, and must have finished before the next cell resets the stand-ins (or it lands there).
EFFECTS: dict[str, Callable[[Any], list]] = {
    "memory query": lambda stack: stack.memory.queries,
    "memory store": lambda stack: stack.memory.stores,
    "llm": lambda stack: stack.llm.requests,
    "llm, no fallback": lambda stack: stack.llm.requests,
    "post": lambda stack: stack.messaging.posts,
    "toolcore": lambda stack: stack.toolcore.calls,
    "pdp": lambda stack: stack.pdp.requests,
}

CELLS = [(dep, fault) for dep in DEPENDENCIES for fault in FAULTS]


def _take_down(rt: runtime.Runtime, dependency: str) -> Callable[[], None]:
    """Point one dependency (only that one: history and post share a service) at a port where
    nothing listens; returns what puts it back."""
    # a port bound but never listening: connections are refused, and nothing else can take it meanwhile
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{held.getsockname()[1]}"

    def moved(endpoint):
        return dataclasses.replace(endpoint, base_url=dead)

    swaps: list[tuple[Any, str, Any]] = {
        "history": [(rt.messaging, "history", MessagingClient(moved(rt.messaging.endpoint)).history)],
        "post": [
            (
                rt.messaging,
                "post",
                MessagingClient(moved(rt.messaging.endpoint), post_style=rt.messaging.post_style).post,
            )
        ],
        "memory query": [(rt.memory, "query", MemoryClient(moved(rt.memory.endpoint)).query)],
        "memory store": [(rt.memory, "store", MemoryClient(moved(rt.memory.endpoint)).store)],
        "llm": [(rt.llm, "endpoint", moved(rt.llm.endpoint))],
        "llm, no fallback": [(rt.llm, "endpoint", moved(rt.llm.endpoint))],
        "agents-service": [(rt.blueprints, "service", moved(rt.blueprints.service))],
        "toolcore": [(rt, "toolcore", moved(rt.toolcore))],
        "pdp": [(rt, "pdp", moved(rt.pdp))],
    }[dependency]
    saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in swaps]
    for owner, name, replacement in swaps:
        setattr(owner, name, replacement)

    def restore() -> None:
        held.close()
        for owner, name, original in saved:
            if original is None:  # a bound method stood in for the class's own
                delattr(owner, name)
            else:
                setattr(owner, name, original)

    return restore


@pytest.mark.parametrize(("dependency", "fault"), CELLS, ids=[f"{d}-{f}" for d, f in CELLS])
async def test_fault_matrix(stack, configure, client, dependency, fault):
    dep = DEPENDENCIES[dependency]
    rt = configure(
        AGENT_RUNTIME__RUNTIME__DEADLINE_S=str(DEADLINE_S),
        AGENT_RUNTIME__MESSAGING__TIMEOUT_S=TIMEOUT_S,
        AGENT_RUNTIME__MEMORY__TIMEOUT_S=TIMEOUT_S,
        AGENT_RUNTIME__LLM__TIMEOUT_S=TIMEOUT_S,
        AGENT_RUNTIME__AGENTS__TIMEOUT_S=TIMEOUT_S,
        AGENT_RUNTIME__TOOLS__TIMEOUT_S=TIMEOUT_S,
        AGENT_RUNTIME__TOOLS__PDP_TIMEOUT_S=TIMEOUT_S,
        AGENT_RUNTIME__MESSAGING__POST_SETTLE_S="0",
        **dict(dep.env),
    )
    expected, calls = EXPECTED[dependency][fault]
    calls = dep.attempts if calls == "A" else calls
    standin = getattr(stack, dep.standin)
    channel = stack.channel()
    message = stack.messaging.add_message(channel, "please make a task for the budget")
    body = invocation(channel, message_id=message["id"])
    if dep.uses_tool:
        stack.llm.script = [CREATE, "Done, or not: see the tool's result."]
    restore = _take_down(rt, dependency) if fault == "down" else None
    if fault != "down":
        standin.faults.set(dep.route, FAULTS[fault]())

    response = await asyncio.wait_for(client.post("/invoke", json=body), DEADLINE_S + 2)

    outcome = response.json()
    assert standin.faults.calls.get(dep.route, 0) == calls
    kind = KIND[fault]
    if expected == "retryable":
        assert (outcome["status"], outcome["retryable"], outcome["kind"]) == ("failed", True, kind)
        assert response.status_code == RETRYABLE_STATUS[kind]
        if fault == "429":
            assert response.headers["retry-after"] == "1"  # the dependency's Retry-After, passed on
    elif expected == "final":
        assert (outcome["status"], outcome["retryable"], response.status_code) == ("failed", False, 424)
    else:
        assert response.status_code == 200 and outcome["status"] == "replied", outcome
        if expected == "degraded":
            assert f"{dep.note}_degraded: {kind}" in outcome["notes"]
            assert outcome["llm_source"] == ("mock" if dep.note == "llm" else "llm")
        else:  # the tool failed or was denied; the LLM heard so and answered
            assert outcome["tool_calls"] == [{"tool": "create_task", "result": expected.split()[1]}]
            assert outcome["llm_source"] == "llm"
        if dependency == "pdp":
            assert stack.toolcore.calls == []  # no permit, no call
    if outcome["status"] == "failed":
        assert outcome["step"] == ("history" if dependency == "history" else "llm" if "llm" in dependency else "post")
    assert len(stack.messaging.replies_to(channel)) <= 1
    if fault == "slow" and dependency in EFFECTS:
        effect = EFFECTS[dependency]
        await eventually(lambda: len(effect(stack)) >= calls, timeout_s=5, what="the slow calls to finish")

    # the fault is gone; the caller sends the same invocation again
    if restore:
        restore()
    standin.faults.clear()
    again = await asyncio.wait_for(send_again(client, body), DEADLINE_S + 4)
    assert again.status_code == 200
    await eventually(lambda: len(stack.messaging.replies_to(channel)) >= 1, timeout_s=5, what="the reply")
    assert len(stack.messaging.replies_to(channel)) == 1  # answered exactly once: never twice, never none
    recorded = outcome["status"] == "replied" or (dependency, fault) in LANDED
    assert again.json()["status"] == ("skipped" if recorded else "replied")  # a recorded answer is a duplicate
    assert len(stack.toolcore.calls) <= 1  # a tool never runs twice for one message
