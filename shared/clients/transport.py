"""How a dependency call goes over the wire: two transports behind one small interface.

``send(method, url, headers, body, timeout_s, max_bytes) -> Reply`` raises ``ConnectFailed`` (the
request never left), ``Timeout``, ``Disconnected`` (it may have arrived) or ``TooLarge``.

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
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

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


class _Connection(asyncio.Protocol):
    """One keep-alive connection: a request at a time, its response parsed as it arrives."""

    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpResponseParser(self)
        self._error: TransportError | None = None  # what a callback found wrong
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Reply] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._max_bytes = 0
        self._retry_after: str | None = None
        self.reusable = False

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
        self._fail(Disconnected("the server closed the connection"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"retry-after":
            self._retry_after = value.decode("latin-1")
        elif lowered == b"content-length" and value.isdigit() and int(value) > self._max_bytes:
            self._error = TooLarge("answer too large")
            raise self._error

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max_bytes:
            self._error = TooLarge("answer too large")
            raise self._error
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self._parser.should_keep_alive()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(Reply(self._parser.get_status_code(), self._retry_after, b"".join(self._body)))

    # the caller's side
    def request(self, head: bytes, body: bytes | None, max_bytes: int) -> asyncio.Future[Reply]:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._body, self._size, self._max_bytes, self._retry_after, self._error = [], 0, max_bytes, None, None
        self.reusable = False
        self.transport.write(head + body if body else head)
        return self._waiter

    def _fail(self, exc: TransportError) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self._close()

    def _close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class PlainHttp:
    """Pooled keep-alive connections per host; no limit on their number (the caller bounds concurrency)."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._closed = False

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout_s: float, max_bytes: int
    ) -> Reply:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 80
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        loop = asyncio.get_running_loop()
        connection: _Connection | None = None
        try:
            async with asyncio.timeout(timeout_s):
                connection = self._take(host, port)
                if connection is None:
                    try:
                        _, connection = await loop.create_connection(_Connection, host, port)
                    except OSError as exc:
                        raise ConnectFailed(f"cannot connect ({exc.strerror or 'refused'})") from None
                reply = await connection.request(head, body, max_bytes)
        except TimeoutError:
            if connection is not None:
                connection._close()
            raise Timeout(f"no answer within {timeout_s:.1f}s") from None
        except BaseException:  # cancelled, or failed: a connection with a request in the air is not reused
            if connection is not None:
                connection._close()
            raise
        if connection.reusable and not self._closed:
            self._idle.setdefault((host, port), deque()).append(connection)
        else:
            connection._close()
        return reply

    def _take(self, host: str, port: int) -> _Connection | None:
        idle = self._idle.get((host, port))
        while idle:
            connection = idle.pop()  # the most recent: the least likely to have been closed by the server
            if connection.reusable and connection.transport is not None and not connection.transport.is_closing():
                return connection
        return None

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection._close()
        self._idle.clear()


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
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout_s: float, max_bytes: int
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
                return Reply(response.status, response.headers.get("Retry-After"), await _read(response, max_bytes))
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(f"cannot connect ({exc.os_error.strerror or 'refused'})") from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise Timeout(f"no answer within {timeout_s:.1f}s") from None
        except aiohttp.ClientError as exc:
            raise Disconnected(f"connection failed: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        await self.session.close()


async def _read(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    declared = response.content_length
    if declared is not None:  # the usual case: one read of a size known to be within the cap
        if declared > max_bytes:
            raise TooLarge("answer too large")
        return await response.read()
    chunks, size = [], 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge("answer too large")
        chunks.append(chunk)
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
    scheme = "https" if url.startswith("https:") else "http"
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
