"""Per-unit metrics on hand-computed examples (every expected number worked out by hand)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from results.counters import BackendCounters, UnitCounters
from results.metrics import (
    inflight_imbalance, inflight_series, parse_slo, peak_concurrency, peak_to_mean, unit_metrics,
)
from results.records import RequestRecord, to_table

NAN = math.nan


def rec(rid, status, backend, arrival, dispatch, first, last, finish, out_len, input_len=0,
        cached=0, itl=((), (), ()), preempt=0):
    return RequestRecord(
        experiment_id="e", point_id="p", strategy="s", seed=0, request_id=rid,
        conversation_id=f"c{rid}", turn=0, backend=backend, arrival_s=arrival,
        dispatch_s=dispatch, first_token_s=first, last_token_s=last, finish_s=finish,
        input_len=input_len, cached_tokens=cached, output_len=out_len,
        requested_output_len=64, num_preemptions=preempt, status=status,
        itl_start=list(itl[0]), itl_step=list(itl[1]), itl_count=list(itl[2]))


def example():
    """Seven requests, one of each failure kind, two ok with several tokens, one with one."""
    return [
        # ok, 5 tokens, TTFT 0.5, E2EL 1.5, gaps 0.25 x4
        rec(1, "ok", 0, 0.0, 0.1, 0.5, 1.5, 1.6, 5, 100, 20, ((0.25,), (0.0,), (4,)), preempt=1),
        # ok, a single token: TTFT 0.2 = E2EL, no TPOT, no gap
        rec(2, "ok", 1, 1.0, 1.0, 1.2, 1.2, 1.25, 1, 50),
        # error after 3 tokens: latency not counted, counted as error
        rec(3, "error", 0, 2.0, 2.0, 2.2, 2.4, 2.5, 3, 70),
        rec(4, "timeout", 1, 2.5, 2.6, NAN, NAN, 4.0, 0, 60),
        rec(5, "rejected", -1, 3.0, NAN, NAN, NAN, 3.0, 0, 40),
        # still in flight when the run stopped at 5.0
        rec(6, "unfinished", 0, 3.5, 3.5, 3.9, 4.1, 5.0, 2, 30),
        # ok, 3 tokens, TTFT 0.3, E2EL 2.3, gaps 0.5 then 1.5 (one run: start 0.5 step 1.0)
        rec(7, "ok", 1, 0.5, 0.5, 0.8, 2.8, 2.9, 3, 80, 10, ((0.5,), (1.0,), (2,))),
    ]


SLO = {"ttft_ms": 400, "tpot_ms": 300}


@pytest.fixture(params=["arrow", "pandas", "records"])
def metrics(request):
    recs = example()
    data = {"arrow": to_table(recs), "pandas": to_table(recs).to_pandas(), "records": recs}
    return unit_metrics(data[request.param], SLO, backend_names=["a", "b", "c"])


def test_ttft_from_the_send(metrics):
    v = metrics.values
    # ok TTFTs: 500, 200, 300 ms
    assert v["mean_ttft_ms"] == pytest.approx(1000 / 3)
    assert v["median_ttft_ms"] == pytest.approx(300)
    assert v["std_ttft_ms"] == pytest.approx(math.sqrt((166.6667**2 + 133.3333**2 + 33.3333**2) / 3), rel=1e-5)
    # sorted 200, 300, 500; index 2*q: p90 -> 1.8 -> 300 + 0.8*200
    assert v["p90_ttft_ms"] == pytest.approx(460)
    assert v["p95_ttft_ms"] == pytest.approx(480)
    assert v["p99_ttft_ms"] == pytest.approx(496)


def test_tpot_only_when_more_than_one_token(metrics):
    v = metrics.values
    # request 1: (1.5 - 0.5) / 4 = 250 ms; request 7: (2.3 - 0.3) / 2 = 1000 ms; request 2 has 1 token
    assert v["mean_tpot_ms"] == pytest.approx(625)
    assert v["median_tpot_ms"] == pytest.approx(625)
    assert v["std_tpot_ms"] == pytest.approx(375)
    assert v["p90_tpot_ms"] == pytest.approx(250 + 0.9 * 750)


def test_itl_pools_every_gap_of_ok_requests(metrics):
    v = metrics.values
    # gaps: 250 x4, 500, 1500 (the error's and the unfinished request's gaps are not there)
    assert v["mean_itl_ms"] == pytest.approx(500)
    assert v["median_itl_ms"] == pytest.approx(250)  # index 2.5 between 250 and 250
    assert v["p90_itl_ms"] == pytest.approx(1000)  # index 4.5 between 500 and 1500
    assert v["p99_itl_ms"] == pytest.approx(1450)


def test_e2el_to_the_last_token(metrics):
    v = metrics.values
    # 1500, 200, 2300 ms (finish_s is later than the last token and is not used)
    assert v["mean_e2el_ms"] == pytest.approx(4000 / 3)
    assert v["median_e2el_ms"] == pytest.approx(1500)


def test_counts_never_drop_a_request(metrics):
    v = metrics.values
    assert (v["num_requests"], v["completed"], v["failed"]) == (7, 3, 4)
    assert (v["num_error"], v["num_timeout"], v["num_rejected"], v["num_unfinished"]) == (1, 1, 1, 1)


def test_duration_and_throughput(metrics):
    v = metrics.values
    # first send 0.0, last end 5.0 (the unfinished request, cut when the run stopped)
    assert v["duration"] == pytest.approx(5.0)
    assert v["request_throughput"] == pytest.approx(3 / 5)
    # tokens of ok requests only: out 5 + 1 + 3, in 100 + 50 + 80
    assert v["total_output_tokens"] == 9
    assert v["total_input_tokens"] == 230
    assert v["output_throughput"] == pytest.approx(9 / 5)
    assert v["total_token_throughput"] == pytest.approx(239 / 5)
    assert v["offered_rate"] == pytest.approx(6 / 3.5)  # 7 sends over 3.5 s


def test_goodput_and_attainment(metrics):
    v = metrics.values
    # SLO TTFT 400, TPOT 300: req 1 misses TTFT (500), req 7 misses TPOT (1000),
    # req 2 meets both (its TPOT counts as 0): one good request in 5 s, 1 of 7 sent.
    assert v["request_goodput"] == pytest.approx(1 / 5)
    assert v["slo_attainment"] == pytest.approx(1 / 7)


def test_prefix_hits_and_preemptions(metrics):
    v = metrics.values
    # no engine counters given: the fleet's rate falls back to what ok requests were served
    assert v["served_hit_rate"] == pytest.approx(30 / 230)
    assert v["prefix_hit_rate"] == pytest.approx(30 / 230)
    # no record says what a router expected (routed through a gateway): unknown, not 0
    assert math.isnan(v["expected_hit_rate"])
    assert v["mean_preemptions"] == pytest.approx(1 / 3)


def counters(*pairs):
    return UnitCounters(tuple(BackendCounters(q, h, 0.0) for q, h in pairs), "by hand")


def test_hit_rates_from_the_engines_counters_and_the_routers_expectation():
    recs = example()
    # the router expected 40 of request 1's 100 prompt tokens, 0 of 2's, 20 of 7's 80;
    # request 3 failed, so its expectation is not counted next to ok requests' hits
    for r, expected in zip(recs, (40, 0, 60, 0, 0, 0, 20)):
        r.router_prefix_hit_tokens = expected
        r.router_scrape_age_s = 0.1
    # the engines looked up 300 and 200 prompt tokens and found 150 and 50 cached
    c = counters((300.0, 150.0), (200.0, 50.0), (0.0, 0.0))
    m = unit_metrics(recs, backend_names=["a", "b", "c"], counters=c)
    v = m.values
    assert v["prefix_hit_rate"] == pytest.approx(200 / 500)  # counters win over records
    assert v["served_hit_rate"] == pytest.approx(30 / 230)
    assert v["expected_hit_rate"] == pytest.approx(60 / 230)
    rows = {b["name"]: b for b in m.backends}
    assert rows["a"]["hit_rate"] == pytest.approx(0.5) and rows["b"]["hit_rate"] == pytest.approx(0.25)
    assert math.isnan(rows["c"]["hit_rate"])  # nothing looked up
    # backend a served ok request 1 (100 tokens, 20 cached, expected 40)
    assert rows["a"]["served_hit_rate"] == pytest.approx(0.2)
    assert rows["a"]["expected_hit_rate"] == pytest.approx(0.4)
    # b: ok requests 2 and 7, 130 prompt tokens, 10 cached, expected 20
    assert rows["b"]["served_hit_rate"] == pytest.approx(10 / 130)
    assert rows["b"]["expected_hit_rate"] == pytest.approx(20 / 130)
    # work = uncached prompt tokens from the counters + generated tokens of the records sent there
    assert rows["a"]["work_tokens"] == pytest.approx(150 + (5 + 3 + 2))
    assert rows["b"]["work_tokens"] == pytest.approx(150 + (1 + 0 + 3))
    assert rows["c"]["work_tokens"] == 0
    assert v["load_imbalance"] == pytest.approx(160 / (314 / 3))


def test_a_backend_that_does_not_report_its_hit_is_unknown_not_zero():
    recs = example()
    for r in recs:
        if r.backend == 1:
            r.cached_tokens = -1  # backend b answers without usage.prompt_tokens_details
    m = unit_metrics(recs, backend_names=["a", "b", "c"])
    rows = {b["name"]: b for b in m.backends}
    assert math.isnan(rows["b"]["served_hit_rate"])
    # the fleet's rate counts only the requests whose backend reported: request 1's 20 of 100
    assert m.values["served_hit_rate"] == pytest.approx(20 / 100)
    # b's work counts every prompt token it was sent as computed (nothing known to be cached)
    assert rows["b"]["work_tokens"] == pytest.approx((50 + 60 + 80) + (1 + 0 + 3))
    for r in recs:
        r.cached_tokens = -1
    assert math.isnan(unit_metrics(recs, backend_names=["a", "b", "c"]).values["served_hit_rate"])


def test_counters_must_match_the_fleet():
    with pytest.raises(ValueError, match="counters cover 2 backends but the fleet has 3"):
        unit_metrics(example(), backend_names=["a", "b", "c"], counters=counters((1, 1), (1, 1)))


def test_backend_share_and_peak_inflight(metrics):
    rows = {b["name"]: b for b in metrics.backends}
    assert [rows[n]["requests"] for n in "abc"] == [3, 3, 0]
    assert rows["a"]["share"] == pytest.approx(0.5)
    # a: [0.1,1.6) [2.0,2.5) [3.5,5.0) never overlap; b: [0.5,2.9) overlaps [1.0,1.25) and [2.6,4.0)
    assert rows["a"]["peak_inflight"] == 1
    assert rows["b"]["peak_inflight"] == 2
    assert rows["c"]["peak_inflight"] == 0
    v = metrics.values
    assert v["max_backend_share"] == pytest.approx(0.5)
    assert v["request_imbalance"] == pytest.approx(0.5 / (1 / 3))
    # work without counters: prompt tokens not cached + tokens generated, every dispatched record
    # a: (100-20)+5, 70+3, 30+2 = 190; b: 50+1, 60+0, (80-10)+3 = 184; c: 0
    assert rows["a"]["work_tokens"] == 190 and rows["b"]["work_tokens"] == 184
    assert rows["a"]["work_share"] == pytest.approx(190 / 374)
    assert v["load_imbalance"] == pytest.approx(190 / (374 / 3))
    assert v["peak_inflight"] == 2


def test_inflight_imbalance_by_hand():
    # backend 0 holds [0, 2) and [1, 3); backend 1 holds [1, 2); two backends.
    # levels (b0, b1): [0,1) (1,0), [1,2) (2,1), [2,3) (1,0): max integral 1 + 2 + 1 = 4;
    # mean integral = request-seconds / backends = (2 + 2 + 1) / 2 = 2.5
    b = np.array([0, 0, 1])
    start, end = np.array([0.0, 1.0, 1.0]), np.array([2.0, 3.0, 2.0])
    assert inflight_imbalance(b, start, end, 2) == pytest.approx(4 / 2.5)
    # the same in chunks of one event, and with a third backend that never works
    assert inflight_imbalance(b, start, end, 2, chunk=1) == pytest.approx(4 / 2.5)
    assert inflight_imbalance(b, start, end, 3) == pytest.approx(4 / (5 / 3))
    # evenly busy backends: 1; no request dispatched: NaN
    assert inflight_imbalance(np.array([0, 1]), np.zeros(2), np.ones(2), 2) == pytest.approx(1.0)
    assert math.isnan(inflight_imbalance(np.array([-1]), np.zeros(1), np.ones(1), 2))


def test_peak_to_mean():
    assert peak_to_mean([1, 1, 1, 1]) == 1.0
    assert peak_to_mean([4, 0, 0, 0]) == 4.0
    assert peak_to_mean([3, 1]) == pytest.approx(1.5)
    assert math.isnan(peak_to_mean([0, 0])) and math.isnan(peak_to_mean([]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.floats(0, 100), st.floats(0.01, 50)),
                min_size=1, max_size=40))
def test_inflight_imbalance_is_between_one_and_the_fleet_size(reqs):
    b = np.array([r[0] for r in reqs])
    start = np.array([r[1] for r in reqs])
    end = start + np.array([r[2] for r in reqs])
    x = inflight_imbalance(b, start, end, 4)
    assert 1.0 - 1e-9 <= x <= 4.0 + 1e-9
    # the chunked pass gives what one pass gives
    assert inflight_imbalance(b, start, end, 4, chunk=3) == pytest.approx(x)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.floats(0, 100), st.floats(0.01, 50)),
                min_size=1, max_size=60), st.integers(1, 130))
def test_inflight_imbalance_does_not_depend_on_the_chunk_size(reqs, chunk):
    b = np.array([r[0] for r in reqs])
    start = np.array([r[1] for r in reqs])
    end = start + np.array([r[2] for r in reqs])
    whole = inflight_imbalance(b, start, end, 8, chunk=len(reqs) * 2)
    assert inflight_imbalance(b, start, end, 8, chunk=chunk) == pytest.approx(whole, rel=1e-12)


def test_inflight_imbalance_memory_is_bounded_for_large_fleets():
    # 1024 backends and 8000 requests (16000 events): in one chunk that would be
    # 16000 x 1024 cells, 4 bytes each or more (> 60 MB); the default chunk keeps it
    # near 2**22 cells (16 MB). Requests k and k+1024 overlap on backend k % 1024 only.
    import tracemalloc
    n, reqs = 1024, 8000
    b = np.arange(reqs) % n
    start = np.arange(reqs, dtype=np.float64)
    end = start + 1500.0
    tracemalloc.start()
    try:
        x = inflight_imbalance(b, start, end, n)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20
    assert x == pytest.approx(inflight_imbalance(b, start, end, n, chunk=reqs * 2), rel=1e-12)


def test_no_slo_means_no_goodput():
    v = unit_metrics(example()).values
    assert math.isnan(v["request_goodput"]) and math.isnan(v["slo_attainment"])


def test_slo_on_e2el_only():
    # E2ELs 1500, 200, 2300 ms: two meet 2000 ms
    v = unit_metrics(example(), {"e2el_ms": 2000}).values
    assert v["request_goodput"] == pytest.approx(2 / 5)


def test_slo_boundary_is_inclusive():
    # vLLM counts a request good when slo >= metric: TTFT exactly 200 ms meets 200 ms
    v = unit_metrics(example(), {"ttft_ms": 200}).values
    assert v["request_goodput"] == pytest.approx(1 / 5)


def test_no_ok_request_gives_nan_latencies_and_zero_throughput():
    recs = [r for r in example() if r.status != "ok"]
    v = unit_metrics(recs, SLO).values
    for k in ("mean_ttft_ms", "p99_tpot_ms", "median_itl_ms", "std_e2el_ms"):
        assert math.isnan(v[k]), k
    assert v["request_throughput"] == 0
    assert v["request_goodput"] == 0
    assert v["completed"] == 0 and v["failed"] == 4


def test_empty_unit():
    v = unit_metrics([]).values
    assert v["num_requests"] == 0
    assert math.isnan(v["duration"]) and math.isnan(v["request_throughput"])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unknown SLO key 'latency'.*ttft_ms"):
        parse_slo({"latency": 3})
    with pytest.raises(ValueError, match="positive"):
        parse_slo({"ttft_ms": -1})
    assert parse_slo({"ttft": 5, "tpot_ms": None}) == {"ttft": 5.0}
    bad = example()
    bad[0].status = "lost"
    with pytest.raises(ValueError, match="unknown record status 'lost'"):
        unit_metrics(bad)
    bad = example()
    bad[0].first_token_s = NAN
    with pytest.raises(ValueError, match=r"request ids \[1\]"):
        unit_metrics(bad)
    with pytest.raises(ValueError, match="backend index 1 but the fleet has 1"):
        unit_metrics(example(), backend_names=["only"])


def test_peak_concurrency_half_open_intervals():
    # [0,1) and [1,2) touch but never overlap; [0,1] and [0.5,2] do
    assert peak_concurrency(np.array([0.0, 1.0]), np.array([1.0, 2.0])) == 1
    assert peak_concurrency(np.array([0.0, 0.5]), np.array([1.0, 2.0])) == 2
    assert peak_concurrency(np.array([0.0, 0.0, 0.0]), np.array([3.0, 2.0, 1.0])) == 3
    times, level = inflight_series(np.array([0.0, 0.5]), np.array([1.0, 2.0]))
    assert times.tolist() == [0.0, 0.5, 1.0, 2.0]
    assert level.tolist() == [1, 2, 1, 0]


def test_file_metrics_streams_itl_runs_to_the_same_values(tmp_path):
    """A record file's ITL runs are read row group by row group, not whole: the
    summary equals the one of the whole table, and the runs are not all read at once."""
    import pyarrow.parquet as pq

    from results import metrics as m
    from results.records import RecordWriter, read_records

    rng = np.random.default_rng(5)
    recs = []
    for i in range(300):
        status = "ok" if i % 7 else "timeout"
        k = int(rng.integers(0, 6))
        itl = (rng.uniform(0.01, 0.1, k).tolist(), rng.uniform(-1e-3, 1e-3, k).tolist(),
               rng.integers(1, 40, k).tolist())
        recs.append(rec(i, status, i % 3, i * 0.1, i * 0.1, i * 0.1 + 0.2, i * 0.1 + 3.0,
                        i * 0.1 + 3.1, 40 if status == "ok" else 0, 100, itl=itl))
    path = tmp_path / "records.parquet"
    with RecordWriter(path, batch_rows=32) as w:  # ten row groups
        for r in recs:
            w.write(r)
    assert pq.ParquetFile(path).num_row_groups > 5
    whole = unit_metrics(read_records(path), SLO, backend_names=["a", "b", "c"])
    chunks = []
    streamed_runs = m.file_itl_runs(path)

    def spy():
        for part in streamed_runs():
            chunks.append(len(part[0]))
            yield part
    seen = unit_metrics(pq.read_table(path, columns=[c for c in read_records(path).column_names
                                                     if not c.startswith("itl_")]),
                        SLO, backend_names=["a", "b", "c"], itl_runs=spy)
    via_file = m.file_metrics(path, SLO, backend_names=["a", "b", "c"])
    for got in (seen, via_file):
        for key, want in whole.values.items():
            assert got.values[key] == want or (math.isnan(want) and math.isnan(got.values[key])), key
    ok_runs = sum(len(r.itl_count) for r in recs if r.status == "ok")
    assert sum(chunks) % ok_runs == 0 and max(chunks) < ok_runs  # whole passes, in parts
    assert whole.values["mean_itl_ms"] > 0


def test_record_writer_ends_a_batch_at_its_itl_run_budget(tmp_path):
    """Records with many ITL runs flush before ``batch_rows``: the buffer is bounded by
    what it holds, not by how many records (a loaded simulation's records carry ~200
    runs each), and every record still arrives, in order."""
    import pyarrow.parquet as pq

    from results.records import RecordWriter, read_records

    runs = [(0.01 * (j + 1), 0.0, 1) for j in range(10)]
    itl = tuple(list(x) for x in zip(*runs))
    recs = [rec(i, "ok", 0, i * 0.1, i * 0.1, i * 0.1 + 0.2, i * 0.1 + 3.0, i * 0.1 + 3.1, 10, 100, itl=itl)
            for i in range(25)]
    path = tmp_path / "records.parquet"
    with RecordWriter(path, batch_rows=1000, batch_itl_runs=30) as w:  # 3 records of 10 runs a batch
        for r in recs:
            w.write(r)
    f = pq.ParquetFile(path)
    assert [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)] == [3] * 8 + [1]
    table = read_records(path)
    assert table.column("request_id").to_pylist() == list(range(25))
    assert table.column("itl_start").to_pylist()[7] == itl[0]
    with pytest.raises(ValueError, match="batch_itl_runs"):
        RecordWriter(path, batch_itl_runs=0)
