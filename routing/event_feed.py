"""KV-cache events on their way to a router: delay, ordering and trust.

A real router learns a backend's cache contents from the backend's event stream
(vLLM publishes batches over ZMQ with a sequence number), and learns them late:
events travel, queue and are applied after some delay. ``EventFeed`` models
that for one backend: batches are recorded with the time they were emitted and
become visible ``delay_s`` later, in order, to an ``ExactPrefixIndex``.

It also decides whether the exact index can be trusted. A backend that never
sent an event, or whose stream skipped or reordered a batch (a sequence gap),
cannot be mirrored exactly; the router then falls back to its approximate index
for that backend and counts it. A gap is healed by ``AllBlocksCleared`` (the
cache restarts empty, so the mirror is exact again), as llm-d's and Dynamo's
indexers resynchronise on a reset, or by ``record_reset``: a subscriber that
learns the stream started over (a restarted server numbers its batches from 0
again, with an empty cache) empties the mirror and trusts it, in order with the
batches around it.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from routing.prefix_index import BlockOwners, ExactPrefixIndex


@dataclass
class FeedStats:
    """What went wrong on one backend's event stream (all counts)."""

    batches: int = 0
    gaps: int = 0  # a batch arrived after a skipped sequence number
    out_of_order: int = 0  # a batch older than one already applied (dropped)
    orphan_stores: int = 0  # blocks stored under a parent the mirror does not hold
    unknown_removals: int = 0  # removals of blocks the mirror does not hold


_RESET = object()  # a reset in the pending queue, in place of a batch's events


class EventFeed:
    """One backend's delayed event stream feeding its exact prefix index."""

    __slots__ = ("delay_s", "index", "stats", "_pending", "_last_seq", "_seen", "_trusted")

    # ``_pending`` is read by the router's hot path to skip empty feeds.

    def __init__(self, delay_s: float = 0.0, owners: BlockOwners | None = None, bit: int = 0) -> None:
        if not delay_s >= 0:
            raise ValueError(f"KV-event delay must be >= 0 s, got {delay_s!r}")
        self.delay_s = float(delay_s)
        self.index = ExactPrefixIndex(owners, bit)
        self.stats = FeedStats()
        self._pending: deque[tuple[float, int | None, tuple[KVEvent, ...]]] = deque()
        self._last_seq: int | None = None
        self._seen = False
        self._trusted = True

    def record(self, events: Iterable[KVEvent], emitted_at: float, seq: int | None = None) -> None:
        """A batch the backend emitted at ``emitted_at``; visible ``delay_s`` later."""
        self._pending.append((emitted_at + self.delay_s, seq, tuple(events)))

    def record_reset(self, emitted_at: float, trusted: bool = True) -> None:
        """The stream starts over at ``emitted_at``: empty the mirror, forget the sequence.

        ``trusted``: whether the empty mirror is the backend's cache (a server that
        restarted with an empty cache: yes; a stream that cannot be followed, such as
        one whose blocks the router cannot name: no, until an ``AllBlocksCleared``).
        """
        self._pending.append((emitted_at + self.delay_s, trusted, _RESET))

    def deliver(self, now: float) -> None:
        """Apply every batch whose delivery time has come, in arrival order."""
        pending = self._pending
        while pending and pending[0][0] <= now:
            _, seq, events = pending.popleft()
            self._apply(seq, events)

    @property
    def trusted(self) -> bool:
        """The mirror is exact: events arrived, with no gap since the last reset."""
        return self._seen and self._trusted

    def _apply(self, seq, events) -> None:
        if events is _RESET:
            self.index.clear()
            self._last_seq = None
            self._seen = self._trusted = bool(seq)
            return
        stats = self.stats
        stats.batches += 1
        if seq is not None:
            last = self._last_seq
            if last is not None and seq <= last:
                stats.out_of_order += 1
                self._trusted = False
                return
            if last is not None and seq != last + 1:
                stats.gaps += 1
                self._trusted = False
            self._last_seq = seq
        self._seen = True
        index = self.index
        for ev in events:
            if isinstance(ev, BlockStored):
                stats.orphan_stores += index.store(ev.block_hashes, ev.parent_block_hash)
            elif isinstance(ev, BlockRemoved):
                stats.unknown_removals += index.remove(ev.block_hashes)
            elif isinstance(ev, AllBlocksCleared):
                index.clear()
                self._trusted = True
            else:
                raise TypeError(f"not a KV-cache event: {ev!r}")
