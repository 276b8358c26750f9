"""Run health: incomplete units are warned about and not ranked; impossible interval
ends are cut; grid points are ordered numerically. Hand-made unit tables."""
from __future__ import annotations

import math

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from results.health import INCOMPLETE_SHARE, assess
from results.metrics import METRICS
from results.rundir import Unit
from results.stats import clip_interval, confidence_interval
from results.summary import build_summary, format_table, format_value, point_order
from results.metrics import UnitMetrics

MANIFEST = {
    "mode": "live", "live": {"max_duration_s": 30.0},
    "points": [{"point_id": "p12", "label": "", "axes": {"arrivals.rate": 12.0}},
               {"point_id": "p4", "label": "", "axes": {"arrivals.rate": 4.0}}],
    "strategies": [{"label": "a"}, {"label": "b"}],
}


def _metrics(goodput: float, n: int, unfinished: int) -> UnitMetrics:
    values = {m: math.nan for m in METRICS}
    values.update(request_goodput=goodput, request_throughput=goodput, num_requests=n,
                  num_unfinished=unfinished, failed=unfinished, completed=n - unfinished)
    return UnitMetrics(values, [])


def _results(unfinished_b_p4: int):
    out = []
    for point in ("p12", "p4"):
        for strategy, base in (("a", 5.0), ("b", 9.0)):
            for seed in (0, 1):
                late = unfinished_b_p4 if (point, strategy) == ("p4", "b") and seed == 1 else 0
                out.append((Unit(point, strategy, seed), _metrics(base + seed, 200, late)))
    return out


def test_a_unit_with_many_unfinished_requests_is_warned_about_and_not_ranked():
    summary = build_summary(MANIFEST, _results(unfinished_b_p4=136))  # 68% unfinished
    ranking = summary.ranking
    # at p4 only 'a' is ranked (b is incomplete); at p12 'b' (higher goodput) ranks first
    assert ranking[ranking.point_id == "p4"]["strategy"].tolist() == ["a"]
    assert ranking[ranking.point_id == "p12"]["strategy"].tolist() == ["b", "a"]
    assert summary.health.unranked() == {("p4", "b")}
    doc = summary.to_json()["health"]
    assert doc["not_ranked"] == [{"point_id": "p4", "strategy": "b"}]
    assert doc["incomplete_units"][0]["unfinished_share"] == pytest.approx(0.68)
    table = format_table(summary)
    assert table.startswith("WARNING: 1 unit(s)") and "68% of 200" in table
    assert "--max-duration" in table and "NOT ranked" in table
    row = next(ln for ln in table.splitlines() if ln.startswith("arrivals.rate=4") and " b " in ln)
    assert "n/r!" in row


def test_a_small_unfinished_share_is_complete():
    share_ok = int(200 * INCOMPLETE_SHARE)  # exactly at the threshold: still complete
    summary = build_summary(MANIFEST, _results(unfinished_b_p4=share_ok))
    assert summary.health.ok and len(summary.ranking) == 4
    assert "WARNING" not in format_table(summary)


def test_a_point_where_nothing_can_be_ranked_keeps_its_objective():
    results = [(Unit("p4", s, 0), _metrics(5.0, 100, 90)) for s in ("a", "b")]
    summary = build_summary(MANIFEST, results, "request_goodput")
    assert summary.ranking.empty and summary.objective == "request_goodput"
    assert "n/r!" in format_table(summary)


def test_sim_advice_names_drain_s():
    units = pd.DataFrame([{"point_id": "x", "strategy": "a", "seed": 0, "num_requests": 10,
                           "num_unfinished": 5}])
    health = assess(units, {"mode": "sim"})
    assert "drain_s" in health.advice() and not health.ok


def test_intervals_are_cut_at_impossible_values():
    # two seeds, goodput 0.5 and 3.5: t(1) = 12.706, s = 2.1213 -> half-width 19.06
    ci = confidence_interval([0.5, 3.5])
    assert ci["ci_low"] == pytest.approx(2.0 - 19.0598, rel=1e-4)
    cut = clip_interval(ci, "request_goodput")
    assert cut["ci_low"] == 0.0 and cut["ci_high"] == pytest.approx(21.0598, rel=1e-4)
    assert cut["ci_clipped"] is True
    frac = clip_interval(confidence_interval([0.9, 1.0]), "slo_attainment")
    assert frac["ci_high"] == 1.0 and frac["ci_clipped"]
    inside = clip_interval(confidence_interval([10.0, 10.2, 10.1]), "median_ttft_ms")
    assert not inside["ci_clipped"]
    assert format_value(2.0, 0.0, 21.06) == "2.00 [0.00, 21.06]"
    assert format_value(10.0, 9.0, 11.0) == "10.0 ±1.0"


@given(st.lists(st.floats(0, 1e4), min_size=2, max_size=6))
def test_a_cut_interval_holds_the_mean_and_only_possible_values(values):
    for metric in ("request_goodput", "slo_attainment", "p99_ttft_ms"):
        xs = [min(v, 1.0) if metric == "slo_attainment" else v for v in values]
        ci = clip_interval(confidence_interval(xs), metric)
        if math.isfinite(ci["ci_low"]):
            assert 0.0 <= ci["ci_low"] <= ci["mean"] * (1 + 1e-12) + 1e-12
            assert ci["ci_high"] >= ci["mean"] * (1 - 1e-12) - 1e-12
            if metric == "slo_attainment":
                assert ci["ci_high"] <= 1.0


def test_grid_points_are_ordered_numerically():
    manifest = {"points": [{"point_id": i, "axes": {"arrivals.rate": r, "arrivals.pattern": p}}
                           for i, r, p in (("a", 12.0, "poisson"), ("b", 4.0, "poisson"),
                                           ("c", 16.0, "gamma"), ("d", 8, "poisson"))]}
    assert point_order(manifest) == ["b", "d", "a", "c"]
    summary = build_summary({**MANIFEST, "points": manifest["points"]},
                            [(Unit(p, "a", 0), _metrics(1.0, 10, 0)) for p in "abcd"])
    assert list(dict.fromkeys(summary.units["point_id"])) == ["b", "d", "a", "c"]
