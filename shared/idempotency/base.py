"""Exactly one reply per human message: a record per (agent, triggering message).

A record moves in-progress → complete. A claim on a complete record answers its result; on a
live in-progress one, ``IN_PROGRESS``. An in-progress record expires, so a crashed worker's
invocation runs again; a failed run releases its record, so a retry can run. Just before it
posts, the owner marks its record: a run that takes over an expired record so marked learns which
reply may already be in the channel (``Claim.posted``, a digest of it), since a post is not
idempotent.
Every backend (one module each beside this one) speaks ``IdempotencyStore``.
"""

from __future__ import annotations

import hashlib
import secrets
from enum import Enum
from typing import Any, NamedTuple, Protocol


class ClaimState(Enum):
    NEW = "new"  # the caller owns the record now
    IN_PROGRESS = "in_progress"  # someone else is answering it
    COMPLETE = "complete"  # already answered


class Claim(NamedTuple):
    state: ClaimState
    token: str | None = None  # proves ownership to complete() and release()
    result: dict[str, Any] | None = None  # what the completed run recorded
    # IN_PROGRESS: seconds until the record expires. A retry sooner than that finds it in progress
    # again; a retry then answers even if its owner crashed.
    expires_in_s: float = 1.0
    # NEW over an expired record whose owners had begun to post (and then died, lost the store, or
    # were not told whether the post landed): the digests (reply_digest) of the replies that may be
    # in the channel. A record taken over keeps them, so no later run forgets one.
    posted: tuple[str, ...] = ()


class IdempotencyStore(Protocol):
    async def claim(self, key: str, in_progress_ttl_s: float) -> Claim: ...
    async def posting(self, key: str, token: str, ttl_s: float, digest: str) -> bool:
        """The owner is about to post the reply with this digest: whoever takes the record over
        after it expires is told so. Renews the claim for ``ttl_s`` (an expired claim that nobody
        took over is still the owner's). False, and nothing written, when another run took the
        record over: the caller must not post then."""

    async def complete(self, key: str, token: str, result: dict[str, Any], ttl_s: float) -> None: ...

    failing: str | None  # the failure kind of the last call to the backend; None when it answered

    async def probe(self) -> None:
        """Reach the backend once (deep health); raises ``DependencyError`` when it cannot."""

    async def release(self, key: str, token: str) -> None:
        """The owner gives the record back unanswered. One it marked as posting stays, expired, so
        whoever claims it next is told (``Claim.posted``) and looks for the reply before posting."""

    async def add_usage(self, key: str, tokens: int, ttl_s: float) -> int:
        """Add ``tokens`` to the counter ``key`` (made at zero, kept at least ``ttl_s``) and return its
        total, atomically: an agent's tokens of a day, shared wherever the records are."""


def new_token() -> str:
    """Proof of owning a claim: random, and cheaper than a UUID object."""
    return secrets.token_hex(16)


REPLY_PREFIX = 64  # characters of a reply its digest covers
MAX_MARKERS = 8  # digests a record keeps: one per run that began to post


def marked(kept: tuple[str, ...] | list[str] | str | None, digest: str | None = None) -> tuple[str, ...]:
    """A record's digests (a record written before lists were kept holds one string), plus ``digest``."""
    digests = (kept,) if isinstance(kept, str) else tuple(kept or ())
    if digest is not None and digest not in digests:
        digests = (*digests, digest)
    return digests[-MAX_MARKERS:]


def reply_digest(text: str) -> str:
    """What a marked record remembers of a reply: enough to recognise it in the channel's history
    (the service may shorten long texts there), never the text itself."""
    return hashlib.sha256(text.strip()[:REPLY_PREFIX].encode("utf-8", "surrogatepass")).hexdigest()[:32]


def record_key(agent_id: str, message_id: str) -> str:
    return f"{agent_id}/{message_id}"
