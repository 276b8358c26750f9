"""The two-stage bootstrap of latency percentiles: hand-worked cases, pairing, coverage."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from results.bootstrap import (
    block_length, block_positions, bootstrap_t, expanded_interval, paired_two_stage, rng_for,
    row_percentiles, two_stage, unit_replicates,
)
from results.stats import confidence_interval


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(st.one_of(st.floats(0, 1e4), st.just(math.nan)), min_size=5, max_size=5),
                min_size=1, max_size=6),
       st.lists(st.floats(0, 100), min_size=1, max_size=4))
def test_row_percentiles_are_numpys(rows, qs):
    values = np.array(rows)
    got = row_percentiles(values, qs)
    for i, row in enumerate(values):
        finite = row[np.isfinite(row)]
        for j, q in enumerate(qs):
            if len(finite) == 0:
                assert math.isnan(got[i, j])
            else:
                assert got[i, j] == pytest.approx(np.percentile(finite, q), rel=1e-12, abs=1e-9)


def test_blocks_are_runs_of_consecutive_requests():
    assert [block_length(n) for n in (1, 8, 9, 1000, 1001)] == [1, 2, 3, 10, 11]
    pos = block_positions(1000, 4, rng_for("x"))
    assert pos.shape == (4, 1000) and pos.min() >= 0 and pos.max() <= 999
    for row in pos:
        for b in range(0, 1000, 10):  # blocks of 10 consecutive positions
            assert (np.diff(row[b:b + 10]) == 1).all()
    again = block_positions(1000, 4, rng_for("x"))
    assert (pos == again).all()  # seeded by the key
    assert not (pos == block_positions(1000, 4, rng_for("y"))).all()


def test_replicates_are_paired_centred_and_deterministic():
    rng = np.random.default_rng(0)
    ttft = rng.lognormal(5, 0.5, 600)
    faster = ttft * 0.5  # a strategy that halves every request's latency
    a = unit_replicates({"ttft": ttft}, "p", 3)
    b = unit_replicates({"ttft": faster}, "p", 3)
    assert len(a["p99_ttft_ms"]) == 200
    assert abs(a["p99_ttft_ms"].mean()) < 1e-9  # centred on the run's own value
    # the same resampled requests for both strategies: the deviations scale exactly
    assert np.allclose(b["p99_ttft_ms"], 0.5 * a["p99_ttft_ms"])
    assert np.array_equal(a["p99_ttft_ms"], unit_replicates({"ttft": ttft}, "p", 3)["p99_ttft_ms"])
    # another seed of the point resamples other requests
    assert not np.allclose(a["p99_ttft_ms"], unit_replicates({"ttft": ttft}, "p", 4)["p99_ttft_ms"])
    with pytest.raises(ValueError, match="differ in length"):
        unit_replicates({"ttft": ttft, "e2el": ttft[:10]}, "p", 0)


def test_two_seeds_without_within_run_noise_by_hand():
    # Draws are means of two seeds picked with replacement from {10, 20}: 10, 15 or 20
    # with probabilities 1/4, 1/2, 1/4. At n = 2 the expanded interval reads the
    # quantiles Phi(sqrt(2) * t_1^-1(0.025)) = Phi(-17.97) ~ 0: the extremes, 10 and 20.
    draws = two_stage({0: 10.0, 1: 20.0}, {}, ("p", "m"))
    assert set(np.unique(draws)) == {10.0, 15.0, 20.0}
    assert np.mean(draws == 15.0) == pytest.approx(0.5, abs=0.02)
    assert expanded_interval(draws, 2) == (10.0, 20.0)


def test_expanded_interval_at_five_seeds_reads_the_outer_tenth_of_a_percent():
    # At n = 5 the quantile is Phi(sqrt(5/4) * t_4^-1(0.025)) = Phi(-3.104) = 0.000954
    draws = np.arange(100_001, dtype=float)  # the q-th percentile is 1000 q
    lo, hi = expanded_interval(draws, 5)
    assert lo == pytest.approx(95.4, abs=0.2) and hi == pytest.approx(100_000 - 95.4, abs=0.2)
    # one seed: the plain percentile interval
    assert expanded_interval(draws, 1) == pytest.approx((2500.0, 97500.0))


def test_the_paired_test_is_the_paired_t_test_without_within_run_noise():
    # paired differences 2 and 4 over two seeds: mean 3, sample sd sqrt(2), se 1, t = 3 on
    # 1 degree of freedom: p = 1 - 2 atan(3) / pi = 0.2048
    draws = paired_two_stage({0: 12.0, 1: 14.0}, {0: 10.0, 1: 10.0}, {}, {}, ("p", "m"))
    test = bootstrap_t(3.0, draws, 2)
    assert test["se"] == pytest.approx(1.0, rel=0.01)
    assert test["p_value"] == pytest.approx(1 - 2 * math.atan(3) / math.pi, abs=0.003)
    assert test["ci_low"] == pytest.approx(3 - 12.706, rel=0.01)


def test_paired_draws_use_the_same_requests_for_both_strategies():
    # Deviations that are equal for both strategies cancel in the difference.
    dev = {0: np.linspace(-5, 5, 200), 1: np.linspace(-3, 3, 200)}
    draws = paired_two_stage({0: 110.0, 1: 120.0}, {0: 100.0, 1: 110.0}, dev, dev, ("p", "m"))
    assert np.allclose(draws, 10.0)
    assert bootstrap_t(10.0, draws, 2)["p_value"] == 0.0


def test_unpaired_replicates_keep_the_other_sides_within_run_noise():
    # One seed; a has 200 replicates and no within-run noise, b has 50 replicates of
    # +-10 ms (runs of different lengths past FULL_REPLICATES_UP_TO requests). Every
    # draw is 10 - (one of b's deviations): standard deviation 10, mean 10.
    dev_b = np.tile([-10.0, 10.0], 25)
    draws = paired_two_stage({0: 110.0}, {0: 100.0}, {0: np.zeros(200)}, {0: dev_b}, ("p", "m"))
    assert draws.std() == pytest.approx(10.0, rel=0.03)
    assert draws.mean() == pytest.approx(10.0, abs=0.3)
    assert set(np.round(draws, 9)) == {0.0, 20.0}


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=2, max_size=40),
       st.lists(st.floats(-100, 100), min_size=2, max_size=40))
def test_unpaired_replicates_add_both_sides_variances(da, db):
    # Independent draws of each side's deviation: the variance of a one-seed draw is
    # the sum of the two sides' (population) variances.
    if len(da) == len(db):
        db = db + [db[0]]
    da, db = np.array(da), np.array(db)
    draws = paired_two_stage({0: 0.0}, {0: 0.0}, {0: da}, {0: db}, ("p", len(da), len(db)))
    want = da.var() + db.var()
    assert draws.var() == pytest.approx(want, rel=0.15, abs=1e-6)
    assert draws.mean() == pytest.approx(da.mean() - db.mean(), abs=4 * math.sqrt(want / len(draws)) + 1e-9)


def _episodic_run(rng: np.random.Generator, n: int) -> np.ndarray:
    """Autocorrelated lognormal latencies (ms) with Poisson(0.7) queueing episodes: a
    stretch of 10-40 consecutive requests waits up to an exponential(300 ms) extra."""
    e = rng.normal(size=n)
    x = np.empty(n)
    x[0] = e[0]
    for i in range(1, n):
        x[i] = 0.6 * x[i - 1] + 0.8 * e[i]
    y = 100 * np.exp(0.5 * x)
    for _ in range(rng.poisson(0.7)):
        a, length = rng.integers(0, n - 40), rng.integers(10, 40)
        y[a:a + length] += rng.exponential(300) * np.linspace(1, 0, length)
    return y


@pytest.mark.slow
def test_coverage_with_queueing_episodes_beats_the_t_interval():
    """Five seeds of 800 requests: the nominal 95% interval for the mean p99 covers the
    truth (the mean of 3,000 runs' p99) in about 94% of 150 trials; the t-interval over
    the five per-seed p99s in about 79% (see results.bootstrap's docstring)."""
    rng = np.random.default_rng(2)
    n, seeds, trials = 800, 5, 150
    truth = np.mean([np.percentile(_episodic_run(rng, n), 99) for _ in range(3000)])
    boot = t_cover = 0
    for trial in range(trials):
        values, devs = {}, {}
        for s in range(seeds):
            run = _episodic_run(rng, n)
            values[s] = float(np.percentile(run, 99))
            devs[s] = unit_replicates({"ttft": run}, f"trial{trial}", s)["p99_ttft_ms"]
        lo, hi = expanded_interval(two_stage(values, devs, ("cover", trial)), seeds)
        boot += lo <= truth <= hi
        ci = confidence_interval(list(values.values()))
        t_cover += ci["ci_low"] <= truth <= ci["ci_high"]
    print(f"coverage: bootstrap {boot / trials:.3f}, t-interval {t_cover / trials:.3f}")
    assert boot / trials >= 0.85
    assert t_cover / trials <= boot / trials - 0.08
