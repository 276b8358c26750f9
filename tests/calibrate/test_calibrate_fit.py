"""Fitting: parameter recovery on engine-generated data, and fitting recorded real vLLM data."""
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from calibrate.fit import (FitError, closed_form_init, engine_defaults, fit_profile, fit_replay, fit_with_knee,
                           load_data)
from calibrate.replay import linearize_units, pack, prepare_units, simulate_units
from sim.frontend import FrontEndModel
from sim.latency import LatencyModel, load_profile

from calibrate_synth import DECODE_OUTPUT, DECODE_PROMPT, ENGINE, TRUE_MODEL, TRUE_OVERHEAD, synthetic_rows

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def synth():
    return synthetic_rows()


def _rel(a, b):
    return abs(a - b) / abs(b)


def test_closed_form_is_exact_on_noise_free_idle_requests(synth):
    model, overhead = closed_form_init(synth, ENGINE.max_num_batched_tokens)
    # step and seq cannot be told apart by one request at a time: their sum can.
    assert _rel(model.step_s + model.seq_s, TRUE_MODEL.step_s + TRUE_MODEL.seq_s) < 1e-3
    assert _rel(model.token_s, TRUE_MODEL.token_s) < 1e-3
    assert _rel(model.prefill_attn_s, TRUE_MODEL.prefill_attn_s) < 1e-2
    assert _rel(model.decode_attn_s, TRUE_MODEL.decode_attn_s) < 1e-2
    assert _rel(overhead, TRUE_OVERHEAD) < 1e-2


def _fixed_costs(res):
    """Everything a lone request pays once: the overhead, its input job, its first output job."""
    return res.overhead_s + res.front_end.input_s + res.front_end.output_cost(1)


def test_replay_fit_recovers_every_parameter_from_a_wrong_start(synth):
    start = LatencyModel(step_s=0.01, token_s=1e-3, seq_s=1e-2, prefill_attn_s=1e-9, decode_attn_s=1e-7)
    res = fit_replay(synth, ENGINE, init=(start, 0.05))
    m = res.model
    assert res.converged, res.convergence
    for name in ("step_s", "token_s", "prefill_attn_s", "decode_attn_s"):
        assert _rel(getattr(m, name), getattr(TRUE_MODEL, name)) < 0.02, name
    assert _rel(m.seq_s, TRUE_MODEL.seq_s) < 0.05
    # The data have no front end: the fit finds little of one (a per-token output cost is
    # partly interchangeable with the per-sequence step cost), and the right fixed cost.
    assert _rel(_fixed_costs(res), TRUE_OVERHEAD) < 0.03
    assert res.front_end.output_token_s < 0.15 * TRUE_MODEL.seq_s


def test_the_fitted_model_reproduces_the_data(synth):
    res = fit_replay(synth, ENGINE)
    units = prepare_units(synth, ENGINE.block_size)
    ttft, tpot, _ = simulate_units(units, len(synth), res.model, ENGINE, res.overhead_s, res.front_end)
    frame = synth.assign(sim_ttft=ttft, sim_tpot=tpot)
    # Every unit's percentiles (what `calibrate check` judges): medians within 3%, p90 within 10%
    # (the tail of 60 requests is sparse: neighbouring order statistics lie up to 10% apart, and
    # a loaded request moves by a step when an arrival falls on the other side of a step boundary).
    for unit, g in frame.groupby("unit"):
        for real, sim in (("ttft_s", "sim_ttft"), ("tpot_s", "sim_tpot")):
            for q, tol in ((50, 0.03), (90, 0.10)):
                r, m = np.nanpercentile(g[real], q), np.nanpercentile(g[sim], q)
                assert abs(m / r - 1) < tol, (unit, real, q)
    idle = frame[frame["unit"] == "idle/idle"]
    assert np.max(np.abs(idle["sim_ttft"] / idle["ttft_s"] - 1)) < 0.01


@pytest.mark.parametrize("front_end", [FrontEndModel(), FrontEndModel(0.004, 2e-6, 0.002, 0.0015)])
def test_linearized_schedule_matches_the_cluster_simulation(synth, front_end):
    """The fitter's one-step-at-a-time replay and sim.cluster give the same latencies."""
    units = prepare_units(synth, ENGINE.block_size)
    lin = linearize_units(units, len(synth), TRUE_MODEL, ENGINE, TRUE_OVERHEAD, front_end)
    ttft, tpot, e2el = simulate_units(units, len(synth), TRUE_MODEL, ENGINE, TRUE_OVERHEAD, front_end)
    theta = pack(TRUE_MODEL, TRUE_OVERHEAD, front_end)
    np.testing.assert_allclose(lin.ttft_const + lin.ttft_design @ theta, ttft, rtol=1e-9)
    np.testing.assert_allclose(lin.tpot_const + lin.tpot_design @ theta, tpot, rtol=1e-9)
    np.testing.assert_allclose(lin.e2el_const + lin.e2el_design @ theta, e2el, rtol=1e-9)
    if not front_end.enabled:  # the data were simulated without one
        np.testing.assert_allclose(ttft, synth["ttft_s"], rtol=1e-9)


#: A decode step flat up to three sequences, as vLLM-CPU's is (sim.latency's matmul floor).
FLOORED_MODEL = dataclasses.replace(TRUE_MODEL, matmul_floor_s=3 * (TRUE_MODEL.token_s + TRUE_MODEL.seq_s))


@pytest.fixture(scope="module")
def floored():
    return synthetic_rows(model=FLOORED_MODEL, loaded_units=2)


#: A shorter grid than the default, around the true knee, to keep the tests quick.
TEST_KNEES = (1.0, 2.0, 3.0, 4.0, 6.0)


def test_the_knee_of_the_matmul_floor_is_found(floored):
    res = fit_with_knee(floored, ENGINE, knees=TEST_KNEES)
    assert res.stages["knee"]["chosen"] == 3.0
    assert res.converged, res.convergence
    for name in ("step_s", "token_s", "seq_s", "matmul_floor_s"):
        assert _rel(getattr(res.model, name), getattr(FLOORED_MODEL, name)) < 0.05, name
    # The linear model (knee 1) cannot explain a flat start: its replayed cost is higher.
    grid = res.stages["knee"]["replayed_cost_by_knee"]
    assert grid[1.0] > 2 * grid[3.0]


def test_data_without_a_floor_keep_the_linear_model(synth):
    res = fit_with_knee(synth, ENGINE, knees=TEST_KNEES)
    assert res.stages["knee"]["chosen"] == 1.0 and res.model.matmul_floor_s == 0.0


def test_measured_decode_steps_place_the_knee_that_thin_loaded_data_cannot():
    """Idle requests and one small group cannot place the floor; profiling's decode phase can."""
    from calibrate.decode_steps import predicted_step

    batches = (1, 2, 3, 4, 6, 8, 16)
    thin = synthetic_rows(model=FLOORED_MODEL, loaded_units=0)
    assert fit_with_knee(thin, ENGINE, knees=TEST_KNEES).stages["knee"]["chosen"] != 3.0
    data = synthetic_rows(model=FLOORED_MODEL, loaded_units=0, decode_batches=batches)
    context = DECODE_PROMPT + DECODE_OUTPUT // 2
    steps = {n: {"n": n, "step_s": predicted_step(FLOORED_MODEL, n, context), "gaps": 50, "context": context}
             for n in batches}
    res = fit_with_knee(data, ENGINE, knees=TEST_KNEES, decode_steps=steps)
    knee = res.stages["knee"]
    assert knee["chosen"] == knee["by_decode_steps"] == 3.0 and knee["decode_batches"] == list(batches)
    errors = knee["decode_step_error_by_knee"]
    assert errors[3.0] < 0.01 and all(errors[k] > 2 * errors[3.0] for k in TEST_KNEES if k != 3.0)
    for name in ("step_s", "token_s", "seq_s", "matmul_floor_s"):
        assert _rel(getattr(res.model, name), getattr(FLOORED_MODEL, name)) < 0.05, name


def test_a_measured_decode_attention_is_held_and_the_rest_fitted_around_it(synth):
    """Profiling's long-context decode steps measure decode_attn_s directly; the fit keeps it."""
    truth = fit_replay(synth, ENGINE, decode_attn_s=TRUE_MODEL.decode_attn_s, polish_nfev=0)
    assert truth.model.decode_attn_s == pytest.approx(TRUE_MODEL.decode_attn_s, rel=1e-9)
    for name in ("step_s", "token_s", "prefill_attn_s"):
        assert _rel(getattr(truth.model, name), getattr(TRUE_MODEL, name)) < 0.02, name
    # Held means held: a value twice the truth stays, and the fit is worse for it.
    wrong = fit_replay(synth, ENGINE, decode_attn_s=2 * TRUE_MODEL.decode_attn_s, polish_nfev=0)
    assert wrong.model.decode_attn_s == pytest.approx(2 * TRUE_MODEL.decode_attn_s, rel=1e-9)
    assert wrong.cost > truth.cost
    with pytest.raises(FitError, match="held decode_attn_s"):
        fit_replay(synth, ENGINE, decode_attn_s=-1.0)


def test_the_fit_replay_is_exact_under_the_floor(floored):
    """Steps under the floor are linear in the parameters at a fixed knee: the replay stays exact."""
    units = prepare_units(floored, ENGINE.block_size)
    lin = linearize_units(units, len(floored), FLOORED_MODEL, ENGINE, TRUE_OVERHEAD)
    theta = pack(FLOORED_MODEL, TRUE_OVERHEAD)
    np.testing.assert_allclose(lin.tpot_const + lin.tpot_design @ theta, floored["tpot_s"], rtol=1e-9)
    np.testing.assert_allclose(lin.ttft_const + lin.ttft_design @ theta, floored["ttft_s"], rtol=1e-9)
    # The floor's share moves with token_s and seq_s: a 1% larger seq_s lengthens a lone decode by 3x
    # its own share (three decodes' worth of matmuls), which the design row must say.
    idle = (floored["unit"] == "idle/idle").to_numpy() & np.isfinite(floored["tpot_s"].to_numpy())
    seq_col = 2
    np.testing.assert_allclose(lin.tpot_design[idle, seq_col], 3.0, rtol=1e-9)


#: Loaded units timed with a *linear* prefill (no attention term, a dearer token instead): the
#: idle units' TTFT is superlinear in the prompt, the loaded units' is not.
LINEAR_PREFILL = dataclasses.replace(TRUE_MODEL, prefill_attn_s=0.0,
                                     token_s=TRUE_MODEL.token_s + TRUE_MODEL.prefill_attn_s * 512)


@pytest.fixture(scope="module")
def disagreeing():
    return synthetic_rows(loaded_model=LINEAR_PREFILL, loaded_units=2)


def _idle_ttft(res, n):
    """A lone request's TTFT under a fit: overhead, input job, prefill, first output job."""
    prefill, _ = res.model.single_request(n, 2)
    return res.overhead_s + res.front_end.input_cost(n) + prefill + res.front_end.output_cost(1)


def test_idle_data_pin_the_prefill_attention_term(disagreeing):
    """What the idle requests determine (the superlinear prefill) survives loaded units that disagree."""
    res = fit_replay(disagreeing, ENGINE)
    assert res.converged, res.convergence
    assert _rel(res.model.prefill_attn_s, TRUE_MODEL.prefill_attn_s) < 0.01
    true_2048 = TRUE_MODEL.single_request(2048, 2)[0] + TRUE_OVERHEAD
    assert _rel(_idle_ttft(res, 2048), true_2048) < 0.005
    assert res.idle_drift < 0.01
    # Idle TTFT is superlinear: doubling the prompt more than doubles the prefill.
    assert _idle_ttft(res, 2048) - _idle_ttft(res, 1024) > 1.15 * (_idle_ttft(res, 1024) - _idle_ttft(res, 1))


def test_without_pins_the_loaded_units_move_the_idle_terms(disagreeing):
    """The control: with nothing holding them, the idle-determined terms are traded for the loaded fit."""
    res = fit_replay(disagreeing, ENGINE, pin_weight=0.0, polish_nfev=120)
    moved = [_rel(getattr(res.model, c), getattr(TRUE_MODEL, c)) for c in ("prefill_attn_s", "decode_attn_s")]
    assert max(moved) > 0.1
    assert res.idle_drift > 0.01


def test_the_fit_says_whether_it_converged(synth):
    res = fit_replay(synth, ENGINE)
    assert res.converged and res.convergence.startswith("converged after")
    short = fit_replay(synth, ENGINE, max_iter=1, polish_nfev=25)  # one polish iteration at most
    assert not short.converged and short.convergence.startswith("did not converge")
    assert short.stages["polish"]["replays"] <= 25 and short.stages["replay"]["iterations"] == 1


def test_a_front_end_is_recovered_from_loaded_units():
    fe = FrontEndModel(input_s=0.004, output_step_s=0.002, output_token_s=0.0015)
    data = synthetic_rows(front_end=fe, overhead=0.002, loaded_units=3)
    res = fit_replay(data, ENGINE)
    assert res.converged, res.convergence
    # The per-token output cost shows under load; the fixed costs only as their sum (a lone
    # request pays them all once; which job holds them matters little to the queues here).
    assert _rel(res.front_end.output_token_s, fe.output_token_s) < 0.1
    assert _rel(_fixed_costs(res), 0.002 + fe.input_s + fe.output_cost(1)) < 0.05
    assert _rel(res.model.seq_s, TRUE_MODEL.seq_s) < 0.1
    # Without a front end, the same data are explained worse.
    plain = fit_replay(data, ENGINE, front_end=False)
    assert plain.front_end == FrontEndModel() and plain.cost > 3 * res.cost


#: The simulator's provisional guess for a one-core CPU engine, before calibration existed.
GUESS = LatencyModel(step_s=0.004, token_s=3e-05, seq_s=0.0001, prefill_attn_s=2e-09, decode_attn_s=5e-08)


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["tiny", "small"])
def test_fit_on_recorded_real_vllm_data(tmp_path, shape):
    """tests/data holds real vLLM-CPU profiling runs (one core, random-weight Llama)."""
    src = DATA / f"cpu-{shape}-profiling.csv"
    profile, frame = fit_profile(src, f"cpu-{shape}-test", max_iter=15, polish_nfev=0)
    out = profile.save(tmp_path / "p.json")
    again = load_profile(out)  # a valid profile file
    assert again.model == profile.model and not again.provisional
    assert again.engine.num_kv_blocks > 0 and again.engine.block_size == 32
    fit = again.fit
    assert set(fit["per_unit"]) >= {"idle/idle", "prefix/probe", "concurrency/c2", "poisson/r0.6"}
    assert fit["request_overhead_s"] >= 0
    assert again.source["backend"]["version"] and again.source["data_file"] == str(src)
    assert f"llama-{shape}" in again.description
    assert fit["converged"] in (True, False) and fit["convergence"] and "idle" in fit["stages"]
    # The fit describes the idle engine well, and far better than the provisional guess.
    idle = frame[frame["unit"] == "idle/idle"]
    fitted_err = np.median(np.abs(idle["sim_ttft_s"] / idle["ttft_s"] - 1))
    assert fitted_err < 0.15
    data, _ = load_data(src)
    units = prepare_units(data, again.engine.block_size)
    g_ttft, _, _ = simulate_units(units, len(data), GUESS, again.engine)
    idle_rows = (data["unit"] == "idle/idle").to_numpy()
    guess_err = np.median(np.abs(g_ttft[idle_rows] / data["ttft_s"].to_numpy()[idle_rows] - 1))
    assert fitted_err < guess_err / 2


def test_missing_columns_are_named(tmp_path):
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"unit": ["a"], "ttft_s": [0.1]}).to_csv(bad, index=False)
    with pytest.raises(FitError, match="lacks column\\(s\\) phase, input_len"):
        load_data(bad)
    with pytest.raises(FitError, match="does not exist"):
        load_data(tmp_path / "nope.csv")


def test_truncated_profiling_data_is_refused(tmp_path):
    """A recorded run cut short is named as truncated instead of being fitted as less load."""
    src = DATA / "cpu-tiny-2026-12-03-profiling.csv"
    meta = src.with_name(src.name + ".meta.json")
    whole = src.read_bytes()
    data, _ = load_data(src)  # the whole file loads
    assert len(data) > 600
    cut = tmp_path / "cut.csv"
    (tmp_path / "cut.csv.meta.json").write_bytes(meta.read_bytes())
    cut.write_bytes(whole[:len(whole) // 2])  # ends inside a row
    with pytest.raises(FitError, match="ends inside a row"):
        load_data(cut)
    lines = whole.decode().splitlines(keepends=True)
    cut.write_text("".join(lines[:len(lines) // 2]))  # whole rows, but half of them
    with pytest.raises(FitError, match=r"fewer rows than its metadata cut.csv.meta.json logged \(.*has \d+ of \d+"):
        load_data(cut)
    cut.write_text("")
    with pytest.raises(FitError, match="not a readable CSV"):
        load_data(cut)
    cut.write_bytes(whole)
    (tmp_path / "cut.csv.meta.json").write_bytes(meta.read_bytes()[:3000])  # metadata cut short
    with pytest.raises(FitError, match=r"metadata .*cut.csv.meta.json of .*cut.csv is not readable JSON"):
        load_data(cut)


def test_unknown_kv_blocks_must_be_given():
    with pytest.raises(FitError, match="--num-kv-blocks"):
        engine_defaults({})
    assert engine_defaults({}, num_kv_blocks=100).num_kv_blocks == 100
    e = engine_defaults({"backend": {"num_kv_blocks": 8192, "block_size": 32},
                         "settings": {"max_num_seqs": 64, "max_num_batched_tokens": 512}})
    assert (e.num_kv_blocks, e.block_size, e.max_num_seqs, e.max_num_batched_tokens) == (8192, 32, 64, 512)


