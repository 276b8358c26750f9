"""Run directory -> training rows: features as the router saw them, targets as vllm bench."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from predictors.cli import main
from predictors.dataset import RunDataError, run_rows
from predictors.features import FEATURES
from results.records import RequestRecord
from results.rundir import RunDir, Unit

MANIFEST = {
    "mode": "sim",
    "points": [
        {"point_id": "p0", "label": "rate=2", "axes": {"rate": 2},
         "backends": [{"name": "a", "group": "a100", "profile": "x"}, {"name": "b", "group": "h100", "profile": "y"}]},
        {"point_id": "p1", "label": "rate=4", "axes": {"rate": 4},
         "backends": [{"name": "a", "group": "h100", "profile": "y"}]},
    ],
    "strategies": ["least_load", "round_robin"],
    "seeds": [0],
}


def record(point: str, strategy: str, i: int, backend: int, status: str = "ok", output_len: int = 11,
           scraped: bool = True) -> RequestRecord:
    arrival = 1.0 + i
    return RequestRecord(
        experiment_id="e", point_id=point, strategy=strategy, seed=0, request_id=i,
        conversation_id=f"c{i}", turn=0, backend=backend, arrival_s=arrival, dispatch_s=arrival + 0.001,
        first_token_s=arrival + 0.1 * (i + 1) if status == "ok" else math.nan,
        last_token_s=arrival + 0.1 * (i + 1) + 0.02 * (output_len - 1) if status == "ok" else math.nan,
        finish_s=arrival + 5, input_len=100 + i, cached_tokens=16, output_len=output_len if status == "ok" else 0,
        requested_output_len=50, num_preemptions=0, status=status, error="" if status == "ok" else "boom",
        router_inflight_requests=i, router_inflight_tokens=1000 * i,
        router_running=float(i) if scraped else math.nan, router_waiting=1.0 if scraped else math.nan,
        router_kv_usage=0.5 if scraped else math.nan, router_scrape_age_s=0.2 if scraped else math.inf,
        router_prefix_hit_tokens=32,
    )


@pytest.fixture()
def run(tmp_path):
    rd = RunDir.create(tmp_path / "run", MANIFEST)
    rd.write_unit(Unit("p0", "least_load", 0), [
        record("p0", "least_load", 0, 0),
        record("p0", "least_load", 1, 1, output_len=1),
        record("p0", "least_load", 2, 1, status="error"),
        record("p0", "least_load", 3, 0, scraped=False),
    ])
    rd.write_unit(Unit("p1", "round_robin", 0), [record("p1", "round_robin", 4, 0)])
    return rd.path


def test_rows_carry_router_features_groups_and_targets(run):
    rows = run_rows(run).sort_values("request_id").reset_index(drop=True)
    assert list(rows.columns[: len(FEATURES)]) == list(FEATURES)
    assert rows["request_id"].tolist() == [0, 1, 3, 4]  # the error row is not a training row
    assert rows["group"].tolist() == ["a100", "h100", "a100", "h100"]  # p1's backend 0 is an h100
    r0 = rows.iloc[0]
    assert r0["inflight_requests"] == 0 and r0["prefix_hit_tokens"] == 32 and r0["input_len"] == 100
    assert r0["ttft_s"] == pytest.approx(0.1)
    assert r0["e2el_s"] == pytest.approx(0.1 + 0.02 * 10)
    assert r0["tpot_s"] == pytest.approx(0.02)
    assert math.isnan(rows.iloc[1]["tpot_s"])  # one output token: no TPOT
    unscraped = rows.iloc[2]
    assert math.isnan(unscraped["running"]) and math.isinf(unscraped["scrape_age_s"])
    assert rows["cached_tokens"].tolist() == [16] * 4 and rows["output_len"].tolist() == [11, 1, 11, 11]


def test_strategy_filter(run):
    rows = run_rows(run, ["round_robin"])
    assert rows["strategy"].unique().tolist() == ["round_robin"] and len(rows) == 1
    with pytest.raises(RunDataError, match="no ok records for strategies power_of_two"):
        run_rows(run, ["power_of_two"])


def test_cli_writes_a_csv_the_trainer_reads(run, tmp_path, capsys):
    out = tmp_path / "rows.csv"
    assert main(["dataset", str(run), "--out", str(out)]) == 0
    assert "4 training rows" in capsys.readouterr().out
    back = pd.read_csv(out)
    assert len(back) == 4 and math.isinf(back["scrape_age_s"].max())
    from predictors import make_model
    from predictors.features import training_rows

    X, y, dropped = training_rows(back, "tpot")
    assert dropped == 1
    assert np.isfinite(make_model("linear", target="tpot").fit(X, y).predict(X)).all()


def test_bad_run_directories_fail_clearly(tmp_path, run):
    with pytest.raises(RunDataError, match="not a run directory"):
        run_rows(tmp_path)
    empty = RunDir.create(tmp_path / "empty", MANIFEST)
    with pytest.raises(RunDataError, match="no record files yet"):
        run_rows(empty.path)
    no_points = RunDir.create(tmp_path / "nopoints", {"strategies": []})
    no_points.write_unit(Unit("p0", "least_load", 0), [record("p0", "least_load", 0, 0)])
    with pytest.raises(RunDataError, match="no `points` list"):
        run_rows(no_points.path)
    stray = RunDir.create(tmp_path / "stray", MANIFEST)
    stray.write_unit(Unit("p1", "least_load", 0), [record("p1", "least_load", 0, 3)])
    with pytest.raises(RunDataError, match="point 'p1' names backend 3"):
        run_rows(stray.path)
    assert main(["dataset", str(tmp_path), "--out", str(tmp_path / "x.csv")]) == 2
