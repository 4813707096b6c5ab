"""The console's routes on the runner's port: the page, its login, a live feed (server-sent events)
and the JSON it reads. Everything it serves is in this package: no build step, nothing from a CDN."""

from __future__ import annotations

import html
import logging
import math
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from runner.console.auth import COOKIE, Sessions
from runner.console.chat import Chat, ChatError
from runner.console.deadletters import LIST_LIMIT, DeadLetters, Gone
from runner.console.feed import Entry, Feed
from runner.console.stats import AGENT_ID
from shared.blueprints import BlueprintChain, blueprint_dir
from shared.contracts import AGENT_ID_PATTERN
from shared.infra import jsoncodec

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from runner.bridge import Bridge
    from shared.infra.settings import Settings

log = logging.getLogger("agent_runtime.runner")

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 16 * 1024  # the console's requests are small JSON or a login form
DEMO_CHANNEL = "7c72d497-27aa-4e75-bb2f-4a4a21d4f91f"  # the local stack's demo channel: the chat's default
KEEP_ALIVE_S = 15.0  # an idle event stream sends a comment this often, so proxies keep it open
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ChatRequest(BaseModel):
    agent_id: str = Field(pattern=AGENT_ID_PATTERN)
    channel_id: str
    text: str = Field(min_length=1, max_length=4000)

    @field_validator("channel_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        return str(uuid.UUID(value))


class LetterRequest(BaseModel):
    seq: int | None = Field(None, ge=1)
    all: bool = False


class Console:
    """The page and its API, reading the bridge's feed; ``routes()`` go into the status app."""

    def __init__(
        self,
        feed: Feed,
        sessions: Sessions,
        *,
        info: dict[str, Any],
        dead_letters: DeadLetters | None,
        chat: Chat,
    ) -> None:
        self.feed = feed
        self.sessions = sessions
        self.info = info
        self.dead_letters = dead_letters
        self.chat = chat

    @classmethod
    def for_bridge(cls, bridge: Bridge, s: Settings, feed: Feed) -> Console:
        """The console of this bridge, with these settings (the runtime secret guards it)."""
        secret = s.runtime.secret.get_secret_value() if s.runtime.secret else None
        messaging_secret = s.messaging.secret.get_secret_value() if s.messaging.secret else None

        def connection() -> Any:  # read at each call: the bridge connects after the console is made
            return bridge.nc

        jetstream = s.runner.mode == "jetstream"
        dead_letters = (
            DeadLetters(connection, f"{s.runner.stream}_DLQ", bridge.dead_letter_subject, bridge.subject)
            if jetstream
            else None
        )
        info = {
            "mode": s.runner.mode,
            "subject": bridge.subject,
            "dead_letter_subject": bridge.dead_letter_subject,
            "dead_letter_stream": dead_letters.stream if dead_letters else None,
            "agents": known_agents(s),
            "channel": DEMO_CHANNEL,
            "open": not secret,
        }
        chat = Chat(connection, bridge.subject, s.messaging.url, messaging_secret, feed, s.runner.request_timeout_s)
        return cls(feed, Sessions(secret), info=info, dead_letters=dead_letters, chat=chat)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/", self.page),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Mount("/console/static", StaticFiles(directory=STATIC), name="console-static"),
            Route("/console/events", self.events),
            Route("/console/api/info", self.api_info),
            Route("/console/api/outcomes", self.api_outcomes),
            Route("/console/api/agents", self.api_agents),
            Route("/console/api/dead-letters", self.api_dead_letters),
            Route("/console/api/dead-letters/replay", self.api_replay, methods=["POST"]),
            Route("/console/api/dead-letters/discard", self.api_discard, methods=["POST"]),
            Route("/console/api/chat", self.api_chat, methods=["POST"]),
        ]

    # --- the page and its login -------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        if not self.sessions.allows(request):
            return _login_page()
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=HEADERS)

    async def login(self, request: Request) -> Response:
        body = await _body(request)
        if body is None:
            return _login_page("The form was too large.", 413)
        password = parse_qs(body.decode("utf-8", "replace")).get("secret", [""])[0]
        if self.sessions.open:
            return RedirectResponse("/", 303)
        if wait := self.sessions.wait_s():  # too many wrong secrets lately: guessing is made slow
            page = _login_page(f"Too many wrong secrets: try again in {math.ceil(wait)} s.", 429)
            page.headers["Retry-After"] = str(math.ceil(wait))
            return page
        token = self.sessions.login(password)
        if token is None:
            log.warning("console: a login with a wrong secret")
            return _login_page("That is not the runtime's secret.", 403)
        response = RedirectResponse("/", 303, headers=HEADERS)
        self.sessions.set_cookie(response, request, token)
        return response

    async def logout(self, request: Request) -> Response:
        self.sessions.logout(request)
        response = RedirectResponse("/", 303, headers=HEADERS)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # --- what the page reads ----------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        """The feed as server-sent events: what the ring holds after Last-Event-ID, then each new one."""
        if not self.sessions.allows(request):
            return _denied()
        subscriber = self.feed.subscribe()
        if subscriber is None:
            return _error(503, "too many live pages: close one")
        after = _int(request.headers.get("last-event-id") or request.query_params.get("after"))

        async def stream() -> AsyncIterator[str]:
            sent = after
            try:
                yield "retry: 2000\n\n"
                for entry in self.feed.recent(after):
                    sent = entry["id"]
                    yield _event(entry)
                while True:
                    entry = await subscriber.next(KEEP_ALIVE_S)
                    if subscriber.closed:
                        return  # dropped as too slow, or the runner stops: the page reconnects
                    if entry is None:
                        yield ": keep-alive\n\n"
                    elif entry["id"] > sent:
                        sent = entry["id"]
                        yield _event(entry)
            finally:
                self.feed.unsubscribe(subscriber)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={**HEADERS, "X-Accel-Buffering": "no"}
        )

    async def api_info(self, request: Request) -> Response:
        if not self.sessions.allows(request):
            return _denied()
        return _json(self.info | {"agents": sorted({*self.info["agents"], *self._seen_agents()})})

    async def api_outcomes(self, request: Request) -> Response:
        if not self.sessions.allows(request):
            return _denied()
        return _json({"outcomes": self.feed.recent(_int(request.query_params.get("after")))})

    async def api_agents(self, request: Request) -> Response:
        if not self.sessions.allows(request):
            return _denied()
        return _json({"agents": self.feed.stats.summary()})

    async def api_dead_letters(self, request: Request) -> Response:
        if not self.sessions.allows(request):
            return _denied()
        if self.dead_letters is None:
            return _json({"kept": False, "count": 0, "letters": []})
        try:
            limit = min(LIST_LIMIT, _int(request.query_params.get("limit", str(LIST_LIMIT))))
            return _json({"kept": True, **await self.dead_letters.list(limit)})
        except Exception as exc:  # NATS away or JetStream refusing: say so, the page stays up
            return _error(503, f"dead letters unavailable: {type(exc).__name__}: {exc}")

    async def api_replay(self, request: Request) -> Response:
        return await self._letters(request, replay=True)

    async def api_discard(self, request: Request) -> Response:
        return await self._letters(request, replay=False)

    async def _letters(self, request: Request, *, replay: bool) -> Response:
        if not self.sessions.allows(request):
            return _denied()
        if (bad := _not_json(request)) is not None:
            return bad
        if self.dead_letters is None:
            return _error(409, "dead letters are kept in jetstream mode only")
        parsed = await _parse(request, LetterRequest)
        if isinstance(parsed, Response):
            return parsed
        try:
            if parsed.all and replay:
                return _json({"replayed": await self.dead_letters.replay_all()})
            if parsed.seq is None:
                return _error(422, "seq: required (or all, to replay every one)")
            if replay:
                await self.dead_letters.replay(parsed.seq)
                return _json({"replayed": 1})
            await self.dead_letters.discard(parsed.seq)
            return _json({"discarded": 1})
        except Gone:
            return _error(404, f"dead letter {parsed.seq} is gone (replayed or discarded already)")
        except Exception as exc:
            return _error(503, f"dead letters unavailable: {type(exc).__name__}: {exc}")

    async def api_chat(self, request: Request) -> Response:
        if not self.sessions.allows(request):
            return _denied()
        if (bad := _not_json(request)) is not None:
            return bad
        parsed = await _parse(request, ChatRequest)
        if isinstance(parsed, Response):
            return parsed
        try:
            said = await self.chat.say(parsed.agent_id, parsed.channel_id, parsed.text)
        except ChatError as exc:
            return _error(424, str(exc))
        return _json(said)

    def _seen_agents(self) -> set[str]:
        return {e["agent_id"] for e in self.feed.recent() if e["agent_id"] and AGENT_ID.fullmatch(e["agent_id"])}


def known_agents(s: Settings) -> list[str]:
    """The agents a chat may pick by default: one per blueprint file, and those configured as known."""
    files = BlueprintChain(s, None, blueprint_dir(s)).files()  # the agents of the valid files, by their ids
    return sorted({*files, *s.agents.known})


def _login_page(error: str = "", status: int = 200) -> HTMLResponse:
    page = (STATIC / "login.html").read_text(encoding="utf-8")
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return HTMLResponse(page.replace("<!--error-->", message), status_code=status, headers=HEADERS)


def _event(entry: Entry) -> str:
    return f"id: {entry['id']}\nevent: outcome\ndata: {jsoncodec.dumps(entry).decode()}\n\n"


def _json(body: Any, status: int = 200) -> Response:
    return Response(jsoncodec.dumps(body), status_code=status, media_type="application/json", headers=HEADERS)


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _denied() -> Response:
    return _error(401, "log in first (or send X-Internal-Secret)")


def _int(value: str | None) -> int:
    return int(value) if value and value.isdigit() and len(value) < 19 else 0


def _not_json(request: Request) -> Response | None:
    """A POST of the API must be JSON: a form on another site cannot send that without asking first."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return _error(415, "send application/json")
    return None


async def _body(request: Request) -> bytes | None:
    """The request's body, or None past ``MAX_BODY``."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    body = await _body(request)
    if body is None:
        return _error(413, f"body larger than {MAX_BODY} bytes")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        return _error(422, fields)
