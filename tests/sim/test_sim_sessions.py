"""Closed-loop sessions and concurrency clients in the simulator (sim.sessions)."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing
from results.metrics import unit_metrics
from sim.cluster import simulate
from sim_helpers import fleet, record_differences
from workload import build_trace
from workload.sessions import SessionPlan

SESSIONS = {"source": "synthetic", "synthetic": {
    "turns": {"dist": "uniform", "min": 1, "max": 6}, "num_requests": 600,
    "input": {"dist": "uniform", "min": 20, "max": 200}, "output": {"dist": "uniform", "min": 4, "max": 120},
    "prefix_groups": 3, "prefix_len": 64}}


def trace_of(n=150, seed=0, **arrivals):
    arr = {"pattern": "poisson", "rate": 30.0, "think_time": {"dist": "exponential", "mean": 0.5},
           **arrivals}
    return build_trace(SESSIONS, arr, seed=seed, num_requests=n, cache_dir=False)


def run(trace, strategy="least_load", seed=0, **fleet_kw):
    return simulate(trace, routing.build(strategy, seed=seed), fleet(**fleet_kw), seed=seed).records


def by_row(trace, records):
    index = {int(r): i for i, r in enumerate(trace.request_id)}
    out = [None] * len(trace)
    for rec in records:
        out[index[rec.request_id]] = rec
    assert all(r is not None for r in out)
    return out


def check_closed_rules(trace, records):
    """No turn leaves before its predecessor's reply has ended plus its think time."""
    plan = SessionPlan.of(trace)
    recs = by_row(trace, records)
    for i in range(len(trace)):
        j = plan.next_row[i]
        if j < 0:
            continue
        a, b = recs[i], recs[j]
        if b.status in ("skipped",) or (b.status == "unfinished" and math.isnan(b.arrival_s)):
            continue
        assert a.status == "ok", (a.status, b.status)
        assert b.ready_s == pytest.approx(a.finish_s + trace.think_s[j], abs=1e-9)
        assert b.arrival_s >= a.finish_s + trace.think_s[j] - 1e-9
        assert b.think_s == trace.think_s[j]


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31), rate=st.sampled_from([5.0, 40.0, 200.0]),
       think=st.sampled_from([0.0, 0.3, 3.0]), timeout=st.sampled_from([0.0, 2.0]))
def test_in_closed_mode_no_turn_starts_before_its_predecessor_ends(seed, rate, think, timeout):
    trace = trace_of(120, seed, rate=rate, think_time={"dist": "fixed", "value": think})
    recs = run(trace, seed=seed, timeout_s=timeout, n=2)
    assert len(recs) == len(trace)
    check_closed_rules(trace, recs)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31), clients=st.integers(1, 12),
       sessions=st.sampled_from(["closed", "open"]))
def test_concurrency_never_exceeds_its_clients_and_uses_them_all(seed, clients, sessions):
    trace = trace_of(100, seed, pattern="concurrency", concurrency=clients, sessions=sessions,
                     think_time={"dist": "fixed", "value": 0.0})
    recs = run(trace, seed=seed, n=2)
    sent = [r for r in recs if not math.isnan(r.arrival_s)]
    assert len(sent) == len(trace)  # nothing fails here: every request is sent
    events = sorted([(r.arrival_s, 1) for r in sent] + [(r.finish_s, -1) for r in sent],
                    key=lambda e: (e[0], e[1]))
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak == min(clients, len(trace))
    first = min(r.arrival_s for r in sent)
    assert first == 0.0 and sum(r.arrival_s == 0.0 for r in sent) == min(clients, len(trace))
    if sessions == "closed":
        check_closed_rules(trace, recs)


def test_a_concurrency_client_waits_the_think_time_between_turns_only():
    trace = trace_of(60, 1, pattern="concurrency", concurrency=1,
                     think_time={"dist": "fixed", "value": 2.0})
    recs = sorted(run(trace, n=1), key=lambda r: r.arrival_s)
    for a, b in zip(recs, recs[1:]):
        same = a.conversation_id == b.conversation_id
        assert b.arrival_s == pytest.approx(a.finish_s + (2.0 if same else 0.0))
        assert (b.think_s == 2.0) if same else math.isnan(b.think_s)


def test_the_same_seed_gives_identical_records():
    for arrivals in ({}, {"pattern": "concurrency", "concurrency": 4}, {"sessions": "open"}):
        trace = trace_of(150, 7, **arrivals)
        a, b = run(trace, seed=7, timeout_s=1.5), run(trace, seed=7, timeout_s=1.5)
        assert len(a) == len(trace) and not record_differences(a, b, rel=0)
        assert [r.request_id for r in a] == [r.request_id for r in b]  # same order, too


def test_closed_sessions_are_exact_in_fast_mode():
    """Decode runs in closed form and the decode group change nothing here either."""
    for arrivals in ({}, {"pattern": "concurrency", "concurrency": 5}):
        trace = trace_of(150, 3, **arrivals)
        fast = run(trace, mode="fast")
        exact = run(trace, mode="exact")
        assert not record_differences(fast, exact, rel=1e-9)


def test_a_failed_turn_ends_its_session_and_its_later_turns_are_skipped():
    # A tight client timeout makes some turns fail under load.
    for arrivals in ({"rate": 400.0, "think_time": {"dist": "fixed", "value": 0.0}},
                     {"pattern": "concurrency", "concurrency": 40,
                      "think_time": {"dist": "fixed", "value": 0.0}},
                     {"rate": 400.0, "sessions": "open"}):
        trace = trace_of(300, 2, **arrivals)
        recs = by_row(trace, run(trace, timeout_s=0.4, n=1))
        plan = SessionPlan.of(trace)
        statuses = {r.status for r in recs}
        assert "timeout" in statuses and "skipped" in statuses, (arrivals, statuses)
        for i in np.flatnonzero(plan.first):
            row, failed = int(i), False
            while row >= 0:
                rec = recs[row]
                if failed and trace.meta["sessions"] == "closed":
                    assert rec.status == "skipped" and math.isnan(rec.arrival_s) and rec.backend == -1
                    assert "failed, which ends the session" in rec.error
                if rec.status == "skipped":
                    assert failed  # only after a failure of the same session
                if rec.status in ("timeout", "error", "rejected"):
                    failed = True
                row = int(plan.next_row[row])
        m = unit_metrics(recs, {"ttft_ms": 1e9})
        assert m.values["num_skipped"] == sum(r.status == "skipped" for r in recs) > 0
        sent = len(recs) - m.values["num_skipped"]
        assert m.values["slo_attainment"] == pytest.approx(m.values["completed"] / sent)


def test_turns_not_sent_by_the_horizon_are_recorded_unfinished():
    trace = trace_of(80, 4, think_time={"dist": "fixed", "value": 50.0})
    recs = run(trace, drain_s=1.0)
    unsent = [r for r in recs if r.status == "unfinished" and math.isnan(r.arrival_s)]
    assert unsent and all("horizon" in r.error for r in unsent)
    assert len(recs) == len(trace)


def test_single_turn_traces_give_the_same_records_in_both_modes():
    wl = {"source": "synthetic", "synthetic": {"num_requests": 200, "input": {"dist": "fixed", "value": 64},
                                               "output": {"dist": "fixed", "value": 16}}}
    closed = build_trace(wl, {"rate": 50.0}, seed=0, num_requests=120, cache_dir=False)
    opened = build_trace(wl, {"rate": 50.0, "sessions": "open"}, seed=0, num_requests=120,
                         cache_dir=False)
    assert closed.meta["sessions"] == "open"  # no session has a second turn
    assert not record_differences(run(closed), run(replace(opened, meta=closed.meta)), rel=0)
