"""Pooled ITL order statistics over arithmetic runs equal plain expansion (hypothesis)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from results.itl_stats import order_statistics, pooled_itl_stats
from results.records import expand_itl
from sim.itl import ItlEncoder

finite = dict(allow_nan=False, allow_infinity=False)
run = st.tuples(
    st.one_of(st.floats(0, 2, **finite), st.sampled_from([0.0, 0.01, 0.02, 0.1])),
    st.one_of(st.floats(-0.01, 0.01, **finite), st.sampled_from([0.0, 1e-3, -1e-3, 1 / 3])),
    st.integers(0, 25),
)
runs = st.lists(run, min_size=1, max_size=30)
PCTS = (0, 1, 10, 50, 90, 95, 99, 99.9, 100)


def columns(rs):
    s, d, c = zip(*rs)
    return np.array(s), np.array(d), np.array(c)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs, st.integers(1, 12))
def test_selection_equals_numpy_on_expanded_gaps(rs, limit):
    s, d, c = columns(rs)
    gaps = expand_itl(s, d, c)
    if len(gaps) == 0:
        assert pooled_itl_stats(s, d, c, PCTS).n == 0
        return
    # expand_limit=0 forces the selection path; a tiny candidate_limit forces bisection
    got = pooled_itl_stats(s, d, c, PCTS, expand_limit=0, candidate_limit=limit)
    want = np.percentile(gaps, PCTS)
    assert [got.percentiles[p] for p in PCTS] == want.tolist()  # bit for bit
    assert got.n == len(gaps)
    assert got.mean == pytest.approx(np.mean(gaps), rel=1e-9, abs=1e-12)
    assert got.std == pytest.approx(np.std(gaps), rel=1e-6, abs=1e-9)


@settings(max_examples=100, deadline=None)
@given(runs, st.data())
def test_order_statistics_match_sorting(rs, data):
    s, d, c = columns(rs)
    gaps = np.sort(expand_itl(s, d, c))
    if len(gaps) == 0:
        return
    ranks = data.draw(st.lists(st.integers(0, len(gaps) - 1), min_size=1, max_size=5))
    assert order_statistics(s, d, c, ranks, candidate_limit=3) == gaps[ranks].tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.001, 1.0, **finite), min_size=1, max_size=80))
def test_encoder_runs_give_the_gaps_statistics(gaps):
    enc = ItlEncoder()
    for g in gaps:
        enc.add(g)
    got = pooled_itl_stats(enc.start, enc.step, enc.count, (50, 99), expand_limit=0)
    want = np.percentile(enc.gaps(), (50, 99))
    assert [got.percentiles[50], got.percentiles[99]] == want.tolist()


def test_no_gaps_and_bad_input():
    empty = pooled_itl_stats([], [], [], (50,))
    assert empty.n == 0 and np.isnan(empty.mean) and np.isnan(empty.percentiles[50])
    with pytest.raises(ValueError, match="equal lengths"):
        pooled_itl_stats([0.1], [0.0, 0.1], [1])
    with pytest.raises(IndexError, match="rank 5"):
        order_statistics([0.1], [0.0], [3], [5])


def test_identical_gaps_do_not_need_expansion():
    # ten million equal gaps: the bracket collapses onto one float, nothing is expanded
    got = pooled_itl_stats([0.02, 0.5], [0.0, 0.0], [10_000_000, 1], (50, 99, 100),
                           expand_limit=0, candidate_limit=10)
    assert got.percentiles == {50.0: 0.02, 99.0: 0.02, 100.0: 0.5}


@settings(max_examples=60, deadline=None)
@given(runs, st.integers(1, 5))
def test_mean_and_std_summed_in_slices_equal_numpy(rs, chunk):
    """The closed-form sums run over bounded slices of runs; slicing must not show."""
    import results.itl_stats as itl_stats

    s, d, c = columns(rs)
    gaps = expand_itl(s, d, c)
    if len(gaps) == 0:
        return
    whole = pooled_itl_stats(s, d, c, (), expand_limit=0)
    saved = itl_stats._SUM_CHUNK
    itl_stats._SUM_CHUNK = chunk  # hypothesis and function-scoped monkeypatch do not mix
    try:
        sliced = pooled_itl_stats(s, d, c, (), expand_limit=0)
    finally:
        itl_stats._SUM_CHUNK = saved
    assert sliced.mean == pytest.approx(whole.mean, rel=1e-12, abs=1e-15)
    assert sliced.mean == pytest.approx(np.mean(gaps), rel=1e-9, abs=1e-12)
    assert sliced.std == pytest.approx(np.std(gaps), rel=1e-6, abs=1e-9)


def chunked(s, d, c, cuts):
    """A ``RunChunks`` over the arrays cut at ``cuts`` (each pass yields the same chunks)."""
    bounds = [0, *sorted({min(x, len(c)) for x in cuts}), len(c)]

    def chunks():
        for lo, hi in zip(bounds, bounds[1:]):
            yield s[lo:hi], d[lo:hi], c[lo:hi]
    return chunks


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runs, st.lists(st.integers(0, 30), max_size=5), st.integers(1, 12), st.integers(1, 4),
       st.booleans())
def test_streamed_runs_give_the_same_floats(rs, cuts, limit, sum_chunk, expand):
    """Read in chunks (any cut), the statistics are the very floats of the whole arrays,
    in the selection regime (bisection included) and the expansion regime."""
    import results.itl_stats as itl_stats
    from results.itl_stats import pooled_itl_stats_stream

    s, d, c = columns(rs)
    saved = itl_stats._SUM_CHUNK
    itl_stats._SUM_CHUNK = sum_chunk  # slices smaller than a chunk, and chunks cut across them
    try:
        kw = dict(expand_limit=10**9 if expand else 0, candidate_limit=limit)
        whole = pooled_itl_stats(s, d, c, PCTS, **kw)
        streamed = pooled_itl_stats_stream(chunked(s, d, c, cuts), PCTS, **kw)
    finally:
        itl_stats._SUM_CHUNK = saved
    assert streamed.n == whole.n == int(c.sum())
    if whole.n == 0:
        return
    assert (streamed.mean, streamed.std) == (whole.mean, whole.std)
    assert streamed.percentiles == whole.percentiles
    assert [whole.percentiles[p] for p in PCTS] == np.percentile(expand_itl(s, d, c), PCTS).tolist()
