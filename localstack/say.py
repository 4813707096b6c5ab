"""``local_runner.py say "привіт"``: talk to the agent of the running local stack, as the router would.

Posts a human message into the demo channel and sends the invocation on NATS as the router does
(core NATS, no headers), as a request: in core mode the bridge answers it with the run's outcome, so
a reply, a skip or a rejection is told at once, with its reason. When the bridge streams replies
(the local stack does), the reply is printed as it is typed; a handoff is followed to the agent
that answers.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from typing import Any

from localstack.embedded import read_state
from shared.clients import http
from standins.messaging import DEMO_CHANNEL

START_HINT = "start it with: ./dev run"


def agent_id_of(name: str) -> str:
    """``helion`` is ``agent:helion``: the id the platform and the runtime know."""
    return name if name.startswith("agent:") else f"agent:{name}"


async def say(
    text: str,
    *,
    agent_id: str,
    nats_url: str | None,
    messaging_url: str | None,
    channel: str | None,
    subject: str,
    timeout_s: float,
) -> int:
    import nats
    from nats.errors import Error as NatsError
    from nats.errors import NoRespondersError

    agent_id = agent_id_of(agent_id)
    state = read_state()
    nats_url = nats_url or state.get("nats_url") or "nats://127.0.0.1:4222"
    messaging_url = (messaging_url or state.get("messaging_url") or "http://127.0.0.1:7004").rstrip("/")
    channel = channel or state.get("channel") or DEMO_CHANNEL
    history_url = f"{messaging_url}/api/messaging/channels/{channel}/messages"

    async def quiet(exc: Exception) -> None:
        """nats-py logs every failed attempt; the one line below says it."""

    try:
        async with http.session().post(history_url, json={"text": text, "sender_id": "user:you"}) as response:
            if response.status != 201:
                print(f"could not post the message: HTTP {response.status} from {messaging_url}")
                return 1
            message = await response.json()
        print(f"you: {text}")

        invocation = {
            "agent_id": agent_id,
            "entrypoint": "channel_message",
            "payload": {
                "channel_id": channel,
                "message_id": message["id"],
                "matrix_event_id": message["matrix_event_id"],
                "microdao_id": "microdao:daarion",
                "rewrite_prompt": None,
            },
        }
        nc = await nats.connect(nats_url, connect_timeout=3, max_reconnect_attempts=0, error_cb=quiet)
        typed = Typed(agent_id)
        try:
            if state.get("stream_subject"):  # any agent's reply in this channel, as it is typed
                await nc.subscribe(f"{state['stream_subject']}.*.{channel}", cb=typed.on_piece)
                typed.subscribed = True
            answer = await nc.request(subject, json.dumps(invocation).encode(), timeout=timeout_s)
            outcome = _json(answer.data)
            took = isinstance(outcome, dict) and "stream" in outcome and "seq" in outcome
            if took and typed.subscribed:  # jetstream mode: nobody answers the request; the pieces tell
                return await typed.follow_handoffs(agent_id, timeout_s)
            if isinstance(outcome, dict) and outcome.get("status") == "handed_off":
                typed.end_line()
                note = await _posted_text(history_url, outcome.get("message_id")) if outcome.get("message_id") else None
                print(f"{agent_id}: {note}" if note else f"{agent_id} handed it to {outcome.get('handed_off_to')}")
                if typed.streaming:
                    return await typed.follow_handoffs(outcome["handed_off_to"], timeout_s)
                return await _poll(
                    history_url, outcome["handed_off_to"], datetime.fromisoformat(message["created_at"]), timeout_s
                )
        except NoRespondersError:
            print(f"nothing takes invocations on {subject} at {nats_url}: is the stack running? {START_HINT}")
            return 1
        except TimeoutError:
            typed.end_line()
            print(f"no answer from {agent_id} within {timeout_s:.0f}s")
            return 1
        finally:
            await nc.close()
        typed.end_line()
        if not isinstance(outcome, dict):
            print(f"unreadable answer on {subject}: {answer.data[:200]!r}")
            return 1
        if "stream" in outcome and "seq" in outcome:  # jetstream mode: the stream took it, the bridge answers no one
            return await _poll(history_url, agent_id, datetime.fromisoformat(message["created_at"]), timeout_s)
        return await _tell(history_url, agent_id, outcome, shown=typed.shown.get(agent_id))
    except (OSError, NatsError) as exc:
        print(f"the local stack is not reachable ({type(exc).__name__}: {exc}); {START_HINT}")
        return 1
    finally:
        await http.aclose()


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


class Typed:
    """Replies as the bridge streams them (``<stream_subject>.<agent>.<channel>``), printed as they come;
    another agent's (a handoff's target) only once ``follow`` says, so the lines never interleave."""

    def __init__(self, agent_id: str) -> None:
        self.subscribed = False  # the local stack streams replies, and this listens
        self.streaming = False  # a piece arrived: the stream is on
        self.shown: dict[str, str] = {}  # agent -> its reply as typed (after the last reset)
        self.done: dict[str, list[dict[str, Any]]] = {}  # agents whose stream ended: its ends, in order
        self._live = {agent_id}  # agents whose pieces are printed at once
        self._held: dict[str, list[dict[str, Any]]] = {}  # the others' pieces, until followed
        self._line: str | None = None  # the agent whose line is open
        self._ended = asyncio.Event()

    async def on_piece(self, msg: Any) -> None:
        piece = _json(msg.data)
        if not isinstance(piece, dict) or not isinstance(piece.get("agent_id"), str):
            return
        self.streaming = True
        if piece["agent_id"] in self._live:
            self._show(piece)
        else:
            self._held.setdefault(piece["agent_id"], []).append(piece)

    def follow(self, agent_id: str) -> None:
        """Print ``agent_id``'s pieces too: those held so far, then the rest as they come."""
        self._live.add(agent_id)
        for piece in self._held.pop(agent_id, []):
            self._show(piece)

    def _show(self, piece: dict[str, Any]) -> None:
        agent = piece["agent_id"]
        if piece.get("type") == "delta":
            if self._line != agent:
                self.end_line()
                sys.stdout.write(f"{agent}: ")
                self._line = agent
            sys.stdout.write(str(piece.get("text", "")))
            sys.stdout.flush()
            self.shown[agent] = self.shown.get(agent, "") + str(piece.get("text", ""))
        elif piece.get("type") == "reset" and agent in self.shown:
            self.end_line()
            print(f"  ({agent} starts over)")
            self.shown.pop(agent)
        elif piece.get("type") == "end":
            self.done.setdefault(agent, []).append(piece)
            self._ended.set()

    async def follow_handoffs(self, agent_id: str, timeout_s: float) -> int:
        """Show what ``agent_id`` (a handoff's target) answers, and whom it hands on to in turn; 0 once
        an agent replied."""
        while True:
            self.follow(agent_id)
            await self.ended(agent_id, timeout_s)
            if not self.done.get(agent_id):
                return 1
            end = self.done[agent_id].pop(0)
            if end.get("status") == "handed_off" and isinstance(end.get("handed_off_to"), str):
                self.end_line()
                print(f"{agent_id} handed it to {end['handed_off_to']}")
                agent_id = end["handed_off_to"]
                continue
            if end.get("status") != "replied":
                self.end_line()
                print(f"{agent_id} did not answer: {end.get('status')}")
            return 0 if end.get("status") == "replied" else 1

    def end_line(self) -> None:
        if self._line is not None:
            sys.stdout.write("\n")
            self._line = None

    async def ended(self, agent_id: str, timeout_s: float) -> None:
        """Wait for ``agent_id``'s stream to end (or the timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.done.get(agent_id) and loop.time() < deadline:
            self._ended.clear()
            try:
                await asyncio.wait_for(self._ended.wait(), deadline - loop.time())
            except TimeoutError:
                break
        self.end_line()
        if not self.done.get(agent_id):
            print(f"no reply from {agent_id} within {timeout_s:.0f}s")


async def _posted_text(history_url: str, message_id: str | None) -> str | None:
    """A posted message's text, from the channel's recent history."""
    async with http.session().get(history_url, params={"limit": "50"}) as response:
        posted = {m["id"]: m for m in await response.json()}
    return posted[message_id]["content_preview"] if message_id in posted else None


async def _tell(history_url: str, agent_id: str, outcome: dict[str, Any], shown: str | None = None) -> int:
    """Print the run's outcome: the reply's text (unless it was typed out already), or why there is none."""
    status = outcome.get("status")
    if status == "replied":
        if shown is None:
            reply = await _posted_text(history_url, outcome.get("message_id"))
            print(f"{agent_id}: {reply or '(posted; not in the recent history)'}")
        for call in outcome.get("tool_calls") or []:
            print(f"  tool {call.get('tool')}: {call.get('result')}")
        for note in outcome.get("notes") or []:
            print(f"  note: {note}")
        return 0
    if status == "skipped":
        print(f"{agent_id} did not answer: {outcome.get('reason')}")
    elif status == "failed":
        print(
            f"{agent_id} could not answer: {outcome.get('error')} (step {outcome.get('step')}, {outcome.get('kind')})"
        )
    else:  # refused before any run: the function's own words (a 422 names the field and why)
        why = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in outcome.get("detail") or [])
        print(f"the invocation was rejected: {outcome.get('error') or outcome}" + (f" ({why})" if why else ""))
    return 1


async def _poll(history_url: str, agent_id: str, sent_at: datetime, timeout_s: float) -> int:
    """The reply as it appears in the channel (the stand-in has no push channel to us: look every 200 ms)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        async with http.session().get(history_url, params={"limit": "20"}) as response:
            for m in await response.json():
                if m["sender_id"] == agent_id and datetime.fromisoformat(m["created_at"]) > sent_at:
                    print(f"{agent_id}: {m['content_preview']}")
                    return 0
        await asyncio.sleep(0.2)
    print(f"no reply from {agent_id} within {timeout_s:.0f}s")
    return 1
