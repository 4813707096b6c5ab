"""How a dependency call goes over the wire: two transports behind one small interface.

``send(method, url, headers, body, timeout_s, max_bytes, on_chunk=None) -> Reply`` raises ``ConnectFailed``
(the request never left), ``Timeout``, ``Disconnected`` (it may have arrived) or ``TooLarge``. Given
``on_chunk``, a 2xx event stream (an LLM's answer) is handed to it piece by piece as it arrives, not
kept (its Reply's body is empty); it ends when its connection does, however it was framed: whether it
is whole is for its reader to tell (an event stream ends with its own last event). What ``on_chunk``
raises is the call's error, as raised.

- ``PlainHttp`` for ``http://`` services (DAARION's own, inside its network): HTTP/1.1 over pooled
  keep-alive connections, responses parsed by httptools (the C parser uvicorn serves with). It
  imports nothing heavy, which is most of a cold start's saving.
- ``AioHttp`` for ``https://`` (an LLM vendor's API): aiohttp with its TLS, imported on first use.

One of each per event loop, made on first use; ``aclose()`` closes the running loop's.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

from shared.infra import sse

if TYPE_CHECKING:
    import aiohttp


class Reply(NamedTuple):
    status: int
    retry_after: str | None
    body: bytes


class TransportError(Exception):
    """The call gave no usable answer; ``sent`` is False only when the request never left."""

    sent = True


class ConnectFailed(TransportError):
    sent = False


class Timeout(TransportError):
    pass


class Disconnected(TransportError):
    pass


class TooLarge(TransportError):
    pass


# --- plain HTTP/1.1 ------------------------------------------------------------------------------


MAX_HEADER_BYTES = 64 * 1024
IDLE_S = 4.0  # a pooled connection idle longer is closed, not reused: servers close theirs after a few seconds
MAX_IDLE_PER_HOST = 32
_EVENT_STREAM = sse.MEDIA_TYPE.encode()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request at a time, its response parsed as it arrives."""

    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.written = False  # the current request reached the socket
        self.idle_since = 0.0
        self.reusable = False
        self._waiter: asyncio.Future[Reply] | None = None
        self._on_chunk: Callable[[bytes], None] | None = None
        self._reset(0)

    def _reset(self, max_bytes: int) -> None:
        self._error: Exception | None = None  # what a callback found wrong
        self._body: list[bytes] = []
        self._size = self._header_bytes = 0
        self._max_bytes = max_bytes
        self._retry_after: str | None = None
        self._delimited = False  # Content-Length or chunked: else the body ends when the server closes
        self._headers_done = False
        self._event_stream = False  # its Content-Type says so, and the caller takes one (on_chunk)
        self._stream_to: Callable[[bytes], None] | None = None  # on_chunk, when this answer's body goes to it

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a request is one write: nothing to gain from Nagle but a delayed ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self._close()  # nothing was asked: a server that talks out of turn is not reused
            return
        try:
            self._parser.feed_data(data)
        except Exception as exc:  # not HTTP, or a callback's verdict (httptools wraps it)
            self._fail(self._error or Disconnected(f"unreadable answer: {type(exc).__name__}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        # a body that ends with the connection is complete; a stream's reader tells whether it is whole
        if self._headers_done and (self._stream_to is not None or not self._delimited):
            self._answer()
        self._fail(Disconnected("the server closed the connection"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._waiter is not None and self._waiter.done():  # bytes after the answer: never reuse this one
            self._error = Disconnected("the server sent more than one answer")
            raise self._error

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._error = TooLarge("answer's headers too large")
            raise self._error
        lowered = name.lower()
        if lowered == b"retry-after":
            self._retry_after = value.decode("latin-1")
        elif lowered == b"content-length":
            self._delimited = True
            if value.isdigit() and int(value) > self._max_bytes:
                self._error = TooLarge("answer too large")
                raise self._error
        elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
            self._delimited = True
        elif self._on_chunk is not None and lowered == b"content-type":
            self._event_stream = value.lower().startswith(_EVENT_STREAM)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status in (204, 304):
            self._delimited = True  # no body, whatever the headers say
        self._headers_done = True
        if self._event_stream and 200 <= status < 300:  # an error's body is read whole, as any other
            self._stream_to = self._on_chunk

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_bytes:
            self._error = TooLarge("answer too large")
            raise self._error
        if self._stream_to is None:
            self._body.append(body)
            return
        try:
            self._stream_to(body)
        except Exception as exc:  # the reader's verdict on what arrived: the call's error
            self._error = exc
            raise

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:  # an interim answer (100, 103): the real one follows
            self._reset(self._max_bytes)
            return
        self.reusable = self._parser.should_keep_alive()
        self._answer()

    def _answer(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(Reply(self._parser.get_status_code(), self._retry_after, b"".join(self._body)))

    # the caller's side
    def request(
        self, head: bytes, body: bytes | None, max_bytes: int, on_chunk: Callable[[bytes], None] | None
    ) -> asyncio.Future[Reply]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._on_chunk = on_chunk
        self._reset(max_bytes)
        self.reusable = False
        self.transport.write(head + body if body else head)
        self.written = True
        return self._waiter

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self._close()

    def _close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class PlainHttp:
    """Pooled keep-alive connections per host, each idle at most ``IDLE_S``; no limit on connections in
    use (the caller bounds concurrency), at most ``MAX_IDLE_PER_HOST`` kept idle."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._closed = False

    async def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout_s: float,
        max_bytes: int,
        on_chunk: Callable[[bytes], None] | None = None,
    ) -> Reply:
        host, port, head = _request_head(method, url, headers, body)
        loop = asyncio.get_running_loop()
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(timeout_s):
                connection = self._take(host, port, loop.time())
                if connection is None:
                    try:
                        _, connection = await loop.create_connection(_Connection, host, port)
                    except OSError as exc:
                        raise ConnectFailed(f"cannot connect ({exc.strerror or 'refused'})") from None
                reply = await connection.request(head, body, max_bytes, on_chunk)
        except TimeoutError:
            if connection is None or not connection.written:
                raise ConnectFailed(f"could not connect within {timeout_s:.1f}s") from None
            connection._close()
            raise Timeout(f"no answer within {timeout_s:.1f}s") from None
        except BaseException:  # cancelled, or failed: a connection with a request in the air is not reused
            if connection is not None:
                connection._close()
            raise
        idle = self._idle.setdefault((host, port), deque())
        if connection.reusable and not self._closed and len(idle) < MAX_IDLE_PER_HOST:
            connection.written, connection.idle_since = False, loop.time()
            idle.append(connection)
        else:
            connection._close()
        return reply

    def _take(self, host: str, port: int, now: float) -> _Connection | None:
        idle = self._idle.get((host, port))
        while idle:
            connection = idle.pop()  # the most recent: the least likely to have been closed by the server
            fresh = now - connection.idle_since < IDLE_S
            transport = connection.transport
            if fresh and connection.reusable and transport is not None and not transport.is_closing():
                return connection
            connection._close()
        return None

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection._close()
        self._idle.clear()


def _request_head(method: str, url: str, headers: dict[str, str], body: bytes | None) -> tuple[str, int, bytes]:
    """Where to connect, and the request's head; what cannot be sent safely is refused, never sent."""
    if method == "HEAD":
        raise ConnectFailed("HEAD is not supported")  # its answer has no body: the parser would wait for one
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ConnectFailed("a service URL carries no user:password (its secret setting does)")
    host, port = parts.hostname or "", parts.port or 80
    authority = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    text = "\r\n".join(lines)
    if text.count("\n") != len(lines) - 1 or text.count("\r") != len(lines) - 1:
        raise ConnectFailed("a header value holds a line break")  # a configured secret, say: never sent
    try:
        return host, port, (text + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise ConnectFailed("a header value is not latin-1") from None


# --- HTTPS, through aiohttp ----------------------------------------------------------------------


class AioHttp:
    """aiohttp's pooled session (TLS); imported when the first https:// call is made."""

    def __init__(self) -> None:
        import aiohttp

        # No connection limit: what bounds concurrency is the caller (the bridge's max_in_flight,
        # the platform's requests per instance), not a second, hidden cap here.
        self.session: aiohttp.ClientSession = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30), auto_decompress=True
        )

    async def send(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        timeout_s: float,
        max_bytes: int,
        on_chunk: Callable[[bytes], None] | None = None,
    ) -> Reply:
        import aiohttp

        try:
            async with self.session.request(
                method,
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                streams = 200 <= response.status < 300 and response.content_type == sse.MEDIA_TYPE
                body = await _read(response, max_bytes, on_chunk if streams else None)
                return Reply(response.status, response.headers.get("Retry-After"), body)
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(f"cannot connect ({exc.os_error.strerror or 'refused'})") from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise Timeout(f"no answer within {timeout_s:.1f}s") from None
        except aiohttp.ClientError as exc:
            raise Disconnected(f"connection failed: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        await self.session.close()


async def _read(
    response: aiohttp.ClientResponse, max_bytes: int, on_chunk: Callable[[bytes], None] | None = None
) -> bytes:
    """The body, or with ``on_chunk`` nothing: each piece went to it as it arrived."""
    import aiohttp

    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise TooLarge("answer too large")
    if declared is not None and on_chunk is None:  # the usual case: one read of a size known to be within the cap
        return await response.read()
    chunks: list[bytes] = []
    take = on_chunk or chunks.append
    size = 0
    try:
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge("answer too large")
            take(chunk)
    except aiohttp.ClientPayloadError:
        if on_chunk is None:
            raise
        # a stream cut short: its reader tells, by the last event it saw
    return b"".join(chunks)


# --- one of each per event loop ------------------------------------------------------------------

_transports: dict[asyncio.AbstractEventLoop, dict[str, Any]] = {}


def for_url(url: str) -> PlainHttp | AioHttp:
    """The running loop's transport for this URL's scheme, made on first use."""
    loop = asyncio.get_running_loop()
    mine = _transports.get(loop)
    if mine is None:
        mine = _transports[loop] = {}
        for gone in [other for other in _transports if other.is_closed()]:
            del _transports[gone]
    scheme = url[: url.find(":")].lower()
    if scheme not in ("http", "https"):
        raise ConnectFailed(f"not an http(s) URL: {scheme or url[:20]}")
    transport = mine.get(scheme)
    if transport is None:
        transport = mine[scheme] = AioHttp() if scheme == "https" else PlainHttp()
    return transport


def aiohttp_session() -> aiohttp.ClientSession:
    """The running loop's aiohttp session, for the callers that want aiohttp's API (the bridge, say)."""
    transport = for_url("https:")
    assert isinstance(transport, AioHttp)
    return transport.session


async def aclose() -> None:
    """Close the running loop's transports (tests, shutdown)."""
    for transport in (_transports.pop(asyncio.get_running_loop(), None) or {}).values():
        await transport.aclose()
