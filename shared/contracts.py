"""Typed models at every boundary: what arrives, what the services answer, what a run ends in."""

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

# what messaging-service accepts as a channel member (^(user|agent):[a-z0-9-]+$), capped in length:
# any other id could never post, and no "." means no path segment like ".." either
AGENT_ID_PATTERN = r"^agent:[a-z0-9-]{1,128}$"
Entrypoint = Literal["channel_message", "direct", "cron"]
Gender = Literal["feminine", "masculine"]  # grammatical: how an agent speaks of itself


def _aware(value: datetime) -> datetime:
    # naive timestamps are UTC (the messaging service's, a scheduler's); all normalised to UTC, so
    # they compare, and one that UTC cannot hold (year 1 at +01:00) is a validation error, not a crash
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("datetime out of range in UTC") from None


UtcDatetime = Annotated[datetime, AfterValidator(_aware)]


# --- inbound ----------------------------------------------------------------------------------


class Handoff(BaseModel):
    """Set on an invocation one agent handed to another: who, why, and how many hops it has made."""

    model_config = ConfigDict(extra="ignore")

    from_agent: str = Field(pattern=AGENT_ID_PATTERN)
    note: str | None = Field(None, max_length=1000)
    hops: int = Field(ge=1, le=20)


class InvocationPayload(BaseModel):
    """The router's payload; unknown keys are tolerated (and kept)."""

    model_config = ConfigDict(extra="allow")

    channel_id: UUID
    message_id: UUID | None = None
    matrix_event_id: str | None = Field(None, max_length=512)
    microdao_id: str | None = Field(None, max_length=256)
    rewrite_prompt: str | None = Field(None, max_length=2000)
    # cron: which schedule fired when, and what to do (an instruction, or a built-in task)
    schedule_id: str | None = Field(None, pattern=r"^[A-Za-z0-9._:/-]{1,200}$")
    fire_time: UtcDatetime | None = None
    instruction: str | None = Field(None, min_length=1, max_length=4000)
    task: Literal["summarize_channel"] | None = None
    handoff: Handoff | None = None  # another agent handed this message on

    def schedule_key(self) -> str:
        """A cron run's identity: the same schedule firing at the same time runs once."""
        fired = self.fire_time.astimezone(UTC).isoformat() if self.fire_time else ""
        return f"cron:{self.schedule_id}@{fired}"


class Invocation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    agent_id: str = Field(pattern=AGENT_ID_PATTERN)
    entrypoint: Entrypoint = "channel_message"
    payload: InvocationPayload

    @field_validator("payload")
    @classmethod
    def _not_handed_to_itself(cls, payload: InvocationPayload, info: ValidationInfo) -> InvocationPayload:
        if payload.handoff and payload.handoff.from_agent == info.data.get("agent_id"):
            raise ValidationError.from_exception_data(
                "handoff",
                [
                    {
                        "type": "value_error",
                        "loc": ("handoff", "from_agent"),
                        "input": None,
                        "ctx": {"error": "an agent does not hand a message to itself"},
                    }
                ],
            )
        return payload

    @field_validator("payload")
    @classmethod
    def _cron_names_its_schedule(cls, payload: InvocationPayload, info: ValidationInfo) -> InvocationPayload:
        if info.data.get("entrypoint") != "cron":
            return payload
        missing = [name for name in ("schedule_id", "fire_time") if getattr(payload, name) is None]
        if not (payload.instruction or payload.task):
            missing.append("instruction or payload.task")  # either one: the error names both
        if missing:
            raise ValidationError.from_exception_data(
                "cron payload", [{"type": "missing", "loc": (name,), "input": None} for name in missing]
            )
        return payload


# --- dependencies ---------------------------------------------------------------------------


class PromptVariant(BaseModel):
    """An A/B variant of an agent's instructions; a channel keeps the one it was assigned."""

    name: str = Field(min_length=1, max_length=64)
    weight: float = Field(1.0, gt=0)
    instructions: str = Field(min_length=1)


class MemoryPolicy(BaseModel):
    top_k: int = Field(5, ge=1, le=50)
    writeback: bool = True


class Blueprint(BaseModel):
    """The runtime's own blueprint shape: the seed's id, name, model, instructions, capabilities,
    tools, plus language, LLM parameters, memory policy and prompt variants."""

    model_config = ConfigDict(extra="ignore")

    id: str
    name: str = Field(min_length=1, max_length=128)
    model: str = Field(min_length=1)
    instructions: str = Field(min_length=1)
    language: str | None = Field(None, max_length=32)  # the default when a message does not say
    gender: Gender | None = None  # where the language asks (Ukrainian past tense); none: impersonal phrasing
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(1000, ge=1, le=32000)
    memory: MemoryPolicy = MemoryPolicy()
    # factories are lambdas, not list/dict: pydantic reads a factory's signature, a builtin's only by
    # compiling the tokenizer's patterns, at each cold start; a literal default is deep-copied per instance
    tools: list[str] = Field(default_factory=lambda: [])
    # agents this one may hand a message to (the built-in handoff tool), and what it then posts itself
    handoff_to: list[Annotated[str, Field(pattern=AGENT_ID_PATTERN)]] = Field(default_factory=lambda: [], max_length=20)
    handoff_note: str | None = Field(None, max_length=500)  # "{agent}": the target; none: it posts nothing
    variants: list[PromptVariant] = Field(default_factory=lambda: [])
    capabilities: dict[str, Any] = Field(default_factory=lambda: {})
    active: bool = True


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
    created_at: UtcDatetime

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
    "agent_inactive",  # the agent is switched off in agents-service
    "unknown_agent",  # no source knows the agent (agents.allow_unknown is off)
]
Step = Literal["blueprint", "history", "memory", "llm", "tools", "handoff", "post", "store", "idempotency", "budget"]
BlueprintSource = Literal["agents-service", "cache", "file", "default"]
FailureKind = Literal["timeout", "unavailable", "bad_response", "rejected", "unauthorized", "in_progress"]


class TokenUsage(BaseModel):
    """The tokens one run's LLM calls spent, all tool rounds together; the mock's answers count none."""

    input_tokens: int = 0
    output_tokens: int = 0
    model: str | None = None  # the model that answered, as the provider named it
    estimated: bool = False  # True when a provider did not report usage and it was estimated


class Outcome(BaseModel):
    """How a run ended: exactly one per invocation, returned to the caller and logged once."""

    status: Literal["replied", "handed_off", "skipped", "failed"]
    agent_id: str
    entrypoint: Entrypoint = "channel_message"
    channel_id: str | None = None
    trigger_message_id: str | None = None
    message_id: str | None = None  # the posted reply (or the handoff's note)
    handed_off_to: str | None = None  # this run handed the message to that agent
    handed_off_from: str | None = None  # that agent handed the message to this run
    llm_source: Literal["llm", "mock"] | None = None
    blueprint_source: BlueprintSource | None = None
    variant: str | None = None  # the prompt variant (A/B) this channel is assigned
    prompt_tokens: int | None = None  # estimated, after fitting the context window
    usage: TokenUsage | None = None  # what the LLM calls spent (none when only the mock answered)
    trimmed: dict[str, int] = Field(default_factory=lambda: {})  # what the fitting dropped: memory items, history turns
    tool_calls: list[dict[str, str]] = Field(default_factory=lambda: [])  # {"tool", "result"}; never arguments
    reason: SkipReason | None = None
    step: Step | None = None
    kind: FailureKind | None = None
    retryable: bool | None = None
    error: str | None = None
    retry_after_s: float | None = None
    notes: list[str] = Field(default_factory=lambda: [])  # degradations: what the run did without
    timings_ms: dict[str, float] = Field(default_factory=lambda: {})
