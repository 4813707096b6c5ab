"""Typed models at every boundary: what arrives, what the services answer, what a run ends in."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

AGENT_ID_PATTERN = r"^agent:[A-Za-z0-9._-]{1,128}$"
Entrypoint = Literal["channel_message", "direct", "cron"]


# --- inbound ----------------------------------------------------------------------------------


class InvocationPayload(BaseModel):
    """The router's payload; unknown keys are tolerated (and kept)."""

    model_config = ConfigDict(extra="allow")

    channel_id: UUID
    message_id: UUID | None = None
    matrix_event_id: str | None = Field(None, max_length=512)
    microdao_id: str | None = Field(None, max_length=256)
    rewrite_prompt: str | None = Field(None, max_length=2000)


class Invocation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    agent_id: str = Field(pattern=AGENT_ID_PATTERN)
    entrypoint: Entrypoint = "channel_message"
    payload: InvocationPayload


# --- dependencies ---------------------------------------------------------------------------


class Blueprint(BaseModel):
    """The runtime's own blueprint shape (seed: id, name, model, instructions, capabilities, tools)."""

    id: str
    name: str
    model: str
    instructions: str
    capabilities: dict[str, Any] = Field(default_factory=dict)
    tools: list[str] = Field(default_factory=list)


_TEXT_FIELDS = ("body", "content", "text", "content_preview")


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


class ChannelMessage(BaseModel):
    """A history element; the text may come as body, content, text or content_preview."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(min_length=1)
    matrix_event_id: str | None = None
    sender_id: str = ""
    sender_type: str = ""
    text: str = ""
    created_at: datetime

    @model_validator(mode="before")
    @classmethod
    def _pick_text(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in _TEXT_FIELDS:
                if data.get(name) is not None:
                    return {**data, "text": _as_text(data[name])}
        return data

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_str(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, UUID)) else value

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        # naive timestamps are UTC in the messaging service; comparable with aware ones
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    @property
    def by_agent(self) -> bool:
        return self.sender_type == "agent" or self.sender_id.startswith("agent:")


class MemoryItem(BaseModel):
    """A memory hit; the deployed service says content, the seed's authors read text."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    kind: str | None = None
    score: float | None = None
    content: str

    @model_validator(mode="before")
    @classmethod
    def _pick_content(cls, data: Any) -> Any:
        if isinstance(data, dict):
            value = data.get("content", data.get("text"))
            if value is not None:
                return {**data, "content": _as_text(value)}
        return data

    @field_validator("id", mode="before")
    @classmethod
    def _id_as_str(cls, value: Any) -> Any:
        return None if value is None else str(value)


# --- outbound -------------------------------------------------------------------------------

SkipReason = Literal[
    "no_human_message",  # nothing to answer
    "trigger_not_found",  # the named message is not in the recent history
    "agent_message",  # loop guard: the trigger was written by an agent
    "duplicate",  # already answered
    "nothing_to_do",  # an entrypoint with nothing to do
]
Step = Literal["blueprint", "history", "memory", "llm", "post", "store", "idempotency"]
FailureKind = Literal["timeout", "unavailable", "bad_response", "rejected", "unauthorized", "in_progress"]


class Outcome(BaseModel):
    """How a run ended: exactly one per invocation, returned to the caller and logged once."""

    status: Literal["replied", "skipped", "failed"]
    agent_id: str
    entrypoint: Entrypoint = "channel_message"
    channel_id: str | None = None
    trigger_message_id: str | None = None
    message_id: str | None = None  # the posted reply
    llm_source: Literal["llm", "mock"] | None = None
    reason: SkipReason | None = None
    step: Step | None = None
    kind: FailureKind | None = None
    retryable: bool | None = None
    error: str | None = None
    retry_after_s: float | None = None
    notes: list[str] = Field(default_factory=list)  # degradations: what the run did without
    timings_ms: dict[str, float] = Field(default_factory=dict)
