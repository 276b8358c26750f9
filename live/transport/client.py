"""Async client for vLLM-compatible servers: streamed completions, metrics, health.

The one place live mode (load generator, gateway health checks, calibration's
profiling of real vLLM) talks to a backend as a client. It measures the way
``vllm bench serve`` does: the clock starts just before the request is sent
(``time.perf_counter``), TTFT is the arrival of the first chunk that carries a
choice, each later such chunk adds one inter-token gap, and token counts come
from the server's ``usage`` (falling back to counting chunks).

The session is an ``aiohttp.ClientSession``. Create it inside a running event
loop and close it when done::

    async with make_session(concurrency=64) as session:
        await wait_healthy(session, "http://127.0.0.1:8000", timeout_s=60)
        r = await stream_completion(session, "http://127.0.0.1:8000",
                                    prompt=[1, 2, 3], max_tokens=16)
        print(r.ttft_s, r.itl_s, r.output_tokens)
        m = await scrape_metrics(session, "http://127.0.0.1:8000")
"""
from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from live.transport.prometheus import parse_scraped_metrics
from routing.types import ScrapedMetrics

#: A request that has not finished after this long is reported as a timeout.
DEFAULT_TIMEOUT_S = 600.0


def make_session(
    concurrency: int = 100,
    *,
    connect_timeout_s: float = 10.0,
    headers: dict[str, str] | None = None,
) -> aiohttp.ClientSession:
    """A keep-alive connection pool of ``concurrency`` connections per host.

    Must be called from a coroutine (aiohttp binds the session to the running
    loop). Use it as ``async with make_session(n) as session:`` or call
    ``await session.close()``. Per-request time limits are passed to each call;
    the session itself has none, so long streams are never cut by it.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    connector = aiohttp.TCPConnector(
        limit=0,  # no global cap: the per-host cap is the one that matters
        limit_per_host=concurrency,
        ttl_dns_cache=None,
        keepalive_timeout=60.0,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s),
        headers=headers,
        # Bodies are passed as bytes; never let aiohttp re-encode or decompress.
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )


@dataclass(slots=True)
class CompletionResult:
    """One streamed completion as the client saw it. Times in seconds.

    ``start`` is the ``perf_counter`` reading just before the send; every other
    time is relative to it. ``chunk_times_s[k]`` is when the k-th chunk carrying a
    choice arrived, so ``ttft_s == chunk_times_s[0]`` and ``itl_s`` are the gaps
    between consecutive ones. ``status`` is the HTTP status (0 when no response
    came: connection refused, reset, timeout before headers).
    """

    ok: bool
    status: int
    start: float
    ttft_s: float = math.nan
    e2el_s: float = math.nan
    chunk_times_s: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = -1
    cached_tokens: int = -1
    finish_reason: str = ""
    text: str = ""
    error: str = ""
    timed_out: bool = False
    #: The backend a gateway routed to (its ``x-gateway-backend`` header), if any.
    routed_to: str = ""

    @property
    def itl_s(self) -> list[float]:
        """Gaps between consecutive content chunks (``vllm bench serve``'s ITL)."""
        t = self.chunk_times_s
        return [b - a for a, b in zip(t, t[1:])]

    @property
    def tpot_s(self) -> float:
        """(E2EL - TTFT) / (output_tokens - 1), NaN for fewer than two tokens."""
        if not self.ok or self.output_tokens <= 1:
            return math.nan
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)


def completion_body(
    prompt: str | list[int],
    max_tokens: int,
    *,
    ignore_eos: bool = True,
    model: str | None = None,
    stream: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of a ``/v1/completions`` request as vLLM accepts it."""
    body: dict[str, Any] = {"prompt": prompt, "max_tokens": int(max_tokens), "stream": stream,
                            "ignore_eos": bool(ignore_eos), "temperature": 0.0}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if model:
        body["model"] = model
    if extra:
        body.update(extra)
    return body


async def stream_completion(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    prompt: str | list[int],
    max_tokens: int,
    ignore_eos: bool = True,
    model: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    keep_text: bool = False,
) -> CompletionResult:
    """POST a streaming ``/v1/completions`` and time every chunk.

    Never raises for server or network failures: they come back as ``ok=False``
    with ``error`` (and ``timed_out=True`` past ``timeout_s``). Cancelling the
    calling task closes the connection, which makes vLLM abort the request.
    ``extra`` is merged into the JSON body (e.g. ``{"min_tokens": 8}``).
    """
    body = orjson.dumps(completion_body(prompt, max_tokens, ignore_eos=ignore_eos, model=model,
                                        extra=extra))
    return await post_stream(session, base_url.rstrip("/") + "/v1/completions", body,
                             timeout_s=timeout_s, headers=headers, keep_text=keep_text)


_JSON_HEADERS = {"Content-Type": "application/json"}


def _limit(total_s: float) -> aiohttp.ClientTimeout:
    """A whole-request time limit (connect, send and every byte of the response)."""
    return aiohttp.ClientTimeout(total=total_s, sock_connect=min(total_s, 10.0))


async def post_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    headers: dict[str, str] | None = None,
    keep_text: bool = False,
    result: CompletionResult | None = None,
) -> CompletionResult:
    """POST an already-encoded streaming body (completions or chat) and time its SSE chunks.

    Pass ``result`` to have it filled in place: if the calling task is cancelled
    (a run's time bound), what arrived until then is still in it.
    """
    hdrs = _JSON_HEADERS if not headers else {**_JSON_HEADERS, **headers}
    clock = time.perf_counter
    res = result if result is not None else CompletionResult(ok=False, status=0, start=math.nan)
    res.start = start = clock()
    try:
        async with session.post(url, data=body, headers=hdrs, timeout=_limit(timeout_s)) as resp:
            res.status = resp.status
            res.routed_to = resp.headers.get("x-gateway-backend", "")
            if resp.status != 200:
                raw = await resp.read()
                res.error = error_text(resp.status, raw)
                res.e2el_s = clock() - start
                return res
            await _read_sse(resp, res, start, keep_text)
    except asyncio.TimeoutError:
        res.timed_out = True
        res.error = f"timeout after {timeout_s:g} s"
        res.e2el_s = clock() - start
        return res
    except (aiohttp.ClientError, OSError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        res.e2el_s = clock() - start
        return res
    res.e2el_s = clock() - start
    return res


class SseReader:
    """Splits a response body into SSE events and records them in a ``CompletionResult``.

    ``feed(data, now)`` takes whatever bytes arrived (``now``: seconds since the
    send, the time of that read) and returns False once the stream is over:
    ``[DONE]`` (then ``done`` is True) or an error event / malformed data (then
    ``res.error`` says what). Used by both clients, so they measure alike.
    """

    __slots__ = ("res", "pieces", "buf", "done")

    def __init__(self, res: CompletionResult, keep_text: bool = False) -> None:
        self.res = res
        self.pieces: list[str] | None = [] if keep_text else None
        self.buf = b""
        self.done = False

    def feed(self, data: bytes, now: float) -> bool:
        buf = self.buf + data if self.buf else data
        res = self.res
        while True:
            end = buf.find(b"\n\n")
            if end == -1:
                self.buf = buf
                return True
            event, buf = buf[:end], buf[end + 2:]
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue  # SSE comments (": ping"), "event:" lines
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    self.done = True
                    self.buf = b""
                    return False
                try:
                    doc = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    res.error = f"malformed SSE data: {payload[:200]!r}"
                    return False
                if not apply_sse_event(res, doc, now, self.pieces):
                    return False

    def close(self) -> None:
        """Settle the result: text, output count fallback, success or why not."""
        res = self.res
        if self.pieces is not None:
            res.text = "".join(self.pieces)
        if res.output_tokens == 0:
            res.output_tokens = len(res.chunk_times_s)
        if self.done and not res.error:
            res.ok = True
        elif not res.error:
            res.error = "stream ended before [DONE]"


async def _read_sse(resp: aiohttp.ClientResponse, res: CompletionResult, start: float,
                    keep_text: bool) -> None:
    """Consume SSE events until ``[DONE]``; fill times, usage and errors.

    Reads whatever bytes have arrived (one wake-up per network read, not per
    line) and timestamps each event with the read that completed it. What
    arrived before a failure (a timeout, a reset) is kept.
    """
    clock = time.perf_counter
    reader = SseReader(res, keep_text)
    try:
        async for data in resp.content.iter_any():
            if not reader.feed(data, clock() - start):
                break
    finally:
        reader.close()


def apply_sse_event(res: CompletionResult, doc: dict[str, Any], now: float,
                    pieces: list[str] | None) -> bool:
    """Record one SSE event; False if it is an error event (the request failed)."""
    choices = doc.get("choices")
    if choices:
        if not res.chunk_times_s:
            res.ttft_s = now
        res.chunk_times_s.append(now)
        c0 = choices[0]
        if pieces is not None:
            pieces.append(c0.get("text") or (c0.get("delta") or {}).get("content") or "")
        reason = c0.get("finish_reason")
        if reason:
            res.finish_reason = reason
    elif "error" in doc:
        err = doc["error"]
        res.error = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        return False
    usage = doc.get("usage")
    if usage:
        _apply_usage(res, usage)
    return True


def _apply_usage(res: CompletionResult, usage: dict[str, Any]) -> None:
    res.output_tokens = int(usage.get("completion_tokens") or 0)
    if usage.get("prompt_tokens") is not None:
        res.prompt_tokens = int(usage["prompt_tokens"])
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        res.cached_tokens = int(details["cached_tokens"])


def error_text(status: int, raw: bytes) -> str:
    """The server's OpenAI-style error message, or its raw body, with the status."""
    try:
        doc = orjson.loads(raw)
        err = doc.get("error", doc) if isinstance(doc, dict) else doc
        msg = err.get("message") if isinstance(err, dict) else None
        if msg is None and isinstance(doc, dict):
            msg = doc.get("detail") or doc.get("message")
        text = str(msg if msg is not None else doc)
    except (orjson.JSONDecodeError, AttributeError):
        text = raw[:500].decode("utf-8", "replace")
    return f"HTTP {status}: {text}"


async def scrape_metrics(
    session: aiohttp.ClientSession, base_url: str, *, timeout_s: float = 5.0
) -> ScrapedMetrics:
    """GET ``/metrics`` and read vLLM's scheduler and cache metrics from it.

    Raises ``aiohttp.ClientError`` / ``asyncio.TimeoutError`` if the backend does not
    answer with 200; metrics missing from the text come back as NaN.
    """
    async with session.get(base_url.rstrip("/") + "/metrics", timeout=_limit(timeout_s)) as resp:
        resp.raise_for_status()
        text = await resp.text()
    return parse_scraped_metrics(text)


async def list_models(
    session: aiohttp.ClientSession, base_url: str, *, timeout_s: float = 10.0
) -> list[str]:
    """The ids ``GET /v1/models`` lists (vLLM serves one: ``--served-model-name``)."""
    async with session.get(base_url.rstrip("/") + "/v1/models", timeout=_limit(timeout_s)) as resp:
        resp.raise_for_status()
        doc = orjson.loads(await resp.read())
    return [str(m["id"]) for m in doc.get("data", [])]


async def check_health(
    session: aiohttp.ClientSession, base_url: str, *, timeout_s: float = 2.0
) -> bool:
    """One ``GET /health``: True on 200, False on anything else (never raises)."""
    try:
        async with session.get(base_url.rstrip("/") + "/health", timeout=_limit(timeout_s)) as resp:
            await resp.read()
            return resp.status == 200
    except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
        return False


async def wait_healthy(
    session: aiohttp.ClientSession, base_url: str, timeout_s: float = 60.0,
    *, interval_s: float = 0.1,
) -> float:
    """Poll ``/health`` until it answers 200; return the seconds waited.

    Raises ``TimeoutError`` naming the URL after ``timeout_s`` (a real vLLM
    loading a model takes tens of seconds; an emulator well under one).
    """
    start = time.perf_counter()
    deadline = start + timeout_s
    while True:
        left = deadline - time.perf_counter()
        if await check_health(session, base_url, timeout_s=max(min(2.0, left), 0.05)):
            return time.perf_counter() - start
        if time.perf_counter() >= deadline:
            raise TimeoutError(f"{base_url} did not answer GET /health with 200 within {timeout_s:g} s")
        await asyncio.sleep(interval_s)
