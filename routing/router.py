"""Router-side state shared by the simulator and the gateway.

The ``Router`` owns what a real router keeps between decisions: its in-flight
counts per backend, the latest scrape of each backend with its time, health, and
an index of the prompt blocks it has sent to each backend (to estimate prefix-cache
hits). Both modes call ``dispatch``/``finish`` with an injected ``now``, so the
snapshots a strategy sees are built by the same code in both (house rule 1).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from routing.base import Strategy
from routing.types import BackendSnapshot, Outcome, RequestInfo, ScrapedMetrics


@dataclass(frozen=True, slots=True)
class BackendSpec:
    name: str
    group: str = "default"
    #: Capacity of the router's estimate of this backend's prefix cache, in blocks.
    prefix_index_blocks: int = 65536


@dataclass(frozen=True, slots=True)
class Decision:
    """The chosen backend and what the router saw of it (predictor features)."""

    backend: int
    inflight_requests: int
    inflight_tokens: int
    running: float
    waiting: float
    kv_usage: float
    scrape_age_s: float
    prefix_hit_tokens: int


class PrefixIndex:
    """An LRU set of block hashes the router has sent to one backend.

    It approximates the backend's prefix cache from the router's side (the real
    cache also evicts under memory pressure, which the router cannot see).
    Capacity counts blocks. A request's blocks beyond ``shareable`` (hashes no
    other request has, see ``RequestInfo.num_shareable_blocks``) can never match
    anyone, so they are kept as one counted entry: same evictions, less work.
    """

    __slots__ = ("capacity", "_blocks", "_size", "_next_extent")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        #: hash -> 1, or a negative extent key -> its block count; oldest first.
        self._blocks: OrderedDict[int, int] = OrderedDict()
        self._size = 0
        self._next_extent = -1

    def hit_blocks(self, hashes: np.ndarray | list[int]) -> int:
        n = 0
        blocks = self._blocks
        for h in _as_list(hashes):
            if h not in blocks:
                break
            n += 1
        return n

    def add(self, hashes: np.ndarray | list[int], shareable: int = -1) -> None:
        hashes = _as_list(hashes)
        k = len(hashes) if shareable < 0 else min(shareable, len(hashes))
        blocks = self._blocks
        for i in range(k):
            h = hashes[i]
            if h in blocks:
                blocks.move_to_end(h)
            else:
                blocks[h] = 1
                self._size += 1
        rest = len(hashes) - k
        if rest:
            blocks[self._next_extent] = rest
            self._next_extent -= 1
            self._size += rest
        while self._size > self.capacity:
            key, count = blocks.popitem(last=False)
            over = self._size - self.capacity
            if count > over:
                blocks[key] = count - over
                blocks.move_to_end(key, last=False)
                self._size -= over
            else:
                self._size -= count

    def __len__(self) -> int:
        return self._size


def _as_list(hashes: np.ndarray | list[int]) -> list[int]:
    # Python ints hash and compare much faster than numpy scalars.
    return hashes.tolist() if isinstance(hashes, np.ndarray) else hashes


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
        self.snapshots = [
            BackendSnapshot(index=i, name=b.name, group=b.group) for i, b in enumerate(backends)
        ]
        self._scraped_at = [math.nan] * len(backends)
        self._inflight: dict[int, tuple[int, int]] = {}
        self._track_prefix = track_prefix or strategy.needs_prefix_estimate
        self._prefix = [PrefixIndex(b.prefix_index_blocks) for b in backends]
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

    # --- decisions ------------------------------------------------------------
    def dispatch(self, request: RequestInfo, now: float) -> Decision:
        """Choose a backend for ``request`` and count it in flight there."""
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
        candidates = snaps if self._all_healthy else [s for s in snaps if s.healthy]
        if not candidates:
            raise NoHealthyBackend("no healthy backend to route to")
        if self.strategy.needs_prefix_estimate:
            for s in candidates:
                s.prefix_hit_tokens = self._estimate_hit(s.index, request)
        pos = self.strategy.choose(request, candidates)
        if not 0 <= pos < len(candidates):
            raise IndexError(
                f"strategy {self.strategy.name!r} returned {pos} for {len(candidates)} backends"
            )
        chosen = candidates[pos]
        b = chosen.index
        if source is not None and not self.strategy.needs_scrape:
            self._pull(source, b, now)
        hit = (
            chosen.prefix_hit_tokens
            if self.strategy.needs_prefix_estimate
            else (self._estimate_hit(b, request) if self._track_prefix else 0)
        )
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
        chosen.inflight_tokens += request.input_len
        self._inflight[request.request_id] = (b, request.input_len)
        if self._track_prefix:
            self._prefix[b].add(request.block_hashes, request.num_shareable_blocks)
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
        snap.inflight_tokens -= tokens
        self.strategy.observe(outcome)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _estimate_hit(self, index: int, request: RequestInfo) -> int:
        blocks = self._prefix[index].hit_blocks(request.block_hashes)
        # vLLM always recomputes at least the last prompt token, so a hit covers
        # at most the full blocks inside the first input_len - 1 tokens.
        max_blocks = max(request.input_len - 1, 0) // self.block_size
        return min(blocks, max_blocks) * self.block_size
