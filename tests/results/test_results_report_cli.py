"""`python -m results`: report files, summary.json, compare, --help and clear errors."""
from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import vl_convert as vlc

from results.cli import main
from results.records import SCHEMA
from results.report import ChartData, build_report, make_charts
from results.rundir import RunDir, Unit
from results.summary import format_table, summarize_run


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "results", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_help_on_every_command(capsys):
    for args in ([], ["report"], ["compare"]):
        with pytest.raises(SystemExit) as exit_:
            main([*args, "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith("usage: python -m results")
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "--objective" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    assert "--json" in capsys.readouterr().out
    assert run_cli("--help").returncode == 0  # and as a module


@pytest.mark.parametrize("case", ["missing", "not_a_run", "no_records", "wrong_version", "not_parquet"])
def test_clear_errors_without_traceback(tmp_path, case):
    path = tmp_path / "run"
    if case == "not_a_run":
        path.mkdir()
    elif case != "missing":
        run = RunDir.create(path, {"experiment_id": "x", "mode": "sim"})
        if case == "wrong_version":
            bad = SCHEMA.empty_table().replace_schema_metadata(
                {b"vllm_routing_lab.records.schema_version": b"99"})
            f = run.unit_path(Unit("p0", "rr", 0))
            f.parent.mkdir(parents=True)
            pq.write_table(bad, f)
        elif case == "not_parquet":
            f = path / "records" / "point=p0" / "strategy=rr" / "seed=0.parquet"
            f.parent.mkdir(parents=True)
            f.write_text("not parquet")
    res = run_cli(path)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    expected = {"missing": "does not exist", "not_a_run": "not a run directory",
                "no_records": "no record files", "wrong_version": "version 99",
                "not_parquet": "not a readable Parquet"}[case]
    assert expected in res.stderr


def test_unknown_metric_is_named(make_run, capsys):
    a = make_run("a", seeds=(0,), rates=(2.0,))
    assert main(["compare", str(a), str(a), "--metrics", "ttft_p50", "--quiet"]) == 2
    assert "unknown metric 'ttft_p50'" in capsys.readouterr().err
    assert main([str(a), "--objective", "duration", "--quiet", "--table-only"]) == 2


@pytest.mark.slow
def test_report_writes_html_charts_and_summary(make_run, capsys):
    path = make_run("r")
    assert main([str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "TTFT p50 ms" in out and "±" in out and "report:" in out
    html = (path / "report.html").read_text()
    # self-contained: the Vega bundle is inline and nothing is fetched from a CDN
    assert "vegaEmbed" in html and "<script src=" not in html and "cdn.jsdelivr" not in html
    for section in ("Ranking per grid point", "Requests by status", "Load balance",
                    "Environment and versions", "Scenario", 'name = &#34;synthetic&#34;'):
        assert section in html
    charts = sorted(p.name for p in (path / "charts").iterdir())
    assert {"load_ttft_p50.png", "load_goodput.svg", "cdf_e2el.png", "inflight.svg",
            "slo_attainment.png"} <= set(charts)
    summary = json.loads((path / "summary.json").read_text())
    assert len(summary["units"]) == 2 * 3 * 3
    assert summary["objective"] == "request_goodput"
    # NaN is written as null, never as the invalid JSON token NaN
    assert "NaN" not in (path / "summary.json").read_text()


def test_single_point_single_seed_and_a_strategy_that_always_fails(make_run):
    path = make_run("one", rates=(4.0,), seeds=(3,), strategies=("round_robin", "always_fail"))
    report = build_report(path, static=False, progress=False)
    assert "±" not in format_table(report.summary)
    assert "one seed" in format_table(report.summary)
    units = report.summary.units.set_index("strategy")
    assert units.loc["always_fail", "completed"] == 0
    assert units.loc["always_fail", "num_error"] == units.loc["always_fail", "num_requests"]
    # every chart compiles and renders to SVG outside the browser too
    for name, spec in report.charts.items():
        assert "<svg" in vlc.vegalite_to_svg(spec), name
    cdf = report.charts["cdf_ttft"]
    strategies_drawn = {row["strategy"] for row in _values(cdf)}
    assert strategies_drawn == {"round_robin"}
    assert cdf["encoding"]["color"]["scale"]["domain"] == ["round_robin", "always_fail"]


def test_no_slo_ranks_by_throughput_and_omits_attainment(make_run):
    path = make_run("noslo", slo={}, seeds=(0, 1), rates=(2.0,))
    summary = summarize_run(path, progress=False)
    assert summary.objective == "request_throughput"
    data = ChartData(None)
    charts = make_charts(summary, data)
    assert "slo_attainment" not in charts
    assert "no SLO" in json.dumps(charts["load_goodput"])


def test_validation_hook(make_run):
    path = make_run("val", seeds=(0,), rates=(2.0,))
    (path / "validation").mkdir()
    (path / "validation" / "sim_vs_live.json").write_text(json.dumps({"tau": 0.8, "top1": True}))
    (path / "validation" / "notes.html").write_text("<p id=note-from-validation>checked</p>")
    html = build_report(path, static=False, progress=False).html_path.read_text()
    assert "Validation: sim vs live" in html and "<td class=l>tau</td>" in html
    assert "<p id=note-from-validation>checked</p>" in html


def test_compare_same_run_agrees_perfectly(make_run, tmp_path, capsys):
    a = make_run("a", seeds=(0, 1), rates=(2.0, 6.0))
    b = make_run("b", seeds=(0, 1), rates=(2.0, 6.0))
    out_json = tmp_path / "cmp.json"
    assert main(["compare", str(a), str(b), "--quiet", "--json", str(out_json)]) == 0
    text = capsys.readouterr().out
    assert "rank agreement" in text and "+1.000" in text
    doc = json.loads(out_json.read_text())
    assert all(r["tau"] == 1.0 and r["top1"] for r in doc["agreement"])
    assert all(r["rel_diff"] in (0.0, None) for r in doc["metrics"])
    assert not (a / "summary.json").exists()  # compare does not write into the runs


def test_compare_detects_a_different_ranking(make_run, capsys):
    a = make_run("a", seeds=(0,), rates=(2.0,), strategies=("round_robin", "random", "least_load"))
    b = make_run("b", seeds=(0,), rates=(2.0,), strategies=("round_robin", "random", "least_load"))
    # make B's best strategy fail every request: its ranking changes
    best = summarize_run(a, progress=False, write=False).ranking.iloc[0]["strategy"]
    f = RunDir(b).record_files()
    target = next(p for p in f if f"strategy={best}" in str(p))
    table = pq.read_table(target)
    table = table.set_column(table.schema.get_field_index("status"), "status",
                             pa.array(["error"] * table.num_rows))
    pq.write_table(table, target)
    assert main(["compare", str(a), str(b), "--quiet"]) == 0
    assert "  no  " in capsys.readouterr().out  # top-1 disagrees


def _values(spec):
    if "data" in spec and "values" in spec["data"]:
        return spec["data"]["values"]
    name = spec["data"]["name"]
    return spec["datasets"][name]


def test_two_grid_axes_make_panels_and_pick_the_highest_rate(make_run):
    path = make_run("two", rates=(2.0, 6.0), seeds=(0,), strategies=("round_robin", "random"))
    run = RunDir(path)
    points = run.manifest["points"]
    for p, burst in zip(points, (0.5, 2.0)):
        p["axes"]["arrivals.burstiness"] = burst
        p["label"] = p["point_id"]  # no label: the report falls back to the axes
    run.update_manifest(points=points)
    report = build_report(path, static=False, progress=False)
    spec = report.charts["load_ttft_p99"]
    assert spec["facet"]["column"]["field"] == "config"
    assert "<svg" in vlc.vegalite_to_svg(spec)
    html = report.html_path.read_text()
    assert ">rate=6<" not in html and "<h3>arrivals.rate=6.0, arrivals.burstiness=2.0</h3>" in html
    assert "at arrivals.rate=6.0, arrivals.burstiness=2.0" in json.dumps(report.charts["inflight"])
