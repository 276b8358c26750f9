"""Routing on the engines' KV-cache events in the simulator: the mirror is the engines' cache."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import routing
from routing.kv_events import BlockRemoved, BlockStored
from sim.cluster import ClusterSim, simulate
from sim_helpers import conversation_trace, fleet


def engine_cache(driver) -> Counter:
    eng = driver.engine
    eng.sync_all()
    holders = list(eng.requests.values()) + list(eng.scheduler.finishing)
    return +Counter(eng.kv.cached_hashes(holders))


def published_cache(events, until: float) -> Counter:
    """The cache a consumer rebuilds from the events published by ``until``, in order."""
    counts: Counter = Counter()
    for event, t in events:
        if t > until:
            break  # per backend, events come in publication order
        if isinstance(event, BlockStored):
            counts.update(event.block_hashes)
        elif isinstance(event, BlockRemoved):
            counts.subtract(event.block_hashes)
        else:
            counts.clear()
    return +counts


def checked_sim(trace, strategy, config, delay):
    """A ClusterSim that, before every decision, compares each mirror with the events due by then."""
    per_backend: dict[int, list] = {i: [] for i in range(len(config.backends))}
    sim = ClusterSim(trace, strategy, config,
                     kv_events=lambda b, event, t: per_backend[b].append((event, t)))
    checks = []
    dispatch = sim._dispatch

    def checking_dispatch(i, *rest):
        now = sim.env.now
        router = sim.router
        router.deliver_events(now)
        for b in range(len(config.backends)):
            assert +Counter(router.exact_index(b).stored) == published_cache(per_backend[b], now - delay), \
                f"request {i}: backend {b}'s mirror differs from the events published {delay} s ago"
        checks.append(i)
        dispatch(i, *rest)

    sim._dispatch = checking_dispatch
    return sim, checks


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 50), blocks=st.integers(60, 400), mode=st.sampled_from(["fast", "exact"]),
       name=st.sampled_from(["precise_prefix", "kv_cost"]), delay=st.sampled_from([0.0, 0.03, 0.5]))
def test_at_every_decision_each_mirror_holds_exactly_the_events_due(seed, blocks, mode, name, delay):
    trace = conversation_trace(40, seed=seed, rate=30.0)
    strategy = routing.build(name, seed=seed, kv_event_delay_s=delay)
    sim, checks = checked_sim(trace, strategy, fleet(3, blocks=blocks, mode=mode), delay)
    result = sim.run()
    # A turn rejected as too long ends its session: its later turns are skipped, not sent.
    skipped = sum(r.status == "skipped" for r in result.records)
    assert len(checks) + skipped == len(trace)
    assert all(r.status in ("ok", "rejected", "skipped") for r in result.records)
    sim.router.deliver_events(result.end_time + delay)
    for b, driver in enumerate(sim.drivers):  # once the delay has passed: the engine's cache
        assert +Counter(sim.router.exact_index(b).stored) == engine_cache(driver)


@pytest.mark.parametrize("delay", [0.0, 0.05, 2.0])
def test_once_the_delay_has_passed_each_mirror_is_its_engines_cache(delay):
    trace = conversation_trace(60, seed=7, rate=40.0)
    sim = ClusterSim(trace, routing.build("precise_prefix", kv_event_delay_s=delay), fleet(3, blocks=150))
    result = sim.run()
    sim.router.deliver_events(result.end_time + delay)
    for b, driver in enumerate(sim.drivers):
        assert +Counter(sim.router.exact_index(b).stored) == engine_cache(driver)
        stats = sim.router.event_stats(b)
        assert stats.batches > 0 and stats.gaps == stats.out_of_order == stats.orphan_stores == 0
        assert stats.unknown_removals == 0


def test_precise_routing_is_the_same_stepping_fast_or_one_step_at_a_time():
    trace = conversation_trace(50, seed=3, rate=25.0)
    for name, params in [("precise_prefix", {"kv_event_delay_s": 0.02}), ("kv_cost", {}),
                         ("weighted", {"weights": {"precise-prefix-cache-scorer": 3, "active-request-scorer": 1}})]:
        fast = simulate(trace, routing.build(name, seed=1, **params), fleet(3, blocks=200, mode="fast")).records
        exact = simulate(trace, routing.build(name, seed=1, **params), fleet(3, blocks=200, mode="exact")).records
        assert [r.backend for r in fast] == [r.backend for r in exact], name
        assert [r.first_token_s for r in fast] == pytest.approx([r.first_token_s for r in exact], rel=1e-9), name


def test_the_mirror_sees_what_the_approximate_index_cannot():
    """Evictions under memory pressure: the exact mirror knows, the router's guess does not."""
    trace = conversation_trace(80, seed=11, rate=60.0)
    sim = ClusterSim(trace, routing.build("precise_prefix"), fleet(3, blocks=70))
    sim.run()
    router = sim.router
    assert router.precise_lookups > 0
    assert sum(router.event_stats(b).batches for b in range(3)) > 0
    # With a 70-block cache and this much traffic the engines evict what the router still believes.
    believed = sum(len(router.prefix_index(b)) for b in range(3))
    held = sum(len(router.exact_index(b)) for b in range(3))
    assert held < believed
