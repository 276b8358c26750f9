"""The load generator's HTTP client: streamed completions at a few microseconds per chunk.

``live.transport.client`` (aiohttp) wakes a task for every SSE chunk; at hundreds of
streaming requests per second that costs the load generator about 2 ms of CPU
per 32-token request, CPU taken from the servers it measures on a small machine.
This client rides on ``live.transport.http.UpstreamConnection``: each chunk is parsed in
the protocol callback where it arrives (timestamped there), and the waiting
coroutine is woken once, when the response ends. It fills the same
``CompletionResult`` as ``live.transport.client.post_stream``, with the same meaning.
"""
from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Sequence


from live.transport.client import CompletionResult, SseReader, error_text
from live.transport.http import UpstreamConnection, UpstreamPool


class StreamClient:
    """Keep-alive pools to a few base URLs; ``post`` sends one streaming request."""

    def __init__(self, urls: Sequence[str], concurrency: int = 256,
                 headers: dict[str, str] | None = None) -> None:
        self.pools: dict[str, UpstreamPool] = {}
        self.heads: dict[str, bytes] = {}
        extra = b"".join(f"{k}: {v}\r\n".encode() for k, v in (headers or {}).items())
        for url in urls:
            url = url.rstrip("/")
            parts = urllib.parse.urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"{url!r} is not an http://host:port URL")
            port = parts.port or 80
            self.pools[url] = UpstreamPool(parts.hostname, port, concurrency)
            self.heads[url] = (b" HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\n%b"
                               b"content-length: " % (parts.hostname.encode(), port, extra))

    async def post(self, url: str, path: str, body: bytes, result: CompletionResult,
                   timeout_s: float) -> CompletionResult:
        """POST ``body`` to ``url + path`` and time its SSE stream into ``result``.

        Like ``live.transport.client.post_stream``: never raises for server or network
        failures; if the calling task is cancelled, the connection is closed (the
        server aborts the request) and what arrived so far stays in ``result``.
        """
        url = url.rstrip("/")
        ex = _Exchange(result, self.pools[url],
                       b"POST " + path.encode() + self.heads[url] + b"%d\r\n\r\n" % len(body) + body)
        return await ex.run(timeout_s)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close_all()


class _Exchange:
    """One request on one upstream connection; callbacks from ``UpstreamConnection``."""

    __slots__ = ("res", "pool", "data", "conn", "future", "reader", "status_body", "done",
                 "reused", "stale_retry", "clock", "start")

    def __init__(self, res: CompletionResult, pool: UpstreamPool, data: bytes) -> None:
        self.res = res
        self.pool = pool
        self.data = data
        self.conn: UpstreamConnection | None = None
        self.future: asyncio.Future | None = None
        self.reader = SseReader(res)
        self.status_body = bytearray()
        self.done = False
        self.reused = False
        self.stale_retry = False
        self.clock = time.perf_counter
        self.start = 0.0

    async def run(self, timeout_s: float) -> CompletionResult:
        loop = asyncio.get_running_loop()
        self.future = loop.create_future()
        res = self.res
        res.start = self.start = self.clock()
        timer = loop.call_later(timeout_s, self._timeout, timeout_s)
        try:
            conn = self.pool.take_idle()
            if conn is not None:
                self.reused = True
                self._send(conn)
            else:
                await self._connect()
            await self.future
        except asyncio.CancelledError:
            self._close()
            raise
        finally:
            timer.cancel()
        return res

    async def _connect(self) -> None:
        try:
            conn = await self.pool.connect()
        except OSError as exc:
            self._end(f"{type(exc).__name__}: {exc}")
            return
        if self.done:
            self.pool.release(conn)
            return
        self._send(conn)

    def _send(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        conn.send(self, self.data)

    def _close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _end(self, error: str = "") -> None:
        if self.done:
            return
        self.done = True
        res = self.res
        res.e2el_s = self.clock() - self.start
        if error and not res.error:
            res.error = error
        if res.status == 200 or not res.error:
            self.reader.close()
        if not self.future.done():
            self.future.set_result(None)

    def _timeout(self, timeout_s: float) -> None:
        if not self.done:
            self.res.timed_out = True
            self._close()
            self._end(f"timeout after {timeout_s:g} s")

    # --- UpstreamConnection callbacks ------------------------------------------------------
    def on_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        res = self.res
        res.status = status
        for k, v in headers:
            if k == b"x-gateway-backend":
                res.routed_to = v.decode("latin-1")

    def on_data(self, data: bytes) -> None:
        if self.res.status != 200:
            self.status_body += data
            return
        if self.done or self.reader.done:
            return
        if not self.reader.feed(data, self.clock() - self.start) and not self.reader.done:
            self._close()  # an error event or malformed data: the request failed
            self._end()

    def on_done(self) -> None:
        self.conn = None
        res = self.res
        if res.status != 200:
            self._end(error_text(res.status, bytes(self.status_body)))
        else:
            self._end()

    def on_failed(self, message: str, got_bytes: bool) -> None:
        self.conn = None
        if self.done:
            return
        if self.reused and not got_bytes and not self.stale_retry:
            # A keep-alive connection the server had just closed: send again, fresh.
            self.stale_retry = True
            self.reused = False
            asyncio.ensure_future(self._connect())
            return
        if self.reader.done:  # [DONE] was in hand: only the connection's end was lost
            self._end()
        else:
            self._end(self.res.error or message)
