"""The load generator: one record per request, exact send times, bounded runs."""
from __future__ import annotations

import math

import numpy as np
import pytest
from live_helpers import TINY, arun

import routing
from live.emulator import spawn
from live.router import LiveRouter
from live.gateway import GatewayConfig, serve_gateway
from live.loadgen import LoadOptions, RunLabels, replay
from results.records import expand_itl, to_table
from results.metrics import unit_metrics
from workload import build_trace

pytestmark = pytest.mark.timeout(120)


def small_trace(n: int, rate: float, out: int = 8, seed: int = 0):
    return build_trace(
        {"source": "synthetic", "synthetic": {"input": {"dist": "uniform", "min": 32, "max": 160},
                                              "output": {"dist": "fixed", "value": out},
                                              "prefix_groups": 2, "prefix_len": 32,
                                              "num_requests": 200}},
        {"pattern": "poisson", "rate": rate}, seed=seed, num_requests=n, cache_dir=False)


def fleet_for(urls, strategy="round_robin", **kw):
    return LiveRouter(urls, routing.build(strategy), names=[f"b{i}" for i in range(len(urls))],
                     scrape=True, track_prefix=True, scrape_interval_s=0.1, **kw)


def check_one_record_per_request(trace, records):
    assert len(records) == len(trace)
    assert sorted(r.request_id for r in records) == sorted(int(x) for x in trace.request_id)
    for r in records:
        assert r.status in ("ok", "error", "timeout", "rejected", "unfinished")
        if r.status == "ok":
            assert r.arrival_s <= r.first_token_s <= r.last_token_s <= r.finish_s
            assert r.output_len == r.requested_output_len
            gaps = expand_itl(r.itl_start, r.itl_step, r.itl_count)
            assert len(gaps) <= r.output_len - 1 and np.all(gaps >= 0)
            assert r.first_token_s + gaps.sum() == pytest.approx(r.last_token_s, abs=1e-6)
        else:
            assert r.error


def test_client_side_replay_sends_on_time_and_records_everything(two_emulators):
    trace = small_trace(40, rate=40.0)

    async def main():
        return await replay(trace, router=fleet_for(two_emulators), labels=RunLabels("e", "p", "rr", 0),
                            options=LoadOptions(concurrency=32))

    result = arun(main())
    recs = result.records
    check_one_record_per_request(trace, recs)
    assert all(r.status == "ok" for r in recs)
    assert {r.backend for r in recs} == {0, 1}
    assert all((r.experiment_id, r.point_id, r.strategy, r.seed) == ("e", "p", "rr", 0) for r in recs)
    # Sends follow the trace's arrival times (one origin, no drift).
    sent = np.array([r.arrival_s for r in sorted(recs, key=lambda r: r.request_id)])
    assert np.all(sent >= trace.arrival_s - 1e-6)
    assert np.median(result.send_lag_s) < 0.005 and len(result.send_lag_s) == len(trace)
    # Router features come from the same Router as the simulator's.
    assert all(r.router_scrape_age_s >= 0 for r in recs)
    hits = [r.router_prefix_hit_tokens for r in recs]
    assert max(hits) > 0  # shared prefixes were seen by the router's prefix index
    m = unit_metrics(to_table(recs), {}, backend_names=["b0", "b1"])
    assert m.values["completed"] == len(trace)


@pytest.mark.slow
def test_a_backend_dying_mid_run_still_gives_one_record_per_request():
    trace = small_trace(30, rate=30.0)

    async def main(urls):
        fleet = fleet_for(urls, eject_after=2, probe_interval_s=0.2)
        return await replay(trace, router=fleet, options=LoadOptions(concurrency=16, timeout_s=20)), fleet

    with spawn(1, TINY, args=["--crash-after", "4"]) as crash, spawn(1, TINY) as ok:
        result, fleet = arun(main([crash[0], ok[0]]))
    recs = result.records
    check_one_record_per_request(trace, recs)
    statuses = [r.status for r in recs]
    assert "error" in statuses and "ok" in statuses
    assert fleet.ejections[0] == 1  # the dead backend was taken out...
    last_error = max(x.arrival_s for x in recs if x.status == "error")
    late = [r for r in recs if r.arrival_s > last_error]
    assert late and all(r.status == "ok" and r.backend == 1 for r in late)  # ...and avoided


def test_time_bound_records_in_flight_and_unsent_requests_as_unfinished(two_emulators):
    trace = small_trace(30, rate=20.0, out=400)  # long outputs: still running at the bound

    async def main():
        opts = LoadOptions(max_duration_s=0.6, concurrency=32)
        return await replay(trace, router=fleet_for(two_emulators), options=opts)

    result = arun(main())
    check_one_record_per_request(trace, result.records)
    unfinished = [r for r in result.records if r.status == "unfinished"]
    unsent = [r for r in unfinished if r.backend == -1]
    in_flight = [r for r in unfinished if r.backend >= 0]
    assert unsent and all(r.arrival_s > 0.6 for r in unsent)
    assert in_flight and all(math.isnan(r.finish_s) for r in in_flight)
    assert result.stopped_early and result.wall_s < 5


def test_through_a_gateway_the_backend_comes_from_its_header(two_emulators):
    trace = small_trace(12, rate=30.0)

    async def main():
        async with serve_gateway(GatewayConfig(backends=two_emulators, names=["x", "y"])) as gw:
            return await replay(trace, gateway_url=gw.url, backend_names=["x", "y"])

    result = arun(main())
    check_one_record_per_request(trace, result.records)
    assert {r.backend for r in result.records} == {0, 1}
    assert all(math.isnan(r.router_running) for r in result.records)  # the client did not route


def test_no_healthy_backend_is_recorded_as_rejected():
    trace = small_trace(3, rate=50.0)
    fleet = fleet_for(["http://127.0.0.1:9"])
    fleet.router.set_healthy(0, False)

    result = arun(replay(trace, router=fleet))
    assert [r.status for r in result.records] == ["rejected"] * 3
    assert all(r.backend == -1 for r in result.records)


def test_target_must_be_one_of_fleet_or_gateway():
    with pytest.raises(ValueError, match="exactly one"):
        arun(replay(small_trace(2, 10.0)))
