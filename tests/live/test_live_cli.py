"""``python -m live SCENARIO``: a small scenario on emulators, read back by ``python -m results``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from results.cli import main as results_main
from results.counters import read_counters
from results.records import read_records
from results.rundir import RunDir, load_run

pytestmark = pytest.mark.timeout(180)

SCENARIO = """\
name = "live-tiny"
seeds = [0]
num_requests = 12

[workload]
source = "synthetic"
[workload.synthetic]
input = {dist = "uniform", min = 32, max = 200}
output = {dist = "uniform", min = 4, max = 16}
prefix_groups = 2
prefix_len = 64
num_requests = 100

[arrivals]
pattern = "poisson"
rate = 20.0

[[cluster.groups]]
name = "cpu"
count = 2
profile = "cpu-tiny"

[router]
strategies = ["round_robin", "least_load"]
scrape_interval_s = 0.1

[slo]
ttft_ms = 2000
"""


def live(args, tmp_path, timeout=150):
    env = {**os.environ, "VLLM_LAB_CACHE": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, "-m", "live", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=tmp_path)


@pytest.fixture
def scenario_file(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(SCENARIO)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("via_gateway", [False, True])
def test_small_live_run_is_a_run_directory_results_reads(tmp_path, scenario_file, via_gateway):
    out = tmp_path / "run"
    args = [str(scenario_file), "--emulate", "2", "--out", str(out), "--quiet"]
    if via_gateway:
        args.append("--gateway")
    proc = live(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "live" and manifest["scenario"] == "live-tiny"
    for key in ("experiment_id", "scenario_path", "created", "seeds", "strategies", "points",
                "slo", "duration_s", "num_requests"):
        assert key in manifest, key
    assert [s["label"] for s in manifest["strategies"]] == ["round_robin", "least_load"]
    assert [b["profile"] for b in manifest["points"][0]["backends"]] == ["cpu-tiny", "cpu-tiny"]
    run = RunDir.open(out)
    assert len(run.record_files()) == 2
    df = load_run(out)
    assert len(df) == 2 * 12 and set(df["status"]) == {"ok"}
    assert set(df["backend"]) == {0, 1}
    assert (df["experiment_id"] == manifest["experiment_id"]).all()
    # The backends' /metrics counters, scraped before and after each unit, travel with its
    # records: every prompt was looked up once, by the backend it was sent to.
    for f in run.record_files():
        counters = read_counters(f)
        assert counters is not None and "scraped" in counters.source
        recs = read_records(f).to_pandas()
        for b, c in enumerate(counters.backends):
            assert c.prefix_queries == recs.loc[recs["backend"] == b, "input_len"].sum()
            assert 0 <= c.prefix_hits <= c.prefix_queries
    assert results_main(["report", str(out), "--table-only", "--quiet"]) == 0
    assert (out / "summary.json").exists()

    again = live([str(scenario_file), "--emulate", "2", "--out", str(out), "--resume", "--quiet"],
                 tmp_path)
    assert again.returncode == 0, again.stderr
    assert "ok in" not in again.stdout  # nothing was rerun


@pytest.mark.slow
def test_user_errors_are_named(tmp_path, scenario_file):
    both = live([str(scenario_file)], tmp_path)
    assert both.returncode == 2 and "--backends" in both.stderr
    mismatch = live([str(scenario_file), "--backends", "http://127.0.0.1:9", "--quiet",
                     "--out", str(tmp_path / "r")], tmp_path)
    assert mismatch.returncode == 2 and "2 backends" in mismatch.stderr
    validate = live(["--validate", "runs/x", "--emulate", "2"], tmp_path)
    assert validate.returncode == 2 and "runs/x" in validate.stderr
    bad_key = live([str(scenario_file), "--emulate", "2", "--set", "arrivals.speed=3"], tmp_path)
    assert bad_key.returncode == 2 and "speed" in bad_key.stderr


def test_help_explains_the_options(tmp_path):
    text = live(["--help"], tmp_path).stdout
    for flag in ("--backends", "--emulate", "--gateway", "--out", "--seeds", "--max-duration",
                 "--max-requests", "--resume", "--validate"):
        assert flag in text
