"""Saturation labels, Pareto fronts, the records' session columns and capacity reports."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from results.capacity import CAPACITY_FILE
from results.charts import pareto_front
from results.metrics import METRICS, UnitMetrics, unit_metrics
from results.records import SCHEMA, RequestRecord, read_records, to_table
from results.report import build_report
from results.rundir import RunDir, Unit
from results.saturation import assess_saturation
from results.summary import build_summary, format_table


def fifo(arrivals: np.ndarray, service_s: float, prefill_s: float = 0.01):
    """One server, first come first served, by hand: (first token, finish) per request."""
    first, finish, free = [], [], 0.0
    for a in arrivals:
        start = max(a, free)
        first.append(start + prefill_s)
        free = start + service_s
        finish.append(free)
    return np.array(first), np.array(finish)


def test_a_queue_that_grows_without_bound_is_overloaded_and_a_stable_one_is_not():
    rng = np.random.default_rng(0)
    arrivals = np.cumsum(rng.exponential(0.1, 1200))  # 10 req/s for about 2 minutes
    ok = np.ones(len(arrivals), dtype=bool)
    first, finish = fifo(arrivals, 0.05)  # capacity 20 req/s: stable
    stable = assess_saturation(arrivals, finish, first, ok)
    assert not stable.overloaded
    first, finish = fifo(arrivals, 0.125)  # capacity 8 req/s: the queue grows at ~2 req/s
    over = assess_saturation(arrivals, finish, first, ok)
    assert over.overloaded and over.inflight_slope == pytest.approx(2.0, rel=0.25)
    # The same overload over 20 s is too short to judge (GuideLLM's 30 s minimum).
    short = arrivals[arrivals < 20]
    first, finish = fifo(short, 0.125)
    assert not assess_saturation(short, finish, first, np.ones(len(short), bool)).overloaded


def test_unfinished_requests_count_as_in_flight():
    arrivals = np.linspace(0, 100, 500)
    first, finish = fifo(arrivals, 0.3)
    finish[250:] = np.nan  # the run ended before they did
    first[250:] = np.nan
    ok = np.isfinite(first)
    assert assess_saturation(arrivals, finish, first, ok).inflight_slope > 0


def test_the_pareto_front_keeps_points_no_other_beats_on_both_axes():
    x = np.array([1.0, 2.0, 0.5, 1.5, 0.8, math.nan])
    y = np.array([1.0, 0.5, 2.0, 1.5, 0.8, 3.0])
    assert pareto_front(x, y, True, True).tolist() == [False, True, True, True, False, False]
    # lower x is better (a latency): (0.5, 2.0) beats everything with y <= 2
    assert pareto_front(x, y, False, True).tolist() == [False, False, True, False, False, False]


def _metrics(p99: float, overloaded: float) -> UnitMetrics:
    values = {m: math.nan for m in METRICS}
    values.update(p99_ttft_ms=p99, request_goodput=5.0, num_requests=100, num_unfinished=0,
                  overloaded=overloaded)
    return UnitMetrics(values, [])


def test_overloaded_seeds_are_not_averaged_with_stable_ones():
    manifest = {"points": [{"point_id": "p", "label": "", "axes": {}}],
                "strategies": [{"label": "a"}, {"label": "b"}]}
    results = [(Unit("p", "a", 0), _metrics(100.0, 0.0)), (Unit("p", "a", 1), _metrics(9e4, 1.0)),
               (Unit("p", "b", 0), _metrics(8e4, 1.0)), (Unit("p", "b", 1), _metrics(9e4, 1.0))]
    s = build_summary(manifest, results)
    agg = s.aggregate.set_index(["strategy", "metric"])
    assert agg.loc[("a", "p99_ttft_ms"), "mean"] == 100.0 and agg.loc[("a", "p99_ttft_ms"), "n"] == 1
    assert agg.loc[("b", "p99_ttft_ms"), "mean"] == 8.5e4  # every seed overloaded: all kept
    assert s.overloaded_pairs() == {("p", "a"): (1, 2), ("p", "b"): (2, 2)}
    table = format_table(s)
    assert "OVERLOADED" in table and "p / b (2 of 2 seeds)" in table
    assert s.to_json()["saturation"][0]["overloaded"] == 1


def test_records_carry_ready_and_think_times_and_version_1_files_still_read(tmp_path):
    rec = RequestRecord("e", "p", "s", 0, 1, "c", 1, 0, 2.0, 2.0, 2.5, 3.0, 3.0, 100, 0, 10, 10, 0,
                        "ok", ready_s=1.9, think_s=0.4)
    table = to_table([rec])
    assert table.column("ready_s").to_pylist() == [1.9] and table.column("think_s").to_pylist() == [0.4]
    old_schema = pa.schema([f for f in SCHEMA if f.name not in ("ready_s", "think_s")],
                           metadata={b"vllm_routing_lab.records.schema_version": b"1"})
    old = pa.Table.from_arrays([table.column(f.name) for f in old_schema], schema=old_schema)
    pq.write_table(old, tmp_path / "v1.parquet")
    back = read_records(tmp_path / "v1.parquet")
    assert back.schema.names == SCHEMA.names
    assert back.column("ready_s").to_pylist() == [2.0]  # sent when ready: open-loop
    assert math.isnan(back.column("think_s").to_pylist()[0])
    m = unit_metrics(back)
    assert m.values["num_skipped"] == 0 and m.values["mean_inflight"] == pytest.approx(1 / 1)


def test_a_capacity_only_run_gets_a_report_of_its_own(tmp_path):
    run = RunDir.create(tmp_path / "cap", {"experiment_id": "cap-test", "mode": "sim"},
                        'name = "x"\n')
    doc = {"capacity_version": 1, "target_attainment": 0.9, "rel_tol": 0.05, "seeds": [0, 1],
           "slo": {"ttft_ms": 2000},
           "fleets": [{"fleet_id": "f", "label": "h100.count=4", "knob": "arrivals.rate",
                       "unit": "req/s", "start": 8.0}],
           "results": [{"fleet_id": "f", "strategy": "least_load", "capacity": 12.0, "lo": 12.0,
                        "hi": 12.5, "note": "",
                        "probes": [{"load": 8.0, "attainment": [1.0, 1.0], "mean": 1.0, "passed": True},
                                   {"load": 16.0, "attainment": [0.5, 0.6], "mean": 0.55, "passed": False},
                                   {"load": 12.0, "attainment": [0.95, 0.92], "mean": 0.935, "passed": True},
                                   {"load": 12.5, "attainment": [0.9, 0.8], "mean": 0.85, "passed": False}]}]}
    (run.path / CAPACITY_FILE).write_text(json.dumps(doc))
    report = build_report(run.path, static=False, progress=False)
    assert report.summary is None and list(report.charts) == ["capacity"]
    page = report.html_path.read_text()
    assert "least_load" in page and "[12, 12.5]" in page and "h100.count=4" in page
