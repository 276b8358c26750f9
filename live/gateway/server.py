"""The gateway: an OpenAI-compatible router in front of vLLM replicas.

Every generation request is routed by a ``routing`` strategy through
``live.fleet.LiveFleet`` (the same ``Router`` and strategy objects the simulator
runs) and forwarded unchanged; the response streams back chunk by chunk as the
backend sends it (nothing is buffered). Until the first byte has gone to the
client, a connection error, a 5xx or a stream that dies early fails over to
another backend (at most ``max_retries`` times); after that the request ends
with an SSE error event. Every routed attempt ends in exactly one
``Router.finish`` (failures included), so in-flight counts never leak. A client
that disconnects cancels the upstream request (its connection is closed, which
makes vLLM abort it and free its KV cache).
"""
from __future__ import annotations

import asyncio
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import orjson

import routing
from live import asgi
from live.asgi import HttpError
from live.fleet import LiveFleet
from live.gateway.metrics import GatewayMetrics
from live.prompts import ensure_tokenizer, needs_tokenizer, prompt_token_ids
from routing import NoHealthyBackend, Outcome, RequestInfo
from workload.hashing import block_hash_chain

_NO_HASHES = np.zeros(0, dtype=np.uint64)
_GEN_PATHS = ("/v1/completions", "/v1/chat/completions")
_HOP_HEADERS = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length",
                          b"server", b"date"})


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
    max_body_bytes: int = 16 * 1024 * 1024
    max_retries: int = 2
    eject_after: int = 3
    probe_interval_s: float = 1.0
    tokenizer: str = "deepseek"
    block_size: int = 16
    request_timeout_s: float = 600.0
    read_timeout_s: float = 0.0
    max_connections: int = 1024

    def validate(self) -> None:
        if not self.backends:
            raise ValueError("--backends: give at least one backend URL")
        for url in self.backends:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"--backends: {url!r} is not an http(s) URL")
        if self.names is not None and len(self.names) != len(self.backends):
            raise ValueError(f"--names: {len(self.names)} names for {len(self.backends)} backends")
        routing.validate(self.strategy, self.params)
        for name in ("max_retries",):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("eject_after", "max_body_bytes", "block_size", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("scrape_interval_s", "probe_interval_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.read_timeout_s < 0:
            raise ValueError(f"read_timeout_s must be >= 0 (0 = none), got {self.read_timeout_s}")


class _Attempt:
    """One upstream try: which backend, and how it ended (for ``Router.finish``)."""

    __slots__ = ("backend", "first_byte", "output_tokens", "ok", "finished")

    def __init__(self, backend: int) -> None:
        self.backend = backend
        self.first_byte = math.nan
        self.output_tokens = 0
        self.ok = False
        self.finished = False


class _Failover(Exception):
    """The attempt failed before any byte reached the client: try another backend."""

    def __init__(self, kind: str, status: int, body: bytes) -> None:
        super().__init__(kind)
        self.kind = kind
        self.status = status
        self.body = body


class GatewayApp:
    """ASGI app of the gateway. Build with a validated ``GatewayConfig``."""

    def __init__(self, config: GatewayConfig, *, clock: Callable[[], float] = time.perf_counter) -> None:
        config.validate()
        self.config = config
        self._clock = clock
        self.names = config.names or [f"backend-{i}" for i in range(len(config.backends))]
        self._name_bytes = [n.encode() for n in self.names]
        self.strategy = routing.build(config.strategy, seed=config.seed, **config.params)
        self.fleet = LiveFleet(
            config.backends, self.strategy, names=self.names, block_size=config.block_size,
            scrape_interval_s=config.scrape_interval_s, eject_after=config.eject_after,
            probe_interval_s=config.probe_interval_s, clock=clock,
        )
        self.metrics = GatewayMetrics(self.names)
        self.metrics.attach(self.fleet)
        self.session: aiohttp.ClientSession | None = None
        self._next_id = 0
        self._timeout = aiohttp.ClientTimeout(
            total=config.request_timeout_s, sock_connect=min(config.request_timeout_s, 10.0),
            sock_read=config.read_timeout_s or None)
        self._upstream_headers = {"Content-Type": "application/json"}
        if config.backend_api_key:
            self._upstream_headers["Authorization"] = f"Bearer {config.backend_api_key}"
        self._auth = (b"Bearer " + config.api_key.encode()) if config.api_key else None

    # --- lifecycle ----------------------------------------------------------------------
    async def startup(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.config.max_connections,
                                         ttl_dns_cache=None, keepalive_timeout=60.0)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             skip_auto_headers=("User-Agent",))
        # Text prompts need the tokenizer (about a second to load). Load it before
        # serving: loading it beside live traffic would stall streams (the GIL).
        await ensure_tokenizer(self.config.tokenizer)
        await self.fleet.start(self.session)

    async def shutdown(self) -> None:
        await self.fleet.stop()
        if self.session is not None:
            await self.session.close()

    # --- ASGI -----------------------------------------------------------------------------
    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await asgi.lifespan(receive, send, self.startup, self.shutdown)
            return
        if kind != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            if path in _GEN_PATHS:
                if method != "POST":
                    raise HttpError(405, f"{path} accepts POST, not {method}")
                self._check_auth(scope)
                await self._route(scope, receive, send, path, path == "/v1/chat/completions")
                return
            if method not in ("GET", "HEAD"):
                raise HttpError(405 if path in ("/health", "/metrics", "/v1/models") else 404,
                                f"{method} {path} is not served")
            if path == "/health":
                ok = any(s.healthy for s in self.fleet.router.snapshots)
                await asgi.send_bytes(send, 200 if ok else 503, b"", asgi.TEXT_HEADERS)
            elif path == "/metrics":
                await asgi.send_bytes(send, 200, self.metrics.exposition(), asgi.PROMETHEUS_HEADERS)
            elif path == "/v1/models":
                self._check_auth(scope)
                await self._models(send)
            else:
                raise HttpError(404, f"no route {path}")
        except HttpError as exc:
            self.metrics.response(exc.status)
            extra = [(b"www-authenticate", b"Bearer")] if exc.status == 401 else None
            await asgi.send_error(send, exc.status, exc.message, exc.param, extra)
        except asgi.ClientGone:
            self.metrics.client_disconnects.inc()

    def _check_auth(self, scope: asgi.Scope) -> None:
        if self._auth is None:
            return
        given = asgi.header(scope, b"authorization") or b""
        if not hmac.compare_digest(given, self._auth):
            raise HttpError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")

    async def _models(self, send: asgi.Send) -> None:
        """The first healthy backend's model list (replicas serve the same model)."""
        last = "no healthy backend"
        for i, url in enumerate(self.fleet.urls):
            if not self.fleet.healthy(i):
                continue
            try:
                async with self.session.get(url + "/v1/models", timeout=self._timeout,
                                            headers=self._upstream_headers) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        self.metrics.response(200)
                        await asgi.send_bytes(send, 200, body)
                        return
                    last = f"{self.names[i]} answered HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                last = f"{self.names[i]}: {type(exc).__name__}: {exc}"
        raise HttpError(503, f"no backend listed its models ({last})")

    # --- generation ---------------------------------------------------------------------------
    async def _route(self, scope, receive, send, path: str, chat: bool) -> None:
        clock = self._clock
        arrived = clock()
        body = await asgi.read_body(receive, self.config.max_body_bytes, scope)
        doc = asgi.parse_json_object(body)
        stream = doc.get("stream", False)
        if not isinstance(stream, bool):
            raise HttpError(400, f"stream must be true or false, got {stream!r}", "stream")
        if needs_tokenizer(doc, chat):
            await ensure_tokenizer(self.config.tokenizer)
        ids = prompt_token_ids(doc, chat, self.config.tokenizer)
        fleet = self.fleet
        hashes = block_hash_chain(ids, self.config.block_size) if fleet.track_prefix else _NO_HASHES
        rid = self._next_id
        self._next_id += 1
        session_id = asgi.header(scope, b"x-session-id")
        user = doc.get("user")
        info = RequestInfo(rid, len(ids), fleet.now(), hashes,
                           session_id=session_id.decode("latin-1") if session_id
                           else (user if isinstance(user, str) else ""))
        watcher = asgi.DisconnectWatcher(receive)
        tried: list[int] = []
        failure: _Failover | None = None
        attempt: _Attempt | None = None
        try:
            for _ in range(self.config.max_retries + 1):
                try:
                    decision = fleet.dispatch(info, tried)
                except NoHealthyBackend:
                    break
                attempt = _Attempt(decision.backend)
                self.metrics.decisions[decision.backend].inc()
                if not tried:
                    self.metrics.overhead.observe(clock() - arrived)
                try:
                    await self._forward(send, path, body, stream, attempt, arrived, watcher)
                    return
                except _Failover as exc:
                    failure = exc
                    b = attempt.backend
                    self.metrics.errors[b][exc.kind].inc()
                    self.metrics.retries[b].inc()
                    self._finish(info, attempt, arrived)
                    fleet.report(b, False)
                    tried.append(b)
            # Out of backends or retries: answer with what went wrong.
            watcher.stop()
            if failure is None:
                self.metrics.rejected.inc()
                raise HttpError(503, "no healthy backend to route to")
            if failure.status >= 500 and failure.body:
                self.metrics.response(failure.status)
                await asgi.send_bytes(send, failure.status, failure.body)
                return
            raise HttpError(502, f"every attempt failed; last: {failure.kind} "
                                 f"(backend {self.names[tried[-1]]})")
        except asyncio.CancelledError:
            if not watcher.fired:
                raise
            watcher.absorb()
            self.metrics.client_disconnects.inc()
        finally:
            watcher.stop()
            if attempt is not None and not attempt.finished:
                self._finish(info, attempt, arrived)

    def _finish(self, info: RequestInfo, attempt: _Attempt, arrived: float) -> None:
        attempt.finished = True
        now = self._clock()
        self.fleet.finish(Outcome(
            request_id=info.request_id, backend_index=attempt.backend, ok=attempt.ok,
            input_len=info.input_len, output_len=attempt.output_tokens,
            ttft_s=attempt.first_byte - arrived, e2el_s=now - arrived))
        if attempt.ok:
            self.metrics.e2e.observe(now - arrived)

    async def _forward(self, send, path: str, body: bytes, stream: bool, attempt: _Attempt,
                       arrived: float, watcher: asgi.DisconnectWatcher) -> None:
        """Send to ``attempt.backend`` and relay the answer; ``_Failover`` before the first byte."""
        b = attempt.backend
        url = self.fleet.urls[b] + path
        try:
            async with self.session.post(url, data=body, headers=self._upstream_headers,
                                         timeout=self._timeout) as resp:
                status = resp.status
                if status >= 500:
                    raise _Failover("status", status, await resp.read())
                headers = [(k.lower(), v) for k, v in resp.raw_headers
                           if k.lower() not in _HOP_HEADERS]
                if not stream or status != 200:
                    payload = await resp.read()
                    attempt.first_byte = self._clock()
                    if status == 200:
                        attempt.output_tokens = _completion_tokens(payload)
                        attempt.ok = True
                    self.fleet.report(b, True)
                    watcher.stop()
                    self.metrics.response(status)
                    headers.append((b"x-gateway-backend", self._name_bytes[b]))
                    await asgi.send_bytes(send, status, payload, headers)
                    return
                await self._relay(send, resp, headers, attempt, arrived, watcher)
        except asyncio.TimeoutError:  # before ClientError: aiohttp's timeouts are both
            if attempt.first_byte != attempt.first_byte:  # NaN: nothing sent yet
                raise _Failover("timeout", 0, b"") from None
            await self._abort_stream(send, attempt, watcher, "upstream timed out mid-stream")
        except (aiohttp.ClientError, OSError) as exc:
            if attempt.first_byte != attempt.first_byte:
                raise _Failover("connect", 0, b"") from None
            await self._abort_stream(send, attempt, watcher, f"upstream stream broke: {exc}")

    async def _relay(self, send, resp: aiohttp.ClientResponse, headers, attempt: _Attempt,
                     arrived: float, watcher: asgi.DisconnectWatcher) -> None:
        """Pass an SSE stream through chunk by chunk; count its tokens for the router."""
        content = resp.content
        first = await content.readany()
        if not first:
            raise aiohttp.ClientPayloadError("backend closed the stream before the first byte")
        clock = self._clock
        attempt.first_byte = clock()
        self.metrics.ttft.observe(attempt.first_byte - arrived)
        headers.append((b"x-gateway-backend", self._name_bytes[attempt.backend]))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        chunks = first.count(b'"choices":[{')
        usage_piece = first if b'"usage":{' in first else b""
        prev = first
        await send({"type": "http.response.body", "body": first, "more_body": True})
        while True:
            data = await content.readany()
            if not data:
                break
            chunks += data.count(b'"choices":[{')
            if b'"usage":{' in data:
                usage_piece = prev[-256:] + data
            prev = data
            await send({"type": "http.response.body", "body": data, "more_body": True})
        attempt.output_tokens = _usage_tokens(usage_piece) if usage_piece else chunks
        attempt.ok = True
        self.fleet.report(attempt.backend, True)
        self.metrics.response(200)
        watcher.stop()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _abort_stream(self, send, attempt: _Attempt, watcher: asgi.DisconnectWatcher,
                            message: str) -> None:
        """End a stream that broke after its first byte: an SSE error event, then [DONE]."""
        b = attempt.backend
        self.metrics.errors[b]["midstream"].inc()
        self.fleet.report(b, False)
        self.metrics.response(502)
        watcher.stop()
        err = {"error": {"message": message, "type": "BadGatewayError", "param": None, "code": 502}}
        await send({"type": "http.response.body", "body": asgi.sse_event(err) + asgi.SSE_DONE,
                    "more_body": False})


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


def _completion_tokens(payload: bytes) -> int:
    try:
        return int(orjson.loads(payload)["usage"]["completion_tokens"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return 0
