"""The decision fast paths compute what the plain rules compute, value for value.

Each reference here is the rule written the plain way (one backend, one scorer at a
time), so a fast path that changed a float or a random draw fails.
"""
from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

import routing
from routing.strategies import llmd_plugins as lp
from routing.types import BackendSnapshot, RequestInfo

SCRAPED = st.one_of(st.sampled_from([0.0, 1.0, 3.0, float("nan"), float("inf")]),
                    st.floats(0, 1e6, allow_nan=False))


@settings(max_examples=300, deadline=None)
@given(st.lists(SCRAPED, min_size=1, max_size=20))
def test_scraped_reads_each_value_as_num_does(values):
    snaps = [BackendSnapshot(index=i, name=f"b{i}", waiting=v) for i, v in enumerate(values)]
    got = lp._scraped(snaps, lp._WAITING)
    want = [0.0 if v != v else v for v in values]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g == w and math.copysign(1.0, g) == math.copysign(1.0, w)


def reference_max_score_pick(scores, rng):
    """llm-d's max-score picker as the lab wrote it first: the ties, then a seeded draw."""
    best = max(scores)
    ties = [i for i, s in enumerate(scores) if s == best]
    return ties[0] if len(ties) == 1 else ties[rng.randrange(len(ties))]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.5]), min_size=1, max_size=20), st.integers(0, 2**31))
def test_max_score_picker_picks_and_draws_as_the_plain_rule(scores, seed):
    picker = lp.MaxScorePicker("max-score-picker", {}, {})
    a, b = random.Random(seed), random.Random(seed)
    assert picker.pick(list(scores), a) == reference_max_score_pick(list(scores), b)
    assert a.random() == b.random()  # the same draws were made


WEIGHTS = st.sampled_from([1, 2, 3, 0.5, 1.7])


@settings(max_examples=150, deadline=None)
@given(st.data(), st.integers(1, 16), WEIGHTS, WEIGHTS, WEIGHTS)
def test_three_scorer_sum_equals_the_scorer_by_scorer_sum(data, n, wp, wq, wk):
    """The fused three-scorer sum (llm-d's default profile) against adding one scorer at a time."""
    weights = {"prefix-cache-scorer": wp, "queue-scorer": wq, "kv-cache-utilization-scorer": wk}
    strategy = routing.build("weighted", seed=0, weights=weights)
    floats = lambda: data.draw(st.lists(SCRAPED, min_size=n, max_size=n))  # noqa: E731
    waiting, kv = floats(), [min(v, 1.0) for v in floats()]
    hits = data.draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))
    snaps = [BackendSnapshot(index=i, name=f"b{i}", waiting=waiting[i], kv_usage=kv[i],
                             prefix_hit_tokens=hits[i] * 16) for i in range(n)]
    req = RequestInfo(1, 8 * 16, 0.0, list(range(1, 9)))
    total = None
    for scorer, weight in strategy.profile.scorers:
        sc = scorer.score(req, snaps)
        total = [x * weight for x in sc] if total is None else [t + x * weight for t, x in zip(total, sc)]
    got = strategy.scores(req, snaps)
    assert len(strategy.profile.scorers) == 3
    assert [repr(g) for g in got] == [repr(t) for t in total]
