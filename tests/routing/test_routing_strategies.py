"""Every heuristic's behaviour, its determinism, and properties over any snapshot list."""
from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing
from routing_helpers import HEURISTICS, req, snaps


def test_round_robin_cycles_through_positions():
    s = routing.build("round_robin")
    backends = snaps(n=3)
    assert [s.choose(req(i), backends) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_round_robin_keeps_cycling_when_the_list_shrinks():
    s = routing.build("round_robin")
    picks = [s.choose(req(0), snaps(n=4)) for _ in range(3)]  # 0, 1, 2
    assert picks == [0, 1, 2]
    assert s.choose(req(1), snaps(n=2)) == 1  # 3 % 2
    assert s.choose(req(2), snaps(n=2)) == 0


@pytest.mark.parametrize("loads", [[3, 1, 2], [0, 5, 5, 0, 7], [9, 8, 7, 6, 10]])
def test_least_load_picks_the_fewest_in_flight(loads):
    s = routing.build("least_load", seed=1)
    for i in range(20):
        assert loads[s.choose(req(i), snaps(inflight=loads))] == min(loads)


def test_least_load_breaks_ties_randomly_not_by_position():
    s = routing.build("least_load", seed=3)
    picks = Counter(s.choose(req(i), snaps(inflight=[0, 0, 0, 4])) for i in range(300))
    assert set(picks) == {0, 1, 2}
    assert min(picks.values()) > 60  # about 100 each


@pytest.mark.parametrize("tokens", [[300, 100, 200], [0, 4096, 1, 0]])
def test_least_tokens_picks_the_fewest_tokens_in_flight(tokens):
    s = routing.build("least_tokens", seed=1)
    inflight = [1] * len(tokens)
    for i in range(20):
        assert tokens[s.choose(req(i), snaps(inflight=inflight, tokens=tokens))] == min(tokens)


def test_least_tokens_ignores_request_counts():
    s = routing.build("least_tokens")
    assert s.choose(req(), snaps(inflight=[10, 1], tokens=[50, 5000])) == 0


class RecordingRandom(random.Random):
    """A seeded generator that remembers the pairs ``sample`` drew."""

    def __init__(self, seed):
        super().__init__(seed)
        self.pairs = []

    def sample(self, population, k, **kw):
        out = super().sample(population, k, **kw)
        self.pairs.append(out)
        return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=2, max_size=12), st.integers(0, 2**31))
def test_power_of_two_never_picks_the_worse_of_its_two_samples(loads, seed):
    s = routing.build("power_of_two", seed=seed)
    s.rng = RecordingRandom(seed)
    backends = snaps(inflight=loads)
    for i in range(5):
        pos = s.choose(req(i), backends)
        a, b = s.rng.pairs[-1]
        assert a != b and pos in (a, b)
        other = b if pos == a else a
        assert loads[pos] <= loads[other]


def test_power_of_two_with_one_backend_and_its_balance():
    s = routing.build("power_of_two", seed=0)
    assert s.choose(req(), snaps(n=1)) == 0
    # Sampling two of four, it can never pick the single most loaded backend.
    picks = {s.choose(req(i), snaps(inflight=[1, 1, 1, 9])) for i in range(200)}
    assert picks == {0, 1, 2}


def test_least_kv_uses_scraped_usage():
    s = routing.build("least_kv", seed=0)
    assert s.needs_scrape
    assert s.choose(req(), snaps(kv=[0.7, 0.2, 0.9])) == 1


def test_least_kv_counts_unscraped_as_empty():
    s = routing.build("least_kv", seed=0)
    assert s.choose(req(), snaps(kv=[0.3, math.nan, 0.1])) == 1
    assert s.choose(req(), snaps(kv=[0.3, math.nan, 0.0], inflight=[0, 2, 1])) == 2  # tie on 0: fewer in flight


def test_least_kv_ties_fall_back_to_fewer_in_flight():
    s = routing.build("least_kv", seed=0)
    for i in range(20):
        assert s.choose(req(i), snaps(kv=[0.5, 0.5, 0.6], inflight=[3, 1, 0])) == 1


def test_random_covers_all_backends_about_uniformly():
    s = routing.build("random", seed=11)
    n, draws = 5, 5000
    counts = Counter(s.choose(req(i), snaps(n=n)) for i in range(draws))
    assert set(counts) == set(range(n))
    expected = draws / n
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 18.5  # 99.9th percentile of chi-square with 4 degrees of freedom


def _choices(name, seed, loads_seq):
    s = routing.build(name, seed=seed)
    out = []
    for i, (inflight, kv) in enumerate(loads_seq):
        out.append(s.choose(req(i, 10 + i), snaps(inflight=inflight, tokens=[x * 100 for x in inflight], kv=kv)))
    return out


LOADS_SEQ = [([i % 3, 0, (i * 7) % 4, 1, 0, i % 2], [0.1 * (i % 4), math.nan, 0.2, 0.0, 0.0, 0.3]) for i in range(60)]


@pytest.mark.parametrize("name", HEURISTICS)
def test_same_seed_same_choices_whatever_the_global_rng(name):
    random.seed(1)
    np.random.seed(1)
    first = _choices(name, 42, LOADS_SEQ)
    random.seed(999)
    np.random.seed(999)
    second = _choices(name, 42, LOADS_SEQ)
    assert first == second


@pytest.mark.parametrize("name", ["random", "power_of_two", "least_load"])
def test_different_seeds_give_different_random_choices(name):
    runs = {tuple(_choices(name, seed, LOADS_SEQ)) for seed in range(4)}
    assert len(runs) > 1


snapshot_lists = st.lists(
    st.tuples(st.integers(0, 1000), st.integers(0, 10**6),
              st.one_of(st.just(math.nan), st.floats(0.0, 1.0))),
    min_size=1, max_size=16,
)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(HEURISTICS), snapshot_lists, st.integers(0, 2**32 - 1), st.integers(1, 5))
def test_any_heuristic_returns_a_valid_position(name, rows, seed, calls):
    s = routing.build(name, seed=seed)
    backends = snaps(inflight=[r[0] for r in rows], tokens=[r[1] for r in rows], kv=[r[2] for r in rows])
    for i in range(calls):
        pos = s.choose(req(i, 1 + i), backends)
        assert isinstance(pos, int) and 0 <= pos < len(backends)
