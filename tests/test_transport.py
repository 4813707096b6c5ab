"""The plain-HTTP transport against a raw server that answers exactly the bytes each test scripts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from shared.clients import transport
from shared.clients.transport import AioHttp, ConnectFailed, Disconnected, PlainHttp, Timeout, TooLarge
from tests.conftest import free_port

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawServer:
    """Answers each request with ``answer(n)`` (n counts requests from 1); records heads and connections.
    An answer in parts is written a part at a time, each once the client ``took`` the one before."""

    def __init__(self, answer: Callable[[int], bytes | list[bytes] | None]) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.connections = 0
        self.port = free_port()
        self.took = asyncio.Event()

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")), 0
                )
                await reader.readexactly(length)
                self.heads.append(head)
                answer = self.answer(len(self.heads))
                if answer is None:  # say nothing, keep the connection until the test ends
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.sleep(30)
                    writer.close()
                    return
                parts = answer if isinstance(answer, list) else [answer]
                for n, part in enumerate(parts):
                    if n:
                        await self.took.wait()
                        self.took.clear()
                    writer.write(part)
                    await writer.drain()
                if b"Connection: close" in parts[0] or parts[-1].endswith(b"#close"):
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def url(self, path: str = "/x") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


async def send(http: PlainHttp, url: str, **kw) -> transport.Reply:
    return await http.send(kw.pop("method", "GET"), url, kw.pop("headers", {}), kw.pop("body", None), 2.0, 1024)


async def test_a_keep_alive_connection_is_reused_and_an_old_idle_one_is_not(monkeypatch):
    async with RawServer(lambda n: OK) as server:
        http = PlainHttp()
        assert (await send(http, server.url())).body == b"ok"
        assert (await send(http, server.url())).body == b"ok"
        assert server.connections == 1
        monkeypatch.setattr(transport, "IDLE_S", 0.0)
        assert (await send(http, server.url())).body == b"ok"
        assert server.connections == 2
        await http.aclose()


async def test_a_body_that_ends_with_the_connection_is_complete():
    async with RawServer(lambda n: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end#close") as server:
        reply = await send(PlainHttp(), server.url())
    assert (reply.status, reply.body) == (200, b"until the end#close")


async def test_bytes_after_the_answer_never_reach_the_next_request():
    async with RawServer(lambda n: OK + b"HTTP/1" if n == 1 else OK) as server:
        http = PlainHttp()
        first = await send(http, server.url())
        second = await send(http, server.url())
        await http.aclose()
    assert first.body == b"ok" and second.body == b"ok" and server.connections == 2


async def test_an_interim_answer_is_not_the_answer():
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    async with RawServer(lambda n: interim + b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone") as server:
        reply = await send(PlainHttp(), server.url(), method="POST", body=b"{}")
    assert (reply.status, reply.body) == (201, b"done")


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,  # declared
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"800\r\n" + b"x" * 2048 + b"\r\n" * 2,  # chunked
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"h" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n",  # headers
    ],
)
async def test_what_is_over_the_caps_is_refused(answer):
    async with RawServer(lambda n: answer) as server:
        with pytest.raises(TooLarge):
            await send(PlainHttp(), server.url())


async def test_the_host_header_names_the_host_and_nothing_else_reaches_the_wire():
    async with RawServer(lambda n: OK) as server:
        http = PlainHttp()
        await send(http, server.url("/p?q=1"), headers={"X-Internal-Secret": "s"})
        with pytest.raises(ConnectFailed):
            await send(http, f"http://user:pw@127.0.0.1:{server.port}/p")
        with pytest.raises(ConnectFailed):
            await send(http, server.url(), headers={"X-Internal-Secret": "s\r\nX-Injected: 1"})
        with pytest.raises(ConnectFailed):
            await send(http, server.url(), method="HEAD")
        await http.aclose()
    [head] = server.heads
    assert head.startswith(b"GET /p?q=1 HTTP/1.1\r\n") and f"Host: 127.0.0.1:{server.port}\r\n".encode() in head


async def test_failures_say_whether_the_request_may_have_arrived():
    with pytest.raises(ConnectFailed) as refused:
        await send(PlainHttp(), f"http://127.0.0.1:{free_port()}/x")
    assert refused.value.sent is False
    async with RawServer(lambda n: None) as silent:
        with pytest.raises(Timeout) as timeout:
            await PlainHttp().send("POST", silent.url(), {}, b"{}", 0.3, 1024)
    assert timeout.value.sent is True
    async with RawServer(lambda n: b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nhalf#close") as cut:
        with pytest.raises(Disconnected) as disconnected:
            await send(PlainHttp(), cut.url())
    assert disconnected.value.sent is True


async def test_a_cancelled_request_does_not_leave_its_connection_in_the_pool():
    async with RawServer(lambda n: None if n == 1 else OK) as server:
        http = PlainHttp()
        call = asyncio.ensure_future(send(http, server.url()))
        await asyncio.sleep(0.2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (await send(http, server.url())).body == b"ok"
        await http.aclose()
    assert server.connections == 2


# --- a streamed answer, piece by piece -----------------------------------------------------------

STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
CHUNKED = STREAM_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"


BOTH = pytest.mark.parametrize("make", [PlainHttp, AioHttp], ids=["plain", "aiohttp"])


async def _stream(
    http: PlainHttp | AioHttp, server: RawServer, max_bytes: int = 1024
) -> tuple[transport.Reply, list[bytes]]:
    """A GET whose streamed pieces are recorded, each telling the server it may send the next."""
    pieces: list[bytes] = []

    def on_chunk(piece: bytes) -> None:
        pieces.append(piece)
        server.took.set()

    try:
        reply = await http.send("GET", server.url(), {}, None, 2.0, max_bytes, on_chunk)
    finally:
        await http.aclose()
    return reply, pieces


@BOTH
@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        # chunked, a chunk split mid-way: its first half goes out before the second is sent
        ([CHUNKED + b"5\r\nhel", b"lo\r\n", b"6\r\n world\r\n0\r\n\r\n"], [b"hel", b"lo", b" world"]),
        ([STREAM_HEAD + b"Content-Length: 11\r\n\r\nhello", b" world"], [b"hello", b" world"]),  # Content-Length
    ],
    ids=["chunked", "content-length"],
)
async def test_a_streamed_answer_reaches_on_chunk_as_it_arrives(make, parts, expected):
    async with RawServer(lambda n: parts) as server:
        reply, pieces = await _stream(make(), server)
    assert (reply.status, reply.body, pieces) == (200, b"", expected)


@BOTH
async def test_a_stream_cut_short_ends_its_answer_for_its_reader_to_judge(make):
    async with RawServer(lambda n: [CHUNKED + b"10\r\nhalf", b"#close"]) as server:
        reply, pieces = await _stream(make(), server)
    assert (reply.status, b"".join(pieces)) == (200, b"half#close")


@BOTH
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",  # not a stream
        b"HTTP/1.1 503 Busy\r\nContent-Type: text/event-stream\r\nContent-Length: 2\r\n\r\n{}",  # not a 2xx
    ],
    ids=["json", "503"],
)
async def test_an_answer_that_is_not_a_2xx_stream_is_read_whole(make, answer):
    async with RawServer(lambda n: answer) as server:
        reply, pieces = await _stream(make(), server)
    assert (reply.body, pieces) == (b"{}", [])


async def test_without_on_chunk_an_event_stream_is_read_whole_and_its_connection_kept():
    async with RawServer(lambda n: CHUNKED + b"5\r\nhello\r\n0\r\n\r\n") as server:
        http = PlainHttp()
        first, second = await send(http, server.url()), await send(http, server.url())
        await http.aclose()
    assert first.body == second.body == b"hello" and server.connections == 1


@BOTH
async def test_a_stream_is_bounded_and_what_on_chunk_raises_is_the_calls_error(make):
    big = CHUNKED + b"14\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n"
    async with RawServer(lambda n: big) as server:
        with pytest.raises(TooLarge):
            await _stream(make(), server, max_bytes=10)

    def refuse(piece: bytes) -> None:
        raise ValueError("not a stream its reader can read")

    async with RawServer(lambda n: CHUNKED + b"5\r\nhello\r\n0\r\n\r\n" if n == 1 else OK) as server:
        http = make()
        with pytest.raises(ValueError, match="its reader"):
            await http.send("GET", server.url(), {}, None, 2.0, 1024, refuse)
        assert (await http.send("GET", server.url(), {}, None, 2.0, 1024)).body == b"ok"  # the next call is served
        await http.aclose()
