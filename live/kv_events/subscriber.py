"""Following each backend's KV-event stream into the router's exact mirror (the gateway's side).

One ``BackendStream`` per backend subscribes to the backend's publisher (vLLM's
``--kv-events-config`` ZMQ PUB, or the emulator's), decodes each batch
(``live.kv_events.wire``), names its blocks the way the router names prompt blocks,
and hands it to ``routing.Router.record_kv_events`` with its sequence number. The
router's ``EventFeed`` then keeps the exact mirror that ``precise_prefix`` (and llm-d's
precise scorer in ``weighted``) route on, and falls back to the approximate index
for a backend whose stream it cannot trust (``docs/routing-policies.md``).

What can go wrong on a live stream, and what happens (each counted, none fatal):

- **A gap** (a sequence number skipped: the subscription dropped batches at ZMQ's
  high-water mark, the connection broke, a slow joiner missed the first ones). With
  the backend's replay endpoint, the missing batches are asked for (vLLM's replay
  protocol) while newer ones wait, then everything is applied in order: the mirror
  never leaves exactness. Without replay, or when the publisher's buffer no longer
  holds them, the batch passes with its gap and the router distrusts that backend
  (approximate index, ``precise_fallbacks``) until the cache is reset
  (``AllBlocksCleared``) or the server restarts; with ``resync = "reset"`` the
  gateway asks for that reset itself (``POST /reset_prefix_cache``).
- **A restart** (sequence numbers start again below the last one: a new publisher,
  hence a new engine with an empty cache). The mirror is emptied and trusted again
  from batch 0 (replayed when the first ones were missed).
- **A payload that does not decode**: logged, counted, and treated as a gap.
- **Blocks the router cannot name** (see below): kept under the engine's hash, where
  no prompt lookup finds them, and counted. A backend whose block size differs from
  the router's cannot be followed at all: the stream is refused with an error that
  says which ``--block-size`` to use, and that backend stays on the approximate index.

**Naming blocks.** The router names a prompt's blocks with
``workload.hashing.block_hash_chain``; vLLM names them with SHA-256 over its own
serialisation (``prefix_caching_hash_algo``), the emulator with the lab's chain.
Every ``BlockStored`` carries the blocks' token ids and its parent's hash, so each
block's router name is computed from its parent's router name and its tokens
(vLLM's hash covers exactly those, plus extra keys for LoRA, multimodal inputs and
cache salts, which make a block unnamable here), and an engine-hash -> router-name
map (one entry per cached hash, dropped at its last removal) names the parents and
the removals. This is what llm-d's precise prefix-cache indexer does with vLLM's
events; it makes the mirror independent of the backend's hash function.
"""
from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from live.kv_events.wire import (
    MEDIUM_GPU, Cleared, Removed, Stored, WireError, decode_batch, seq_bytes, seq_of,
)
from live.logfmt import kv
from routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from workload.hashing import ROOT_HASH, block_hash_chain

log = logging.getLogger("live.kv_events")

__all__ = ["BackendStream", "EventSource", "HashTranslator", "StreamStats", "resolve_endpoint",
           "sources_from_info"]

#: How long a replay may take before the subscriber gives up on it (seconds).
REPLAY_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class EventSource:
    """Where one backend publishes: vLLM's ``endpoint``, ``replay_endpoint`` and ``topic``."""

    endpoint: str
    replay_endpoint: str | None = None
    topic: str = ""


def resolve_endpoint(endpoint: str, backend_url: str) -> str:
    """A publisher's bind address as a subscriber connects to it: a wildcard host
    (``tcp://*:5557``, vLLM's default) means the backend's own host; ``ipc://PATH`` (a
    local socket file, which vLLM binds too) is used as it is."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return endpoint
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"KV-event endpoint {endpoint!r}: only tcp://host:port and ipc://path "
                         "are supported")
    host, sep, port = endpoint[len("tcp://"):].rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"KV-event endpoint {endpoint!r} has no port (tcp://host:port)")
    if host in ("*", "", "0.0.0.0", "::", "[::]"):
        host = urllib.parse.urlsplit(backend_url).hostname or "127.0.0.1"
    return f"tcp://{host}:{port}"


def sources_from_info(doc: object, backend_url: str) -> EventSource | None:
    """The source in a ``GET /kv_event_sources`` answer (vLLM: ``{rank: KVEventsConfig}``).

    None when the backend publishes nothing; ``ValueError`` for several data-parallel
    ranks behind one URL (their caches are separate and the router cannot tell which
    rank serves a request) or a malformed answer.
    """
    if not isinstance(doc, dict):
        raise ValueError("/kv_event_sources did not answer a JSON object")
    configs = [c for c in doc.values() if isinstance(c, dict) and c.get("enable_kv_cache_events")
               and c.get("publisher", "zmq") == "zmq"]
    if not configs:
        return None
    if len(configs) > 1:
        raise ValueError(f"{len(configs)} data-parallel ranks publish KV events behind one URL; "
                         "the router mirrors one engine per backend")
    c = configs[0]
    replay = c.get("replay_endpoint")
    return EventSource(resolve_endpoint(str(c["endpoint"]), backend_url),
                       resolve_endpoint(str(replay), backend_url) if replay else None,
                       str(c.get("topic") or ""))


class HashTranslator:
    """Engine block hashes -> the router's block names (see the module docstring)."""

    __slots__ = ("block_size", "_names", "named", "unnamed")

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        #: engine hash -> [router name, cached copies, named from its tokens]
        self._names: dict[object, list] = {}
        #: Blocks named from their tokens; blocks kept under the engine's hash.
        self.named = 0
        self.unnamed = 0

    def __len__(self) -> int:
        return len(self._names)

    def stored(self, ev: Stored) -> BlockStored:
        names = self._names
        hashes = ev.block_hashes
        n = len(hashes)
        parent = ev.parent_block_hash
        if parent is None:
            parent_name, base = None, ROOT_HASH
        else:
            entry = names.get(parent)
            parent_name = entry[0] if entry is not None else parent
            base = entry[0] if entry is not None and entry[2] else None
        computed = None
        bs = self.block_size
        if (base is not None and ev.extra_keys is None and not ev.lora
                and len(ev.token_ids) == n * bs and n):
            computed = block_hash_chain(ev.token_ids, bs, base).tolist()
            self.named += n
        else:
            self.unnamed += n
        out = []
        for k, h in enumerate(hashes):
            entry = names.get(h)
            if entry is None:
                name = computed[k] if computed is not None else h
                names[h] = [name, 1, computed is not None]
            else:
                entry[1] += 1
                name = entry[0]
            out.append(name)
        return BlockStored(tuple(out), parent_name, bs)

    def removed(self, ev: Removed) -> BlockRemoved:
        names = self._names
        out = []
        for h in ev.block_hashes:
            entry = names.get(h)
            if entry is None:
                out.append(h)  # the mirror counts it as an unknown removal
                continue
            out.append(entry[0])
            entry[1] -= 1
            if entry[1] <= 0:
                del names[h]
        return BlockRemoved(tuple(out))

    def clear(self) -> None:
        self._names.clear()


@dataclass
class StreamStats:
    """One backend stream's counters (the gateway exports them on ``/metrics``)."""

    batches: int = 0  # batches applied to the mirror
    gaps: int = 0  # sequence gaps seen on the live stream
    replays: int = 0  # replay requests sent
    replayed: int = 0  # batches recovered by replay
    replay_failures: int = 0  # replays that timed out or did not cover the gap
    restarts: int = 0  # the publisher started over (a restarted server)
    decode_errors: int = 0  # payloads that were not KV-event batches
    foreign_events: int = 0  # events of another storage tier (offloading), ignored
    resets_requested: int = 0  # POST /reset_prefix_cache sent to regain exactness
    last_seq: int = -1
    errors: list[str] = field(default_factory=list)


class BackendStream:
    """Backend ``index``'s event stream into ``router`` (``run`` until cancelled).

    ``now()`` is the router's clock (the time batches are recorded with). Nothing it
    receives can raise out of ``run``: bad input is counted and logged.
    """

    def __init__(self, index: int, name: str, source: EventSource, router, now: Callable[[], float],
                 block_size: int, *, context: zmq.asyncio.Context | None = None,
                 replay_timeout_s: float = REPLAY_TIMEOUT_S) -> None:
        self.index = index
        self.name = name
        self.source = source
        self.router = router
        self.now = now
        self.translator = HashTranslator(block_size)
        self.stats = StreamStats()
        self.replay_timeout_s = replay_timeout_s
        self.disabled = ""  # why the stream is refused (block size), else ""
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sub: zmq.asyncio.Socket | None = None
        self._expected: int | None = None  # the next sequence number wanted
        self._held: list[tuple[int, bytes]] | None = None  # live batches during a replay
        self._replay_task: asyncio.Task | None = None
        self._warned: set[str] = set()

    # --- lifecycle ------------------------------------------------------------------------
    def _open(self) -> None:
        sub = self._ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, 100_000)
        sub.setsockopt(zmq.SUBSCRIBE, self.source.topic.encode("utf-8"))
        sub.connect(self.source.endpoint)
        self._sub = sub

    def resubscribe(self) -> None:
        """Drop the subscription and subscribe again (batches sent meanwhile are lost:
        the next one shows the gap). Tests use it; so could an operator's hook."""
        if self._sub is not None:
            self._sub.close(linger=0)
        self._open()

    async def run(self) -> None:
        self._open()
        log.info(kv("kv_events_subscribed", backend=self.name, endpoint=self.source.endpoint,
                    replay_endpoint=self.source.replay_endpoint or "", topic=self.source.topic))
        if self.source.replay_endpoint is not None:
            # Join: everything published so far, so the mirror starts as the cache is now
            # (an empty answer: nothing was ever published, the cache is empty).
            self._held = []
            self._replay_task = asyncio.ensure_future(self._replay(0, from_start=True, join=True))
        try:
            while True:
                sub = self._sub
                if sub is None or sub.closed:  # dropped; ``resubscribe`` brings a new one
                    await asyncio.sleep(0.05)
                    continue
                try:
                    # A bounded wait, so a socket closed under us is noticed.
                    if not await sub.poll(200, zmq.POLLIN):
                        continue
                    frames = await sub.recv_multipart()
                except asyncio.CancelledError:
                    # zmq cancels a closed socket's pending poll; only a cancellation of
                    # this task itself ends the stream.
                    if sub.closed and not asyncio.current_task().cancelling():
                        continue
                    raise
                except zmq.ZMQError as exc:
                    if sub is not self._sub or sub.closed:
                        continue
                    self._warn("recv", f"receiving failed: {exc}")
                    await asyncio.sleep(0.1)
                    continue
                try:
                    self.on_frames(frames)
                except Exception:  # noqa: BLE001 - never let one batch end the stream
                    log.exception(kv("kv_events_internal_error", backend=self.name))
        finally:
            self.close()

    def close(self) -> None:
        if self._replay_task is not None:
            self._replay_task.cancel()
        if self._sub is not None:
            self._sub.close(linger=0)
            self._sub = None

    @property
    def replaying(self) -> bool:
        """A replay is on its way (live batches are held until it ends)."""
        return self._held is not None

    # --- sequencing -----------------------------------------------------------------------
    def on_frames(self, frames: list[bytes]) -> None:
        if self.disabled:
            return
        if len(frames) != 3:
            self.stats.decode_errors += 1
            self._warn("frames", f"a message of {len(frames)} frames (expected topic, seq, payload)")
            return
        try:
            seq = seq_of(frames[1])
        except WireError as exc:
            self.stats.decode_errors += 1
            self._warn("seq", str(exc))
            return
        self.on_batch(seq, frames[2])

    def on_batch(self, seq: int, payload: bytes) -> None:
        if self._held is not None:  # a replay is on its way: keep the order
            self._held.append((seq, payload))
            return
        expected = self._expected
        if expected is not None and seq < expected:
            # Numbers went back: a new publisher, so a new engine with an empty cache.
            self.stats.restarts += 1
            log.warning(kv("kv_events_restart", backend=self.name, seq=seq, expected=expected,
                           action="mirror emptied; following the new stream"))
            self.translator.clear()
            self._reset(seq == 0)
            self._expected = expected = None
        if expected is None:
            if seq == 0:
                self._apply(seq, payload)
            else:  # joined late: batches 0..seq-1 were published before we listened
                self._start_replay(0, seq, payload, from_start=True)
            return
        if seq == expected:
            self._apply(seq, payload)
            return
        self.stats.gaps += 1
        self._start_replay(expected, seq, payload, from_start=False)

    def _start_replay(self, first: int, seq: int, payload: bytes, from_start: bool) -> None:
        if self.source.replay_endpoint is None:
            if from_start:
                self._warn("late", f"joined at batch {seq} with no replay endpoint: the mirror "
                                   "misses what was cached before; approximate index until a reset")
                self._reset(False)
            self._apply(seq, payload)  # with its gap: the router distrusts this backend
            return
        self._held = [(seq, payload)]
        self._replay_task = asyncio.ensure_future(self._replay(first, from_start))

    async def _replay(self, first: int, from_start: bool, join: bool = False) -> None:
        if not join:
            self.stats.replays += 1
        got: list[tuple[int, bytes]] = []
        failed = False
        try:
            got = await asyncio.wait_for(self._fetch(first), self.replay_timeout_s)
        except (asyncio.TimeoutError, zmq.ZMQError, WireError) as exc:
            failed = True
            self._warn("replay", f"replay from {first} failed: {type(exc).__name__}: {exc}")
        held, self._held = self._held or [], None
        self._replay_task = None
        live = {s for s, _ in held}
        batches = dict(got)
        for s, p in held:
            batches.setdefault(s, p)
        # Joining a publisher that never published: its cache is empty, the mirror exact.
        covered = first in batches or (join and not failed and not batches)
        if not covered:
            self.stats.replay_failures += 1
            log.warning(kv("kv_events_replay_incomplete", backend=self.name, wanted_from=first,
                           got_from=min(batches) if batches else "none",
                           action="approximate index for this backend until a reset"))
        if from_start:  # the mirror restarts from batch 0, exact only if it was replayed
            self._reset(covered)
        todo = sorted(batches)
        for k, s in enumerate(todo):
            expected = self._expected
            if expected is not None and s < expected:
                continue  # applied already
            if covered and expected is not None and s > expected:
                # Batches published while the replay was served and before the
                # subscription saw them (ZMQ's slow joiner): ask again for those.
                self.stats.gaps += 1
                self._held = [(t, batches[t]) for t in todo[k:]]
                self._replay_task = asyncio.ensure_future(self._replay(expected, False))
                return
            if s not in live:
                self.stats.replayed += 1
            self._apply(s, batches[s])

    async def _fetch(self, first: int) -> list[tuple[int, bytes]]:
        """vLLM's replay protocol on a DEALER socket: ``(b"", start)`` out, batches back
        until the end marker."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(self.source.replay_endpoint)
            await sock.send_multipart((b"", seq_bytes(first)))
            out = []
            while True:
                frames = await sock.recv_multipart()
                if len(frames) != 4:
                    raise WireError(f"replay answer of {len(frames)} frames (expected 4)")
                s = seq_of(frames[2])
                if s < 0:
                    return out
                out.append((s, frames[3]))
        finally:
            sock.close(linger=0)

    # --- applying -------------------------------------------------------------------------
    def _apply(self, seq: int, payload: bytes) -> None:
        self._expected = seq + 1
        self.stats.last_seq = seq
        try:
            batch = decode_batch(payload)
        except WireError as exc:
            # Its content is lost: the next batch's sequence shows the router a gap.
            self.stats.decode_errors += 1
            self._warn("decode", f"batch {seq}: {exc}")
            return
        events: list[KVEvent] = []
        tr = self.translator
        bs = tr.block_size
        for ev in batch.events:
            if type(ev) is Cleared:
                tr.clear()
                events.append(AllBlocksCleared())
            elif ev.medium not in (None, MEDIUM_GPU):
                self.stats.foreign_events += 1  # an offloading tier's copy, not the engine's pool
            elif type(ev) is Stored:
                if ev.block_size != bs:
                    self._refuse(f"the backend's KV blocks hold {ev.block_size} tokens and the "
                                 f"router hashes prompts in blocks of {bs}: start it with "
                                 f"--block-size {ev.block_size}")
                    return
                events.append(tr.stored(ev))
            else:
                events.append(tr.removed(ev))
        self.stats.batches += 1
        now = self.now()
        self.router.record_kv_events(self.index, events, now, seq)
        self.router.deliver_events(now)

    def _reset(self, trusted: bool) -> None:
        now = self.now()
        self.router.reset_kv_events(self.index, now, trusted=trusted)
        self.router.deliver_events(now)

    def _refuse(self, reason: str) -> None:
        self.disabled = reason
        self.stats.errors.append(reason)
        log.error(kv("kv_events_refused", backend=self.name, reason=reason,
                     action="approximate index for this backend"))
        self._reset(False)

    def _warn(self, key: str, message: str) -> None:
        self.stats.errors.append(message)
        del self.stats.errors[:-20]
        if key not in self._warned:  # once per kind: a broken stream must not flood the log
            self._warned.add(key)
            log.warning(kv("kv_events_problem", backend=self.name, problem=message))
