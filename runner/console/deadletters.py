"""The dead letters JetStream keeps (the stream ``<runner.stream>_DLQ``): list, replay, discard.

A replay publishes the original bytes, read from the stream by sequence, back onto the invocation
subject and then deletes the dead letter. It is safe to repeat: an invocation already answered is a
``duplicate`` to the function (its exactly-once record), never a second reply.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from shared.infra import jsoncodec

if TYPE_CHECKING:
    from nats.aio.client import Client

LIST_LIMIT = 100  # dead letters shown at once; the count says how many there are
PREVIEW_CHARS = 300
HEADERS = {
    "reason": "Agent-Runtime-Reason",
    "status": "Agent-Runtime-Status",
    "attempts": "Agent-Runtime-Attempts",
    "subject": "Agent-Runtime-Subject",
}
NO_MESSAGE = frozenset({10037, 10043, 10057})  # JetStream: no message found, sequence not found


class Gone(Exception):
    """The dead letter is no longer in the stream (replayed or discarded meanwhile)."""


class DeadLetters:
    """The DLQ stream of one bridge; ``nc`` is read when called, as the bridge connects later."""

    def __init__(self, nc: Any, stream: str, subject: str, invocation_subject: str) -> None:
        self._nc = nc  # a callable returning the bridge's connection, or None before it connects
        self.stream = stream
        self.subject = subject
        self.invocation_subject = invocation_subject

    def _js(self) -> Any:
        nc: Client | None = self._nc()
        if nc is None or not nc.is_connected:
            raise ConnectionError("NATS is not connected")
        return nc.jetstream()

    async def list(self, limit: int = LIST_LIMIT) -> dict[str, Any]:
        """The oldest ``limit`` dead letters with their headers, and how many there are."""
        import nats.js.errors

        js = self._js()
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            return {"count": 0, "letters": []}
        letters, seq = [], info.state.first_seq
        while len(letters) < min(limit, info.state.messages) and seq <= info.state.last_seq:
            try:
                raw = await js.get_msg(self.stream, seq=seq, subject=self.subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            letters.append(_letter(raw))
            seq = raw.seq + 1
        return {"count": info.state.messages, "letters": letters}

    async def replay(self, seq: int) -> None:
        """Publish the dead letter's original bytes onto its subject, then delete it."""
        import nats.js.errors

        js = self._js()
        try:
            raw = await js.get_msg(self.stream, seq=seq)
        except nats.js.errors.NotFoundError:
            raise Gone(seq) from None
        await js.publish(self.invocation_subject, raw.data or b"")  # stored by the invocation stream
        await self.discard(seq)

    async def discard(self, seq: int) -> None:
        import nats.js.errors

        try:
            await self._js().delete_msg(self.stream, seq)
        except nats.js.errors.APIError as exc:
            if exc.err_code in NO_MESSAGE:
                raise Gone(seq) from None
            raise

    async def replay_all(self) -> int:
        """Replay the dead letters there are now, not those arriving meanwhile (a replay may fail again)."""
        import nats.js.errors

        js = self._js()
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            return 0
        done, seq = 0, info.state.first_seq
        while seq <= info.state.last_seq:
            try:
                raw = await js.get_msg(self.stream, seq=seq, subject=self.subject, next=True)
            except nats.js.errors.NotFoundError:
                break
            if raw.seq > info.state.last_seq:
                break
            await js.publish(self.invocation_subject, raw.data or b"")
            with contextlib.suppress(Gone):  # another console discarded it meanwhile
                await self.discard(raw.seq)
            done += 1
            seq = raw.seq + 1
        return done


def _letter(raw: Any) -> dict[str, Any]:
    headers = raw.headers or {}
    data: bytes = raw.data or b""
    try:
        body = jsoncodec.loads(data)
    except (ValueError, RecursionError):
        body = None
    payload = body.get("payload") if isinstance(body, dict) and isinstance(body.get("payload"), dict) else {}
    status = headers.get(HEADERS["status"])
    attempts = headers.get(HEADERS["attempts"])
    return {
        "seq": raw.seq,
        "at": raw.time.timestamp() if raw.time else None,
        "reason": headers.get(HEADERS["reason"]),
        "status": int(status) if status and status.isdigit() else None,
        "attempts": int(attempts) if attempts and attempts.isdigit() else None,
        "subject": headers.get(HEADERS["subject"]),
        "agent_id": body.get("agent_id") if isinstance(body, dict) and isinstance(body.get("agent_id"), str) else None,
        "channel_id": payload.get("channel_id") if isinstance(payload.get("channel_id"), str) else None,
        "preview": data[:PREVIEW_CHARS].decode("utf-8", "replace"),
        "bytes": len(data),
    }
