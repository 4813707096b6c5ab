"""How this process reaches NATS as deployed: credentials and TLS from the ``nats`` settings, once.

The bridge's connection and the idempotency store's are both made by ``connect``, with the
options ``connect_options`` derives from the settings: user and password, a token, a ``.creds``
file (JWT and NKey seed), an NKey seed file, TLS with a private CA and a client certificate.
(A URL may also carry ``user:password@`` or ``token@``; nats-py reads those itself.)

nats-py retries a refused first connection as patiently as an unreachable server, so a wrong
password would look like a NATS outage forever. ``connect`` stops at a refusal of the
credentials or of the TLS handshake with ``NatsRefused``, whose message says which settings to
check; it never holds a secret. An unreachable server is still waited for. And where TLS is
asked for (a ``tls://`` URL, a TLS setting) but the server offers none, nats-py would carry on
unencrypted: ``connect`` refuses that connection too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from shared.infra.observability import redact_url

if TYPE_CHECKING:
    from nats.aio.client import Client

    from shared.infra.settings import NatsSettings

log = logging.getLogger("agent_runtime.nats")

# nats-server's words for credentials it will not take (its -ERR lines, compared in lower case)
_REFUSED_CREDENTIALS = ("authorization violation", "authentication expired", "authentication revoked")
# an ended or interrupted TLS stream is a network failure, not a verdict on the certificates
_TLS_INTERRUPTED = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_CREDENTIAL_SETTINGS = "nats.user and nats.password, nats.token, nats.creds_file, nats.nkey_seed_file, the URL"


class NatsRefused(RuntimeError):
    """NATS refused this client's credentials or TLS: no retry helps; the message names what to check."""


def connect_options(n: NatsSettings) -> dict[str, Any]:
    """``nats.connect``'s keyword arguments for the credentials and TLS ``n`` names (files are checked now)."""
    options: dict[str, Any] = {}
    password = n.password.get_secret_value() if n.password else ""
    token = n.token.get_secret_value() if n.token else ""
    if password and not n.user:
        raise ValueError("nats.password is set without nats.user")
    if n.creds_file and n.nkey_seed_file:
        raise ValueError("nats.creds_file and nats.nkey_seed_file are both set: a user has one or the other")
    if n.user:
        options["user"] = n.user
    if password:
        options["password"] = password
    if token:
        options["token"] = token
    if n.creds_file:
        options["user_credentials"] = _readable(n.creds_file, "nats.creds_file")
    if n.nkey_seed_file:
        options["nkeys_seed"] = _readable(n.nkey_seed_file, "nats.nkey_seed_file")
    context = tls_context(n)
    if context is not None:
        options["tls"] = context
    return options


def tls_context(n: NatsSettings) -> ssl.SSLContext | None:
    """TLS as ``n`` configures it; None leaves nats-py's default (the system's CAs, for ``tls://`` URLs)."""
    if not (n.tls_ca_file or n.tls_cert_file or n.tls_key_file):
        return None
    if n.tls_key_file and not n.tls_cert_file:
        raise ValueError("nats.tls_key_file is set without nats.tls_cert_file")
    ca = _readable(n.tls_ca_file, "nats.tls_ca_file") if n.tls_ca_file else None
    try:
        context = ssl.create_default_context(cafile=ca)
    except ssl.SSLError as exc:
        raise ValueError(f"nats.tls_ca_file: not a PEM certificate ({exc.reason})") from None
    if n.tls_cert_file:
        cert = _readable(n.tls_cert_file, "nats.tls_cert_file")
        key = _readable(n.tls_key_file, "nats.tls_key_file") if n.tls_key_file else None
        try:
            context.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise ValueError(f"nats.tls_cert_file / nats.tls_key_file: unusable ({exc.reason})") from None
    return context


def refusal(exc: BaseException) -> str | None:
    """Why the server turned this client away for good, or None when a retry may connect."""
    from nats.errors import AuthorizationError

    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"its certificate failed verification ({exc.verify_message}): check nats.tls_ca_file and the URL's host"
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, _TLS_INTERRUPTED):
        return f"the TLS handshake failed ({exc.reason}): check nats.tls_cert_file and nats.tls_key_file"
    text = str(exc)
    if isinstance(exc, AuthorizationError) or any(words in text.lower() for words in _REFUSED_CREDENTIALS):
        return f"it refused the credentials ({text.removeprefix('nats: ')}): check {_CREDENTIAL_SETTINGS}"
    return None


async def connect(
    servers: list[str],
    auth: dict[str, Any],
    *,
    error_cb: Callable[[Exception], Awaitable[None]] | None = None,
    **options: Any,
) -> Client:
    """``nats.connect(servers, **auth, **options)``, but a refusal at the first connection raises NatsRefused."""
    from nats.aio.client import Client

    nc = Client()
    connected = refused = False
    where = ", ".join(redact_url(s) for s in servers)
    wants_tls = "tls" in auth or any(urlsplit(s.strip()).scheme == "tls" for s in servers)

    async def on_error(exc: Exception) -> None:
        nonlocal refused
        if refused:  # the client being closed after a refusal: already said
            return
        why = None if connected else refusal(exc)
        if why:  # raised inside nats-py's connect loop, it ends the loop
            refused = True
            raise NatsRefused(f"NATS at {where}: {why}")
        if error_cb is not None:
            await error_cb(exc)
        else:
            log.warning("NATS error", extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}})

    def unless_refused(callback: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def call() -> None:
            if not refused:  # a refused client was never connected: no "disconnected" to report
                await callback()

        return call

    for name in ("disconnected_cb", "closed_cb"):
        if options.get(name) is not None:
            options[name] = unless_refused(options[name])
    try:
        await nc.connect(servers=servers, error_cb=on_error, **auth, **options)
    except NatsRefused:
        # closes the socket at once; waiting for it to be closed can hang after a failed TLS handshake
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 1)
        raise
    connected = True
    if wants_tls and not _encrypted(nc):
        await nc.close()
        raise NatsRefused(f"NATS at {where}: it offers no TLS, asked for: check nats.url, nats.tls_* and the server")
    return nc


def _encrypted(nc: Client) -> bool:
    """Whether the connection runs over TLS (nats-py keeps its transport to itself)."""
    writer = getattr(getattr(nc, "_transport", None), "_io_writer", None)
    return writer is not None and writer.get_extra_info("ssl_object") is not None


def _readable(path: str, setting: str) -> str:
    """``path``, once it is known to be a readable file: nats-py would otherwise retry a typo forever."""
    try:
        with Path(path).open("rb"):
            return path
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
