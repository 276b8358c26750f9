"""Closed-loop sessions and concurrency traces (workload.sessions, workload.thinktime)."""
from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workload import build_trace
from workload.config import ArrivalSpec, SchemaError, WorkloadSpec, check_pair
from workload.sessions import SessionPlan, next_rows, session_codes
from workload.thinktime import describe_think, parse_think
from workload.trace import Trace
from workload_helpers import WILDCHAT_PARQUET

SYNTH_SESSIONS = {"source": "synthetic", "synthetic": {
    "turns": {"dist": "uniform", "min": 1, "max": 5}, "num_requests": 400,
    "input": {"dist": "uniform", "min": 20, "max": 80}, "output": {"dist": "fixed", "value": 16},
    "prefix_groups": 2, "prefix_len": 32}}
SINGLE = {"source": "synthetic", "synthetic": {"num_requests": 300}}


def _closed(n=120, seed=0, **arrivals):
    arr = {"pattern": "poisson", "rate": 4.0, "think_time": {"dist": "exponential", "mean": 3.0},
           **arrivals}
    return build_trace(SYNTH_SESSIONS, arr, seed=seed, num_requests=n, cache_dir=False)


def _by_session(trace):
    out: dict[str, list[int]] = {}
    for i, c in enumerate(trace.conversation_id):
        out.setdefault(c, []).append(i)
    return out


def test_a_closed_trace_plans_each_turn_after_its_predecessor_plus_the_think_time():
    t = _closed()
    assert t.meta["sessions"] == "closed" and t.meta["clients"] == 0
    assert len(t) == 120 and np.all(np.diff(t.arrival_s) >= 0)
    assert t.request_id.tolist() == list(range(120))
    for rows in _by_session(t).values():
        assert [int(t.turn[i]) for i in rows] == sorted(int(t.turn[i]) for i in rows)
        assert math.isnan(t.think_s[rows[0]])
        for a, b in zip(rows, rows[1:]):
            assert t.think_s[b] >= 0
            assert t.arrival_s[b] == pytest.approx(t.arrival_s[a] + t.think_s[b])
    assert t.meta["think_time"] == "exponential(mean=3 s)"


def test_sessions_start_at_the_request_rate_divided_by_the_turns_per_session():
    """Constant arrivals: session k starts at k / (rate * sessions / requests), by hand."""
    t = _closed(n=60, pattern="constant", rate=6.0)
    first = [rows[0] for rows in _by_session(t).values()]
    k = len(first)
    starts = np.sort(t.arrival_s[first])
    session_rate = 6.0 * k / 60
    assert np.allclose(starts, np.arange(1, k + 1) / session_rate)
    assert starts[-1] == pytest.approx(60 / 6.0)  # the last session starts at n / rate


def test_single_turn_pools_give_the_same_trace_in_both_modes():
    arr = {"pattern": "gamma", "rate": 5.0, "burstiness": 0.5}
    closed = build_trace(SINGLE, arr, seed=3, num_requests=100, cache_dir=False)
    opened = build_trace(SINGLE, {**arr, "sessions": "open"}, seed=3, num_requests=100, cache_dir=False)
    for col in ("conversation_id", "input_len", "output_len", "arrival_s", "block_hashes"):
        assert np.array_equal(getattr(closed, col), getattr(opened, col))
    assert np.isnan(closed.think_s).all()


def test_open_sessions_carry_no_think_time():
    t = build_trace(SYNTH_SESSIONS, {"rate": 4.0, "sessions": "open"}, seed=0, num_requests=50,
                    cache_dir=False)
    assert t.meta["sessions"] == "open" and np.isnan(t.think_s).all()


def test_think_times_from_wildchat_are_the_gaps_between_a_reply_and_the_next_message(session_cache):
    table = pq.read_table(WILDCHAT_PARQUET).to_pylist()
    expected = {}  # (conversation, user turn) -> seconds since the assistant message before it
    for rec in table:
        msgs, turn = rec["conversation"], -1
        for m, msg in enumerate(msgs):
            if msg["role"] != "user":
                continue
            turn += 1
            if m and msgs[m - 1]["role"] == "assistant":
                expected[(rec["conversation_hash"], turn)] = (
                    msg["timestamp"] - msgs[m - 1]["timestamp"]).total_seconds()
    first = table[0]["conversation_hash"]
    assert expected[(first, 1)] == 120.0 and expected[(first, 2)] == 120.0  # read off the fixture

    t = build_trace({"source": "wildchat", "path": str(WILDCHAT_PARQUET)},
                    {"pattern": "replay", "think_time": {"dist": "data"}}, seed=0, num_requests=10,
                    cache_dir=session_cache)
    for i in range(len(t)):
        key = (str(t.conversation_id[i]), int(t.turn[i]))
        if int(t.turn[i]) == 0 or SessionPlan.of(t).first[i]:
            assert math.isnan(t.think_s[i])
        else:
            assert t.think_s[i] == pytest.approx(expected[key])
    capped = build_trace({"source": "wildchat", "path": str(WILDCHAT_PARQUET)},
                         {"pattern": "replay", "think_time": {"dist": "data", "max": 100}},
                         seed=0, num_requests=10, cache_dir=session_cache)
    later = ~np.isnan(capped.think_s)
    assert later.any() and capped.think_s[later].max() <= 100.0


def test_a_replayed_closed_session_starts_at_its_first_turns_timestamp(session_cache):
    t = build_trace({"source": "wildchat", "path": str(WILDCHAT_PARQUET)},
                    {"pattern": "replay", "think_time": {"dist": "fixed", "value": 7.0}},
                    seed=0, num_requests=10, cache_dir=session_cache)
    open_ = build_trace({"source": "wildchat", "path": str(WILDCHAT_PARQUET)},
                        {"pattern": "replay", "sessions": "open"}, seed=0, num_requests=10,
                        cache_dir=session_cache)
    seen = set()
    starts = {}
    for c, a in zip(open_.conversation_id, open_.arrival_s):
        if c not in seen:
            seen.add(c)
            starts[c] = a
    for c, rows in _by_session(t).items():
        assert t.arrival_s[rows[0]] == pytest.approx(starts[c])
        assert np.allclose(np.diff(t.arrival_s[rows]), 7.0)


def test_a_concurrency_trace_lists_whole_sessions_in_order_at_time_zero():
    t = build_trace(SYNTH_SESSIONS, {"pattern": "concurrency", "concurrency": 3,
                                     "think_time": {"dist": "fixed", "value": 0}},
                    seed=1, num_requests=40, cache_dir=False)
    assert t.meta["clients"] == 3 and t.meta["sessions"] == "closed"
    assert (t.arrival_s == 0).all() and len(t) == 40
    runs = [c for i, c in enumerate(t.conversation_id) if i == 0 or c != t.conversation_id[i - 1]]
    assert len(runs) == len(set(runs))  # each session's turns are together, in order
    opened = build_trace(SYNTH_SESSIONS, {"pattern": "concurrency", "concurrency": 3,
                                          "sessions": "open"}, seed=1, num_requests=40,
                         cache_dir=False)
    assert opened.meta["sessions"] == "open" and np.isnan(opened.think_s).all()


def test_errors_name_the_key_and_what_is_allowed():
    with pytest.raises(SchemaError, match=r"arrivals\.concurrency: pattern 'concurrency' needs"):
        ArrivalSpec.from_mapping({"pattern": "concurrency"})
    with pytest.raises(SchemaError, match=r"arrivals\.sessions: unknown value 'clozed' \(did you mean 'closed'"):
        ArrivalSpec.from_mapping({"sessions": "clozed"})
    with pytest.raises(SchemaError, match=r"arrivals\.think_time\.dist: unknown value 'normal'"):
        ArrivalSpec.from_mapping({"think_time": {"dist": "normal", "mean": 3}})
    with pytest.raises(SchemaError, match=r"arrivals\.think_time\.mean: missing required key"):
        ArrivalSpec.from_mapping({"think_time": {"dist": "exponential"}})
    with pytest.raises(SchemaError, match=r"think_time\.max: 1 is below min = 2"):
        ArrivalSpec.from_mapping({"think_time": {"dist": "uniform", "min": 2, "max": 1}})
    with pytest.raises(SchemaError, match=r"arrivals\.think_time: .*'sharegpt' records none"):
        check_pair(WorkloadSpec.from_mapping({"source": "sharegpt"}),
                   ArrivalSpec.from_mapping({"think_time": {"dist": "data"}}))
    with pytest.raises(ValueError, match="pattern 'concurrency' sends a number of requests"):
        build_trace(SYNTH_SESSIONS, {"pattern": "concurrency", "concurrency": 2}, seed=0,
                    duration_s=10.0, cache_dir=False)
    grid = ArrivalSpec.from_mapping({"pattern": ["poisson", "concurrency"], "concurrency": [2, 8],
                                     "sessions": ["open", "closed"]}, grid=True)
    assert grid.concurrency == [2, 8] and grid.sessions == ["open", "closed"]


def test_think_time_distributions_draw_what_they_say():
    rng = np.random.default_rng(0)
    assert (parse_think({"dist": "fixed", "value": 2.5}, "t").draw(5, rng) == 2.5).all()
    x = parse_think({"dist": "lognormal", "mean": 10.0, "sigma": 0.5}, "t").draw(200_000, rng)
    assert x.mean() == pytest.approx(10.0, rel=0.01)
    capped = parse_think({"dist": "lognormal", "mean": 10.0, "sigma": 1.5, "max": 20}, "t")
    assert capped.draw(10_000, rng).max() == 20.0
    u = parse_think({"dist": "uniform", "min": 1, "max": 3}, "t").draw(10_000, rng)
    assert u.min() >= 1 and u.max() <= 3
    assert describe_think(parse_think({"dist": "lognormal", "mean": 210, "sigma": 0.98}, "t")) == \
        "lognormal(mean=210 s, sigma=0.98)"


def test_next_rows_link_each_turn_to_the_next_of_its_session():
    codes = session_codes(np.array(["a", "b", "a", "c", "b", "a"], dtype=object))
    assert codes.tolist() == [0, 1, 0, 2, 1, 0]
    assert next_rows(codes).tolist() == [2, 4, 5, -1, -1, -1]


def test_a_trace_without_session_meta_is_sent_open():
    n = 3
    t = Trace(np.arange(n), np.array(["a", "a", "b"], dtype=object), np.array([0, 1, 0], np.int32),
              np.full(n, 32, np.int32), np.full(n, 4, np.int32), np.arange(n, dtype=float),
              np.full(n, np.nan), np.zeros(n + 1, np.int64), np.zeros(0, np.uint64))
    plan = SessionPlan.of(t)
    assert plan.mode == "open" and plan.clients == 0 and plan.first.tolist() == [True, False, True]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 200),
       pattern=st.sampled_from(["poisson", "gamma", "constant", "burst"]),
       order=st.sampled_from(["interleave", "shuffle", "sequential"]))
def test_closed_traces_are_deterministic_and_plan_turns_in_order(seed, n, pattern, order):
    wl = {**SYNTH_SESSIONS, "order": order}
    arr = {"pattern": pattern, "rate": 3.0, "think_time": {"dist": "uniform", "min": 0, "max": 4}}
    t = build_trace(wl, arr, seed=seed, num_requests=n, cache_dir=False)
    again = build_trace(wl, arr, seed=seed, num_requests=n, cache_dir=False)
    assert len(t) == n and np.all(np.diff(t.arrival_s) >= 0)
    for col in ("conversation_id", "turn", "arrival_s", "think_s", "block_hashes"):
        assert np.array_equal(getattr(t, col), getattr(again, col), equal_nan=col.endswith("_s"))
    plan = SessionPlan.of(t)
    for i in np.flatnonzero(plan.next_row >= 0):
        j = plan.next_row[i]
        assert t.turn[j] > t.turn[i] and t.arrival_s[j] >= t.arrival_s[i]


def test_session_gaps_and_their_lognormal_fit_by_hand():
    from workload.thinktime import fit_lognormal, session_gaps

    ts = np.array([10.0, 0.0, 11.0, 5.0, 30.0])
    sessions = np.array(["a", "b", "a", "b", "a"], dtype=object)
    assert sorted(session_gaps(ts, sessions).tolist()) == [1.0, 5.0, 19.0]
    fit = fit_lognormal(np.array([math.e, math.e**3]))  # log gaps 1 and 3: mu 2, sigma 1
    assert fit["sigma"] == pytest.approx(1.0) and fit["mean"] == pytest.approx(math.exp(2.5))
    assert fit["n"] == 2 and fit["median"] == pytest.approx((math.e + math.e**3) / 2)
