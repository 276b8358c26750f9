"""The gateway: an OpenAI-compatible router in front of vLLM replicas.

Every generation request is routed by a ``routing`` strategy through
``live.router.LiveRouter`` (the same ``Router`` and strategy objects the simulator
runs) and forwarded unchanged; the response streams back chunk by chunk as the
backend sends it (nothing is buffered). Until the first byte has gone to the
client, a refused connection, a 5xx, a timeout or a stream that dies early fails
over to another backend (at most ``max_retries`` times); after that the request
ends with an SSE error event. Every routed attempt ends in exactly one
``Router.finish`` (failures included), so in-flight counts never leak. A client
that disconnects closes the upstream connection, which makes vLLM abort the
request and free its KV cache.

Nothing slow runs on the event loop: prompts are tokenized and hashed by a
``live.request_tokens.PromptWorker`` thread, and a prompt longer than the largest context
any backend accepts (their ``/v1/models`` ``max_model_len``) is refused after at
most that many tokens of work. A stalled backend is found by default: no first
byte of a stream within ``first_byte_timeout_s``, silence between chunks beyond
``read_timeout_s``, and ``/health`` probes of every backend every
``health_interval_s`` (a backend failing ``eject_after`` in a row is ejected and
its requests still waiting for a first byte fail over at once). Every state change
and every failed request is logged (logger ``live.gateway``). docs/operations.md
describes running it in front of real servers.

The HTTP layer is ``live.transport.http`` (asyncio protocols + httptools); this
module is the routing logic on top of it.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import math
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson

import routing
from live.kv_events.subscriber import EventSource, resolve_endpoint
from live.router import KV_RESYNC_MODES, LiveRouter
from live.logfmt import kv
from live.gateway.metrics import GatewayMetrics
from live.request_tokens import Prompt, PromptTooLong, PromptWorker, ensure_tokenizer, prompt_source
from live.transport.http import (
    CHUNK_END, JSON_HEADERS, PROMETHEUS_HEADERS, SSE_DONE, TEXT_HEADERS, ClientLimits, HttpError,
    Listener, Request, ServerConnection, UpstreamConnection, UpstreamPool, chunk, error_body,
    parse_json_object, response_head, serving, sse_event,
)
from routing import NoHealthyBackend, Outcome, RequestInfo

log = logging.getLogger("live.gateway")

_NO_HASHES = np.zeros(0, dtype=np.uint64)
_GEN_PATHS = {"/v1/completions": False, "/v1/chat/completions": True}
_GET_PATHS = ("/health", "/metrics", "/v1/models")
_PASS_HEADERS = frozenset({b"content-type", b"cache-control"})
#: Request bytes allowed per token of context when checking --max-body-bytes against a
#: backend's max_model_len: a token-id list takes up to 7 bytes a token, English text
#: about 4, JSON-escaped non-ASCII text up to ~12 (the rest is margin for chat structure).
BODY_BYTES_PER_TOKEN = 32
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
#: Text prompts are refused at this many times the backends' context: the gateway's
#: tokenizer is a stand-in for the model's, and the two can differ by tens of percent.
TEXT_TOKEN_SLACK = 2


@dataclass
class GatewayConfig:
    """Everything the gateway needs; ``python -m live.gateway --help`` documents each."""

    backends: list[str]
    strategy: str = "round_robin"
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    names: list[str] | None = None
    scrape_interval_s: float = 0.5
    api_key: str | None = None
    backend_api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_retries: int = 2
    eject_after: int = 3
    probe_interval_s: float = 1.0
    tokenizer: str = "deepseek"
    block_size: int = 16
    #: The approximate prefix index's capacity per backend: one size for all, or one per
    #: backend (None: ``routing.router.DEFAULT_INDEX_BLOCKS``).
    prefix_index_blocks: list[int] | None = None
    request_timeout_s: float = 600.0
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 300.0  # streams: send -> first body byte (0: none)
    read_timeout_s: float = 30.0  # streams: silence between chunks after the first (0: none)
    health_interval_s: float = 2.0  # /health probes of backends taking traffic (0: none)
    probe_timeout_s: float = 3.0
    max_prompt_tokens: int | None = None  # None: the backends' largest max_model_len; 0: none
    max_connections: int = 1024  # keep-alive connections per backend
    client: ClientLimits = field(default_factory=ClientLimits)
    #: KV-event streams, for strategies that route on an exact mirror of each backend's
    #: cache: "auto" (ask each backend's /kv_event_sources), "off", or one ZMQ endpoint
    #: per backend ("" for a backend that publishes none).
    kv_events: str | list[str] = "auto"
    kv_events_replay: list[str] | None = None  # replay endpoints, one per backend ("": none)
    kv_events_topic: str = ""
    kv_events_resync: str = "replay"  # or "reset": POST /reset_prefix_cache to regain exactness

    def index_sizes(self) -> list[int] | None:
        """``prefix_index_blocks`` with one size per backend."""
        sizes = self.prefix_index_blocks
        if sizes is None:
            return None
        return list(sizes) * len(self.backends) if len(sizes) == 1 else list(sizes)

    def kv_sources(self) -> str | list[EventSource | None]:
        """``kv_events`` as ``live.router.LiveRouter`` takes it."""
        if isinstance(self.kv_events, str):
            return self.kv_events
        replay = self.kv_events_replay or [""] * len(self.kv_events)
        return [EventSource(resolve_endpoint(e, url), resolve_endpoint(r, url) if r else None,
                            self.kv_events_topic) if e else None
                for e, r, url in zip(self.kv_events, replay, self.backends)]

    def validate(self) -> None:
        if not self.backends:
            raise ValueError("--backends: give at least one backend URL")
        for url in self.backends:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"--backends: {url!r} is not an http://host:port URL "
                                 "(TLS to backends is not supported; terminate it in front)")
        if self.names is not None and len(self.names) != len(self.backends):
            raise ValueError(f"--names: {len(self.names)} names for {len(self.backends)} backends")
        if self.prefix_index_blocks is not None and len(self.prefix_index_blocks) not in (1, len(self.backends)):
            raise ValueError(f"--prefix-index-blocks: {len(self.prefix_index_blocks)} sizes for "
                             f"{len(self.backends)} backends (give one for all, or one per backend)")
        routing.validate(self.strategy, self.params)
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        for name in ("eject_after", "max_body_bytes", "block_size", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("scrape_interval_s", "probe_interval_s", "request_timeout_s",
                     "probe_timeout_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("read_timeout_s", "first_byte_timeout_s", "health_interval_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = none), got {getattr(self, name)}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 0:
            raise ValueError(f"max_prompt_tokens must be >= 0 (0 = no check), got "
                             f"{self.max_prompt_tokens}")
        self.client.validate()
        if isinstance(self.kv_events, str):
            if self.kv_events not in ("auto", "off"):
                raise ValueError(f"--kv-events must be auto, off or one tcp:// endpoint per "
                                 f"backend, got {self.kv_events!r}")
            if self.kv_events_replay:
                raise ValueError("--kv-events-replay needs --kv-events with explicit endpoints "
                                 "(auto discovery finds replay endpoints by itself)")
        else:
            if len(self.kv_events) != len(self.backends):
                raise ValueError(f"--kv-events: {len(self.kv_events)} endpoints for "
                                 f"{len(self.backends)} backends (one per backend, '' for none)")
            if self.kv_events_replay is not None and len(self.kv_events_replay) != len(self.backends):
                raise ValueError(f"--kv-events-replay: {len(self.kv_events_replay)} endpoints for "
                                 f"{len(self.backends)} backends (one per backend, '' for none)")
            self.kv_sources()  # endpoint syntax, with the endpoint named in the error
        if self.kv_events_resync not in KV_RESYNC_MODES:
            raise ValueError(f"--kv-events-resync must be one of {', '.join(KV_RESYNC_MODES)}, "
                             f"got {self.kv_events_resync!r}")


class _Attempt:
    """One upstream try: which backend, and how it ended (for ``Router.finish``)."""

    __slots__ = ("backend", "first_byte", "output_tokens", "ok", "finished")

    def __init__(self, backend: int) -> None:
        self.backend = backend
        self.first_byte = math.nan
        self.output_tokens = 0
        self.ok = False
        self.finished = False


class Gateway:
    """The gateway's state and request handling; ``start`` listens, ``stop`` ends it."""

    def __init__(self, config: GatewayConfig, *, clock: Callable[[], float] = time.perf_counter) -> None:
        config.validate()
        self.config = config
        self.clock = clock
        self.names = config.names or [f"backend-{i}" for i in range(len(config.backends))]
        self.name_bytes = [n.encode() for n in self.names]
        self.strategy = routing.build(config.strategy, seed=config.seed, **config.params)
        self.fleet = LiveRouter(
            config.backends, self.strategy, names=self.names, block_size=config.block_size,
            prefix_index_blocks=config.index_sizes(),
            scrape_interval_s=config.scrape_interval_s, eject_after=config.eject_after,
            probe_interval_s=config.probe_interval_s, clock=clock,
            on_health_change=self._health_changed, health_interval_s=config.health_interval_s,
            probe_timeout_s=config.probe_timeout_s, kv_events=config.kv_sources(),
            kv_events_resync=config.kv_events_resync,
        )
        self.metrics = GatewayMetrics(self.names)
        self.metrics.attach(self.fleet)
        self.pools: list[UpstreamPool] = []
        self.request_heads: list[tuple[bytes, bytes]] = []  # per backend: before/after the path
        auth = (b"authorization: Bearer " + config.backend_api_key.encode() + b"\r\n"
                if config.backend_api_key else b"")
        for url in self.fleet.urls:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or 80
            self.pools.append(UpstreamPool(parts.hostname, port, config.max_connections))
            self.request_heads.append((b"POST " + parts.path.rstrip("/").encode(),
                                       b" HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json"
                                       b"\r\n%bcontent-length: " % (parts.hostname.encode(), port, auth)))
        self._auth = (b"Bearer " + config.api_key.encode()) if config.api_key else None
        self._next_id = 0
        self._listener = Listener(self._handle, config.max_body_bytes, config.client)
        self.prompts = PromptWorker(config.tokenizer)
        #: max_model_len each backend reported on /v1/models (None: not known)
        self.contexts: list[int | None] = [None] * len(self.names)
        #: exchanges with an attempt in flight, per backend (to fail over when one stalls)
        self.active: list[set[Exchange]] = [set() for _ in self.names]
        self._tasks: set[asyncio.Task] = set()
        self.session: aiohttp.ClientSession | None = None
        self.url = ""

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self, sock: socket.socket) -> str:
        """Load the tokenizer, ask each backend for its context length, start scraping
        and probing, and serve on ``sock``.

        The tokenizer (about a second to load) is loaded before serving: loading
        it beside live traffic would stall streams (the GIL). A backend that does not
        answer is logged as a warning; the gateway starts anyway and probes it.
        """
        await ensure_tokenizer(self.config.tokenizer)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None), auto_decompress=False)
        await asyncio.gather(*(self._learn_context(i, at_start=True) for i in range(len(self.names))))
        await self.fleet.start(self.session)
        self.url = await self._listener.listen(sock)
        c = self.config
        log.info(kv("gateway_started", url=self.url, backends=len(self.names), strategy=c.strategy,
                    max_prompt_tokens=self.context_limit(), max_body_bytes=c.max_body_bytes,
                    first_byte_timeout_s=c.first_byte_timeout_s, read_timeout_s=c.read_timeout_s,
                    request_timeout_s=c.request_timeout_s, health_interval_s=c.health_interval_s,
                    max_client_connections=c.client.max_connections))
        return self.url

    async def stop(self) -> None:
        self._listener.close()
        for t in list(self._tasks):
            t.cancel()
        for pool in self.pools:
            pool.close_all()
        await self.fleet.stop()
        if self.session is not None:
            await self.session.close()
        self.prompts.close()
        log.info(kv("gateway_stopped", url=self.url))

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- what the backends accept ----------------------------------------------------------
    async def _learn_context(self, i: int, at_start: bool = False) -> None:
        """Read backend ``i``'s ``max_model_len`` from ``/v1/models`` (vLLM reports it)."""
        headers = ({"Authorization": f"Bearer {self.config.backend_api_key}"}
                   if self.config.backend_api_key else None)
        url = self.fleet.urls[i]
        try:
            async with self.session.get(url + "/v1/models", headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=5)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise ValueError(f"/v1/models answered HTTP {resp.status}")
            lens = [m.get("max_model_len") for m in orjson.loads(body).get("data") or []
                    if isinstance(m, dict)]
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, AttributeError) as exc:
            reason = (f"no answer within 5 s" if isinstance(exc, asyncio.TimeoutError)
                      else f"{type(exc).__name__}: {exc}")
            if at_start:
                log.warning(kv("backend_unreachable", backend=self.names[i], url=url, reason=reason,
                               note="starting anyway; it is probed and used once it answers"))
            return
        known = [int(x) for x in lens if isinstance(x, int) and x > 0]
        self.contexts[i] = max(known) if known else None
        c = self.contexts[i]
        if c and c * BODY_BYTES_PER_TOKEN > self.config.max_body_bytes:
            log.warning(kv("body_limit_below_context", backend=self.names[i], max_model_len=c,
                           max_body_bytes=self.config.max_body_bytes,
                           advice=f"raise --max-body-bytes to {c * BODY_BYTES_PER_TOKEN} to accept "
                                  "its longest prompts"))

    def context_limit(self) -> int | None:
        """The most prompt tokens any backend accepts: ``--max-prompt-tokens``, else the
        largest ``max_model_len`` the backends reported (None: not known, no check)."""
        m = self.config.max_prompt_tokens
        if m is not None:
            return m or None
        known = [c for c in self.contexts if c]
        return max(known) if known else None

    def prompt_limit(self, text: bool = False) -> int | None:
        """Where the gateway stops a prompt: the context limit for token ids (counted
        exactly); for text, twice the reported context, since the gateway's tokenizer may
        count differently from the backends' (they enforce the exact limit). An explicit
        ``--max-prompt-tokens`` is applied as given to both."""
        limit = self.context_limit()
        if limit is None or not text or self.config.max_prompt_tokens is not None:
            return limit
        return TEXT_TOKEN_SLACK * limit

    # --- backend state -------------------------------------------------------------------
    def _health_changed(self, i: int, healthy: bool) -> None:
        reason = self.fleet.reasons[i]
        if healthy:
            log.info(kv("backend_recovered", backend=self.names[i], url=self.fleet.urls[i],
                        reason=reason))
            if self.contexts[i] is None and self.session is not None:
                self._spawn(self._learn_context(i))
            return
        log.warning(kv("backend_ejected", backend=self.names[i], url=self.fleet.urls[i],
                       reason=reason, inflight=len(self.active[i])))
        if self.fleet.probe_failures[i] >= self.config.eject_after:
            # It stopped answering: requests still waiting on it would wait as long as it
            # is frozen. Those without a first byte fail over now; streams end.
            for ex in list(self.active[i]):
                ex.backend_stalled(reason)

    # --- requests --------------------------------------------------------------------------
    def _handle(self, conn: ServerConnection, req: Request) -> None:
        """Answer one request (synchronously, or by starting an exchange)."""
        try:
            if req.too_large:
                raise HttpError(413, f"request body exceeds the limit of "
                                     f"{self.config.max_body_bytes} bytes (--max-body-bytes)")
            chat = _GEN_PATHS.get(req.path)
            if chat is not None:
                if req.method != "POST":
                    raise HttpError(405, f"{req.path} accepts POST, not {req.method}")
                self._check_auth(req)
                self._generate(conn, req, chat)
                return
            if req.method not in ("GET", "HEAD"):
                raise HttpError(405 if req.path in _GET_PATHS else 404,
                                f"{req.method} {req.path} is not served")
            if req.path == "/health":
                ok = any(s.healthy for s in self.fleet.router.snapshots)
                self._reply(conn, req, 200 if ok else 503, b"", TEXT_HEADERS)
            elif req.path == "/metrics":
                self._reply(conn, req, 200, self.metrics.exposition(), PROMETHEUS_HEADERS)
            elif req.path == "/v1/models":
                self._check_auth(req)
                self._spawn(self._models(conn, req))
            else:
                raise HttpError(404, f"no route {req.path}")
        except HttpError as exc:
            self._error(conn, req, exc)
        except Exception:  # noqa: BLE001 - a bug: answer 500, keep serving, log the traceback
            self._internal_error(conn, req)

    def _internal_error(self, conn: ServerConnection, req: Request) -> None:
        log.exception(kv("handler_error", method=req.method, path=req.path))
        if not conn.closed and conn.busy:
            self._error(conn, req, HttpError(500, "internal error in the gateway (logged)"))

    def _reply(self, conn: ServerConnection, req: Request, status: int, body: bytes,
               headers: list[tuple[bytes, bytes]]) -> None:
        self.metrics.response(status)
        if req.method == "HEAD":
            conn.write(response_head(status, headers, chunked=False, length=len(body),
                                     keep_alive=req.keep_alive))
            conn.finish_response(req.keep_alive)
        else:
            conn.send_simple(status, body, headers, req.keep_alive)

    def _error(self, conn: ServerConnection, req: Request, exc: HttpError) -> None:
        headers = JSON_HEADERS + ([(b"www-authenticate", b"Bearer")] if exc.status == 401 else [])
        if exc.status >= 500 or exc.status == 413:
            log.info(kv("request_refused", path=req.path, status=exc.status, reason=exc.message))
        self._reply(conn, req, exc.status, error_body(exc.status, exc.message, exc.param), headers)

    def _check_auth(self, req: Request) -> None:
        if self._auth is None:
            return
        if not hmac.compare_digest(req.headers.get(b"authorization", b""), self._auth):
            raise HttpError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")

    async def _models(self, conn: ServerConnection, req: Request) -> None:
        """The first healthy backend's model list (replicas serve the same model)."""
        last = "no healthy backend"
        headers = ({"Authorization": f"Bearer {self.config.backend_api_key}"}
                   if self.config.backend_api_key else None)
        for i, url in enumerate(self.fleet.urls):
            if not self.fleet.healthy(i):
                continue
            try:
                async with self.session.get(url + "/v1/models", headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        self._reply(conn, req, 200, body, JSON_HEADERS)
                        return
                    last = f"{self.names[i]} answered HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                last = f"{self.names[i]}: {type(exc).__name__}: {exc}"
        self._error(conn, req, HttpError(503, f"no backend listed its models ({last})"))

    def _generate(self, conn: ServerConnection, req: Request, chat: bool) -> None:
        arrived = self.clock()
        body = req.body  # not copied: a large body is several milliseconds of copying
        doc = parse_json_object(body)
        stream = doc.get("stream", False)
        if not isinstance(stream, bool):
            raise HttpError(400, f"stream must be true or false, got {stream!r}", "stream")
        block_size = self.config.block_size if self.fleet.track_prefix else None
        source = prompt_source(doc, chat)
        prompt = self.prompts.try_inline(source, self.prompt_limit(), block_size)  # token ids
        if prompt is not None:  # a small token-id prompt: no thread hop
            self._route(conn, req, doc, prompt, body, stream, arrived)
            return
        self._spawn(self._prepare(conn, req, doc, source, block_size, body, stream, arrived))

    async def _prepare(self, conn: ServerConnection, req: Request, doc: dict[str, Any],
                       source: str | list, block_size: int | None, body: bytes, stream: bool,
                       arrived: float) -> None:
        """Tokenize and hash on the prompt worker, then route (or answer the error)."""
        try:
            text = isinstance(source, str)
            try:
                prompt = await self.prompts.run(source, self.prompt_limit(text), block_size)
            except PromptTooLong as exc:
                if not text or self.config.max_prompt_tokens is not None:
                    raise
                raise HttpError(400, (
                    f"The prompt is too long for every backend: it has at least {exc.tokens} tokens "
                    f"by the gateway's tokenizer ({self.config.tokenizer}), and the largest "
                    f"context a backend accepts is {self.context_limit()} tokens (text prompts are "
                    f"refused here at {exc.limit}: tokenizers count differently)."), "prompt") from None
            if conn.closed:  # the client left while its prompt was prepared
                return
            self._route(conn, req, doc, prompt, body, stream, arrived)
        except HttpError as exc:
            if not conn.closed:
                self._error(conn, req, exc)
        except Exception:  # noqa: BLE001
            self._internal_error(conn, req)

    def _route(self, conn: ServerConnection, req: Request, doc: dict[str, Any], prompt: Prompt,
               body: bytes, stream: bool, arrived: float) -> None:
        rid = self._next_id
        self._next_id += 1
        session_id = req.headers.get(b"x-session-id")
        user = doc.get("user")
        hashes = prompt.hashes if prompt.hashes is not None else _NO_HASHES
        info = RequestInfo(rid, len(prompt), self.fleet.now(), hashes,
                           session_id=session_id.decode("latin-1") if session_id
                           else (user if isinstance(user, str) else ""))
        Exchange(self, conn, req, info, body, stream, arrived).start()


class Exchange:
    """One routed request, from dispatch to the end of its response (with failovers)."""

    __slots__ = ("gw", "conn", "req", "info", "body", "stream", "arrived", "attempt", "tried",
                 "failure", "upstream", "status", "up_headers", "buf", "sent_head", "chunks",
                 "usage_piece", "prev", "done", "reused", "connect_task", "timer", "read_timer",
                 "stale_retry", "expired")

    def __init__(self, gw: Gateway, conn: ServerConnection, req: Request, info: RequestInfo,
                 body: bytes, stream: bool, arrived: float) -> None:
        self.gw = gw
        self.conn = conn
        self.req = req
        self.info = info
        self.body = body
        self.stream = stream
        self.arrived = arrived
        self.attempt: _Attempt | None = None
        self.tried: list[int] = []
        self.failure: tuple[str, int, bytes, int] | None = None
        self.upstream: UpstreamConnection | None = None
        self.done = False
        self.connect_task: asyncio.Task | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.read_timer: asyncio.TimerHandle | None = None
        self.stale_retry = False
        self.expired = False  # --request-timeout ran out: no further failover

    def start(self) -> None:
        """Route and send; ``--request-timeout`` is armed once here, so it bounds the
        whole request, every failover included (as its help and docs/operations.md say)."""
        self.conn.on_lost = self.client_gone
        self.conn.on_drain = self._client_drain
        self.timer = asyncio.get_running_loop().call_later(self.gw.config.request_timeout_s,
                                                           self._on_timeout)
        self._dispatch()

    # --- attempts ------------------------------------------------------------------------
    def _dispatch(self) -> None:
        gw = self.gw
        try:
            decision = gw.fleet.dispatch(self.info, self.tried)
        except NoHealthyBackend:
            self._give_up()
            return
        b = decision.backend
        self.attempt = _Attempt(b)
        gw.active[b].add(self)
        gw.metrics.decisions[b].inc()
        if not self.tried:
            gw.metrics.overhead.observe(gw.clock() - self.arrived)
        self.stale_retry = False
        self._reset_response()
        self._open(b)

    def _reset_response(self) -> None:
        self.status = 0
        self.up_headers: list[tuple[bytes, bytes]] = []
        self.buf = bytearray()
        self.sent_head = False
        self.chunks = 0
        self.usage_piece = b""
        self.prev = b""

    def _open(self, b: int) -> None:
        conn = self.gw.pools[b].take_idle()
        if conn is not None:
            self.reused = True
            self._send(conn)
        else:
            self.reused = False
            self.connect_task = asyncio.ensure_future(self._connect(b))

    async def _connect(self, b: int) -> None:
        limit = self.gw.config.connect_timeout_s
        try:
            conn = await asyncio.wait_for(self.gw.pools[b].connect(), limit)
        except (OSError, asyncio.TimeoutError) as exc:
            self.connect_task = None
            if not self.done:
                self._attempt_failed("connect", 0, b"", (
                    f"no connection within --connect-timeout {limit:g} s"
                    if isinstance(exc, asyncio.TimeoutError) else f"cannot connect: {exc}"))
            return
        self.connect_task = None
        if self.done:
            self.gw.pools[b].release(conn)
            return
        self._send(conn)

    def _send(self, conn: UpstreamConnection) -> None:
        self.upstream = conn
        if not self.conn.writable:  # the client is still behind on an earlier response
            conn.pause()
        before, after = self.gw.request_heads[self.attempt.backend]
        path = self.req.path.encode()
        if len(self.body) <= 65536:  # one write, one syscall
            conn.send(self, b"%b%b%b%d\r\n\r\n%b" % (before, path, after, len(self.body), self.body))
        else:  # head and body apart: no copy of a large body into one buffer
            conn.send(self, b"%b%b%b%d\r\n\r\n" % (before, path, after, len(self.body)))
            conn.transport.write(self.body)
        if self.stream and self.gw.config.first_byte_timeout_s:
            self._arm_read_timer(self.gw.config.first_byte_timeout_s, "first_byte")

    # --- upstream callbacks -------------------------------------------------------------------
    def on_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.up_headers = headers

    def on_data(self, data: bytes) -> None:
        if self.stream:
            if self.gw.config.read_timeout_s:
                self._arm_read_timer(self.gw.config.read_timeout_s, "read")
            elif self.read_timer is not None:
                self.read_timer.cancel()
                self.read_timer = None
        if self.status >= 500 or not self.stream or self.status != 200:
            self.buf += data
            return
        gw = self.gw
        self.chunks += data.count(b'"choices":[{')
        if b'"usage":{' in data:
            self.usage_piece = self.prev[-256:] + data
        self.prev = data
        if self.sent_head:
            self.conn.write(chunk(data))
            return
        self.sent_head = True
        a = self.attempt
        a.first_byte = gw.clock()
        gw.metrics.ttft.observe(a.first_byte - self.arrived)
        if gw.fleet.router.wants_first_tokens:  # prefill done: no longer pending work there
            gw.fleet.router.first_token(self.info.request_id)
        self.conn.write(response_head(200, self._client_headers(), chunked=True,
                                      keep_alive=self.req.keep_alive) + chunk(data))

    def on_done(self) -> None:
        self.upstream = None
        if self.done:
            return
        gw, a = self.gw, self.attempt
        if self.status >= 500:
            self._attempt_failed("status", self.status, bytes(self.buf),
                                 f"answered HTTP {self.status}: {_message(bytes(self.buf))}")
            return
        gw.fleet.report(a.backend, True)
        gw.metrics.response(self.status)
        if self.stream and self.status == 200:
            if not self.sent_head:  # an empty stream: still a well-formed response
                a.first_byte = gw.clock()
                self.conn.write(response_head(200, self._client_headers(), chunked=True,
                                              keep_alive=self.req.keep_alive))
            a.output_tokens = _usage_tokens(self.usage_piece) if self.usage_piece else self.chunks
            a.ok = True
            self.conn.write(CHUNK_END)
        else:
            a.first_byte = gw.clock()
            payload = bytes(self.buf)
            if self.status == 200:
                a.output_tokens = _completion_tokens(payload)
                a.ok = True
            self.conn.write(response_head(self.status, self._client_headers(), chunked=False,
                                          length=len(payload), keep_alive=self.req.keep_alive)
                            + payload)
        self._complete()

    def on_failed(self, message: str, got_bytes: bool) -> None:
        """The upstream connection broke (or sent garbage)."""
        self.upstream = None
        if self.done:
            return
        if self.sent_head:
            self._abort_stream(f"upstream stream broke: {message}")
        elif self.reused and not got_bytes and not self.stale_retry:
            # A keep-alive connection the backend had just closed: not the backend's
            # fault; send again on a fresh connection.
            self.stale_retry = True
            self.reused = False
            self.connect_task = asyncio.ensure_future(self._connect(self.attempt.backend))
        else:
            self._attempt_failed("connect", 0, b"", message)

    def backend_stalled(self, reason: str) -> None:
        """The backend of the attempt in flight stopped answering health probes."""
        if self.done:
            return
        name = self.gw.names[self.attempt.backend]
        if self.sent_head:
            self._abort_stream(f"backend {name} stopped answering ({reason})")
        else:
            self._attempt_failed("timeout", 0, b"", f"backend stopped answering ({reason})")

    # --- endings --------------------------------------------------------------------------------
    def _attempt_failed(self, kind: str, status: int, body: bytes, reason: str = "") -> None:
        gw, a = self.gw, self.attempt
        b = a.backend
        self._cancel_read_timer()  # the request's own timer keeps running across failovers
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        gw.metrics.errors[b][kind].inc()
        gw.metrics.retries[b].inc()
        self._finish_attempt()
        gw.fleet.report(b, False, reason or kind)
        self.tried.append(b)
        self.failure = (kind, status, body, b, reason)
        retry = len(self.tried) <= gw.config.max_retries and not self.expired
        log.info(kv("attempt_failed", id=self.info.request_id, backend=gw.names[b], kind=kind,
                    reason=reason or kind, attempt=len(self.tried),
                    next="failover" if retry else "give_up"))
        if retry:
            self._dispatch()
        else:
            self._give_up()

    def _give_up(self) -> None:
        gw = self.gw
        if self.failure is None:
            gw.metrics.rejected.inc()
            status, body = 503, error_body(503, "no healthy backend to route to")
            log.warning(kv("request_failed", id=self.info.request_id, status=503,
                           reason="no healthy backend"))
        else:
            kind, fstatus, fbody, b, reason = self.failure
            if self.expired:
                status, body = 504, error_body(504, f"{reason} (backend {gw.names[b]}, "
                                                    f"attempt {len(self.tried)})")
            elif fstatus >= 500 and fbody:
                status, body = fstatus, fbody
            else:
                status, body = 502, error_body(502, f"every attempt failed; last: {kind} "
                                                    f"(backend {gw.names[b]}: {reason or kind})")
            log.warning(kv("request_failed", id=self.info.request_id, status=status,
                           backend=gw.names[b], kind=kind, reason=reason or kind,
                           attempts=len(self.tried),
                           tried=",".join(gw.names[t] for t in self.tried)))
        gw.metrics.response(status)
        self.conn.write(response_head(status, JSON_HEADERS, chunked=False, length=len(body),
                                      keep_alive=self.req.keep_alive) + body)
        self._complete()

    def _abort_stream(self, message: str) -> None:
        """End a stream that broke after its first byte: an SSE error event, then [DONE]."""
        gw, b = self.gw, self.attempt.backend
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        gw.metrics.errors[b]["midstream"].inc()
        gw.fleet.report(b, False, message)
        gw.metrics.response(502)
        log.warning(kv("stream_broken", id=self.info.request_id, backend=gw.names[b],
                       reason=message, chunks_sent=self.chunks))
        err = {"error": {"message": message, "type": "BadGatewayError", "param": None, "code": 502}}
        self.conn.write(chunk(sse_event(err) + SSE_DONE) + CHUNK_END)
        self._complete()

    def client_gone(self) -> None:
        """The client disconnected: cancel upstream (the backend aborts the request)."""
        if self.done:
            return
        self.gw.metrics.client_disconnects.inc()
        if self.connect_task is not None:
            self.connect_task.cancel()
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self._complete(keep_alive=False)

    def _complete(self, keep_alive: bool | None = None) -> None:
        self.done = True
        self._cancel_timers()
        self._finish_attempt()
        self.conn.finish_response(self.req.keep_alive if keep_alive is None else keep_alive)

    def _finish_attempt(self) -> None:
        a = self.attempt
        if a is None or a.finished:
            return
        a.finished = True
        self.gw.active[a.backend].discard(self)
        now = self.gw.clock()
        self.gw.fleet.finish(Outcome(
            request_id=self.info.request_id, backend_index=a.backend, ok=a.ok,
            input_len=self.info.input_len, output_len=a.output_tokens,
            ttft_s=a.first_byte - self.arrived, e2el_s=now - self.arrived))
        if a.ok:
            self.gw.metrics.e2e.observe(now - self.arrived)

    # --- timers and flow control ------------------------------------------------------------
    def _on_timeout(self, which: str = "request") -> None:
        if which == "request":
            self.timer = None
        else:
            self.read_timer = None
        if self.done:
            return
        c = self.gw.config
        reason = {
            "request": f"no complete response within --request-timeout {c.request_timeout_s:g} s",
            "first_byte": f"no first byte within --first-byte-timeout {c.first_byte_timeout_s:g} s",
            "read": f"no data for --read-timeout {c.read_timeout_s:g} s mid-stream",
        }[which]
        if self.sent_head:
            self._abort_stream(f"upstream timed out: {reason}")
        else:
            self.expired = which == "request"
            self._attempt_failed("timeout", 0, b"", reason)

    def _arm_read_timer(self, seconds: float, which: str) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
        self.read_timer = asyncio.get_running_loop().call_later(seconds, self._on_timeout, which)

    def _cancel_read_timer(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def _cancel_timers(self) -> None:
        for t in (self.timer, self.read_timer):
            if t is not None:
                t.cancel()
        self.timer = self.read_timer = None

    def _client_drain(self, writable: bool) -> None:
        """A slow client: stop reading the backend until the client catches up."""
        up = self.upstream
        if up is not None:
            if writable:
                up.resume()
            else:
                up.pause()

    def _client_headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(k, v) for k, v in self.up_headers if k in _PASS_HEADERS]
        headers.append((b"x-gateway-backend", self.gw.name_bytes[self.attempt.backend]))
        return headers


def _usage_tokens(piece: bytes) -> int:
    """``completion_tokens`` of the SSE event holding ``"usage":{`` in ``piece``."""
    at = piece.rfind(b'"usage":{')
    start = piece.rfind(b"data: ", 0, at)
    end = piece.find(b"\n", at)
    try:
        doc = orjson.loads(piece[start + 6:end if end != -1 else len(piece)])
        return int(doc["usage"]["completion_tokens"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return 0


def _message(body: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else its first 200 bytes."""
    try:
        return str(orjson.loads(body)["error"]["message"])[:300]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


def _completion_tokens(payload: bytes) -> int:
    try:
        return int(orjson.loads(payload)["usage"]["completion_tokens"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return 0


def serve_gateway(config: GatewayConfig, host: str = "127.0.0.1", port: int = 0,
                  **kwargs: Any) -> serving:
    """Run a gateway inside the current event loop: ``async with serve_gateway(cfg) as gw``."""
    return serving(Gateway(config, **kwargs), host, port)
