"""summarize_channel, built in: the runtime digests the channel's recent history itself."""

from __future__ import annotations

from shared.contracts import ChannelMessage

REQUEST = {
    "en": "Summarise the recent conversation in this channel for its members: the main topics, "
    "decisions and open questions. Use the channel digest from summarize_channel.",
    "uk": "Підсумуй нещодавню розмову в цьому каналі для його учасників: головні теми, рішення та "
    "відкриті питання. Використай дайджест каналу від summarize_channel.",
}


def digest(history: list[ChannelMessage], *, last: int = 30, max_chars: int = 300) -> str:
    """Who said what lately, oldest first: the material a summary is written from."""
    recent = [m for m in history if m.text.strip()][-last:]
    if not recent:
        return "The channel has no messages yet."
    people = sorted({m.sender_id or "unknown" for m in recent})
    head = (
        f"{len(recent)} messages from {len(people)} participants ({', '.join(people)}), "
        f"{recent[0].created_at:%Y-%m-%d %H:%M} to {recent[-1].created_at:%Y-%m-%d %H:%M} UTC:"
    )
    return "\n".join([head] + [f"- {m.sender_id or 'unknown'}: {m.text[:max_chars]}" for m in recent])
