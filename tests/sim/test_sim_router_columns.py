"""Whole simulations: the router's columns (``routing.types.Candidates``) change no record.

The reference hides the columns from the strategy, so it reads every snapshot
and the router fills every snapshot, as before the columns existed.
"""
from __future__ import annotations

import pytest

import routing
from sim.cluster import simulate
from sim_helpers import chat_trace, fleet, record_differences


class SnapshotsOnly(routing.Strategy):
    def __init__(self, inner: routing.Strategy) -> None:
        super().__init__(seed=inner.seed)
        self.inner = inner
        self.name = inner.name
        self.needs_prefix_estimate = inner.needs_prefix_estimate
        self.needs_precise_prefix = inner.needs_precise_prefix
        self.needs_active_work = inner.needs_active_work
        self.needs_scrape = inner.needs_scrape
        self.index_blocks = inner.index_blocks
        self.kv_event_delay_s = inner.kv_event_delay_s

    def bind(self, block_size):
        if hasattr(self.inner, "bind"):
            self.inner.bind(block_size)

    def choose(self, request, backends):
        return self.inner.choose(request, list(backends))


@pytest.mark.parametrize("name", ["least_load", "cache_aware", "weighted", "kv_cost", "precise_prefix"])
@pytest.mark.parametrize("seed", [0, 1])
def test_columns_leave_every_record_unchanged(name, seed):
    trace = chat_trace(60, seed=seed, rate=40.0)
    cfg = fleet(6, blocks=200)
    fast = simulate(trace, routing.build(name, seed=seed), cfg, seed=seed).records
    ref = simulate(trace, SnapshotsOnly(routing.build(name, seed=seed)), cfg, seed=seed).records
    assert len({r.backend for r in fast}) > 1  # the decisions had something to choose
    assert record_differences(fast, ref, rel=0.0) == []
