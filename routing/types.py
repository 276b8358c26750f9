"""What a router can know, identically in simulation and live.

These types are the whole interface between a routing policy and the world: the
simulator and the gateway both fill them from what a real router can observe (its
own in-flight bookkeeping plus scraped ``vllm:*`` metrics that may be stale), so a
policy cannot behave differently in the two modes except through what it sees.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

_EMPTY_HASHES = np.zeros(0, dtype=np.uint64)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """A request as the router sees it at dispatch.

    Never carries the true output length: a real router does not know it.
    ``block_hashes`` is the hash chain of the prompt's full KV blocks (see
    ``workload.hashing``), the same values the engine's prefix cache keys on: a
    uint64 array, or a list of ints (the simulator converts once and shares it).
    ``num_shareable_blocks`` says how many leading blocks other requests may share
    (-1: unknown, treat all as shareable); it only speeds up bookkeeping and never
    changes a decision.
    """

    request_id: int
    input_len: int
    arrival_s: float
    # Not compared: an array has no single truth value, so comparing it would make
    # ``==`` raise and the frozen class unhashable; ``request_id`` identifies a request.
    block_hashes: np.ndarray | list[int] = field(default_factory=lambda: _EMPTY_HASHES, compare=False)
    session_id: str = ""
    turn: int = 0
    num_shareable_blocks: int = -1


@dataclass(slots=True)
class ScrapedMetrics:
    """One scrape of a backend's ``/metrics`` (vLLM metric names in comments).

    Counters are cumulative totals since the backend started, as Prometheus
    exports them; a router differences them itself if it wants rates.
    """

    running: float  # vllm:num_requests_running
    waiting: float  # vllm:num_requests_waiting
    kv_usage: float  # vllm:kv_cache_usage_perc, a fraction in [0, 1]
    prefix_queries: float = 0.0  # vllm:prefix_cache_queries_total (tokens)
    prefix_hits: float = 0.0  # vllm:prefix_cache_hits_total (tokens)
    preemptions: float = 0.0  # vllm:num_preemptions_total


@dataclass(slots=True)
class BackendSnapshot:
    """What the router can see of one backend when it decides.

    ``inflight_*`` are the router's own exact counts (requests it dispatched there
    that have not finished). The scraped fields are NaN until the first scrape and
    are ``scrape_age_s`` seconds old. ``prefix_hit_tokens`` is the router's
    estimate of the prefix-cache hit the current request would get there, filled
    for strategies that declare ``needs_prefix_estimate`` (for one that reads only
    the exact mirrors, ``needs_precise_prefix``, it is the mirror's hit). The fields after
    it are filled only for the strategies that ask for them (``routing.Strategy``).
    """

    index: int
    name: str
    group: str = "default"
    inflight_requests: int = 0
    inflight_tokens: int = 0
    running: float = math.nan
    waiting: float = math.nan
    kv_usage: float = math.nan
    prefix_queries: float = math.nan
    prefix_hits: float = math.nan
    scrape_age_s: float = math.inf
    healthy: bool = True
    prefix_hit_tokens: int = 0
    #: Filled for strategies that declare ``needs_precise_prefix``: the hit from the
    #: backend's exact cache mirror (KV-cache events), or the approximate estimate
    #: when that mirror cannot be trusted (``precise_fallback``).
    precise_hit_tokens: int = 0
    precise_fallback: bool = False
    #: Blocks in the router's approximate index of this backend (its "tree size"),
    #: filled with ``prefix_hit_tokens`` for strategies that declare ``needs_prefix_estimate``.
    index_blocks: int = 0
    #: Filled for strategies that declare ``needs_active_work`` (see ``routing.active``):
    #: uncached prompt tokens in flight before their first token, distinct prompt
    #: blocks in flight, and how many blocks this request would add to them.
    inflight_prefill_tokens: int = 0
    active_blocks: int = 0
    new_blocks: int = 0

    def apply_scrape(self, metrics: ScrapedMetrics) -> None:
        self.running = metrics.running
        self.waiting = metrics.waiting
        self.kv_usage = metrics.kv_usage
        self.prefix_queries = metrics.prefix_queries
        self.prefix_hits = metrics.prefix_hits


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a dispatched request ended, fed back to ``Strategy.observe``.

    Times are seconds; NaN where the request never got that far (an error before
    the first token, for instance). ``ok`` is False for errors, timeouts and
    rejections.
    """

    request_id: int
    backend_index: int
    ok: bool
    input_len: int
    output_len: int
    ttft_s: float
    e2el_s: float

    @property
    def tpot_s(self) -> float:
        """``vllm bench serve``'s TPOT: (E2EL - TTFT) / (output_len - 1)."""
        if self.output_len <= 1 or not self.ok:
            return math.nan
        return (self.e2el_s - self.ttft_s) / (self.output_len - 1)


class Candidates(list):
    """Every backend's snapshot, in index order, with per-backend columns beside them.

    The router hands this to ``Strategy.choose`` when every backend is healthy
    (a plain list of the healthy snapshots otherwise). ``loads[i]`` is always
    ``self[i].inflight_requests``; ``hit_blocks[i]`` is the approximate index's
    hit in blocks (``self[i].prefix_hit_tokens // block_size``) for strategies
    that declare ``needs_prefix_estimate``, None otherwise. A strategy that reads
    one column over a large fleet does one C-level pass instead of reading an
    attribute from hundreds of objects; the decisions are the same.

    A strategy that sets ``reads_columns`` (and reads nothing else the router
    fills per request) lets the router skip writing ``prefix_hit_tokens`` and
    ``index_blocks`` into every snapshot: only the chosen one's are written, in
    ``Router.commit``.
    """

    __slots__ = ("loads", "hit_blocks", "block_size", "precise_blocks", "untrusted", "new_blocks",
                 "active_blocks", "prefill_tokens")

    def __init__(self, snapshots, loads: list[int], block_size: int) -> None:
        super().__init__(snapshots)
        self.loads = loads
        self.hit_blocks: list[int] | None = None
        self.block_size = block_size
        #: For ``reads_columns`` strategies that declare ``needs_precise_prefix``: each
        #: backend's hit in blocks from its exact mirror (the approximate hit where the
        #: mirror cannot be trusted; those positions are in ``untrusted``).
        self.precise_blocks: list[int] | None = None
        self.untrusted: list[int] = []
        #: For ``reads_columns`` strategies that declare ``needs_active_work``: the
        #: snapshots' ``new_blocks``, ``active_blocks`` and ``inflight_prefill_tokens``.
        self.new_blocks: list[int] | None = None
        self.active_blocks: list[int] | None = None
        self.prefill_tokens: list[int] | None = None
