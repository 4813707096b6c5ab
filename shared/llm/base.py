"""What every LLM provider shares: the request and completion types, and the ``Provider`` base.

A conversation is kept in the Chat Completions shape (``tool_calls`` on assistant turns, ``tool``
turns with the results); each provider translates it to its API. No provider SDK is imported:
each speaks HTTP through ``Endpoint`` (timeouts, retries of 429/5xx honouring Retry-After, the deadline).
A provider that ``streams`` hands the reply's text to ``on_text`` as it arrives (its ``StreamReader``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

from shared.clients.http import Endpoint
from shared.errors import DependencyError
from shared.infra import jsoncodec
from shared.infra.deadline import Deadline
from shared.infra.sse import Decoder, Event, StreamError

log = logging.getLogger("agent_runtime.llm")

if TYPE_CHECKING:
    from shared.infra.settings import LlmSettings


class ToolSpec(NamedTuple):
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments


class ToolCall(NamedTuple):
    id: str
    name: str
    arguments: dict[str, Any] | None  # None: the model sent arguments that are not a JSON object


class Usage(NamedTuple):
    """The tokens one call spent: as the provider reported them, or estimated."""

    input: int
    output: int
    estimated: bool = False


@dataclass
class Completion:
    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage | None = None  # None: the provider did not report it
    model: str | None = None  # the model that answered, as the provider named it
    finish_reason: str | None = None

    def as_message(self) -> dict[str, Any]:
        """The assistant turn that asked for the tools, to send back with their results."""
        return {
            "role": "assistant",
            "content": self.text,
            "tool_calls": [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments or {}, ensure_ascii=False)},
                }
                for c in self.tool_calls
            ],
        }


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    temperature: float
    metadata: dict[str, Any]
    tools: list[ToolSpec] = field(default_factory=list)
    allow_tools: bool = True  # False: the model must answer in text now
    tool_marker: str | None = None  # the text protocol's marker for this run (text_tools.py)


class Provider:
    """One LLM API over HTTP: ``body()`` builds its request, ``parse()`` reads its answer (usage included)."""

    name: str
    system: str  # gen_ai.provider.name on the LLM span
    path: str  # where completions are asked for
    probe_path: str  # what deep health asks
    native_tools = False  # True: tools travel as API fields, not in the system prompt
    streams = False  # True: complete() hands the reply's text to on_text as it arrives

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    @property
    def configured(self) -> bool:
        """False when no LLM is configured (its url is empty): the keyword mock is the provider then."""
        return bool(self.endpoint.base_url)

    async def complete(
        self, request: ChatRequest, deadline: Deadline, on_text: Callable[[str], None] | None = None
    ) -> Completion:
        """The model's answer; given ``on_text``, a provider that streams calls it with each piece of the
        reply's text as it arrives (the completion is the same either way)."""
        if not self.configured:
            raise DependencyError(
                "llm", "unavailable", "no LLM configured (its url is empty)", retryable=False, sent=False
            )
        body = self.body(request)
        reader = self.reader(request, on_text) if on_text is not None and self.streams else None
        if reader is not None:
            body.update(reader.asks)
        try:
            data = await self.endpoint.call("POST", self.path, deadline, json_body=body, stream=reader)
        except DependencyError as exc:
            if reader is None or exc.status != 400:
                raise
            # Refused: asked whole. If that answers, the stream's fields were what the server refuses
            # (an older API version): whole answers from now on, in this process.
            completion = await self.complete(request, deadline)
            self.streams = False
            log.warning(
                "the LLM refused a streamed request: asking for whole answers",
                extra={"fields": {"provider": self.name}},
            )
            return completion
        if reader is not None and data is None:  # it streamed (else it answered as to a plain request)
            completion = reader.completion()
        else:
            completion = self.parse(data, request) if isinstance(data, dict) else None
        if completion is None or not (completion.text.strip() or completion.tool_calls):
            raise DependencyError("llm", "bad_response", "empty completion", retryable=True)
        completion.text = completion.text.strip()
        return completion

    @classmethod
    def from_settings(cls, s: LlmSettings) -> Provider:
        """The provider with its endpoint and the auth headers its API reads."""
        raise NotImplementedError

    def body(self, request: ChatRequest) -> dict[str, Any]:
        raise NotImplementedError

    def parse(self, data: dict[str, Any], request: ChatRequest) -> Completion | None:
        """The answer as a completion; None when it is not of the API's shape."""
        raise NotImplementedError

    def reader(self, request: ChatRequest, on_text: Callable[[str], None]) -> StreamReader:
        """What reads this API's streamed answer (a provider that ``streams``)."""
        raise NotImplementedError


class StreamReader:
    """One call's streamed answer, read as it arrives: the reply's text to ``on_text`` at once, the rest
    gathered into the answer the API would have sent whole, which ``parse`` then reads."""

    asks: ClassVar[dict[str, Any]] = {}  # the request's fields that ask for a stream

    def __init__(self, provider: Provider, request: ChatRequest, on_text: Callable[[str], None]) -> None:
        self._provider, self._request, self._on_text = provider, request, on_text
        self.emitted = False  # a piece went to on_text: the call is no longer repeated
        self.rewind()

    def rewind(self) -> bool:
        """Before a retry: start over, unless a piece already went out."""
        if self.emitted:
            return False
        self._decoder = Decoder()
        self.ended = False
        self.start()
        return True

    def feed(self, chunk: bytes) -> None:
        try:
            events = self._decoder.feed(chunk)
        except StreamError:
            raise DependencyError("llm", "bad_response", "unreadable stream", retryable=True) from None
        for event in events:
            try:  # every event's data is JSON but OpenAI's last
                data = jsoncodec.loads(event.data) if event.data != "[DONE]" else None
            except ValueError:
                raise DependencyError("llm", "bad_response", "a stream event is not JSON", retryable=True) from None
            self.event(event, data)

    def text(self, piece: str) -> None:
        """A piece of the reply's text, handed on as it came."""
        if piece:
            self.emitted = True
            self._on_text(piece)

    def finish(self) -> None:
        if not self.ended:
            raise DependencyError("llm", "bad_response", "stream cut short", retryable=True)

    def completion(self) -> Completion | None:
        """The answer the stream made, as ``parse`` reads the whole one."""
        return self._provider.parse(self.answer(), self._request)

    def start(self) -> None:
        """Forget what a previous attempt gathered."""
        raise NotImplementedError

    def event(self, event: Event, data: Any) -> None:
        """One event (``data``: its JSON, None for ``[DONE]``); sets ``ended`` once the answer is whole."""
        raise NotImplementedError

    def answer(self) -> dict[str, Any]:
        """What was gathered, in the shape of the API's whole answer."""
        raise NotImplementedError


def reported_usage(data: dict[str, Any], input_key: str, output_key: str) -> Usage | None:
    """An answer's ``usage``, when it holds both counts as non-negative integers (an answer is untrusted)."""
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return None
    spent_in, spent_out = usage.get(input_key), usage.get(output_key)
    if type(spent_in) is not int or type(spent_out) is not int or spent_in < 0 or spent_out < 0:
        return None
    return Usage(spent_in, spent_out)


def text_or_none(value: Any) -> str | None:
    """A non-empty string field of an answer, else None."""
    return value if isinstance(value, str) and value else None
