"""Minimal HTTP/1.1 on asyncio protocols, shared by the emulator and the gateway.

Why not an ASGI server and an HTTP client library: both servers spend their time
writing small SSE chunks (the emulator one per request per engine step, the
gateway one per chunk a backend sends). Through ASGI and a client library each
chunk crosses a stream reader, a task switch and an ASGI ``send`` (measured in
docs/live.md: about 2.4x the CPU of this path for the gateway). Here a chunk is
one call: the emulator's stepping loop writes it to the client's transport, and
the gateway's upstream parser (``httptools``, the C parser uvicorn uses) hands
the de-chunked body to ``on_body``, which writes it re-framed to the client.

``ServerConnection`` parses requests (keep-alive; pipelined requests queue) and
hands each to a handler; ``UpstreamConnection`` is one keep-alive connection to
a backend, owned by an ``UpstreamPool``. Also here: OpenAI-style error bodies,
JSON body parsing, SSE framing and listening sockets.
"""
from __future__ import annotations

import asyncio
import collections
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools
import orjson

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
TEXT_HEADERS = [(b"content-type", b"text/plain; charset=utf-8")]
PROMETHEUS_HEADERS = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]

#: OpenAI error ``type`` per HTTP status, as vLLM's server names them.
ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    414: "URITooLongError",
    429: "RateLimitError",
    431: "RequestHeaderFieldsTooLargeError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


class HttpError(Exception):
    """An error to answer with ``status`` and an OpenAI-style body."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}`` as the OpenAI API returns."""
    return orjson.dumps({"error": {"message": message, "type": ERROR_TYPES.get(status, "Error"),
                                   "param": param, "code": status}})


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ``HttpError(400)`` saying what is wrong."""
    if not body:
        raise HttpError(400, "request body is empty; expected a JSON object")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise HttpError(400, f"request body must be a JSON object, got {type(doc).__name__}")
    return doc


def sse_event(doc: Any) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: the kernel picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


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


def default_max_connections() -> int:
    """Half the process's open-file limit (the other half for upstream connections, files,
    logs), between 64 and 16384: a server never dies of ``EMFILE`` from client sockets."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return 1024
    if soft == resource.RLIM_INFINITY:
        return 16384
    return max(64, min(16384, soft // 2))


@dataclass(frozen=True)
class ClientLimits:
    """What a client connection may take of a server (0 turns a timeout off).

    ``header_timeout_s``: from a request's first byte to the end of its headers;
    ``body_timeout_s``: from the end of the headers to the end of the body;
    ``idle_timeout_s``: a keep-alive connection with no request in progress;
    ``max_connections``: open client connections at once (more are answered 503 and
    closed). A connection that times out gets 408 and is closed; while a response is
    being produced, these timers do not run (the server's own timeouts do).
    ``max_url_bytes`` / ``max_header_bytes``: a request's target, and its request line
    and headers together (414 / 431 beyond, and the connection is closed). A single
    header line is held by the parser until it ends, so it is bounded at the next read
    past the limit: at most one socket read (256 KiB) over.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    max_connections: int = field(default_factory=default_max_connections)
    max_url_bytes: int = 16 * 1024
    max_header_bytes: int = 64 * 1024

    def validate(self) -> None:
        for name in ("header_timeout_s", "body_timeout_s", "idle_timeout_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: no limit), got {getattr(self, name)}")
        for name in ("max_connections", "max_url_bytes", "max_header_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class ServerConnection(asyncio.Protocol):
    """One client connection. ``handler(conn, request)`` answers each request.

    The handler must eventually call ``finish_response`` exactly once per request
    (after writing the response); the next pipelined request is handled then. While
    a pipelined request waits, the connection stops reading (a client cannot queue
    requests without bound; what one read holds is the most that waits).
    ``on_lost`` callbacks registered by the handler run if the client goes away.
    ``limits`` bound how long a client may take to send a request or sit idle, and
    the size of its request line and headers.
    """

    def __init__(self, handler: Callable[[ServerConnection, Request], None], max_body: int,
                 connections: set, limits: ClientLimits | None = None) -> None:
        self.handler = handler
        self.max_body = max_body
        self.limits = limits or ClientLimits()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.current: Request | None = None  # being parsed
        self.pending: collections.deque[Request] = collections.deque()
        self.busy = False
        self.closed = False
        self.on_lost: Callable[[], None] | None = None
        self.on_drain: Callable[[bool], None] | None = None
        self.writable = True  # False while the client is not keeping up (pause_writing)
        self._url = b""
        self._connections = connections
        self._timer: asyncio.TimerHandle | None = None
        self._reading = ""  # "", "headers" or "body": what the client still owes
        self._head_reads = 0  # bytes of whole reads inside the current request's headers
        self._head_fields = 0  # bytes of its headers the parser has handed over
        self._began = False  # a request began in the read being parsed
        self._refusal: tuple[int, str] | None = None  # why parsing was stopped
        self._paused = False  # reading paused: a pipelined request waits

    # --- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        if len(self._connections) >= self.limits.max_connections:
            self._refuse(503, f"too many open connections (limit {self.limits.max_connections}); "
                              "retry later")
            return
        self._connections.add(self)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._began = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._refusal is not None:
                self._cancel_timer()
                self._refuse(*self._refusal)
            else:
                self._bad_request(f"malformed HTTP request: {exc}")
            return
        if self._reading == "headers" and not self._began:
            # All of this read is header bytes; one header line still being read is
            # held inside the parser, where on_header cannot count it yet.
            self._head_reads += len(data)
            if self._head_reads > self.limits.max_header_bytes:
                self._cancel_timer()
                self._refuse(431, self._header_message())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_timer()
        self._connections.discard(self)
        cb, self.on_lost = self.on_lost, None
        if cb is not None:
            cb()

    # --- client timeouts ------------------------------------------------------------------------
    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        """(Re)start the timer for what the connection waits for now (none while busy)."""
        self._cancel_timer()
        if self.closed or self.busy or self.pending:
            return
        lim = self.limits
        seconds = {"headers": lim.header_timeout_s, "body": lim.body_timeout_s}.get(
            self._reading, lim.idle_timeout_s)
        if seconds > 0:
            self._timer = asyncio.get_running_loop().call_later(seconds, self._timed_out,
                                                                self._reading)

    def _timed_out(self, reading: str) -> None:
        self._timer = None
        if self.closed:
            return
        if not reading:  # idle keep-alive connection: just close it
            self.closed = True
            self.transport.close()
            return
        limit = self.limits.header_timeout_s if reading == "headers" else self.limits.body_timeout_s
        self._refuse(408, f"the request's {reading} did not arrive within {limit:g} s")

    def _refuse(self, status: int, message: str) -> None:
        body = error_body(status, message)
        self.transport.write(response_head(status, JSON_HEADERS, chunked=False, length=len(body),
                                           keep_alive=False) + body)
        self.closed = True
        self.transport.close()

    def pause_writing(self) -> None:
        self.writable = False
        if self.on_drain is not None:
            self.on_drain(False)

    def resume_writing(self) -> None:
        self.writable = True
        if self.on_drain is not None:
            self.on_drain(True)

    # --- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.current = Request()
        self._url = b""
        self._head_reads = self._head_fields = 0
        self._began = True
        self._reading = "headers"
        self._arm()

    def _header_message(self) -> str:
        return (f"the request line and headers exceed {self.limits.max_header_bytes} bytes")

    def _stop_parsing(self, status: int, message: str) -> None:
        """Refuse the request: raising stops the parser; ``data_received`` answers."""
        self._refusal = (status, message)
        raise HttpError(status, message)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_url_bytes:
            self._stop_parsing(414, f"the request target exceeds {self.limits.max_url_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += len(name) + len(value) + 4
        if self._head_fields + len(self._url) > self.limits.max_header_bytes:
            self._stop_parsing(431, self._header_message())
        self.current.headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        req = self.current
        req.method = self.parser.get_method().decode("latin-1")
        req.path = httptools.parse_url(self._url).path.decode("latin-1")
        req.keep_alive = self.parser.should_keep_alive()
        declared = req.headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            req.too_large = True
        self._reading = "body"
        self._arm()

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
        self._reading = ""
        self._cancel_timer()
        if req.too_large:
            req.keep_alive = False  # the rest of a huge body is not worth reading
        self.pending.append(req)
        if not self.busy:
            self._next()
        elif not self._paused and not self.closed:
            self._paused = True  # resumed by _next once the queue is empty
            self.transport.pause_reading()

    # --- responses ----------------------------------------------------------------------------
    def _next(self) -> None:
        if self.closed:
            return
        if not self.pending:
            self._arm()  # idle, or waiting for the rest of a request
            return
        self.busy = True
        self._cancel_timer()
        req = self.pending.popleft()
        if self._paused and not self.pending:
            # Read again while this one is served: a client that disconnects is
            # noticed, and its next request is parsed (and waits, if it completes).
            self._paused = False
            self.transport.resume_reading()
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
        self._cancel_timer()
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
        self.paused = False  # reading paused for a slow client (see ``pause``)

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def pause(self) -> None:
        """Stop reading the backend: the client this response goes to is not keeping up."""
        if not self.closed and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if not self.closed and self.paused:
            self.paused = False
            self.transport.resume_reading()

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
        """Keep ``conn`` for the next request. A response's last bytes can fill a slow
        client's buffer and pause reading in the very call that completes it; an idle
        connection left paused would never deliver its next response, so resume it."""
        conn.resume()
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


# --- running a server object ---------------------------------------------------------------
# A "server" here is any object with ``async start(sock) -> url`` and ``async stop()``
# (the emulator's and the gateway's).

async def _serve_until_signalled(server: Any, sock: socket.socket) -> None:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start(sock)
    try:
        await stop.wait()
    finally:
        await server.stop()


def run_until_signalled(server: Any, sock: socket.socket) -> None:
    """Serve on ``sock`` until SIGINT/SIGTERM, on uvloop when installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a core dependency except on Windows
        asyncio.run(_serve_until_signalled(server, sock))
        return
    uvloop.run(_serve_until_signalled(server, sock))


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def main_serve(parser: Any, server: Any, host: str, port: int) -> int:
    """A CLI's last step: listen, print ``READY <url>`` (what ``live.transport.processes``
    waits for), serve until SIGINT/SIGTERM."""
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        parser.error(f"cannot listen on {host}:{port}: {exc}")
    print(f"READY {url_of(sock)}", flush=True)
    run_until_signalled(server, sock)
    return 0


class Listener:
    """The listening half of a server object: ``ServerConnection``s on a socket."""

    def __init__(self, handler: Callable[[ServerConnection, Request], None], max_body: int,
                 limits: ClientLimits | None = None) -> None:
        self.handler = handler
        self.max_body = max_body
        self.limits = limits or ClientLimits()
        self.limits.validate()
        self.connections: set[ServerConnection] = set()
        self.server: asyncio.base_events.Server | None = None

    async def listen(self, sock: socket.socket) -> str:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: ServerConnection(self.handler, self.max_body, self.connections, self.limits),
            sock=sock, backlog=2048)
        return url_of(sock)

    def close(self) -> None:
        """Stop accepting and drop every open connection."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.transport.abort()


class serving:  # noqa: N801 - used as ``async with serving(server) as server``
    """Run a server object in the current event loop on a fresh loopback socket."""

    def __init__(self, server: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = server
        self.sock = bind_socket(host, port)

    async def __aenter__(self) -> Any:
        try:
            await self.server.start(self.sock)
        except BaseException:
            self.sock.close()
            raise
        return self.server

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self.server.stop()
        finally:
            self.sock.close()
