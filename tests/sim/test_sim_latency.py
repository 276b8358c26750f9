"""Latency profiles (format, errors) and the Splitwise-fitted GPU profiles."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sim.latency import (
    EngineDefaults, LatencyModel, LatencyProfile, ProfileError, load_profile, shipped_profiles,
)
from calibrate.splitwise import broken_configurations, build_profiles, design_rows, kv_blocks, main

SPLITWISE = Path(__file__).resolve().parents[1] / "data" / "splitwise_perf_model.csv"  # MIT, see its README
needs_data = pytest.mark.skipif(not SPLITWISE.exists(), reason="tests/data/splitwise_perf_model.csv missing")


def test_profile_round_trips_through_json(tmp_path):
    p = LatencyProfile("x", LatencyModel(0.01, 1e-4, 1e-3, 1e-8, 1e-6), EngineDefaults(123, 16, 64, 512),
                       description="d", provisional=True, jitter_cv=0.05, source={"kind": "test"})
    path = p.save(tmp_path / "x.json")
    q = load_profile(str(path))
    assert q == p


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.update(schema_version=99), "schema version"),
    (lambda d: d["coefficients"].update(warp_s=1.0), "unknown coefficient"),
    (lambda d: d["coefficients"].update(step_s=-1.0), "step_s"),
    (lambda d: d.pop("engine"), "lacks 'engine'"),
    (lambda d: d.update(jitter_cv=2.0), "jitter_cv"),
])
def test_bad_profiles_fail_with_the_reason(tmp_path, mutate, message):
    doc = json.loads(load_profile("h100-llama2-70b-tp4").to_json())
    mutate(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProfileError, match=message):
        load_profile(str(path))


def test_unknown_profile_names_the_shipped_ones():
    with pytest.raises(ProfileError) as exc:
        load_profile("tpu-imaginary")
    for name in shipped_profiles():
        assert name in str(exc.value)


def test_every_shipped_profile_loads_and_says_where_it_came_from():
    names = shipped_profiles()
    assert {"h100-llama2-70b-tp4", "a100-llama2-70b-tp4", "cpu-tiny", "cpu-small"} <= set(names)
    for name in names:
        p = load_profile(name)
        assert p.name == name and p.source, name
        assert p.engine.num_kv_blocks > 0
        # a step always takes time, and a bigger batch never takes less
        small = p.model.step_time(1, 1, 0.0, 100)
        big = p.model.step_time(64, 64, 0.0, 64 * 1000)
        assert 0 < small <= big


@pytest.mark.parametrize("floor", [0.0, 0.05])
def test_decode_run_closed_form_sums_its_steps(floor):
    m = LatencyModel(0.02, 1e-4, 1e-3, 1e-8, 2e-6, matmul_floor_s=floor)
    first, delta, total = m.decode_run(num_seqs=7, context_sum=7000, steps=25)
    steps = [m.step_time(7, 7, 0.0, 7000 + 7 * k) for k in range(25)]
    assert first == pytest.approx(steps[0])
    assert delta == pytest.approx(steps[1] - steps[0])
    assert total == pytest.approx(sum(steps))


#: Matmuls of 2 ms per decoding sequence (0.5 ms per token, 1.5 ms per sequence) over a 5 ms floor.
FLOORED = LatencyModel(step_s=0.03, token_s=5e-4, seq_s=1.5e-3, matmul_floor_s=0.005)


def test_the_matmul_floor_makes_a_few_decodes_cost_what_one_does():
    """vLLM-CPU's decode step is flat up to a knee, then linear (docs/calibration.md)."""
    t = {s: FLOORED.step_time(s, s, 0.0, 0) for s in (1, 2, 3, 4, 8)}
    assert t[1] == pytest.approx(0.035) and t[2] == pytest.approx(0.035)  # under the floor
    assert t[3] == pytest.approx(0.03 + 3 * 0.002)  # past the knee (2.5 sequences)
    assert t[8] - t[4] == pytest.approx(4 * 0.002)
    # The linear model charges every sequence, however few.
    linear = LatencyModel(step_s=0.03, token_s=5e-4, seq_s=1.5e-3)
    assert linear.step_time(2, 2, 0.0, 0) - linear.step_time(1, 1, 0.0, 0) == pytest.approx(0.002)
    # A prefill chunk is far past the knee: the floor leaves it alone, attention included.
    work = FLOORED.prefill_work(512, 0)
    assert FLOORED.step_time(512, 1, work, 0) == pytest.approx(linear.step_time(512, 1, work, 0))


def test_the_matmul_floor_is_written_only_where_set_and_scales_with_the_machine(tmp_path):
    p = LatencyProfile("f", FLOORED, EngineDefaults(100, 32, 64, 512))
    assert json.loads(p.to_json())["coefficients"]["matmul_floor_s"] == 0.005
    assert load_profile(str(p.save(tmp_path / "f.json"))) == p
    plain = LatencyProfile("p", LatencyModel(0.03, 5e-4), EngineDefaults(100, 32, 64, 512))
    assert "matmul_floor_s" not in json.loads(plain.to_json())["coefficients"]
    assert p.slowed(2.0).model.step_time(1, 1, 0.0, 0) == pytest.approx(2 * 0.035)


#: A lone decode 3 ms cheaper than the batches' line (on the AMD host, small's was 3.5 ms: docs/calibration.md).
SINGLE = LatencyModel(step_s=0.04, token_s=1.5e-3, seq_s=2.7e-3, decode_attn_s=2.6e-6, single_row_s=-0.003)


def test_a_one_token_step_gets_its_own_correction_and_no_other_step_does():
    plain = replace(SINGLE, single_row_s=0.0)
    assert SINGLE.step_time(1, 1, 0.0, 500) == pytest.approx(plain.step_time(1, 1, 0.0, 500) - 0.003)
    for tokens, seqs, work in ((2, 2, 0.0), (8, 8, 0.0), (300, 3, SINGLE.prefill_work(298, 0))):
        assert SINGLE.step_time(tokens, seqs, work, 900) == plain.step_time(tokens, seqs, work, 900)
    # A lone decode run in closed form is the sum of its steps, the correction in each.
    first, _, total = SINGLE.decode_run(num_seqs=1, context_sum=400, steps=30)
    assert first == pytest.approx(plain.step_time(1, 1, 0.0, 400) - 0.003)
    assert total == pytest.approx(sum(SINGLE.step_time(1, 1, 0.0, 400 + k) for k in range(30)))
    # Either sign: on the Intel host a lone decode cost more than the line (docs/calibration.md).
    dearer = replace(SINGLE, single_row_s=0.002)
    assert dearer.step_time(1, 1, 0.0, 0) == pytest.approx(plain.step_time(1, 1, 0.0, 0) + 0.002)


def test_the_one_token_correction_is_written_only_where_set_scales_and_may_not_cancel_the_step(tmp_path):
    p = LatencyProfile("s", SINGLE, EngineDefaults(100, 32, 64, 512))
    assert json.loads(p.to_json())["coefficients"]["single_row_s"] == -0.003
    assert load_profile(str(p.save(tmp_path / "s.json"))) == p
    plain = LatencyProfile("p", replace(SINGLE, single_row_s=0.0), EngineDefaults(100, 32, 64, 512))
    assert "single_row_s" not in json.loads(plain.to_json())["coefficients"]
    assert p.slowed(2.0).model.single_row_s == pytest.approx(-0.006)
    with pytest.raises(ProfileError, match="one-token step take no time"):
        replace(SINGLE, single_row_s=-0.05)
    with pytest.raises(ProfileError, match="single_row_s must be a finite number"):
        replace(SINGLE, single_row_s=float("nan"))


def test_one_floor_for_the_weights_not_two():
    with pytest.raises(ProfileError, match="matmul_floor_s .* and weight_s"):
        LatencyModel(step_s=0.01, token_s=1e-4, weight_s=0.01, matmul_floor_s=0.01)


@needs_data
def test_splitwise_fit_reproduces_the_measurements():
    profiles = {p.name: p for p in build_profiles(SPLITWISE)}
    assert set(profiles) == {f"{hw}-llama2-70b-tp{tp}" for hw in ("a100", "h100") for tp in (2, 4, 8)}
    data = pd.read_csv(SPLITWISE)
    for name, p in profiles.items():
        hw, tp = {"a100": "a100-80gb", "h100": "h100-80gb"}[name[:4]], int(name[-1])
        rows = data[(data.hardware == hw) & (data.tensor_parallel == tp) & (data.model == "llama2-70b")]
        x, y, kind = design_rows(rows)
        c = np.array([p.model.step_s, p.model.token_s, p.model.seq_s, p.model.prefill_attn_s,
                      p.model.decode_attn_s])
        rel = np.abs(x @ c - y) / y
        # decode steps within 10% (median), prefills within 20%: what the model can express
        assert np.median(rel[kind == "decode"]) < 0.10, name
        assert np.median(rel[kind == "prefill"]) < 0.20, name
    # H100 is faster than A100 at the same parallelism, per decode step
    for tp in (4, 8):
        h = profiles[f"h100-llama2-70b-tp{tp}"].model.step_time(16, 16, 0, 16 * 1024)
        a = profiles[f"a100-llama2-70b-tp{tp}"].model.step_time(16, 16, 0, 16 * 1024)
        assert h < a


def test_broken_configurations_are_detected():
    # A batch of 64 prompts reported 10x faster than a batch of 32 (as in Splitwise's
    # TP2 tables) is dropped; a consistent table drops nothing.
    rows = []
    for b, t in ((1, 60.0), (2, 100.0), (32, 1700.0), (64, 170.0)):
        rows.append(dict(prompt_size=512, batch_size=b, token_size=128, prompt_time=t, token_time=30.0 + b))
    bad = broken_configurations(pd.DataFrame(rows))
    assert [(d["kind"], d["batch_size"]) for d in bad] == [("prefill", 64)]
    rows[-1]["prompt_time"] = 3500.0
    assert broken_configurations(pd.DataFrame(rows)) == []


def test_kv_blocks_follow_memory_arithmetic():
    # TP4: 4 x (80 x 0.95 - 1) GB - 140 GB weights = 160 GB of KV at 320 KiB per token.
    assert kv_blocks("llama2-70b", 4) == int(160e9 / (80 * 2 * 8 * 128 * 2) // 16)
    assert kv_blocks("llama2-70b", 8) > kv_blocks("llama2-70b", 4) > kv_blocks("llama2-70b", 2) > 0


def test_cli_reports_a_wrong_file(tmp_path, capsys):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    assert main([str(bad), "--out", str(tmp_path)]) == 2
    assert "missing columns" in capsys.readouterr().err
