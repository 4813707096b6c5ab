"""Who may see the console: with a runtime secret, a browser logs in with it once and holds a random
session token in a cookie (HttpOnly, SameSite=Strict); the secret itself never leaves the login form.
Scripts may send the secret as the function's callers do (X-Internal-Secret, Authorization: Bearer)."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict

from starlette.requests import Request
from starlette.responses import Response

from shared.intake import authorized

COOKIE = "agent_runtime_console"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 1000  # past it, the oldest session ends: a flood of logins cannot grow the table


class Sessions:
    """The console's sessions: tokens handed out at login, each expiring."""

    def __init__(self, secret: str | None, *, ttl_s: float = SESSION_TTL_S) -> None:
        self.secret = secret
        self.ttl_s = ttl_s
        self._tokens: OrderedDict[str, float] = OrderedDict()  # token -> expiry (monotonic)

    @property
    def open(self) -> bool:
        """No secret configured: the console asks for none (the runtime says so at start)."""
        return not self.secret

    def login(self, password: str) -> str | None:
        """A new session token for the right secret; None for a wrong one."""
        if self.secret is None or not hmac.compare_digest(password.encode(), self.secret.encode()):
            return None
        token = secrets.token_urlsafe(32)
        self._tokens[token] = time.monotonic() + self.ttl_s
        while len(self._tokens) > MAX_SESSIONS:
            self._tokens.popitem(last=False)
        return token

    def logout(self, request: Request) -> None:
        self._tokens.pop(request.cookies.get(COOKIE, ""), None)

    def allows(self, request: Request) -> bool:
        """An open console, a live session cookie, or the secret in a header."""
        if self.open:
            return True
        token = request.cookies.get(COOKIE)
        if token is not None:
            expiry = self._tokens.get(token)
            if expiry is not None and expiry > time.monotonic():
                return True
            self._tokens.pop(token, None)
        return authorized(self.secret, request.headers) is True

    def set_cookie(self, response: Response, request: Request, token: str) -> None:
        response.set_cookie(
            COOKIE,
            token,
            max_age=int(self.ttl_s),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",  # plain http on loopback would never send a Secure cookie back
        )
