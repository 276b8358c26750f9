"""The live load generator follows the simulator's session rules (loopback, emulators)."""
from __future__ import annotations

import math

import pytest
from live_helpers import arun, post_json

import routing
from live.loadgen import LoadOptions, RunLabels, replay
from live.router import LiveRouter
from workload import build_trace
from workload.sessions import SessionPlan

pytestmark = pytest.mark.timeout(180)

SESSIONS = {"source": "synthetic", "synthetic": {
    "turns": {"dist": "uniform", "min": 2, "max": 4}, "num_requests": 200,
    "input": {"dist": "uniform", "min": 16, "max": 64}, "output": {"dist": "fixed", "value": 6},
    "prefix_groups": 2, "prefix_len": 32}}


def live_records(trace, urls):
    router = LiveRouter(urls, routing.build("least_load"), names=[f"b{i}" for i in range(len(urls))],
                        scrape=True, track_prefix=True, scrape_interval_s=0.1)

    async def main():
        return await replay(trace, router=router, labels=RunLabels("e", "p", "ll", 0),
                            options=LoadOptions(timeout_s=20.0, drain_s=30.0))

    result = arun(main(), timeout=150)
    assert len(result.records) == len(trace)
    index = {int(r): i for i, r in enumerate(trace.request_id)}
    recs = [None] * len(trace)
    for r in result.records:
        recs[index[r.request_id]] = r
    return recs


def test_closed_sessions_live_wait_for_the_reply_and_the_think_time(emulators):
    trace = build_trace(SESSIONS, {"rate": 12.0, "think_time": {"dist": "fixed", "value": 0.25}},
                        seed=0, num_requests=30, cache_dir=False)
    assert trace.meta["sessions"] == "closed"
    recs = live_records(trace, emulators)
    plan = SessionPlan.of(trace)
    pairs = 0
    for i in range(len(trace)):
        j = int(plan.next_row[i])
        if j < 0:
            continue
        a, b = recs[i], recs[j]
        assert a.status == "ok" and b.status == "ok", (a.status, a.error, b.status, b.error)
        # The client reads the whole reply, thinks 0.25 s, then sends: never earlier.
        assert b.ready_s >= a.finish_s + 0.25 - 1e-6
        assert b.ready_s - (a.finish_s + 0.25) < 0.1  # reading the reply's end is prompt
        assert b.arrival_s >= b.ready_s - 1e-6 and b.think_s == 0.25
        pairs += 1
    assert pairs >= 10
    firsts = [recs[i] for i in plan.first_rows()]
    assert all(math.isnan(r.think_s) for r in firsts)


def test_concurrency_clients_live_never_exceed_their_number(emulators):
    trace = build_trace(SESSIONS, {"pattern": "concurrency", "concurrency": 3,
                                   "think_time": {"dist": "fixed", "value": 0.0}},
                        seed=1, num_requests=24, cache_dir=False)
    recs = live_records(trace, emulators)
    assert all(r.status == "ok" for r in recs)
    events = sorted([(r.arrival_s, 1) for r in recs] + [(r.finish_s, -1) for r in recs])
    level = peak = 0
    for _, d in events:
        level += d
        peak = max(peak, level)
    assert peak == 3


def test_a_failed_turn_ends_its_session_live(emulators):
    for url in emulators:
        post_json(url + "/_emulator/faults", {"error_rate": 0.35, "seed": 3})
    trace = build_trace(SESSIONS, {"rate": 20.0, "think_time": {"dist": "fixed", "value": 0.0}},
                        seed=2, num_requests=30, cache_dir=False)
    recs = live_records(trace, emulators)
    plan = SessionPlan.of(trace)
    statuses = {r.status for r in recs}
    assert "skipped" in statuses and statuses & {"error", "rejected"}
    for i in plan.first_rows():
        row, failed = int(i), False
        while row >= 0:
            rec = recs[row]
            if failed:
                assert rec.status == "skipped" and math.isnan(rec.arrival_s) and rec.backend == -1
            else:
                assert rec.status != "skipped"
            failed = failed or rec.status in ("error", "rejected", "timeout")
            row = int(plan.next_row[row])
