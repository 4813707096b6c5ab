"""Who may see the console: with a runtime secret, a browser logs in with it once and holds a random
session token in a cookie (HttpOnly, SameSite=Strict); the secret itself never leaves the login form.
Scripts may send the secret as the function's callers do (X-Internal-Secret, Authorization: Bearer)."""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from shared.intake import authorized

COOKIE = "agent_runtime_console"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 1000  # past it, the oldest session ends: a flood of logins cannot grow the table
MAX_FAILURES = 10  # wrong secrets within FAILURE_WINDOW_S, from anyone: then logins wait
FAILURE_WINDOW_S = 60.0


class Sessions:
    """The console's sessions: tokens handed out at login, each expiring."""

    def __init__(
        self, secret: str | None, *, ttl_s: float = SESSION_TTL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.secret = secret
        self.ttl_s = ttl_s
        self._clock = clock
        self._tokens: OrderedDict[str, float] = OrderedDict()  # token -> expiry (monotonic)
        # when the last wrong secrets were tried: one table for all callers, so its size is fixed and
        # guessing from many addresses is as slow as from one (the header auth of scripts is not held)
        self._failures: deque[float] = deque(maxlen=MAX_FAILURES)

    def wait_s(self) -> float:
        """How long a login must wait: after MAX_FAILURES wrong secrets within the window, until the
        oldest of them leaves it; else nothing."""
        if len(self._failures) < MAX_FAILURES:
            return 0.0
        return max(0.0, self._failures[0] + FAILURE_WINDOW_S - self._clock())

    @property
    def open(self) -> bool:
        """No secret configured: the console asks for none (the runtime says so at start)."""
        return not self.secret

    def login(self, password: str) -> str | None:
        """A new session token for the right secret; None for a wrong one."""
        if self.secret is None or not hmac.compare_digest(password.encode(), self.secret.encode()):
            self._failures.append(self._clock())
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
