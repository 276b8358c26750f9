"""``python -m sim --export-trace``: a run's workload, as the run sent it, in other tools' formats."""
from __future__ import annotations

import json

import numpy as np

from results import load_run
from sim.cli import main

SCENARIO = """\
name = "tiny-sessions"
seeds = [0, 1]
num_requests = 40

[workload]
source = "synthetic"

[workload.synthetic]
turns = { dist = "uniform", min = 1, max = 4 }
input = { dist = "uniform", min = 20, max = 200 }
output = { dist = "fixed", value = 8 }
prefix_groups = 2
prefix_len = 32
num_requests = 200

[arrivals]
pattern = "poisson"
rate = [4.0, 8.0]
sessions = "open"

[[cluster.groups]]
name = "h100"
count = 2
profile = "h100-llama2-70b-tp4"

[router]
strategies = ["round_robin"]
"""


def test_a_runs_export_lists_the_requests_it_sent(tmp_path, capsys):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO)
    run = tmp_path / "run"
    assert main([str(scenario), "--out", str(run), "--workers", "1", "--quiet"]) == 0
    out = tmp_path / "traces"
    assert main([str(run), "--export-trace", str(out), "--quiet"]) == 0
    records = load_run(run)
    files = sorted(out.rglob("*.mooncake.jsonl"))
    assert len(files) == 4 and len(sorted(out.rglob("*.vllm-custom.jsonl"))) == 4
    for f in files:
        point = f.parent.name
        seed = int(f.name.split("=")[1].split(".")[0])
        lines = [json.loads(x) for x in f.read_text().splitlines()]
        recs = records[(records.point_id == point) & (records.seed == seed)].sort_values("request_id")
        assert len(lines) == len(recs) == 40
        assert np.allclose(recs["arrival_s"] * 1000, [x["timestamp"] for x in lines], atol=1e-3)
        assert recs["input_len"].tolist() == [x["input_length"] for x in lines]
        assert recs["requested_output_len"].tolist() == [x["output_length"] for x in lines]
        assert recs["conversation_id"].tolist() == [x["session_id"] for x in lines]
        assert recs["turn"].tolist() == [x["turn"] for x in lines]
    assert main([str(run), "--export-trace", str(out), "--set", "num_requests=3"]) == 2
    assert "do not apply to a run directory" in capsys.readouterr().err
