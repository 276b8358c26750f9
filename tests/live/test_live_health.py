"""A live run cut short by ``--max-duration``: the terminal and the report warn, the cut
units are not ranked, and the report shows the fleet that ran (resized by --emulate)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from results.cli import main as results_main
from test_live_cli import SCENARIO

pytestmark = pytest.mark.timeout(180)


def test_a_run_cut_by_max_duration_is_flagged_not_ranked(tmp_path):
    scenario = tmp_path / "tiny.toml"
    # The file asks for 4 backends; --emulate 2 resizes the fleet. Outputs of 300 tokens
    # cannot finish within the 1.5 s bound.
    scenario.write_text(SCENARIO.replace("count = 2", "count = 4"))
    out = tmp_path / "run"
    env = {**os.environ, "VLLM_LAB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "live", str(scenario), "--emulate", "2", "--max-duration", "1.5",
         "--set", 'workload.synthetic.output={dist="fixed", value=300}', "--set", "num_requests=30",
         "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING: 100% of its requests were still running at --max-duration 1.5 s" in proc.stderr
    assert "NOT ranked" in proc.stdout and "n/r!" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranking"] == []
    assert {x["strategy"] for x in summary["health"]["not_ranked"]} == {"round_robin", "least_load"}

    assert results_main(["report", str(out), "--no-static", "--quiet"]) == 0
    html = (out / "report.html").read_text()
    assert 'class="banner" role="alert"' in html and "Warning: incomplete units" in html
    fleet = html[html.index("Fleet as run"):html.index("The scenario file as given")]
    assert "2 x cpu-tiny (cpu)" in fleet


def test_a_run_that_finishes_has_no_warning(tmp_path):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    out = tmp_path / "run"
    env = {**os.environ, "VLLM_LAB_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "live", str(scenario), "--emulate", "2", "--out", str(out), "--quiet",
         "--set", 'router.strategies=["round_robin"]'],
        capture_output=True, text=True, timeout=150, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stdout + proc.stderr
    assert results_main(["report", str(out), "--no-static", "--quiet"]) == 0
    assert 'class="banner"' not in (out / "report.html").read_text()
