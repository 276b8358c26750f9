"""Reports of full-size runs: many strategies x backends must not break the charts."""
from __future__ import annotations

from results.report import INFLIGHT_POINTS, build_report


def test_report_of_many_strategies_builds_with_bounded_chart_data(make_run):
    # 8 strategies x 3 backends x 300 bins used to exceed altair's 5,000-row guard
    # (a real 6-strategy, 8-backend burst run crashed the report).
    strategies = tuple(f"s{i}" for i in range(8))
    run = make_run("many", strategies=strategies, seeds=(0,), rates=(4.0,), n=60)
    report = build_report(run, static=False, progress=False)
    assert report.html_path.exists()
    spec = report.charts["inflight"]
    rows = sum(len(values) for values in spec.get("datasets", {}).values())
    assert 0 < rows <= INFLIGHT_POINTS
