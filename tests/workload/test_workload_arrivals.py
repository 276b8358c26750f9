"""Arrival processes: rates within statistical tolerance, vLLM's gamma exactly, burst shape, replay."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workload.arrivals import (
    burst_arrivals,
    constant_arrivals,
    gamma_arrivals,
    generate_arrivals,
    poisson_arrivals,
    replay_arrivals,
)
from workload.config import ArrivalSpec


def vllm_get_request_delays(n, request_rate, burstiness, seed):
    """vllm/benchmarks/serve.py get_request(), written out independently: one legacy
    np.random.gamma call per request after np.random.seed(seed), cumulative sum,
    then every delay scaled so the last equals n / request_rate."""
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        delay_ts = []
        for _ in range(n):
            theta = 1.0 / (request_rate * burstiness)
            delay_ts.append(np.random.gamma(shape=burstiness, scale=theta))
    finally:
        np.random.set_state(saved)
    delay_ts = list(itertools.accumulate(delay_ts))
    target_total_delay_s = n / request_rate
    normalize_factor = target_total_delay_s / delay_ts[-1]
    return [d * normalize_factor for d in delay_ts]


@pytest.mark.parametrize(
    "n, rate, burstiness, seed",
    [(1, 1.0, 1.0, 0), (1000, 4.0, 1.0, 0), (500, 0.5, 0.25, 42), (2000, 30.0, 3.0, 12345)],
)
def test_gamma_is_vllm_bench_serve_bit_for_bit(n, rate, burstiness, seed):
    ours = gamma_arrivals(rate, burstiness, seed, n=n)
    assert ours.tolist() == vllm_get_request_delays(n, rate, burstiness, seed)
    assert ours[-1] == pytest.approx(n / rate, rel=1e-12)


def test_gamma_does_not_touch_the_global_generator():
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    gamma_arrivals(2.0, 0.5, 1, n=100)
    assert np.array_equal(np.random.get_state()[1], before)


def test_gamma_burstiness_controls_dispersion_and_infinity_is_constant():
    n, rate = 20_000, 5.0
    for b in (0.25, 1.0, 4.0):
        gaps = np.diff(gamma_arrivals(rate, b, 3, n=n), prepend=0.0)
        cv2 = gaps.var() / gaps.mean() ** 2  # Gamma(shape=b): CV^2 = 1/b
        assert cv2 == pytest.approx(1 / b, rel=0.1)
    const = gamma_arrivals(rate, math.inf, 3, n=10)
    assert np.allclose(np.diff(const, prepend=0.0), 1 / rate)


def test_gamma_with_a_duration_uses_floor_rate_times_duration():
    t = gamma_arrivals(3.0, 1.0, 0, duration_s=10.5)
    assert len(t) == 31 and t[-1] == pytest.approx(31 / 3.0) and t[-1] <= 10.5


@pytest.mark.parametrize("rate", [0.5, 8.0, 200.0])
def test_poisson_mean_rate_within_tolerance(rate):
    n = 20_000
    t = poisson_arrivals(rate, np.random.default_rng(5), n=n)
    gaps = np.diff(t, prepend=0.0)
    # mean gap 1/rate with standard error (1/rate)/sqrt(n): allow 5 standard errors
    assert abs(gaps.mean() * rate - 1) < 5 / math.sqrt(n)
    assert gaps.std() * rate == pytest.approx(1.0, abs=0.05)  # exponential: sd = mean


def test_poisson_over_a_duration():
    rate, duration = 20.0, 500.0
    t = poisson_arrivals(rate, np.random.default_rng(9), duration_s=duration)
    expected = rate * duration
    assert abs(len(t) - expected) < 5 * math.sqrt(expected)
    assert t[-1] <= duration and np.all(np.diff(t) >= 0)


def test_constant_spacing():
    assert constant_arrivals(4.0, n=5).tolist() == [0.25, 0.5, 0.75, 1.0, 1.25]
    t = constant_arrivals(10.0, duration_s=3.0)
    assert len(t) == 30 and t[-1] == pytest.approx(3.0)


def test_burst_rates_in_on_and_off_windows():
    base, peak, on_s, off_s = 2.0, 20.0, 5.0, 15.0
    cycles = 200
    horizon = cycles * (on_s + off_s)
    t = burst_arrivals(base, peak, on_s, off_s, np.random.default_rng(11), duration_s=horizon)
    in_on = np.mod(t, on_s + off_s) >= off_s  # each cycle starts with its off period
    on_expected, off_expected = peak * on_s * cycles, base * off_s * cycles
    # Poisson counts: allow 5 standard deviations
    assert abs(np.count_nonzero(in_on) - on_expected) < 5 * math.sqrt(on_expected)
    assert abs(np.count_nonzero(~in_on) - off_expected) < 5 * math.sqrt(off_expected)
    assert np.all(np.diff(t) >= 0) and t[-1] <= horizon


def test_burst_with_zero_base_rate_only_arrives_in_on_windows():
    t = burst_arrivals(0.0, 10.0, 2.0, 8.0, np.random.default_rng(1), n=3000)
    phase = np.mod(t, 10.0)
    assert np.all(phase >= 8.0 - 1e-9)
    assert len(t) == 3000


def test_burst_n_and_duration_agree_for_the_same_generator_state():
    a = burst_arrivals(1.0, 9.0, 3.0, 6.0, np.random.default_rng(4), n=200)
    b = burst_arrivals(1.0, 9.0, 3.0, 6.0, np.random.default_rng(4), duration_s=float(a[-1]))
    assert np.allclose(a, b[: len(a)]) and len(b) == len(a)


def test_replay_order_and_scaling():
    ts = np.array([100.0, 101.0, 101.5, 104.0, 110.0])
    assert replay_arrivals(ts).tolist() == [0.0, 1.0, 1.5, 4.0, 10.0]
    assert replay_arrivals(ts, time_scale=10).tolist() == pytest.approx([0.0, 0.1, 0.15, 0.4, 1.0])
    t = replay_arrivals(ts, target_rate=2.0)
    assert (len(t) - 1) / t[-1] == pytest.approx(2.0)  # mean gap 1/target_rate
    assert np.allclose(t / t[-1], (ts - 100.0) / 10.0)  # shape kept
    with pytest.raises(ValueError, match="sorted"):
        replay_arrivals(ts[::-1])
    with pytest.raises(ValueError, match="finite timestamp"):
        replay_arrivals(np.array([1.0, np.nan]))


def test_need_a_count_or_a_duration():
    with pytest.raises(ValueError, match="request count n or a horizon duration_s"):
        poisson_arrivals(1.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="duration_s must be > 0"):
        constant_arrivals(1.0, duration_s=0.0)


@settings(max_examples=40, deadline=None)
@given(
    pattern=st.sampled_from(["poisson", "gamma", "constant", "burst"]),
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 300),
    rate=st.floats(0.05, 500.0),
)
def test_every_pattern_is_deterministic_sorted_and_sized(pattern, seed, n, rate):
    spec = ArrivalSpec.from_mapping({"pattern": pattern, "rate": rate, "burstiness": 0.7})
    a = generate_arrivals(spec, seed, n=n)
    b = generate_arrivals(spec, seed, n=n)
    assert np.array_equal(a, b) and len(a) == n
    assert np.all(np.diff(a) >= 0) and a[0] >= 0
