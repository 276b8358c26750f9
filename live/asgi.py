"""The few ASGI pieces the emulator and the gateway share, with no framework.

Both servers are plain ASGI callables run by uvicorn with uvloop and httptools:
no routing tables, no middleware, no validation layer in the hot path (measured
against FastAPI in docs/live.md). This module holds what they have in common:
reading a bounded body, OpenAI-style JSON errors, server-sent events, noticing a
client that went away, and running an app on a socket with a lifespan.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

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
    429: "RateLimitError",
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


class ClientGone(Exception):
    """The client closed its connection before the body was read."""


def error_body(status: int, message: str, param: str | None = None) -> bytes:
    """``{"error": {"message", "type", "param", "code"}}`` as the OpenAI API returns."""
    return orjson.dumps({"error": {"message": message, "type": ERROR_TYPES.get(status, "Error"),
                                   "param": param, "code": status}})


async def read_body(receive: Receive, limit: int, scope: Scope | None = None) -> bytes:
    """The whole request body; ``HttpError(413)`` past ``limit`` bytes.

    A declared ``content-length`` over the limit is refused before reading.
    """
    if scope is not None:
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    raise HttpError(400, f"bad content-length header {v!r}") from None
                if declared > limit:
                    raise HttpError(413, f"request body of {declared} bytes exceeds the limit of "
                                         f"{limit} bytes")
                break
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone()
        body = msg.get("body", b"")
        if body:
            size += len(body)
            if size > limit:
                raise HttpError(413, f"request body exceeds the limit of {limit} bytes")
            chunks.append(body)
        if not msg.get("more_body"):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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


async def send_bytes(send: Send, status: int, body: bytes,
                     headers: list[tuple[bytes, bytes]] = JSON_HEADERS) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, doc: Any) -> None:
    await send_bytes(send, status, orjson.dumps(doc))


async def send_error(send: Send, status: int, message: str, param: str | None = None,
                     extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = JSON_HEADERS + (extra_headers or [])
    await send_bytes(send, status, error_body(status, message, param), headers)


def sse_event(doc: Any) -> bytes:
    return b"data: " + orjson.dumps(doc) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header ``name`` (lower case), or None."""
    for k, v in scope["headers"]:
        if k == name:
            return v
    return None


class DisconnectWatcher:
    """Cancels a task when its client disconnects (uvicorn's ``send`` does not raise).

    Start it once the body has been read; ``stop()`` it before the last send of a
    normal response (after that, ``receive`` also reports a disconnect).
    ``fired`` tells the cancelled task why it was cancelled.
    """

    __slots__ = ("fired", "_watch", "_task")

    def __init__(self, receive: Receive, task: asyncio.Task | None = None) -> None:
        self.fired = False
        self._task = task or asyncio.current_task()
        self._watch = asyncio.ensure_future(self._run(receive))

    async def _run(self, receive: Receive) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                self.fired = True
                self._task.cancel()
                return

    def stop(self) -> None:
        self._watch.cancel()

    def absorb(self) -> None:
        """Call in the cancelled task once it has handled the disconnect.

        Undoes the cancellation request (Python >= 3.11 counts them), so the
        task can finish normally and later timeouts in it still work.
        """
        uncancel = getattr(self._task, "uncancel", None)
        if uncancel is not None:
            uncancel()


async def lifespan(receive: Receive, send: Send,
                   startup: Callable[[], Awaitable[None]],
                   shutdown: Callable[[], Awaitable[None]]) -> None:
    """Run an ASGI lifespan scope with the given hooks."""
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            try:
                await startup()
            except Exception as exc:  # report it to uvicorn, which then exits
                await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            with contextlib.suppress(Exception):
                await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: the kernel picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(app: Any, sock: socket.socket, *, log_level: str = "warning") -> None:
    """Run ``app`` on ``sock`` with uvicorn (uvloop + httptools) until SIGINT/SIGTERM."""
    import uvicorn

    config = uvicorn.Config(
        app, loop="uvloop", http="httptools", lifespan="on", log_level=log_level,
        access_log=False, server_header=False, date_header=False, timeout_keep_alive=75,
        backlog=2048, ws="none",
    )
    uvicorn.Server(config).run(sockets=[sock])


@contextlib.asynccontextmanager
async def running(app: Any, host: str = "127.0.0.1", port: int = 0):
    """Serve ``app`` inside the current event loop; yield its base URL.

    For tests and in-process tools: the server shares the caller's loop, so the
    app's state can be inspected between requests. Stops the server on exit.
    """
    import uvicorn

    sock = bind_socket(host, port)
    config = uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False,
                            http="httptools", ws="none", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign]  # the caller's signals
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()  # raises the startup error
                raise RuntimeError("server stopped during startup")
            await asyncio.sleep(0.005)
        h, p = sock.getsockname()[:2]
        yield f"http://{h}:{p}"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, timeout=5)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            task.cancel()
        sock.close()
