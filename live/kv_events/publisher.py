"""Publishing KV-cache events as vLLM's ``ZmqEventPublisher`` does (the emulator's side).

One PUB socket sends each batch as ``(topic, seq, payload)`` (``live.kv_events.wire``);
an optional ROUTER socket answers replay requests from a buffer of the last
``buffer_steps`` batches, as vLLM's ``replay_endpoint`` does. The configuration is
vLLM's ``--kv-events-config`` JSON (``KVEventsConfig``: ``enable_kv_cache_events``,
``publisher``, ``endpoint``, ``replay_endpoint``, ``buffer_steps``, ``hwm``,
``max_queue_size``, ``topic``), with one difference: a wildcard host (``tcp://*:5557``,
vLLM's default, which binds every interface) binds the emulator's own ``--host``
(loopback by default), and port 0 picks a free port.

``publish`` runs on the caller's thread (the emulator's stepping loop): encoding and
a non-blocking send cost microseconds, and a subscriber that falls ``hwm`` batches
behind loses batches rather than stalling the engine (ZMQ drops at the high-water
mark, as in vLLM; the subscriber sees the gap and replays). Replay requests are
served by one daemon thread that owns the ROUTER socket.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any

import zmq

from live.kv_events.wire import END_SEQ, EventMsg, encode_batch, seq_bytes, seq_of
from live.logfmt import kv

log = logging.getLogger("live.kv_events")

__all__ = ["KVEventsConfig", "KVEventPublisher", "parse_kv_events_config"]


@dataclass
class KVEventsConfig:
    """vLLM 0.32's ``KVEventsConfig`` (``vllm/config/kv_events.py``), its defaults included."""

    enable_kv_cache_events: bool = False
    publisher: str | None = None  # "zmq" or "null"; None: zmq when enabled
    endpoint: str = "tcp://*:5557"
    replay_endpoint: str | None = None
    buffer_steps: int = 10_000
    hwm: int = 100_000
    max_queue_size: int = 100_000
    topic: str = ""

    def __post_init__(self) -> None:
        if self.publisher is None:
            self.publisher = "zmq" if self.enable_kv_cache_events else "null"
        if self.publisher not in ("zmq", "null"):
            raise ValueError(f"kv-events-config: publisher must be 'zmq' or 'null', got "
                             f"{self.publisher!r}")
        for name in ("buffer_steps", "hwm", "max_queue_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"kv-events-config: {name} must be an integer >= 1, got "
                                 f"{getattr(self, name)!r}")
        for name in ("endpoint", "replay_endpoint"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value.startswith("tcp://")):
                raise ValueError(f"kv-events-config: {name} must be a tcp://host:port endpoint "
                                 f"(the emulator serves TCP only), got {value!r}")

    @property
    def enabled(self) -> bool:
        return self.enable_kv_cache_events and self.publisher == "zmq"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_kv_events_config(text: str) -> KVEventsConfig:
    """``--kv-events-config`` JSON, as vLLM takes it; errors name the key and the allowed ones."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--kv-events-config is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("--kv-events-config must be a JSON object")
    allowed = [f.name for f in fields(KVEventsConfig)]
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise ValueError(f"--kv-events-config: unknown key(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(allowed)}")
    return KVEventsConfig(**doc)


def _bindable(endpoint: str, host: str) -> str:
    """``tcp://*:P`` (vLLM: every interface) becomes ``tcp://HOST:P``."""
    rest = endpoint[len("tcp://"):]
    h, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"kv-events endpoint {endpoint!r} has no port (tcp://host:port)")
    if h in ("*", "", "0.0.0.0", "::", "[::]"):
        h = host
    return f"tcp://{h}:{port}"


class KVEventPublisher:
    """A PUB socket (and optional replay ROUTER) sending vLLM KV-event batches."""

    def __init__(self, config: KVEventsConfig, host: str = "127.0.0.1",
                 context: zmq.Context | None = None, data_parallel_rank: int = 0) -> None:
        if not config.enabled:
            raise ValueError("KV-event publishing is not enabled in this config")
        self.config = config
        self.topic = config.topic.encode("utf-8")
        self.data_parallel_rank = data_parallel_rank
        self._ctx = context or zmq.Context.instance()
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.set_hwm(config.hwm)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(_bindable(config.endpoint, host))
        #: The endpoint actually bound (a port 0 resolved).
        self.endpoint = self._pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.replay_endpoint: str | None = None
        self._buffer: deque[tuple[int, bytes]] = deque(maxlen=config.buffer_steps)
        self._lock = threading.Lock()
        self._seq = 0
        self._drop = 0
        #: Batches published, batches ZMQ refused at the high-water mark, batches dropped
        #: on purpose (fault injection), replay requests served.
        self.published = 0
        self.refused = 0
        self.dropped = 0
        self.replays = 0
        self._running = True
        self._thread: threading.Thread | None = None
        if config.replay_endpoint is not None:
            router = self._ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.bind(_bindable(config.replay_endpoint, host))
            self.replay_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._thread = threading.Thread(target=self._serve_replay, args=(router,),
                                            name="kv-events-replay", daemon=True)
            self._thread.start()

    def sources(self) -> dict[str, dict[str, Any]]:
        """What vLLM's ``GET /kv_event_sources`` answers: the resolved config per DP rank."""
        cfg = self.config.as_dict()
        cfg["endpoint"] = self.endpoint
        cfg["replay_endpoint"] = self.replay_endpoint
        return {str(self.data_parallel_rank): cfg}

    @property
    def next_seq(self) -> int:
        return self._seq

    def drop_next(self, n: int) -> None:
        """Fault injection: the next ``n`` batches are numbered and buffered, never sent."""
        self._drop = max(0, int(n))

    def publish(self, events: list[EventMsg], ts: float | None = None) -> int:
        """Send one batch; returns its sequence number."""
        payload = encode_batch(time.time() if ts is None else ts, events, self.data_parallel_rank)
        seq = self._seq
        self._seq = seq + 1
        with self._lock:
            self._buffer.append((seq, payload))
        self.published += 1
        if self._drop:
            self._drop -= 1
            self.dropped += 1
            return seq
        try:
            self._pub.send_multipart((self.topic, seq_bytes(seq), payload), flags=zmq.NOBLOCK,
                                     copy=False)
        except zmq.Again:
            self.refused += 1
        return seq

    def close(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self._pub.close(linger=0)

    # --- replay (its own thread: it owns the ROUTER socket) ---------------------------------
    def _serve_replay(self, router: zmq.Socket) -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        try:
            while self._running:
                if not poller.poll(100):
                    continue
                try:
                    frames = router.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    continue
                if len(frames) != 3 or len(frames[2]) != 8:
                    log.warning(kv("kv_replay_bad_request", frames=len(frames)))
                    continue
                client, empty, start = frames
                first = seq_of(start)
                with self._lock:
                    batches = [(s, p) for s, p in self._buffer if s >= first]
                for s, p in batches:
                    router.send_multipart((client, empty, self.topic, seq_bytes(s), p))
                router.send_multipart((client, empty, b"", END_SEQ, b""))
                self.replays += 1
        finally:
            router.close(linger=0)
