"""Every model family trains, learns a known law, saves, loads and predicts the same."""
from __future__ import annotations

import numpy as np
import pytest
from predictor_helpers import PARAMS, B, C, G, fast_rows, fitted, known_rows, law

from predictors import MODEL_KINDS, load_model, make_model, read_header, save_model
from predictors.evaluate import regression_metrics

def test_every_kind_is_covered():
    assert set(PARAMS) == set(MODEL_KINDS)


def test_linear_recovers_the_coefficients_of_the_law():
    model = fitted("linear")
    coef = dict(zip(model.encoder.names, model.coef))
    assert coef["input_len"] == pytest.approx(B, rel=0.02)
    assert coef["inflight_requests"] == pytest.approx(C, rel=0.03)
    assert coef["group=g1"] - coef["group=g0"] == pytest.approx(G, abs=0.003)
    test = known_rows(500, seed=2)
    assert np.mean(np.abs(model.predict(test) - law(test))) < 0.002


@pytest.mark.parametrize(
    "kind, bound",
    [("linear", 0.002), ("online_linear", 0.003), ("mlp", 0.012), ("tree", 0.03),
     ("transformer", 0.03), ("distill", 0.035)],
)
def test_each_model_learns_the_known_law(kind, bound):
    test = known_rows(500, seed=2)
    pred = fitted(kind).predict(test)
    # Against the noiseless law: what the model learnt, not the noise it fits.
    assert np.mean(np.abs(pred - law(test))) < bound
    assert regression_metrics(test["ttft_s"], pred)["r2"] > 0.95


@pytest.mark.parametrize("kind", list(PARAMS))
def test_save_load_predicts_the_same_and_records_the_schema(kind, tmp_path):
    model = fitted(kind)
    model.provenance["note"] = "test"
    path = save_model(model, tmp_path / kind)
    assert path.suffix == model.file_suffix
    header = read_header(path)
    assert header["kind"] == kind and header["feature_schema_version"] == 1
    assert header["target"] == "ttft" and header["quantile"] is None
    assert header["groups"] == ["g0", "g1"] and header["provenance"]["note"] == "test"
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.get_params() == model.get_params()
    test = known_rows(200, seed=3)
    assert np.array_equal(loaded.predict(test), model.predict(test))


@pytest.mark.parametrize("kind", list(PARAMS))
def test_fast_path_equals_dataframe_path(kind):
    model = fitted(kind)
    test = known_rows(16, seed=4)
    rows, groups = fast_rows(test)
    expected = model.predict(test)
    np.testing.assert_allclose(model.predict_rows(rows, groups), expected, rtol=1e-9, atol=1e-12)
    # Twice: the second call runs on the encoder's cached group block.
    np.testing.assert_allclose(model.predict_rows(rows, groups), expected, rtol=1e-9, atol=1e-12)


def test_distill_reports_its_teacher():
    model = fitted("distill")
    info = model.distillation
    assert info["teacher_kind"] == "transformer"
    assert info["rows_synthetic"] == info["rows_real"] == 2000
    # The student imitates the teacher better than either fits the noisy targets.
    assert info["student_vs_teacher_mae"] < 0.05
    assert model.teacher is not None and model.teacher.kind == "transformer"


def test_unknown_hyperparameter_is_named():
    with pytest.raises(ValueError, match=r"'tree' models have no parameter\(s\) depth; allowed: max_depth, min_samples_leaf"):
        make_model("tree", depth=3)
    with pytest.raises(ValueError, match="unknown model kind 'xgboost'; available: linear, tree"):
        make_model("xgboost")


def test_fit_rejects_bad_targets():
    frame = known_rows(10, seed=0)
    y = frame["ttft_s"].to_numpy().copy()
    y[3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        make_model("linear").fit(frame, y)
    with pytest.raises(ValueError, match="X has 10 rows but y has 9"):
        make_model("linear").fit(frame, y[:9])


def test_unfitted_model_says_so():
    with pytest.raises(RuntimeError, match="not fitted yet"):
        make_model("tree").predict(known_rows(3, seed=0))


def test_quantile_level_is_validated():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        make_model("linear", quantile=90)
