"""Router-side state shared by the simulator and the gateway.

The ``Router`` owns what a real router keeps between decisions: its in-flight
counts per backend, the latest scrape of each backend with its time, health, an
approximate index of the prompt blocks it has sent to each backend (to estimate
prefix-cache hits), and, for strategies that ask, an exact mirror of each
backend's cache fed by its KV-cache events and the work it has in flight there.
Both modes call ``dispatch``/``finish`` with an injected ``now``, so the
snapshots a strategy sees are built by the same code in both (rule "pure
decision" in docs/architecture.md).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from routing.active import ActiveWork
from routing.base import Strategy
from routing.decision_core import owner_map
from routing.event_feed import EventFeed, FeedStats
from routing.inflight_tree import InflightTree
from routing.kv_events import KVEvent
from routing.prefix_index import ApproxPrefixIndex, PrefixIndex, as_list
from routing.types import BackendSnapshot, Candidates, Outcome, RequestInfo, ScrapedMetrics

__all__ = ["BackendSpec", "Decision", "NoHealthyBackend", "PrefixIndex", "Router", "ScrapeSource"]

#: llm-d's approximate prefix-cache producer sizes each endpoint's LRU at 31,250
#: blocks when it cannot read the endpoint's KV capacity (``defaultLRUCapacityPerServer``).
DEFAULT_INDEX_BLOCKS = 31250


@dataclass(frozen=True, slots=True)
class BackendSpec:
    name: str
    group: str = "default"
    #: Capacity of the router's approximate index of this backend's prefix cache, in
    #: blocks: the backend's KV-cache capacity when known (the simulator passes it).
    prefix_index_blocks: int = DEFAULT_INDEX_BLOCKS


@dataclass(frozen=True, slots=True)
class Decision:
    """The chosen backend and what the router saw of it (predictor features).

    ``prefix_hit_tokens`` is the hit the router expected there: from the exact
    mirror for strategies that route on it, else from the approximate index.
    """

    backend: int
    inflight_requests: int
    inflight_tokens: int
    running: float
    waiting: float
    kv_usage: float
    scrape_age_s: float
    prefix_hit_tokens: int


class NoHealthyBackend(RuntimeError):
    """Every backend is marked unhealthy: the request is rejected, not dropped."""


#: ``scrape_source(index, now)`` -> the backend's latest scrape and its time, or None
#: if the router already holds it.
ScrapeSource = Callable[[int, float], "tuple[ScrapedMetrics, float] | None"]


class Router:
    """Dispatch bookkeeping around one ``Strategy`` for a fixed list of backends.

    Scrapes arrive either pushed (``record_scrape``, the gateway's scraper task)
    or pulled at decision time from a ``scrape_source`` (the simulator, which
    computes what a scrape at the latest tick would have returned). Pulls happen
    for every backend when the strategy reads scraped metrics, and otherwise only
    for the chosen backend, whose values are recorded as decision features.
    """

    def __init__(
        self,
        strategy: Strategy,
        backends: Sequence[BackendSpec],
        *,
        block_size: int = 16,
        track_prefix: bool = True,
        scrape_source: ScrapeSource | None = None,
    ) -> None:
        if not backends:
            raise ValueError("a router needs at least one backend")
        self.strategy = strategy
        self.block_size = block_size
        strategy.bind(block_size)
        self.snapshots = [
            BackendSnapshot(index=i, name=b.name, group=b.group) for i, b in enumerate(backends)
        ]
        self._scraped_at = [math.nan] * len(backends)
        #: In-flight requests per backend, always equal to the snapshots' counts: a
        #: column strategies read in one pass (``Candidates``).
        self._loads = [0] * len(backends)
        self._all = Candidates(self.snapshots, self._loads, block_size)
        #: The last ``prepare`` left the per-request fields of the snapshots unwritten
        #: (a ``reads_columns`` strategy): ``commit`` writes the chosen one's.
        self._columns_only = False
        self._inflight: dict[int, tuple[int, int]] = {}
        self._want_approx = strategy.needs_prefix_estimate
        self._want_precise = strategy.needs_precise_prefix
        self._want_active = strategy.needs_active_work
        # The exact mirror falls back to the approximate index, so it needs it too.
        self._track_prefix = (track_prefix or self._want_approx or self._want_precise
                              or self._want_active)
        capacity = int(getattr(strategy, "index_blocks", 0) or 0)
        # Owner masks make every backend's hit one pass over the chain (a flat table
        # where the compiled ``routing.decision_core`` is built); they are
        # kept only for strategies that read the approximate hit of every backend. A
        # strategy on the exact mirrors alone reads an approximate hit only where a
        # mirror cannot be trusted, one backend at a time (``ApproxPrefixIndex.hit_blocks``).
        self._approx_all = self._want_approx or (self._want_active and not self._want_precise)
        bits = [1 << i for i in range(len(backends))]  # one object per backend, shared by the maps
        self._approx_owners = owner_map(bits) if self._approx_all else None
        self._prefix = [ApproxPrefixIndex(capacity or b.prefix_index_blocks, self._approx_owners, bits[i])
                        for i, b in enumerate(backends)]
        delay = float(getattr(strategy, "kv_event_delay_s", 0.0) or 0.0)
        self._exact_owners = owner_map(bits) if self._want_precise else None
        self._feeds = ([EventFeed(delay, self._exact_owners, bits[i]) for i in range(len(backends))]
                       if self._want_precise else None)
        # The prompts in flight are few and long: a tree of chain segments, not a mask
        # per block (``routing.inflight_tree``).
        self._inflight_tree = InflightTree(len(backends)) if self._want_active else None
        self._active = ([ActiveWork(self._inflight_tree, i) for i in range(len(backends))]
                        if self._want_active else None)
        #: Each ``ActiveWork``'s ``blocks`` and ``prefill_tokens``, kept in step by every
        #: change the router makes to it (``_sync_active``): a decision copies two short
        #: lists instead of reading 16 objects that the bookkeeping has pushed out of the
        #: CPU's caches.
        self._active_blocks = [0] * len(backends)
        self._prefill_tokens = [0] * len(backends)
        #: Backends whose feed holds undelivered batches, and those whose mirror is not
        #: trusted now (``EventFeed.trusted`` false: none seen yet, or a gap). Trust changes
        #: only when a batch is applied, and only the router delivers, so a decision reads
        #: these two sets instead of every feed.
        self._pending_feeds: set[int] = set()
        self._distrusted: set[int] = set(range(len(backends)))
        #: Per backend and decision: exact-mirror lookups, and those that fell back
        #: to the approximate index because the mirror could not be trusted.
        self.precise_lookups = 0
        self.precise_fallbacks = 0
        #: The same fallbacks, per backend (the mirror of that backend was not trusted).
        self.precise_fallbacks_by_backend = [0] * len(backends)
        self._all_healthy = True
        self._scrape_source = scrape_source

    # --- observations -------------------------------------------------------
    def record_scrape(self, index: int, metrics: ScrapedMetrics, scraped_at: float) -> None:
        self.snapshots[index].apply_scrape(metrics)
        self._scraped_at[index] = scraped_at

    def last_scrape_time(self, index: int) -> float:
        return self._scraped_at[index]

    def set_healthy(self, index: int, healthy: bool) -> None:
        self.snapshots[index].healthy = healthy
        self._all_healthy = all(s.healthy for s in self.snapshots)

    @property
    def wants_kv_events(self) -> bool:
        """Whether the strategy reads KV-cache events (others drop them unread)."""
        return self._feeds is not None

    def record_kv_events(
        self, index: int, events: Iterable[KVEvent], emitted_at: float, seq: int | None = None
    ) -> None:
        """A batch of backend ``index``'s KV-cache events, emitted at ``emitted_at``.

        It reaches the exact mirror ``kv_event_delay_s`` later. ``seq`` is the
        batch's sequence number on that backend's stream, if it has one: a gap or
        a step back makes the router distrust the mirror until the next
        ``AllBlocksCleared`` (see ``routing.event_feed``).
        """
        if self._feeds is not None:
            self._feeds[index].record(events, emitted_at, seq)
            self._pending_feeds.add(index)

    def reset_kv_events(self, index: int, emitted_at: float, trusted: bool = True) -> None:
        """Backend ``index``'s event stream starts over (``EventFeed.record_reset``)."""
        if self._feeds is not None:
            self._feeds[index].record_reset(emitted_at, trusted)
            self._pending_feeds.add(index)

    def kv_events_trusted(self, index: int) -> bool:
        """Whether backend ``index``'s exact mirror is trusted now (False: no mirror)."""
        return self._feeds is not None and self._feeds[index].trusted

    def deliver_events(self, now: float) -> None:
        """Apply every KV-event batch due by ``now`` to the mirrors.

        ``prepare`` does this for the candidates it reads; a gateway may call it
        from its event listener so that decisions do not pay for ingestion.
        """
        if self._feeds is not None and self._pending_feeds:
            self._deliver(list(self._pending_feeds), now)

    def _deliver(self, indexes: Iterable[int], now: float) -> None:
        """Deliver the due batches of these backends' feeds (each has some pending) and
        note which stay pending and which mirrors are trusted after them."""
        feeds, pending, distrusted = self._feeds, self._pending_feeds, self._distrusted
        for i in indexes:
            feed = feeds[i]
            feed.deliver(now)
            if not feed._pending:
                pending.discard(i)
            if feed._seen and feed._trusted:
                distrusted.discard(i)
            else:
                distrusted.add(i)

    def event_stats(self, index: int) -> FeedStats | None:
        """Counts of gaps, reorders and inconsistencies on backend ``index``'s events."""
        return None if self._feeds is None else self._feeds[index].stats

    @property
    def wants_first_tokens(self) -> bool:
        """Whether ``first_token`` matters (the strategy prices prefill in flight)."""
        return self._active is not None

    def first_token(self, request_id: int) -> None:
        """The request's first token came back: its prefill is no longer pending work."""
        if self._active is not None:
            entry = self._inflight.get(request_id)
            if entry is not None:
                self._active[entry[0]].first_token(request_id)
                self._sync_active(entry[0])

    def _sync_active(self, b: int) -> None:
        """Copy backend ``b``'s work in flight into the router's columns after a change."""
        work = self._active[b]
        self._active_blocks[b] = work.blocks
        self._prefill_tokens[b] = work.prefill_tokens

    # --- decisions ------------------------------------------------------------
    def dispatch(self, request: RequestInfo, now: float) -> Decision:
        """Choose a backend for ``request`` and count it in flight there."""
        candidates, chain = self.prepare(request, now)
        pos = self.strategy.choose(request, candidates)
        if not 0 <= pos < len(candidates):
            raise IndexError(
                f"strategy {self.strategy.name!r} returned {pos} for {len(candidates)} backends"
            )
        return self.commit(request, candidates[pos], chain, now)

    def prepare(self, request: RequestInfo, now: float) -> tuple[list[BackendSnapshot], list[int]]:
        """The candidates' snapshots, filled with what the strategy asked for.

        ``dispatch`` is ``prepare``, ``strategy.choose``, ``commit``; the split
        lets a benchmark time the decision apart from the bookkeeping after it.
        """
        if request.request_id in self._inflight:
            # Counting it twice would leave one copy in flight forever.
            raise ValueError(f"request {request.request_id} is already in flight")
        snaps = self.snapshots
        source = self._scrape_source
        if self.strategy.needs_scrape:
            if source is not None:
                for i in range(len(snaps)):
                    self._pull(source, i, now)
            for s, t in zip(snaps, self._scraped_at):
                s.scrape_age_s = now - t if t == t else math.inf
        candidates = self._all if self._all_healthy else [s for s in snaps if s.healthy]
        if not candidates:
            raise NoHealthyBackend("no healthy backend to route to")
        chain = as_list(request.block_hashes) if self._track_prefix else []
        self._columns_only = False
        if self._want_approx or self._want_precise or self._want_active:
            if self.strategy.reads_columns and candidates is self._all:
                self._fill_columns(request, chain, now)
            else:
                self._fill(request, candidates, chain, now)
        return candidates, chain

    def _columns(self, request: RequestInfo, candidates, chain: list[int], now: float) -> None:
        """What the strategy asked for, as columns of ``self._all`` (``Candidates``).

        The hot path of cache-aware routing: one bisection over the chain per index
        finds every backend's hit at once (``BlockOwners.depths``), and one walk down
        the tree of prompts in flight (``InflightTree.depths``) what the work in
        flight already holds of the chain. The exact mirrors
        are read for the candidates: a candidate whose mirror cannot be trusted gets
        the approximate hit instead (and is listed in ``untrusted``).
        """
        bs = self.block_size
        n = min(max(request.input_len - 1, 0) // bs, len(chain))
        size = len(self.snapshots)
        cols = self._all
        depth = None
        if self._approx_all:
            depth = [0] * size
            self._approx_owners.depths(chain, n, depth)
            cols.hit_blocks = depth
        if self._feeds is not None:
            whole = candidates is cols
            pending = self._pending_feeds
            if pending:
                self._deliver(list(pending) if whole else [s.index for s in candidates if s.index in pending],
                              now)
            exact = [0] * size
            self._exact_owners.depths(chain, n, exact)
            distrusted = self._distrusted
            if not distrusted:
                untrusted = []
            elif whole:
                untrusted = sorted(distrusted)
            else:
                untrusted = [s.index for s in candidates if s.index in distrusted]
            if untrusted:
                prefix = self._prefix
                for i in untrusted:
                    exact[i] = depth[i] if depth is not None else prefix[i].hit_blocks(chain, n)
                    self.precise_fallbacks_by_backend[i] += 1
                self.precise_fallbacks += len(untrusted)
            self.precise_lookups += len(candidates)
            cols.precise_blocks = exact
            cols.untrusted = untrusted
        active = self._active
        if active is not None:
            shareable = request.num_shareable_blocks
            total = len(chain)
            held = [0] * size
            self._inflight_tree.depths(chain, total if shareable < 0 else min(shareable, total), held)
            cols.new_blocks = list(map(total.__sub__, held))  # total - held, in one C-level pass
            cols.active_blocks = self._active_blocks[:]
            cols.prefill_tokens = self._prefill_tokens[:]

    def _fill_columns(self, request: RequestInfo, chain: list[int], now: float) -> None:
        """For a ``reads_columns`` strategy: the columns only; ``commit`` writes the chosen
        snapshot's fields."""
        self._columns(request, self._all, chain, now)
        self._columns_only = True

    def _fill(self, request: RequestInfo, candidates, chain: list[int], now: float) -> None:
        """For a strategy that reads snapshots: the columns, written into every candidate."""
        self._columns(request, candidates, chain, now)
        for s in candidates:
            self._write_snapshot(s)

    def _write_snapshot(self, snap: BackendSnapshot) -> None:
        """One snapshot's per-request fields, from the columns (``_columns``)."""
        b = snap.index
        cols = self._all
        bs = self.block_size
        if self._approx_all:
            snap.prefix_hit_tokens = cols.hit_blocks[b] * bs
            snap.index_blocks = self._prefix[b]._size
        if self._feeds is not None:
            snap.precise_hit_tokens = cols.precise_blocks[b] * bs
            snap.precise_fallback = b in cols.untrusted
            if not self._approx_all:
                snap.prefix_hit_tokens = snap.precise_hit_tokens
        if self._active is not None:
            snap.inflight_prefill_tokens = cols.prefill_tokens[b]
            snap.active_blocks = cols.active_blocks[b]
            snap.new_blocks = cols.new_blocks[b]

    def commit(self, request: RequestInfo, chosen: BackendSnapshot, chain: list[int],
               now: float) -> Decision:
        """Count ``request`` in flight at ``chosen`` and return the decision record."""
        b = chosen.index
        if self._columns_only:
            # Only the chosen snapshot's per-request fields are written (``_fill_columns``).
            self._write_snapshot(chosen)
            self._columns_only = False
        source = self._scrape_source
        if source is not None and not self.strategy.needs_scrape:
            self._pull(source, b, now)
        if self._want_precise:
            hit = chosen.precise_hit_tokens
        elif self._want_approx or self._want_active:
            hit = chosen.prefix_hit_tokens
        elif self._track_prefix:
            limit = max(request.input_len - 1, 0) // self.block_size
            hit = self._prefix[b].hit_blocks(chain, limit) * self.block_size
        else:
            hit = 0
        t = self._scraped_at[b]
        decision = Decision(
            backend=b,
            inflight_requests=chosen.inflight_requests,
            inflight_tokens=chosen.inflight_tokens,
            running=chosen.running,
            waiting=chosen.waiting,
            kv_usage=chosen.kv_usage,
            scrape_age_s=now - t if t == t else math.inf,
            prefix_hit_tokens=hit,
        )
        chosen.inflight_requests += 1
        self._loads[b] += 1
        chosen.inflight_tokens += request.input_len
        self._inflight[request.request_id] = (b, request.input_len)
        if self._track_prefix:
            self._prefix[b].add(chain, request.num_shareable_blocks)
        if self._active is not None:
            self._active[b].add(request.request_id, chain, request.num_shareable_blocks,
                                max(request.input_len - hit, 0))
            self._sync_active(b)
        return decision

    def _pull(self, source: ScrapeSource, index: int, now: float) -> None:
        got = source(index, now)
        if got is not None:
            self.record_scrape(index, got[0], got[1])

    def finish(self, outcome: Outcome) -> None:
        """Count a dispatched request out and let the strategy learn from it."""
        entry = self._inflight.pop(outcome.request_id, None)
        if entry is None:
            raise KeyError(f"request {outcome.request_id} is not in flight")
        b, tokens = entry
        snap = self.snapshots[b]
        snap.inflight_requests -= 1
        self._loads[b] -= 1
        snap.inflight_tokens -= tokens
        if self._active is not None:
            self._active[b].remove(outcome.request_id)
            self._sync_active(b)
        self.strategy.observe(outcome)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def prefix_index(self, index: int) -> ApproxPrefixIndex:
        """Backend ``index``'s approximate index (tests and benchmarks seed it)."""
        return self._prefix[index]

    def exact_index(self, index: int):
        """Backend ``index``'s exact mirror, or None when the strategy does not use one."""
        return None if self._feeds is None else self._feeds[index].index
