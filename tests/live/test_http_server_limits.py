"""The shared HTTP server (``live.transport.http``): pipelining backpressure, and the
request-line and header size limits (414 / 431), over loopback sockets."""
from __future__ import annotations

import asyncio
import socket

import pytest
from live_helpers import arun

from live.transport.http import TEXT_HEADERS, ClientLimits, Listener, bind_socket

pytestmark = pytest.mark.timeout(60)


class HoldingServer:
    """Answers every request with 200 ``ok``, except that the first one is held until
    ``release`` is called (a slow response, while the client pipelines more)."""

    def __init__(self, limits: ClientLimits | None = None) -> None:
        self.listener = Listener(self._handle, 1 << 20, limits)
        self.held: list = []
        self.handled = 0

    def _handle(self, conn, req) -> None:
        self.handled += 1
        if self.handled == 1:
            self.held.append((conn, req))
            return
        conn.send_simple(200, b"ok", TEXT_HEADERS, req.keep_alive)

    def release(self) -> None:
        conn, req = self.held.pop()
        conn.send_simple(200, b"ok", TEXT_HEADERS, req.keep_alive)


async def connect(server: HoldingServer) -> tuple[socket.socket, socket.socket]:
    sock = bind_socket("127.0.0.1", 0)
    await server.listener.listen(sock)
    client = socket.socket()
    client.setblocking(False)
    await asyncio.get_running_loop().sock_connect(client, sock.getsockname())
    return sock, client


async def read_until(client: socket.socket, count: int, marker: bytes, limit_s: float = 5) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(limit_s):
        while data.count(marker) < count:
            got = await loop.sock_recv(client, 65536)
            if not got:
                break
            data += got
    return data


GET = b"GET /x HTTP/1.1\r\nhost: s\r\npadding: " + b"p" * 1000 + b"\r\n\r\n"


def test_pipelined_requests_are_not_read_without_bound_while_one_is_served():
    server = HoldingServer()

    async def main():
        loop = asyncio.get_running_loop()
        sock, client = await connect(server)
        flood = GET * (48 * 1024)  # 48k requests, ~49 MB: more than socket buffers hold
        await loop.sock_sendall(client, GET)
        while not server.held:
            await asyncio.sleep(0.001)
        try:  # with backpressure the kernel buffers fill and sending blocks
            await asyncio.wait_for(loop.sock_sendall(client, flood), 3)
            flooded = True
        except asyncio.TimeoutError:
            flooded = False
        conn = next(iter(server.listener.connections))
        queued = len(conn.pending)
        reading_while_queued = conn.transport.is_reading()
        server.listener.close()
        client.close()
        sock.close()
        return flooded, queued, reading_while_queued

    flooded, queued, reading = arun(main())
    assert not flooded, "the server read the whole flood while its first request was served"
    assert not reading
    # What waits is at most what one read (256 KiB) held.
    assert 1 <= queued <= (256 * 1024) // len(GET) + 1, queued


def test_pipelined_requests_are_answered_in_order_and_reading_resumes():
    server = HoldingServer()

    async def main():
        loop = asyncio.get_running_loop()
        sock, client = await connect(server)
        await loop.sock_sendall(client, GET * 3)
        while not server.held:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        conn = next(iter(server.listener.connections))
        paused = not conn.transport.is_reading()
        server.release()
        answers = await read_until(client, 3, b"\r\n\r\nok")
        resumed = conn.transport.is_reading()
        await loop.sock_sendall(client, GET)  # and a later request is still read
        later = await read_until(client, 1, b"\r\n\r\nok")
        server.listener.close()
        client.close()
        sock.close()
        return paused, answers, resumed, later

    paused, answers, resumed, later = arun(main())
    assert paused and resumed
    assert answers.count(b"HTTP/1.1 200 OK") == 3
    assert later.startswith(b"HTTP/1.1 200 OK")
    assert server.handled == 4


def _refused(request: bytes, limits: ClientLimits, *, pieces: int = 1,
             end: bytes = b"}}") -> tuple[bytes, int]:
    """Send ``request`` (in ``pieces`` reads); the answer up to ``end``, and how many
    requests reached the handler."""
    server = HoldingServer(limits)
    server.handled = 1  # answer at once

    async def main():
        loop = asyncio.get_running_loop()
        sock, client = await connect(server)
        step = -(-len(request) // pieces)
        for i in range(0, len(request), step):
            try:
                await loop.sock_sendall(client, request[i:i + step])
            except (BrokenPipeError, ConnectionResetError):
                break
            await asyncio.sleep(0.01)  # separate reads
        answer = await read_until(client, 1, end)
        server.listener.close()
        client.close()
        sock.close()
        return answer

    return arun(main()), server.handled - 1


@pytest.mark.parametrize("url_bytes, status", [(1000, 200), (5000, 414)])
def test_a_request_target_over_the_limit_is_answered_414(url_bytes, status):
    limits = ClientLimits(max_url_bytes=4096)
    request = b"GET /" + b"a" * url_bytes + b" HTTP/1.1\r\nhost: s\r\n\r\n"
    answer, handled = _refused(request, limits, end=b"ok" if status == 200 else b"}}")
    assert answer.startswith(b"HTTP/1.1 %d" % status), answer[:200]
    assert handled == (status == 200)
    if status == 414:
        assert b"exceeds 4096 bytes" in answer and b"connection: close" in answer


@pytest.mark.parametrize("count, status", [(10, 200), (100, 431)])
def test_headers_over_the_limit_are_answered_431(count, status):
    limits = ClientLimits(max_header_bytes=16 * 1024)
    headers = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 200) for i in range(count))
    answer, handled = _refused(b"GET / HTTP/1.1\r\nhost: s\r\n" + headers + b"\r\n", limits,
                               end=b"ok" if status == 200 else b"}}")
    assert answer.startswith(b"HTTP/1.1 %d" % status), answer[:200]
    assert handled == (status == 200)


def test_one_endless_header_line_is_cut_off_near_the_limit():
    """A single header line still arriving is held inside the parser; the server counts
    the reads it spends in headers and refuses it after the limit (plus one read)."""
    limits = ClientLimits(max_header_bytes=16 * 1024)
    request = b"GET / HTTP/1.1\r\nhost: s\r\nx-long: " + b"v" * (400 * 1024) + b"\r\n\r\n"
    answer, handled = _refused(request, limits, pieces=100)  # 4 KiB reads
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert handled == 0


def test_size_limits_are_validated_with_their_names():
    with pytest.raises(ValueError, match="max_header_bytes must be >= 1"):
        ClientLimits(max_header_bytes=0).validate()
    with pytest.raises(ValueError, match="max_url_bytes must be >= 1"):
        ClientLimits(max_url_bytes=0).validate()
