"""The blueprint's tools for one run: what is offered to the LLM, and running the calls it makes.

Every call is checked with pdp-service first (``exec_tool``): only an explicit permit allows it,
an unreachable PDP denies. Then toolcore runs it, or the runtime itself for ``summarize_channel``.
A tool's failure goes back to the LLM as the result; it never fails the invocation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from shared import summary
from shared.clients.http import Endpoint
from shared.contracts import ChannelMessage
from shared.errors import DependencyError
from shared.infra import telemetry
from shared.infra.deadline import Deadline
from shared.llm import Completion, ToolCall, ToolSpec
from shared.llm.text_tools import new_marker, text_protocol

BUILT_IN = "summarize_channel"
HANDOFF = "handoff"  # built in: hand the message to another agent (pipeline.hand_off sends it)
HANDOFF_TOOL_ID = "agent.handoff"  # what the PDP is asked to permit
_TEXT = {"type": "string"}
SPECS = {
    "create_task": ToolSpec(
        "create_task",
        "Create a task in the DAO's task tracker.",
        {
            "type": "object",
            "properties": {"title": _TEXT, "description": _TEXT, "assignee": _TEXT, "due_date": _TEXT},
            "required": ["title"],
        },
    ),
    "create_followup": ToolSpec(
        "create_followup",
        "Schedule a follow-up reminder in this channel.",
        {"type": "object", "properties": {"text": _TEXT, "due": _TEXT}, "required": ["text"]},
    ),
    "list_projects": ToolSpec("list_projects", "List the DAO's projects.", {"type": "object", "properties": {}}),
    BUILT_IN: ToolSpec(BUILT_IN, "Digest of the channel's recent messages.", {"type": "object", "properties": {}}),
}


def spec(name: str) -> ToolSpec:
    return SPECS.get(name) or ToolSpec(name, f"The {name} tool.", {"type": "object"})


@lru_cache(maxsize=256)
def _specs(names: tuple[str, ...], targets: tuple[str, ...]) -> list[ToolSpec]:
    specs = [spec(name) for name in names if name != HANDOFF]
    if targets:
        specs.append(
            ToolSpec(
                HANDOFF,
                "Hand this message to another agent, who answers it instead of you. Use it when the "
                "question is that agent's field; then do not answer it yourself.",
                {
                    "type": "object",
                    "properties": {
                        "agent_id": {"type": "string", "enum": list(targets)},
                        "note": {"type": "string", "description": "what the other agent should know"},
                    },
                    "required": ["agent_id"],
                },
            )
        )
    return specs


class Handoff(NamedTuple):
    """A run's decision that another agent answers: which, and the note it passes on."""

    to: str
    note: str | None


@dataclass
class Toolbox:
    toolcore: Endpoint
    pdp: Endpoint
    toolcore_ids: dict[str, str]
    names: list[str]  # the blueprint's tools
    agent_id: str
    microdao_id: str
    context: dict[str, Any]  # channel, trigger: what toolcore and the PDP are told
    history: list[ChannelMessage]
    max_result_chars: int
    max_calls_per_turn: int = 3
    max_calls_per_run: int = 5
    handoff_to: tuple[str, ...] = ()  # agents the handoff tool may name; empty: not offered
    calls: list[dict[str, str]] = field(default_factory=list)  # {"tool", "result"}, for the outcome
    side_effects: bool = False  # a toolcore call may have changed something: never run this trigger again
    capped: int = 0  # calls past the caps, not run
    marker: str = field(default_factory=new_marker)  # this run's text protocol marker
    handoff: Handoff | None = None  # the handoff the model asked for, permitted
    _answers: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # a call's first answer

    @property
    def specs(self) -> list[ToolSpec]:
        return _specs(tuple(self.names), self.handoff_to)

    def text_protocol(self) -> str | None:
        """How a model without native tools is told about these, with this run's marker."""
        return text_protocol(self.specs, self.marker) if self.specs else None

    async def run(self, calls: list[ToolCall], deadline: Deadline) -> list[dict[str, Any]]:
        """The tool turns that answer ``calls``, in order. A call repeated with the same arguments gets
        its first answer and runs once per message; calls past the caps are not run, and the model is told."""
        turns, ran = [], 0
        for call in calls:
            key = (call.name, json.dumps(call.arguments, sort_keys=True, default=str))
            answer = self._answers.get(key)
            if answer is None and (ran >= self.max_calls_per_turn or len(self.calls) >= self.max_calls_per_run):
                self.capped += 1
                answer = {
                    "ok": False,
                    "error": f"not run: at most {self.max_calls_per_turn} tool calls a turn "
                    f"and {self.max_calls_per_run} a message",
                }
            elif answer is None:
                result, answer = await self._traced(call, deadline)
                self.calls.append({"tool": call.name, "result": result})
                self._answers[key] = answer
                ran += 1
            content = _fitted(answer, self.max_result_chars)
            turns.append({"role": "tool", "tool_call_id": call.id, "name": call.name, "content": content})
        return turns

    async def _traced(self, call: ToolCall, deadline: Deadline) -> tuple[str, dict[str, Any]]:
        """One call in a span of the GenAI conventions (``execute_tool``); its arguments stay out."""
        with telemetry.span(f"execute_tool {call.name}") as span:
            if span.recording:
                span.set("gen_ai.operation.name", "execute_tool")
                span.set("gen_ai.tool.name", call.name)
                span.set("gen_ai.tool.call.id", call.id)
                span.set("gen_ai.tool.type", "function")
            result, answer = await self._call(call, deadline)
            if result != "ok":
                span.fail(result)  # error or denied
        return result, answer

    async def _call(self, call: ToolCall, deadline: Deadline) -> tuple[str, dict[str, Any]]:
        if call.name == HANDOFF and self.handoff_to:
            return await self._hand_off(call.arguments, deadline)
        if call.name not in self.names or call.name == HANDOFF:
            return "error", {"ok": False, "error": f"no tool named {call.name}"}
        if call.arguments is None:
            return "error", {"ok": False, "error": "arguments must be a JSON object"}
        tool_id = BUILT_IN if call.name == BUILT_IN else self.toolcore_ids.get(call.name)
        if tool_id is None:
            return "error", {"ok": False, "error": f"{call.name} is not mapped to a toolcore tool"}
        if not await self._permitted(tool_id, deadline):
            return "denied", {"ok": False, "error": "not permitted by policy"}
        if tool_id == BUILT_IN:
            return "ok", {"ok": True, "result": summary.digest(self.history)}
        if not self.toolcore.base_url:
            return "error", {"ok": False, "error": "toolcore is not configured"}
        acted_before, self.side_effects = self.side_effects, True  # from the moment it may leave: a run
        try:  # cancelled while it is in flight must not run it again
            data = await self.toolcore.call(
                "POST",
                "/internal/tools/call",
                deadline,
                json_body={
                    "tool_id": tool_id,
                    "agent_id": self.agent_id,
                    "microdao_id": self.microdao_id,
                    "args": call.arguments,
                    "context": self.context,
                },
                retry=False,  # creating a task twice is worse than not at all
            )
        except DependencyError as exc:
            if not exc.sent:  # it provably never left: nothing acted
                self.side_effects = acted_before
            return "error", {"ok": False, "error": str(exc)}
        if not isinstance(data, dict) or not data.get("ok"):
            error = data.get("error") if isinstance(data, dict) else None
            return "error", {"ok": False, "error": str(error or "toolcore answered without ok")}
        return "ok", {"ok": True, "result": data.get("result")}

    async def _hand_off(self, arguments: dict[str, Any] | None, deadline: Deadline) -> tuple[str, dict[str, Any]]:
        """Decide the handoff (the run sends it once the model is done): a listed agent, permitted."""
        target = (arguments or {}).get("agent_id")
        if target not in self.handoff_to:
            return "error", {"ok": False, "error": f"agent_id must be one of: {', '.join(self.handoff_to)}"}
        if self.handoff is not None and self.handoff.to != target:
            return "error", {"ok": False, "error": f"already handed to {self.handoff.to}"}
        if not await self._permitted(HANDOFF_TOOL_ID, deadline, handoff_to=target):
            return "denied", {"ok": False, "error": "not permitted by policy"}
        note = (arguments or {}).get("note")
        self.handoff = Handoff(target, note[:1000] if isinstance(note, str) and note.strip() else None)
        return "ok", {"ok": True, "result": f"handed to {target}"}

    async def _permitted(self, tool_id: str, deadline: Deadline, **context: str) -> bool:
        """Only an explicit permit allows a call; no answer is a deny. ``context`` adds what the policy
        may judge by (the agent a handoff names)."""
        if not self.pdp.base_url:
            return False
        try:
            data = await self.pdp.call(
                "POST",
                "/internal/pdp/evaluate",
                deadline,
                json_body={
                    "actor": {
                        "actor_id": self.agent_id,
                        "actor_type": "agent",
                        "microdao_ids": [self.microdao_id],
                        "roles": [],
                    },
                    "action": "exec_tool",
                    "resource": {"type": "tool", "id": tool_id},
                    "context": {**self.context, **context},
                },
            )
        except DependencyError:
            return False
        return isinstance(data, dict) and data.get("effect") == "permit"

    def scheduled_summary(self) -> list[dict[str, Any]]:
        """summarize_channel run by the runtime on a schedule's behalf (no LLM asked for it): the call
        and its result as turns, so the LLM writes the summary from them."""
        call = ToolCall("scheduled", BUILT_IN, {})
        result = json.dumps({"ok": True, "result": summary.digest(self.history)}, ensure_ascii=False)
        self.calls.append({"tool": BUILT_IN, "result": "ok"})
        return [
            Completion("", [call]).as_message(),
            {"role": "tool", "tool_call_id": call.id, "name": BUILT_IN, "content": result},
        ]


def _fitted(answer: dict[str, Any], max_chars: int) -> str:
    """The answer as JSON of at most ``max_chars``, still JSON: a long result is cut as text and marked."""
    content = json.dumps(answer, ensure_ascii=False, default=str)
    if len(content) <= max_chars:
        return content
    cut = {**answer, "result": None, "error": answer.get("error") and str(answer["error"])[:200], "truncated": True}
    room = max(0, max_chars - len(json.dumps(cut, ensure_ascii=False)) - 8)
    text = json.dumps(answer.get("result"), ensure_ascii=False, default=str)
    while True:
        cut["result"] = text[:room]
        content = json.dumps(cut, ensure_ascii=False)
        if len(content) <= max_chars or room == 0:
            return content
        room = max(0, room - (len(content) - max_chars))  # escaping made it longer: cut more
