"""Load-balancing heuristics: the baselines every learned policy must beat.

Ties are broken by a seeded random choice, not by position, so that a fleet of
identical idle backends is not always filled from index 0 (which would make the
heuristics look worse than they are in production routers).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from routing.base import Strategy, register
from routing.types import BackendSnapshot, RequestInfo


def _argmin_random_tie(values: Sequence[float], rng) -> int:
    best = min(values)
    if values.count(best) == 1:  # the usual case, without building the list of ties
        return values.index(best)
    ties = [i for i, v in enumerate(values) if v == best]
    return ties[rng.randrange(len(ties))]


@register
class RoundRobin(Strategy):
    """Cycle through the backends in order.

    The routing logic vLLM production-stack's Helm chart sets by default
    (``vllm-project/production-stack`` ``helm/values.yaml``,
    ``routerSpec.routingLogic: "roundrobin"``, read at commit 00c38d1; the
    router's own ``--routing-logic`` flag has no default).
    """

    name = "round_robin"

    def __init__(self, *, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self._next = 0

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        pos = self._next % len(backends)
        self._next = pos + 1
        return pos


@register
class Random(Strategy):
    """Uniformly random backend, from the strategy's own seeded generator."""

    name = "random"

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        return self.rng.randrange(len(backends))


@register
class LeastLoad(Strategy):
    """Fewest requests in flight from this router (join-shortest-queue)."""

    name = "least_load"

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        loads = getattr(backends, "loads", None)  # the router's column (routing.types.Candidates)
        if loads is None:
            loads = [b.inflight_requests for b in backends]
        return _argmin_random_tie(loads, self.rng)


@register
class LeastTokens(Strategy):
    """Fewest prompt tokens in flight from this router: weighs long prompts."""

    name = "least_tokens"

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        return _argmin_random_tie([b.inflight_tokens for b in backends], self.rng)


@register
class PowerOfTwo(Strategy):
    """Sample two distinct backends, send to the one with fewer in flight.

    Mitzenmacher's power of two choices: near join-shortest-queue balance with
    two probes instead of all. The lab's model of vllm-router's ``power_of_two``
    (``live/peer_routers.py``): vllm-project/router
    ``src/policies/power_of_two.rs`` (read at commit fa999f9; vllm-router
    0.1.17's binary carries that file and its log line) has no parameters,
    samples two distinct healthy workers uniformly and takes the lower load,
    the first sampled on a tie (a uniform pick, as here). Its load is the
    router's in-flight count plus, when its load monitor runs, the load last
    polled from the worker; the lab uses the in-flight count alone.
    """

    name = "power_of_two"

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        n = len(backends)
        if n == 1:
            return 0
        a, b = self.rng.sample(range(n), 2)
        ia, ib = backends[a].inflight_requests, backends[b].inflight_requests
        if ia != ib:
            return a if ia < ib else b
        return a if self.rng.random() < 0.5 else b


@register
class LeastKV(Strategy):
    """Lowest scraped ``vllm:kv_cache_usage_perc``; unscraped backends count as empty.

    Scrapes are stale by up to the scrape interval, so ties on the same scraped
    value fall back to fewer requests in flight from this router.
    """

    name = "least_kv"
    needs_scrape = True

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        keys = [
            (0.0 if math.isnan(b.kv_usage) else b.kv_usage, b.inflight_requests)
            for b in backends
        ]
        return _argmin_random_tie(keys, self.rng)
