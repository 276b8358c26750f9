"""``benchmarks/server_speed_drift.py``: a server that cannot start or dies is recorded, the
others are kept, and the spreads are computed over the instances that gave rounds."""
import json

import pytest
from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def drift():
    return load_benchmark("server_speed_drift")


def test_a_server_that_cannot_start_is_recorded_and_the_run_goes_on(drift, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLLM_PYTHON", str(tmp_path / "no-such-python"))
    out = tmp_path / "drift.json"
    assert drift.main(["--shapes", "tiny", "--restarts", "2", "--rounds", "2", "--json", str(out)]) == 1
    rec = json.loads(out.read_text())
    assert [i["restart"] for i in rec["instances"]] == [0, 1]  # both tried, neither dropped
    assert all("does not exist" in i["error"] and i["rounds"] == [] for i in rec["instances"])
    assert rec["summary"] == []
    assert capsys.readouterr().out.count("FAILED after 0 round(s)") == 2


def test_spreads_by_hand_leave_out_an_instance_with_one_round(drift):
    rows = drift.summarise([
        {"shape": "mid", "rounds": [{"tpot_ms": 10.0, "ttft_ms": 100.0}, {"tpot_ms": 12.0, "ttft_ms": 110.0}]},
        {"shape": "mid", "rounds": [{"tpot_ms": 20.0, "ttft_ms": 200.0}, {"tpot_ms": 20.0, "ttft_ms": 220.0}]},
        {"shape": "mid", "rounds": [{"tpot_ms": 99.0, "ttft_ms": 999.0}], "error": "died"},
    ])
    tpot = next(r for r in rows if r["metric"] == "tpot_ms")
    assert tpot["instance_medians"] == [11.0, 20.0]
    assert tpot["within_instance_spread"] == [0.2, 0.0]
    assert tpot["between_instances_spread"] == pytest.approx(9 / 11, abs=1e-3)
