"""Every shipped scenario runs end to end (shrunk to a CI-sized number of requests)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scenarios import shipped_scenarios
from sim.cli import main

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "wildchat" / "wildchat_sample.parquet"


@pytest.mark.slow
@pytest.mark.parametrize("name", shipped_scenarios())
def test_shipped_scenario_runs(name, tmp_path, capsys):
    args = [name, "--out", str(tmp_path / "run"), "--quiet", "--workers", "1", "--seeds", "0",
            "--set", "num_requests=60"]
    if name == "wildchat-replay":
        # The hub is unreachable here: the same scenario on a local file in WildChat's schema.
        args += ["--set", f'workload.path="{FIXTURE}"', "--set", "workload.languages=[]"]
    assert main(args) == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    units = len(manifest["points"]) * len(manifest["strategies"])
    assert len(summary["units"]) == units
    assert all(u["num_requests"] == 60 for u in summary["units"])


def test_a_missing_dataset_fails_before_a_run_directory_exists(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "run"
    assert main(["wildchat-replay", "--out", str(out), "--quiet", "--set",
                 'workload.path="/nonexistent/wildchat"']) == 2
    assert "wildchat" in capsys.readouterr().err.lower()
    assert not out.exists()
