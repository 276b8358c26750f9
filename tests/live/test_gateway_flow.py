"""The gateway's flow control and total request timeout, against scripted loopback backends.

The backends here are stand-ins written on ``live.transport.http``: each answers
``/health``, ``/metrics`` and ``/v1/models`` at once, and ``/v1/completions`` as the
test scripts it (a large stream written in one piece, or silence).
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import orjson
import pytest
from live_helpers import arun

from live.gateway import GatewayConfig, serve_gateway
from live.transport.http import (
    CHUNK_END, JSON_HEADERS, SSE_HEADERS, TEXT_HEADERS, Listener, chunk, response_head, serving,
)

pytestmark = pytest.mark.timeout(60)

MODELS = orjson.dumps({"object": "list", "data": [{"id": "stand-in", "max_model_len": 4096}]})


class ScriptedBackend:
    """A stand-in backend: ``completion(conn, req)`` answers each generation request."""

    def __init__(self, completion) -> None:
        self.completion = completion
        self.requests = 0
        self._listener = Listener(self._handle, 1 << 20)

    async def start(self, sock: socket.socket) -> str:
        self.url = await self._listener.listen(sock)
        return self.url

    async def stop(self) -> None:
        self._listener.close()

    def _handle(self, conn, req) -> None:
        if req.path == "/v1/completions":
            self.requests += 1
            self.completion(conn, req)
        elif req.path == "/v1/models":
            conn.send_simple(200, MODELS, JSON_HEADERS, req.keep_alive)
        else:
            conn.send_simple(200, b"", TEXT_HEADERS, req.keep_alive)


def big_stream(payload_bytes: int):
    """A 200 SSE stream of ``payload_bytes``, head to terminating chunk in one write
    (under 64 KiB: one loopback segment, so the gateway reads it in one piece)."""
    event = b"data: " + orjson.dumps({"choices": [{"text": "x" * payload_bytes}]}) + b"\n\n"

    def answer(conn, req) -> None:
        conn.write(response_head(200, SSE_HEADERS, chunked=True) + chunk(event)
                   + chunk(b"data: [DONE]\n\n") + CHUNK_END)
        conn.finish_response(req.keep_alive)
    return answer


def silence(conn, req) -> None:
    """Never answer (the connection stays open): a stalled backend."""


def request_bytes(stream: bool) -> bytes:
    body = orjson.dumps({"model": "stand-in", "prompt": [1, 2, 3], "max_tokens": 4,
                         "stream": stream})
    return (b"POST /v1/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%b" % (len(body), body))


async def read_response(sock: socket.socket, *, pause_s: float = 0.0, piece: int = 65536) -> bytes:
    """Read one response until its end (chunked or content-length), ``pause_s`` between reads."""
    loop = asyncio.get_running_loop()
    data = b""
    while True:
        got = await loop.sock_recv(sock, piece)
        if not got:
            return data
        data += got
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            if b"transfer-encoding: chunked" in head.lower() and body.endswith(CHUNK_END):
                return data
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:") and len(body) >= int(line[15:]):
                    return data
        if pause_s:
            await asyncio.sleep(pause_s)


async def open_client(url: str, rcvbuf: int | None = None) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket()
    if rcvbuf:  # a small receive window: the gateway's writes back up quickly
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return sock


@contextlib.asynccontextmanager
async def gateway_before(*backends: ScriptedBackend, **kwargs):
    async with contextlib.AsyncExitStack() as stack:
        urls = [(await stack.enter_async_context(serving(be))).url for be in backends]
        cfg = GatewayConfig(backends=urls, health_interval_s=0, scrape_interval_s=5, **kwargs)
        yield await stack.enter_async_context(serve_gateway(cfg))


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_a_connection_paused_for_a_slow_client_is_resumed_before_reuse():
    backend = ScriptedBackend(big_stream(60_000))

    async def main():
        async with gateway_before(backend, max_retries=0, first_byte_timeout_s=3) as gw:
            loop = asyncio.get_running_loop()
            slow = await open_client(gw.url, rcvbuf=8192)
            while not gw._listener.connections:
                await asyncio.sleep(0.001)
            for c in gw._listener.connections:
                # The kernel takes little of the response and any bytes the gateway must
                # buffer for this client count as "not keeping up": the response (one TCP
                # segment on loopback, so one read) pauses the upstream in the very call
                # that completes it.
                c.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET,
                                                                socket.SO_SNDBUF, 4096)
                c.transport.set_write_buffer_limits(high=0)
            await loop.sock_sendall(slow, request_bytes(stream=True))
            await asyncio.sleep(0.2)  # not reading yet: the gateway gets the whole response
            first = await read_response(slow, pause_s=0.002, piece=8192)
            slow.close()
            idle = gw.pools[0].idle
            assert idle, "the backend's keep-alive connection went back to the pool"
            assert all(c.transport.is_reading() for c in idle), "a paused connection was pooled"
            fast = await open_client(gw.url)
            t0 = time.monotonic()
            await loop.sock_sendall(fast, request_bytes(stream=True))
            second = await asyncio.wait_for(read_response(fast), 10)
            fast.close()
            return first, second, time.monotonic() - t0

    first, second, took = arun(main())
    assert status_of(first) == 200 and first.endswith(CHUNK_END)
    assert status_of(second) == 200, second[:300]
    assert b'"error"' not in second
    assert took < 2.0, f"the reused connection stalled for {took:.1f} s"
    assert backend.requests == 2


def test_request_timeout_bounds_the_whole_request_across_failovers():
    """Two backends that stall: the first attempt fails over at --first-byte-timeout,
    and the second is cut by the request's own timer, which kept running (one per
    client request), not by a fresh one."""
    stalled = [ScriptedBackend(silence), ScriptedBackend(silence)]

    async def main():
        async with gateway_before(*stalled, max_retries=2, first_byte_timeout_s=1.0,
                                  request_timeout_s=1.5) as gw:
            loop = asyncio.get_running_loop()
            client = await open_client(gw.url)
            t0 = time.monotonic()
            await loop.sock_sendall(client, request_bytes(stream=True))
            answer = await asyncio.wait_for(read_response(client), 10)
            client.close()
            return answer, time.monotonic() - t0

    answer, took = arun(main())
    assert status_of(answer) == 504, answer[:300]
    assert b"--request-timeout 1.5 s" in answer
    assert sum(be.requests for be in stalled) == 2
    # A fresh timer per attempt would let the second attempt run to its own
    # first-byte timeout (2.0 s from the start) or beyond.
    assert 1.4 <= took < 1.9, took


def test_a_pipelined_request_to_a_client_still_behind_does_not_read_the_backend():
    """The client pipelines a second request and reads nothing: the first response fills
    its buffer, so the second one's backend connection starts paused (the gateway does
    not buffer a whole response for a client that is not reading)."""
    backend = ScriptedBackend(big_stream(60_000))

    async def main():
        async with gateway_before(backend, max_retries=0, first_byte_timeout_s=10) as gw:
            loop = asyncio.get_running_loop()
            client = await open_client(gw.url, rcvbuf=8192)
            while not gw._listener.connections:
                await asyncio.sleep(0.001)
            (conn,) = gw._listener.connections
            conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET,
                                                               socket.SO_SNDBUF, 4096)
            conn.transport.set_write_buffer_limits(high=0)
            await loop.sock_sendall(client, request_bytes(stream=True) * 2)
            deadline = time.monotonic() + 5
            while backend.requests < 2:
                assert time.monotonic() < deadline, "the second request never reached the backend"
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            buffered = conn.transport.get_write_buffer_size()
            waiting = list(gw.active[0])  # empty: the second response was read already
            up = waiting[0].upstream if waiting else None
            paused = up is not None and up.paused and not up.transport.is_reading()
            both = await asyncio.wait_for(read_response_count(client, 2), 10)
            client.close()
            return buffered, paused, both

    buffered, paused, both = arun(main())
    assert paused, "the second response was read from the backend for a client that was behind"
    assert buffered < 2 * 60_000, buffered
    assert both.count(b"HTTP/1.1 200 OK") == 2 and both.endswith(CHUNK_END)


async def read_response_count(sock: socket.socket, count: int) -> bytes:
    loop = asyncio.get_running_loop()
    data = b""
    while data.count(b"data: [DONE]") < count or not data.endswith(CHUNK_END):
        got = await loop.sock_recv(sock, 65536)
        if not got:
            break
        data += got
    return data
