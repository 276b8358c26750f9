"""A wandering machine (``sim.speed``): the trace's arithmetic, and the cluster slowing each step by
the factor at its start. Expected values are set by hand or by the same simulation without a wander."""
from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing
from sim.cluster import simulate
from sim.speed import SpeedWander, SpeedWanderError

from sim_helpers import fleet, record_differences, simple_trace


@pytest.mark.parametrize("kwargs, message", [
    ({"window_s": 0.0, "factors": (1.0,)}, "window_s must be a finite number > 0"),
    ({"window_s": math.inf, "factors": (1.0,)}, "window_s must be a finite number > 0"),
    ({"window_s": 1.0, "factors": ()}, "at least one factor"),
    ({"window_s": 1.0, "factors": (1.0, -0.5)}, "finite numbers > 0, got -0.5"),
    ({"window_s": 1.0, "factors": (math.nan,)}, "finite numbers > 0"),
    ({"window_s": 1.0, "factors": (1.0,), "offset_s": math.nan}, "offset_s must be finite"),
])
def test_a_trace_that_cannot_describe_a_machine_is_refused(kwargs, message):
    with pytest.raises(SpeedWanderError, match=message):
        SpeedWander(**kwargs)


def test_rates_become_slowdowns_with_mean_one():
    # Work done at 100/s and at 50/s: the second window's steps take twice as long;
    # scaled to mean 1 that is 2/3 and 4/3.
    w = SpeedWander.from_rates([100.0, 50.0], 0.5)
    assert w.factors == pytest.approx((2 / 3, 4 / 3))
    assert w.cv == pytest.approx(1 / 3)
    assert w.period_s == 1.0
    with pytest.raises(SpeedWanderError, match="rates must be finite numbers > 0"):
        SpeedWander.from_rates([100.0, 0.0], 1.0)
    with pytest.raises(SpeedWanderError, match="at least one rate"):
        SpeedWander.from_rates([], 1.0)


def test_the_factor_at_a_time_reads_its_window_cyclically_from_the_offset():
    w = SpeedWander(2.0, (1.0, 2.0, 3.0))
    assert [w.factor_at(t) for t in (0.0, 1.99, 2.0, 5.9, 6.0, 8.5)] == [1.0, 1.0, 2.0, 3.0, 1.0, 2.0]
    later = w.shifted(2.0)
    assert [later.factor_at(t) for t in (0.0, 2.0, 4.0)] == [2.0, 3.0, 1.0]
    assert SpeedWander(1.0, (4.0,)).cv == 0.0


def _one_backend(speed=None, mode="fast"):
    cfg = fleet(1, mode=mode, blocks=400, budget=256)
    if speed is None:
        return cfg
    return dataclasses.replace(cfg, backends=[dataclasses.replace(cfg.backends[0], speed=speed)])


def test_a_machine_twice_as_slow_doubles_a_lone_requests_latencies():
    trace = simple_trace([0.0], 300, 20)
    plain = simulate(trace, routing.build("round_robin"), _one_backend()).records[0]
    slow = simulate(trace, routing.build("round_robin"), _one_backend(SpeedWander(1.0, (2.0,)))).records[0]
    assert slow.first_token_s == pytest.approx(2 * plain.first_token_s, rel=1e-12)
    assert slow.last_token_s == pytest.approx(2 * plain.last_token_s, rel=1e-12)


def test_a_request_that_starts_in_a_slow_window_is_slowed_and_one_before_it_is_not():
    trace = simple_trace([0.0, 100.0], 300, 20)
    plain = simulate(trace, routing.build("round_robin"), _one_backend()).records
    # Steady for the first 50 s, then three times slower for the next 50 s (and so on).
    wander = SpeedWander(50.0, (1.0, 3.0))
    slowed = simulate(trace, routing.build("round_robin"), _one_backend(wander)).records
    assert plain[0].last_token_s < 50.0  # the first request ends inside the steady window
    assert slowed[0].last_token_s == pytest.approx(plain[0].last_token_s, rel=1e-12)
    moved = simulate(trace, routing.build("round_robin"), _one_backend(wander.shifted(50.0))).records
    # Read from 50 s on, the first window is the slow one: the first request takes 3x as long.
    assert moved[0].last_token_s == pytest.approx(3 * plain[0].last_token_s, rel=1e-12)
    # The second request arrives at 100 s, in the steady window again (cyclic trace).
    assert slowed[1].last_token_s - 100.0 == pytest.approx(plain[1].last_token_s - 100.0, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.integers(16, 600), st.integers(1, 60)), min_size=1, max_size=25),
       st.floats(0.05, 5.0))
def test_a_steady_trace_changes_nothing(requests, window_s):
    """A wander of factors 1 steps one step per event; the records equal the closed-form runs' exactly."""
    requests.sort()
    trace = simple_trace([r[0] for r in requests], [r[1] for r in requests], [r[2] for r in requests])
    plain = simulate(trace, routing.build("round_robin"), _one_backend()).records
    steady = simulate(trace, routing.build("round_robin"), _one_backend(SpeedWander(window_s, (1.0, 1.0)))).records
    assert record_differences(plain, steady) == []
