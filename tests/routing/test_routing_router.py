"""The Router: in-flight accounting, health, scrapes and their age, prefix-hit estimates."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing
from routing import BackendSpec, NoHealthyBackend, Outcome, RequestInfo, Router, ScrapedMetrics, Strategy
from routing_helpers import HEURISTICS
from workload.hashing import block_hash_chain


def specs(n: int) -> list[BackendSpec]:
    return [BackendSpec(f"b{i}", "g") for i in range(n)]


def outcome(request_id: int, backend: int = 0) -> Outcome:
    return Outcome(request_id=request_id, backend_index=backend, ok=True, input_len=1,
                   output_len=2, ttft_s=0.1, e2el_s=0.2)


def test_dispatch_counts_in_flight_and_finish_counts_out():
    r = Router(routing.build("round_robin"), specs(2))
    d0 = r.dispatch(RequestInfo(0, 100, 0.0), now=0.0)
    d1 = r.dispatch(RequestInfo(1, 30, 0.1), now=0.1)
    d2 = r.dispatch(RequestInfo(2, 7, 0.2), now=0.2)
    assert (d0.backend, d1.backend, d2.backend) == (0, 1, 0)
    assert d2.inflight_requests == 1 and d2.inflight_tokens == 100  # what it saw before counting itself
    assert [s.inflight_requests for s in r.snapshots] == [2, 1]
    assert [s.inflight_tokens for s in r.snapshots] == [107, 30]
    r.finish(outcome(0))
    assert [s.inflight_requests for s in r.snapshots] == [1, 1]
    assert [s.inflight_tokens for s in r.snapshots] == [7, 30]
    assert r.inflight == 2
    with pytest.raises(KeyError, match="not in flight"):
        r.finish(outcome(0))


def test_a_request_in_flight_cannot_be_dispatched_again():
    r = Router(routing.build("round_robin"), specs(2))
    r.dispatch(RequestInfo(7, 10, 0.0), 0.0)
    with pytest.raises(ValueError, match="request 7 is already in flight"):
        r.dispatch(RequestInfo(7, 10, 0.0), 0.0)
    assert [s.inflight_requests for s in r.snapshots] == [1, 0]
    r.finish(outcome(7))
    assert r.dispatch(RequestInfo(7, 10, 1.0), 1.0).inflight_requests == 0  # a retry after it ended


def test_finish_feeds_the_strategy():
    class Learner(Strategy):
        name = "test_learner"

        def __init__(self, *, seed: int = 0) -> None:
            super().__init__(seed=seed)
            self.seen = []

        def choose(self, request, backends):
            return 0

        def observe(self, outcome):
            self.seen.append(outcome.request_id)

    s = Learner()
    r = Router(s, specs(1))
    r.dispatch(RequestInfo(5, 10, 0.0), 0.0)
    r.finish(outcome(5))
    assert s.seen == [5]


def test_unhealthy_backends_are_skipped_and_none_healthy_raises():
    r = Router(routing.build("least_load"), specs(3))
    r.set_healthy(0, False)
    r.set_healthy(2, False)
    for i in range(5):
        assert r.dispatch(RequestInfo(i, 10, 0.0), 0.0).backend == 1
    r.set_healthy(1, False)
    with pytest.raises(NoHealthyBackend):
        r.dispatch(RequestInfo(99, 10, 0.0), 0.0)
    assert r.inflight == 5  # the rejected request was not counted
    r.set_healthy(2, True)
    assert r.dispatch(RequestInfo(100, 10, 0.0), 0.0).backend == 2


def test_positions_map_back_to_backend_indices():
    # The strategy sees only healthy backends; position 0 is then backend 2.
    class First(Strategy):
        name = "test_first"

        def choose(self, request, backends):
            return 0

    r = Router(First(), specs(3))
    r.set_healthy(0, False)
    r.set_healthy(1, False)
    assert r.dispatch(RequestInfo(0, 10, 0.0), 0.0).backend == 2


def test_a_strategy_returning_a_bad_position_is_an_error():
    class Broken(Strategy):
        name = "test_broken"

        def choose(self, request, backends):
            return len(backends)

    r = Router(Broken(), specs(2))
    with pytest.raises(IndexError, match="returned 2 for 2 backends"):
        r.dispatch(RequestInfo(0, 10, 0.0), 0.0)
    assert r.inflight == 0


def test_router_needs_backends():
    with pytest.raises(ValueError, match="at least one backend"):
        Router(routing.build("random"), [])


def test_scrapes_and_their_age():
    r = Router(routing.build("least_kv"), specs(3))
    r.record_scrape(0, ScrapedMetrics(running=3, waiting=1, kv_usage=0.6), scraped_at=1.0)
    r.record_scrape(1, ScrapedMetrics(running=1, waiting=0, kv_usage=0.2), scraped_at=1.5)
    d = r.dispatch(RequestInfo(0, 10, 2.0), now=2.0)
    ages = [s.scrape_age_s for s in r.snapshots]
    assert ages[0] == pytest.approx(1.0) and ages[1] == pytest.approx(0.5) and ages[2] == math.inf
    assert d.backend == 2  # never scraped: counts as an empty cache
    assert math.isnan(d.kv_usage) and d.scrape_age_s == math.inf
    r.record_scrape(2, ScrapedMetrics(running=9, waiting=4, kv_usage=0.95), scraped_at=2.1)
    d = r.dispatch(RequestInfo(1, 10, 2.25), now=2.25)
    assert d.backend == 1 and d.kv_usage == 0.2 and d.running == 1
    assert d.scrape_age_s == pytest.approx(0.75)
    assert r.snapshots[2].scrape_age_s == pytest.approx(0.15)
    assert r.last_scrape_time(1) == 1.5 and r.last_scrape_time(2) == 2.1


def test_unscraped_backends_have_no_scrape_time():
    r = Router(routing.build("least_kv"), specs(2))
    assert math.isnan(r.last_scrape_time(0))


def test_decision_reports_scrape_age_for_strategies_that_do_not_scrape():
    r = Router(routing.build("round_robin"), specs(1))
    r.record_scrape(0, ScrapedMetrics(running=0, waiting=0, kv_usage=0.1), scraped_at=3.0)
    assert r.dispatch(RequestInfo(0, 10, 0.0), now=3.5).scrape_age_s == pytest.approx(0.5)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("dispatch"), st.integers(1, 5000)),
        st.tuples(st.just("finish"), st.integers(0, 10**6)),
        st.tuples(st.just("health"), st.integers(0, 5), st.booleans()),
        st.tuples(st.just("scrape"), st.integers(0, 5), st.floats(0.0, 1.0)),
    ),
    max_size=60,
)


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(HEURISTICS), st.integers(1, 6), ops, st.integers(0, 1000))
def test_router_accounting_and_health_invariants(name, n, operations, seed):
    r = Router(routing.build(name, seed=seed), specs(n))
    healthy = [True] * n
    live: dict[int, tuple[int, int]] = {}  # request id -> (backend, tokens)
    dispatched = finished = 0
    now = 0.0
    for op in operations:
        now += 0.01
        if op[0] == "dispatch":
            rid = dispatched
            if not any(healthy):
                with pytest.raises(NoHealthyBackend):
                    r.dispatch(RequestInfo(rid, op[1], now), now)
                continue
            d = r.dispatch(RequestInfo(rid, op[1], now), now)
            assert healthy[d.backend], "an unhealthy backend was chosen"
            live[rid] = (d.backend, op[1])
            dispatched += 1
        elif op[0] == "finish" and live:
            rid = sorted(live)[op[1] % len(live)]
            r.finish(outcome(rid, live.pop(rid)[0]))
            finished += 1
        elif op[0] == "health":
            i = op[1] % n
            healthy[i] = op[2]
            r.set_healthy(i, op[2])
        elif op[0] == "scrape":
            r.record_scrape(op[1] % n, ScrapedMetrics(running=1, waiting=0, kv_usage=op[2]), now)
        assert r.inflight == dispatched - finished == len(live)
        for i, s in enumerate(r.snapshots):
            assert s.inflight_requests >= 0 and s.inflight_tokens >= 0
            assert s.inflight_requests == sum(1 for b, _ in live.values() if b == i)
            assert s.inflight_tokens == sum(t for b, t in live.values() if b == i)


BS = 16


def request(rid: int, tokens: list[int]) -> RequestInfo:
    return RequestInfo(rid, len(tokens), 0.0, block_hash_chain(tokens, BS))


def cap(input_len: int) -> int:
    """vLLM recomputes at least the last prompt token: hits cover full blocks before it."""
    return (input_len - 1) // BS * BS


token_lists = st.lists(st.integers(0, 3), min_size=1, max_size=120)


@settings(max_examples=150, deadline=None)
@given(token_lists, token_lists, st.integers(0, 120))
def test_prefix_hit_estimate_is_the_shared_full_blocks_up_to_the_cap(first, second, shared):
    # Make `second` share a prefix of `first` (of up to `shared` tokens).
    second = first[:shared] + second
    common = 0
    while common < min(len(first), len(second)) and first[common] == second[common]:
        common += 1
    r = Router(routing.build("round_robin"), specs(1))
    r.dispatch(request(0, first), 0.0)
    hit = r.dispatch(request(1, second), 0.0).prefix_hit_tokens
    assert hit <= cap(len(second))
    assert hit == min(common // BS * BS, cap(len(second)))


@settings(max_examples=100, deadline=None)
@given(token_lists)
def test_a_request_sent_twice_hits_all_its_full_blocks_but_the_last_token(tokens):
    r = Router(routing.build("round_robin"), specs(1))
    assert r.dispatch(request(0, tokens), 0.0).prefix_hit_tokens == 0  # cold
    assert r.dispatch(request(1, tokens), 0.0).prefix_hit_tokens == cap(len(tokens))


def test_prefix_estimates_are_per_backend():
    tokens = list(range(64))
    r = Router(routing.build("round_robin"), specs(2))
    assert r.dispatch(request(0, tokens), 0.0).backend == 0
    d = r.dispatch(request(1, tokens), 0.0)
    assert d.backend == 1 and d.prefix_hit_tokens == 0  # backend 1 never saw it
    d = r.dispatch(request(2, tokens), 0.0)
    assert d.backend == 0 and d.prefix_hit_tokens == cap(64)


def test_prefix_aware_strategies_see_estimates_for_every_candidate():
    class MostCached(Strategy):
        name = "test_most_cached"
        needs_prefix_estimate = True

        def choose(self, request, backends):
            self.seen = [b.prefix_hit_tokens for b in backends]
            return max(range(len(backends)), key=lambda i: backends[i].prefix_hit_tokens)

    warm = list(range(100))
    s = MostCached()
    r = Router(s, specs(3))
    r._prefix[2].add(block_hash_chain(warm, BS))  # backend 2 served this prompt before
    d = r.dispatch(request(0, warm + [7, 7]), 0.0)
    assert s.seen == [0, 0, 96] and d.backend == 2 and d.prefix_hit_tokens == 96


def test_prefix_index_evicts_least_recently_used_blocks_tail_first():
    r = Router(routing.build("round_robin"), [BackendSpec("b0", "g", prefix_index_blocks=4)])
    a = list(range(48))  # 3 full blocks
    b = list(range(1000, 1032))  # 2 full blocks
    r.dispatch(request(0, a), 0.0)
    r.dispatch(request(1, b), 0.0)  # 5 blocks > 4: a's *last* block goes, as vLLM frees tails first
    assert r.dispatch(request(2, a + [0]), 0.0).prefix_hit_tokens == 32
    r1 = Router(routing.build("round_robin"), [BackendSpec("b0", "g", prefix_index_blocks=3)])
    r1.dispatch(request(0, a), 0.0)
    r1.dispatch(request(1, b), 0.0)  # 5 blocks > 3: a keeps only its first block
    assert r1.dispatch(request(2, a + [0]), 0.0).prefix_hit_tokens == 16
    r2 = Router(routing.build("round_robin"), [BackendSpec("b0", "g", prefix_index_blocks=5)])
    r2.dispatch(request(0, a), 0.0)
    r2.dispatch(request(1, b), 0.0)
    assert r2.dispatch(request(2, a), 0.0).prefix_hit_tokens == cap(48)


def test_block_hashes_as_lists_give_the_same_estimates():
    tokens = list(range(80))
    hashes = block_hash_chain(tokens, BS)
    r = Router(routing.build("round_robin"), specs(1))
    r.dispatch(RequestInfo(0, 80, 0.0, hashes.tolist()), 0.0)
    assert r.dispatch(RequestInfo(1, 80, 0.0, np.asarray(hashes)), 0.0).prefix_hit_tokens == cap(80)
