"""Server-sent events (text/event-stream): the one encoder and decoder of the runtime.

The function streams its run with them, the LLM APIs stream their answers with them, and the bridge
reads the function's; all three use this module.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from shared.infra import jsoncodec

MEDIA_TYPE = "text/event-stream"
MAX_EVENT_BYTES = 1024 * 1024  # an event that never ends is a broken stream, not a growing buffer


class Event(NamedTuple):
    name: str  # "message" when the stream did not name it
    data: str


def encode(name: str, data: Any) -> bytes:
    """One event, its data as JSON on one line (JSON never holds a raw line break)."""
    return b"event: " + name.encode() + b"\ndata: " + jsoncodec.dumps(data) + b"\n\n"


def wants_stream(accept: str | None) -> bool:
    """Does an ``Accept`` header ask for an event stream?"""
    return bool(accept) and MEDIA_TYPE in accept.lower()  # type: ignore[union-attr]


class StreamError(ValueError):
    """The bytes are not an event stream this decoder can keep reading."""


class Decoder:
    """Bytes in as they arrive, whole events out; comments, ``id`` and ``retry`` fields are skipped."""

    def __init__(self) -> None:
        self._pending = b""  # an unfinished line
        self._name = ""
        self._data: list[str] = []
        self._size = 0  # the event so far, each line counting at least one byte

    def feed(self, chunk: bytes) -> list[Event]:
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        events: list[Event] = []
        for raw in lines:
            self._line(raw.rstrip(b"\r").decode("utf-8", "replace"), events)
        if self._size + len(self._pending) > MAX_EVENT_BYTES:
            raise StreamError("an event larger than the limit")
        return events

    def _line(self, line: str, events: list[Event]) -> None:
        if not line:  # a blank line ends an event
            if self._data:
                events.append(Event(self._name or "message", "\n".join(self._data)))
            self._name, self._data, self._size = "", [], 0
            return
        self._size += len(line) + 1
        if line.startswith(":"):
            return
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
