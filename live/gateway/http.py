"""Minimal HTTP/1.1 on asyncio protocols: the gateway's client side and upstream side.

Why not an ASGI server and an HTTP client library: a routing gateway spends its
time passing small SSE chunks from a backend to a client. Through ASGI and a
client library each chunk crosses a stream reader, a task switch and an ASGI
``send`` (about 3x the CPU of this path, measured in docs/live.md). Here each
chunk is one callback: the upstream parser (``httptools``, the C parser uvicorn
uses) hands the de-chunked body to ``on_body``, which writes it re-framed to the
client's transport. No per-chunk task, queue or await.

``ServerConnection`` parses requests (keep-alive, pipelined requests queued) and
hands each to a handler; ``UpstreamConnection`` is one keep-alive connection to
a backend, owned by a ``UpstreamPool``. Both report through plain callbacks.
"""
from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import httptools

#: Client responses are re-framed with chunked encoding.
CHUNK_END = b"0\r\n\r\n"


def reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def response_head(status: int, headers: list[tuple[bytes, bytes]], *, chunked: bool,
                  length: int = 0, keep_alive: bool = True) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, reason(status))]
    lines.extend(k + b": " + v for k, v in headers)
    lines.append(b"transfer-encoding: chunked" if chunked else b"content-length: %d" % length)
    if not keep_alive:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class Request:
    """One parsed client request."""

    __slots__ = ("method", "path", "headers", "body", "keep_alive", "too_large")

    def __init__(self) -> None:
        self.method = ""
        self.path = ""
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.keep_alive = True
        self.too_large = False


class ServerConnection(asyncio.Protocol):
    """One client connection. ``handler(conn, request)`` answers each request.

    The handler must eventually call ``finish_response`` exactly once per request
    (after writing the response); the next pipelined request is handled then.
    ``on_lost`` callbacks registered by the handler run if the client goes away.
    """

    def __init__(self, handler: Callable[[ServerConnection, Request], None], max_body: int,
                 connections: set) -> None:
        self.handler = handler
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.current: Request | None = None  # being parsed
        self.pending: collections.deque[Request] = collections.deque()
        self.busy = False
        self.closed = False
        self.on_lost: Callable[[], None] | None = None
        self.on_drain: Callable[[bool], None] | None = None
        self._url = b""
        self._connections = connections

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._bad_request(f"malformed HTTP request: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._connections.discard(self)
        cb, self.on_lost = self.on_lost, None
        if cb is not None:
            cb()

    def pause_writing(self) -> None:
        if self.on_drain is not None:
            self.on_drain(False)

    def resume_writing(self) -> None:
        if self.on_drain is not None:
            self.on_drain(True)

    # --- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.current = Request()
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        req = self.current
        req.method = self.parser.get_method().decode("latin-1")
        req.path = httptools.parse_url(self._url).path.decode("latin-1")
        req.keep_alive = self.parser.should_keep_alive()
        declared = req.headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            req.too_large = True

    def on_body(self, body: bytes) -> None:
        req = self.current
        if req.too_large:
            return
        req.body += body
        if len(req.body) > self.max_body:
            req.too_large = True
            req.body = bytearray()

    def on_message_complete(self) -> None:
        req, self.current = self.current, None
        if req.too_large:
            req.keep_alive = False  # the rest of a huge body is not worth reading
        self.pending.append(req)
        if not self.busy:
            self._next()

    # --- responses ----------------------------------------------------------------------------
    def _next(self) -> None:
        if self.closed or not self.pending:
            return
        self.busy = True
        req = self.pending.popleft()
        self.handler(self, req)

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def finish_response(self, keep_alive: bool) -> None:
        """The current response is fully written: go on with the next request or close."""
        self.busy = False
        self.on_lost = None
        self.on_drain = None
        if not keep_alive:
            self.closed = True
            self.transport.close()
            return
        self._next()

    def send_simple(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                    keep_alive: bool) -> None:
        self.write(response_head(status, headers, chunked=False, length=len(body),
                                 keep_alive=keep_alive) + body)
        self.finish_response(keep_alive)

    def _bad_request(self, message: str) -> None:
        from live.asgi import JSON_HEADERS, error_body

        if not self.closed:
            self.transport.write(response_head(400, JSON_HEADERS, chunked=False,
                                               length=len(error_body(400, message)),
                                               keep_alive=False) + error_body(400, message))
            self.closed = True
            self.transport.close()


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to a backend.

    The exchange using it receives ``on_response(status, headers)``,
    ``on_data(bytes)``, ``on_done(keep_alive)`` and ``on_failed(error)``; exactly
    one of the last two ends each request.
    """

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Any = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.got_bytes = False
        self.closed = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def send(self, exchange: Any, data: bytes) -> None:
        self.exchange = exchange
        self.headers = []
        self.got_bytes = False
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(f"malformed response from the backend: {exc}")
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.discard(self)
        if self.exchange is not None:
            self._fail(f"backend closed the connection{f': {exc}' if exc else ''}")

    def _fail(self, message: str) -> None:
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.on_failed(message, self.got_bytes)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self.exchange is not None:
            self.exchange.on_response(self.parser.get_status_code(), self.headers)

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange.on_data(body)

    def on_message_complete(self) -> None:
        ex, self.exchange = self.exchange, None
        keep = self.parser.should_keep_alive()
        self.parser = httptools.HttpResponseParser(self)
        if keep and not self.closed:
            self.pool.release(self)
        else:
            self.close()
        if ex is not None:
            ex.on_done()

    def close(self) -> None:
        """Close now (a cancelled request: the backend sees the disconnect and aborts)."""
        self.exchange = None
        if not self.closed:
            self.closed = True
            self.pool.discard(self)
            self.transport.abort()


class UpstreamPool:
    """Idle keep-alive connections to one backend, and new ones on demand."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self.idle: list[UpstreamConnection] = []

    def take_idle(self) -> UpstreamConnection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and not conn.transport.is_closing():
                return conn
        return None

    async def connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        if len(self.idle) < self.limit:
            self.idle.append(conn)
        else:
            conn.close()

    def discard(self, conn: UpstreamConnection) -> None:
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def close_all(self) -> None:
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()
