"""``benchmarks/decode_batch_knee.py``: the together-window, the per-sequence cost, and a dead
server recorded with the exit status."""
import json

import pytest
from benchmark_scripts import load_benchmark

from sim.latency import EngineDefaults, LatencyModel, LatencyProfile


@pytest.fixture(scope="module")
def knee():
    return load_benchmark("decode_batch_knee")


def test_only_gaps_while_every_request_decodes_count(knee):
    # Request a streams 0..4 s; request b starts late (first token at 2) and ends at 5.
    gaps = knee.together_gaps([[0.0, 1.0, 2.0, 3.0, 4.0], [2.0, 2.5, 3.5, 5.0]])
    # The window is [2, 4]: a's 2->3 and 3->4, b's 2->2.5 and 2.5->3.5; b's 3.5->5 ends outside.
    assert sorted(gaps) == [0.5, 1.0, 1.0, 1.0]


def test_summary_by_hand_with_a_floored_profile(knee):
    rows = [{"n": 1, "step_ms": 46.0}, {"n": 1, "step_ms": 48.0}, {"n": 3, "step_ms": 47.0},
            {"n": 5, "step_ms": 51.0}]
    model = LatencyModel(step_s=0.040, token_s=0.0005, seq_s=0.0015, matmul_floor_s=0.006)
    profile = LatencyProfile("p", model, EngineDefaults(100, 32, 64, 512))
    out = knee.summarise(rows, profile, prompt_len=32, output_len=64)
    assert [r["step_ms"] for r in out] == [47.0, 47.0, 51.0]
    assert "per_added_seq_ms" not in out[0]
    assert out[1]["per_added_seq_ms"] == 0.0 and out[2]["per_added_seq_ms"] == 2.0
    # 40 ms + max(6 ms, 2 ms per sequence): flat to 3 sequences, then 2 ms each.
    assert [r["profile_step_ms"] for r in out] == [46.0, 46.0, 50.0]


def test_a_dead_server_ends_the_run_with_its_error(knee, tmp_path, capsys):
    out = tmp_path / "k.json"
    assert knee.main(["--url", "http://127.0.0.1:9", "--batches", "1", "--json", str(out)]) == 1
    rec = json.loads(out.read_text())
    assert rec["rows"] == [] and "failed" in rec["error"]
    assert "error:" in capsys.readouterr().err
