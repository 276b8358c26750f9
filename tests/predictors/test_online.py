"""The online learner: error falls on a stationary stream and recovers after a shift."""
from __future__ import annotations

import numpy as np
import pytest
from predictor_helpers import fast_rows, known_rows, law

from predictors import load_model, make_model
from predictors.online import OnlineLinearPredictor

def stream_errors(model: OnlineLinearPredictor, frame, y) -> np.ndarray:
    """Absolute error of the prediction made *before* each update."""
    model.ensure_groups(frame["group"].unique().tolist())
    Z = model.encoder.encode_frame(frame)
    return np.array([abs(model.update_encoded(z, t) - t) for z, t in zip(Z, y)])


def shifted_stream():
    """6000 requests of the law; from request 3000 every latency doubles plus 50 ms."""
    frame = known_rows(6000, seed=11, noise=0.01)
    y = frame["ttft_s"].to_numpy().copy()
    y[3000:] = 2 * y[3000:] + 0.05
    return frame, y


def test_cold_start_predicts_zero_and_learns_groups_as_it_meets_them():
    model = OnlineLinearPredictor()
    frame = known_rows(20, seed=0)
    assert set(frame["group"]) == {"g0", "g1"}
    assert np.array_equal(model.predict(frame), np.zeros(20))
    assert sorted(model.encoder.groups) == ["g0", "g1"]  # added by predict
    model.ensure_groups(["h100"])
    assert model.encoder.names[-1] == "group=h100" and len(model.theta) == len(model.encoder.names) + 1


def test_error_falls_on_a_stationary_stream_and_recovers_after_a_shift():
    frame, y = shifted_stream()
    err = stream_errors(OnlineLinearPredictor(), frame, y)
    early, settled = err[:20].mean(), err[2750:3000].mean()
    spike, recovered = err[3000:3100].mean(), err[-250:].mean()
    assert settled < early / 4
    assert settled < 0.012  # close to the noise (mean |N(0, 0.01)| = 0.008)
    assert spike > 10 * settled
    assert recovered < spike / 5
    assert recovered < 0.025  # the new law's noise doubled too


def test_forgetting_is_what_makes_it_recover():
    frame, y = shifted_stream()
    adaptive = stream_errors(OnlineLinearPredictor(forgetting=0.995), frame, y)[-250:].mean()
    frozen = stream_errors(OnlineLinearPredictor(forgetting=1.0), frame, y)[-250:].mean()
    assert adaptive < frozen / 5


def test_late_group_gets_its_own_offset():
    model = OnlineLinearPredictor()
    frame = known_rows(3000, seed=3)
    g0 = frame[frame["group"] == "g0"]
    stream_errors(model, g0, g0["ttft_s"].to_numpy())
    assert model.encoder.groups == ["g0"]
    g1 = frame[frame["group"] == "g1"]
    stream_errors(model, g1, g1["ttft_s"].to_numpy())
    test = known_rows(500, seed=4)
    assert np.mean(np.abs(model.predict(test) - law(test))) < 0.01


def test_warm_start_file_continues_exactly_where_it_left_off(tmp_path):
    train = known_rows(1000, seed=1)
    model = make_model("online_linear").fit(train, train["ttft_s"])
    loaded = load_model(model.save(str(tmp_path / "online")))
    more = known_rows(300, seed=2)
    for m in (model, loaded):
        m.partial_fit(more, more["ttft_s"])
    assert loaded.n_updates == model.n_updates == 1300
    test = known_rows(50, seed=3)
    assert np.array_equal(loaded.predict(test), model.predict(test))
    rows, groups = fast_rows(test)
    assert np.allclose(loaded.predict_rows(rows, groups), model.predict(test), rtol=1e-12)


def test_shorter_rows_from_before_a_new_group_still_update():
    model = OnlineLinearPredictor()
    model.ensure_groups(["a"])
    z = model.encoder.encode_rows([(100, 0, 1, 100, 1.0, 0.0, 0.1, 0.1)], ["a"])[0]
    model.ensure_groups(["b"])
    model.update_encoded(z, 0.1)  # z lacks the 'b' column: treated as 0
    assert model.n_updates == 1


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="forgetting must be in"):
        OnlineLinearPredictor(forgetting=1.5)
