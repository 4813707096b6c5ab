"""A run shown as it goes (``Accept: text/event-stream``): its steps, and its reply as it is typed.

Events: ``step`` {step, ms} as a step ends, ``delta`` {text} as the reply grows, ``reset`` {} when
what was shown is void (the round turned out to call tools, or another answer replaces it). The
deltas after the last reset always add up to the reply that is posted: pieces go out without the
leading and trailing whitespace the posted reply loses, and no further than its length limit.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

Emit = Callable[[str, dict[str, Any]], None]
_WORDS = re.compile(r"\s*\S+")


class Typing:
    """The reply as the caller sees it while it is written."""

    def __init__(self, emit: Emit, max_chars: int) -> None:
        self.emit, self.max_chars = emit, max_chars
        self.shown = ""  # what the deltas since the last reset add up to
        self._held = ""  # trailing whitespace: shown only once more text follows it

    def step(self, name: str, ms: float) -> None:
        self.emit("step", {"step": name, "ms": round(ms, 2)})

    def piece(self, text: str) -> None:
        """A piece of the model's text, as it arrives."""
        room = self.max_chars - len(self.shown)
        text = self._held + text
        if not self.shown:
            text = text.lstrip()
        body = text.rstrip()
        self._held = text[len(body) :][:room]  # whitespace past the reply's limit never shows
        body = body[:room].rstrip()  # a reply cut at its limit loses its trailing whitespace too
        if body:
            self.shown += body
            self.emit("delta", {"text": body})

    def reset(self) -> None:
        """What was shown is not the reply (a tool round, a failed stream): the caller drops it."""
        if self.shown:
            self.emit("reset", {})
        self.shown = self._held = ""

    async def settle(self, reply: str, *, in_words: bool = False, pace_s: float = 0.0) -> None:
        """Make what was shown the reply: nothing to add when the model's stream was it; else the
        reply, whole (a provider that does not stream), or word by word (the keyword mock)."""
        if self.shown == reply:
            return
        self.reset()
        for index, word in enumerate(_WORDS.findall(reply) if in_words else [reply]):
            if index and pace_s:
                await asyncio.sleep(pace_s)
            self.piece(word)
