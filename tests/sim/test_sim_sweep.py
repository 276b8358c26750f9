"""Sweeps and the ``python -m sim`` command: run directories, failures, resume, errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from results.counters import read_counters
from results.records import read_records
from routing.base import Strategy, register
from sim.cli import main

REPO = Path(__file__).resolve().parents[2]

SCENARIO = """\
name = "tiny"
seeds = [0, 1]
num_requests = {n}
[workload]
source = "synthetic"
[workload.synthetic]
input = {{ dist = "uniform", min = 100, max = 900 }}
output = {{ dist = "uniform", min = 10, max = 200 }}
prefix_groups = 4
prefix_len = 256
num_requests = 400
[arrivals]
pattern = "poisson"
rate = {rates}
[[cluster.groups]]
name = "gpu"
count = 3
profile = "h100-llama2-70b-tp4"
[router]
strategies = {strategies}
[slo]
ttft_ms = 2000
tpot_ms = 100
"""


def write_scenario(tmp_path: Path, *, n: int = 150, rates: str = "[4.0, 8.0]",
                   strategies: str = '["round_robin", "least_load"]') -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(SCENARIO.format(n=n, rates=rates, strategies=strategies))
    return path


@register
class Explode(Strategy):
    """A strategy that fails at its first decision (to test failure isolation)."""

    name = "test_explode"

    def choose(self, request, backends):
        raise RuntimeError("boom: this strategy always fails")


def test_a_sweep_writes_every_unit_and_a_summary(tmp_path, capsys):
    scenario = write_scenario(tmp_path)
    out = tmp_path / "run"
    assert main([str(scenario), "--out", str(out), "--workers", "2", "--quiet"]) == 0
    files = sorted(out.glob("records/point=*/strategy=*/seed=*.parquet"))
    assert len(files) == 2 * 2 * 2  # points x strategies x seeds
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "sim" and len(manifest["points"]) == 2
    assert [b["name"] for b in manifest["points"][0]["backends"]] == ["gpu-0", "gpu-1", "gpu-2"]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["units"]) == 8
    hits = 0.0
    for f in files:
        table = read_records(f)
        assert table.num_rows == 150
        assert set(table.column("status").to_pylist()) <= {"ok", "unfinished"}
        # The engines' counters over the unit travel in the file: each backend looked up the
        # prompts of the requests it admitted (here every request) and found what they were served.
        counters = read_counters(f)
        assert counters is not None and len(counters.backends) == 3
        df = table.to_pandas()
        for b, c in enumerate(counters.backends):
            mine = df[df["backend"] == b]
            assert c.prefix_queries == mine["input_len"].sum()
            assert c.prefix_hits == mine["cached_tokens"].sum()
            hits += c.prefix_hits
    assert hits > 0  # the shared prompts were found cached
    printed = capsys.readouterr().out
    assert "round_robin" in printed and "least_load" in printed and "goodput" in printed


def test_a_failing_strategy_is_reported_and_the_others_finish(tmp_path, capsys):
    scenario = write_scenario(tmp_path, rates="4.0", strategies='["round_robin", "test_explode"]')
    out = tmp_path / "run"
    assert main([str(scenario), "--out", str(out), "--workers", "1", "--quiet"]) == 1
    done = sorted(p.parent.name for p in out.glob("records/point=*/strategy=*/seed=*.parquet"))
    assert done == ["strategy=round_robin", "strategy=round_robin"]
    failures = list((out / "failures").glob("*.txt"))
    assert len(failures) == 2 and all("boom" in f.read_text() for f in failures)
    assert "--resume" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_a_killed_sweep_redoes_nothing_finished(tmp_path):
    scenario = write_scenario(tmp_path, n=1500, rates="[6.0, 9.0]",
                              strategies='["round_robin", "least_load", "power_of_two"]')
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "sim", str(scenario), "--out", str(out), "--workers", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pattern = "records/point=*/strategy=*/seed=*.parquet"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(out.glob(pattern))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # no clean-up at all: a crash
    proc.wait(timeout=30)
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob(pattern)}
    assert 2 <= len(before) < 12, "the sweep must be killed part-way"
    assert main([str(scenario), "--out", str(out), "--resume", "--workers", "1", "--quiet"]) == 0
    after = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob(pattern)}
    assert len(after) == 12
    for p, stamp in before.items():
        assert after[p] == stamp, f"{p} was rewritten"
    assert len(json.loads((out / "summary.json").read_text())["units"]) == 12


def test_resume_refuses_a_changed_scenario(tmp_path, capsys):
    scenario = write_scenario(tmp_path, rates="4.0")
    out = tmp_path / "run"
    assert main([str(scenario), "--out", str(out), "--workers", "1", "--quiet"]) == 0
    assert main([str(scenario), "--out", str(out), "--resume", "--quiet",
                 "--set", "arrivals.rate=5.0"]) == 2
    assert "differs" in capsys.readouterr().err
    # ... and an unchanged resume has nothing left to do
    assert main([str(scenario), "--out", str(out), "--resume", "--quiet"]) == 0


@pytest.mark.parametrize("override, message", [
    ("cluster.groups.gpu.profile=\"h200-imaginary\"", "unknown latency profile 'h200-imaginary'"),
    ("arrivals.rat=3", "arrivals.rat"),
    ("router.strategies=[\"least_lod\"]", "least_lod"),
])
def test_bad_input_fails_before_anything_runs(tmp_path, capsys, override, message):
    scenario = write_scenario(tmp_path, rates="4.0")
    out = tmp_path / "run"
    assert main([str(scenario), "--out", str(out), "--quiet", "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not (out / "records").exists()


def test_list_profiles_shows_the_shipped_profiles(capsys):
    assert main(["--list-profiles"]) == 0
    text = capsys.readouterr().out
    assert "h100-llama2-70b-tp4" in text and "cpu-tiny" in text


@pytest.mark.slow
def test_ray_runs_the_same_units(tmp_path):
    pytest.importorskip("ray")
    from results.rundir import RunDir
    from scenarios import expand_grid, load_scenario
    from sim.sweep import build_manifest, run_sweep, scenario_digest

    sc = load_scenario(write_scenario(tmp_path, rates="4.0"))
    points = expand_grid(sc)
    digest = scenario_digest(sc)
    run = RunDir.create(tmp_path / "run", build_manifest(sc, points, "ray-test", digest))
    result = run_sweep(run, points, sc.seeds, sc.router.strategies, ray_address="local")
    assert not result.failures and len(run.record_files()) == 4
    local = RunDir.create(tmp_path / "local", build_manifest(sc, points, "ray-test", digest))
    run_sweep(local, points, sc.seeds, sc.router.strategies, workers=1)
    import pandas as pd

    for a, b in zip(run.record_files(), local.record_files()):
        # (pandas, not Table.equals: NaN must equal NaN)
        pd.testing.assert_frame_equal(read_records(a).to_pandas(), read_records(b).to_pandas())
