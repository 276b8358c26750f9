"""The hand-written inference equals the libraries it replaces (sklearn, torch)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from predictor_helpers import fitted, known_rows

from predictors.tree import CompactTree, fit_tree, float64_cuts


@pytest.fixture(scope="module")
def sk_tree():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(3000, 5)) * [1, 10, 100, 1e3, 1e-3]
    y = Z[:, 0] + np.sin(Z[:, 1]) + (Z[:, 2] > 0) + rng.normal(0, 0.1, 3000)
    compact, est = fit_tree(Z, y, max_depth=12, min_samples_leaf=3, seed=0)
    return compact, est, Z


def test_compact_tree_equals_sklearn_on_training_rows(sk_tree):
    compact, est, Z = sk_tree
    assert np.array_equal(compact.predict(Z), est.predict(Z))  # vectorised walk (many rows)
    assert np.array_equal(compact.apply(Z), est.apply(Z.astype(np.float32)))
    for i in range(0, 64, 16):  # Python walk (a handful of rows)
        assert np.array_equal(compact.predict(Z[i : i + 16]), est.predict(Z[i : i + 16]))


def test_compact_tree_equals_sklearn_exactly_at_its_thresholds(sk_tree):
    # Values at, just below and just above every threshold: float32 rounding matters here.
    compact, est, Z = sk_tree
    internal = compact.left >= 0
    thr = compact.threshold[internal]
    feat = compact.feature[internal]
    rows = np.repeat(Z[:1], 3 * len(thr), axis=0)
    for k, delta in enumerate((0.0, -1e-7, 1e-7)):
        idx = np.arange(len(thr)) * 3 + k
        rows[idx, feat] = thr * (1 + delta)
    assert np.array_equal(compact.predict(rows), est.predict(rows))
    for i in range(0, len(rows), 16):
        assert np.array_equal(compact.predict(rows[i : i + 16]), est.predict(rows[i : i + 16]))


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (16, 5), elements=st.floats(-1e4, 1e4, allow_nan=False)))
def test_compact_tree_equals_sklearn_on_any_rows(sk_tree, rows):
    compact, est, _ = sk_tree
    expected = est.predict(rows)
    assert np.array_equal(compact.predict(rows), expected)
    assert compact.walk([tuple(r) for r in rows.tolist()]) == expected.tolist()


@settings(max_examples=300, deadline=None)
@given(
    st.floats(-1e30, 1e30, allow_nan=False, width=64),
    st.integers(-4, 4),
    st.floats(-1.0, 1.0),
)
def test_float64_cut_decides_like_sklearns_float32_comparison(t, steps, frac):
    """float32(x) <= t  <=>  x <= cut(t), tried at and around the float32 grid near t."""
    cut = float(float64_cuts(np.array([t]))[0])
    base = np.float32(t)
    for k in range(abs(steps) + 1):
        neighbour = base
        for _ in range(k):
            neighbour = np.nextafter(neighbour, np.float32(np.sign(steps) or 1) * np.float32(np.inf))
        lo = float(neighbour)
        hi = float(np.nextafter(neighbour, np.float32(np.inf)))
        for x in (lo, hi, (lo + hi) / 2, np.nextafter((lo + hi) / 2, -np.inf),
                  np.nextafter((lo + hi) / 2, np.inf), lo + frac * (hi - lo), t):
            assert (float(np.float32(x)) <= t) == (x <= cut), (t, x, cut)


def test_tree_model_fast_path_equals_sklearn_on_encoded_rows():
    from sklearn.tree import DecisionTreeRegressor

    model = fitted("tree")
    train = known_rows(2000, seed=1)
    est = DecisionTreeRegressor(max_depth=model.max_depth, min_samples_leaf=model.min_samples_leaf, random_state=0)
    est.fit(model.encoder.encode_frame(train), train["ttft_s"])
    test = known_rows(300, seed=9)
    assert np.array_equal(model.predict(test), est.predict(model.encoder.encode_frame(test)))


def test_quantile_tree_leaves_hold_the_quantile_of_their_rows(sk_tree):
    _, _, Z = sk_tree
    y = np.random.default_rng(1).exponential(1.0, len(Z))
    compact, est = fit_tree(Z, y, max_depth=4, min_samples_leaf=50, seed=0, quantile=0.9)
    leaves = est.apply(Z.astype(np.float32))
    for leaf in np.unique(leaves):
        values = np.sort(y[leaves == leaf])
        # The ceil((n+1) * 0.9)-th smallest value, counted by hand.
        rank = -(-(len(values) + 1) * 9 // 10)
        assert compact.value[leaf] == values[min(rank, len(values)) - 1]
        assert np.mean(values <= compact.value[leaf]) >= 0.9


def test_mlp_numpy_inference_equals_torch():
    model = fitted("mlp")
    Z = model.encoder.encode_frame(known_rows(500, seed=5))
    np.testing.assert_allclose(model.predict_encoded(Z), model.torch_predict(Z), rtol=1e-5, atol=1e-6)


def test_corrupt_tree_arrays_are_refused():
    # A child pointing back to its parent would make the walk loop forever.
    with pytest.raises(ValueError, match="not after its parent"):
        CompactTree([1, 0, -1], [2, -1, -1], [0, 0, 0], [0.5, 0.0, 0.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="one entry per node"):
        CompactTree([-1], [-1, -1], [0], [0.0], [1.0])


@pytest.mark.parametrize("kind", ["tree", "distill"])
def test_tree_fast_path_on_scraped_rows_walks_the_callers_values(kind):
    from predictor_helpers import fast_rows

    model = fitted(kind)
    frame = known_rows(200, seed=12)
    frame = frame[np.isfinite(frame["scrape_age_s"])].iloc[:16]
    rows, groups = fast_rows(frame)
    expected = model.predict(frame)
    assert np.array_equal(model.predict_rows(rows, groups), expected)  # the callers' tuples
    assert np.array_equal(model.predict_rows([list(r) for r in rows], groups), expected)
    ints = [(int(r[0]), int(r[1]), int(r[2]), int(r[3])) + r[4:] for r in rows]  # as a router builds them
    assert np.array_equal(model.predict_rows(ints, groups), expected)
