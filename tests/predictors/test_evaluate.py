"""Metrics against hand computations; buckets, load levels and the seeded split."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictors.evaluate import (
    evaluation_report,
    length_buckets,
    load_levels,
    pinball_loss,
    regression_metrics,
    split_indices,
)


def test_metrics_match_a_hand_computation():
    y = np.array([1.0, 2.0, 4.0])
    pred = np.array([1.5, 2.0, 3.0])
    m = regression_metrics(y, pred, quantile=0.9)
    assert m["mae"] == pytest.approx(0.5)  # (0.5 + 0 + 1) / 3
    assert m["mape_pct"] == pytest.approx(25.0)  # (0.5/1 + 0/2 + 1/4) / 3
    assert m["r2"] == pytest.approx(1 - 1.25 / (42 / 9))  # SSres 1.25, SStot 42/9
    assert m["pinball"] == pytest.approx((0.1 * 0.5 + 0 + 0.9 * 1.0) / 3)
    assert m["coverage"] == pytest.approx(2 / 3)
    assert "pinball" not in regression_metrics(y, pred)


def test_mape_skips_zero_targets():
    m = regression_metrics(np.array([0.0, 2.0]), np.array([1.0, 3.0]))
    assert m["mape_pct"] == pytest.approx(50.0)


# Latencies in seconds: zero or at least a microsecond. Near-denormal values would
# test float underflow (q * 5e-324 rounds to 0), not the loss.
_SECONDS = st.one_of(st.just(0.0), st.floats(1e-6, 100))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(_SECONDS, _SECONDS), min_size=1, max_size=50),
    st.floats(0.01, 0.99),
)
def test_pinball_is_non_negative_and_zero_only_for_exact_predictions(pairs, q):
    y = np.array([p[0] for p in pairs])
    pred = np.array([p[1] for p in pairs])
    loss = pinball_loss(y, pred, q)
    assert loss >= 0
    assert (loss == 0) == bool(np.all(y == pred))
    assert 0 <= regression_metrics(y, pred, q)["coverage"] <= 1


def test_length_buckets_use_the_edges_128_512_1024():
    labels = length_buckets(np.array([10, 127, 128, 511, 512, 1023, 1024, 5000]))
    assert labels.tolist() == [
        "<128", "<128", "128-511", "128-511", "512-1023", "512-1023", ">=1024", ">=1024"
    ]


def test_load_levels_are_terciles_of_the_rows():
    inflight = np.arange(9)
    labels = load_levels(inflight)
    assert [str(s).split(" ")[0] for s in labels] == ["low"] * 3 + ["mid"] * 3 + ["high"] * 3


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 500), st.floats(0.0, 0.9), st.integers(0, 10))
def test_split_is_a_seeded_partition(n, fraction, seed):
    train, test = split_indices(n, fraction, seed)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(n))
    assert len(test) == round(n * fraction)
    again = split_indices(n, fraction, seed)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)


def test_split_rejects_a_bad_fraction():
    with pytest.raises(ValueError, match="test fraction must be in"):
        split_indices(10, 1.0, 0)


def test_report_has_overall_length_and_load_slices():
    rng = np.random.default_rng(0)
    n = 300
    X = pd.DataFrame({"input_len": rng.integers(1, 3000, n), "inflight_requests": rng.integers(0, 30, n)})
    y = rng.random(n)
    report = evaluation_report(X, y, y + 0.1, quantile=0.5)
    assert report.iloc[0]["slice"] == "overall" and report.iloc[0]["n"] == n
    for name in ("input_len", "load"):
        part = report[report["slice"] == name]
        assert part["n"].sum() == n
    assert np.allclose(report["mae"], 0.1)
    assert list(report[report["slice"] == "input_len"]["bucket"]) == ["<128", "128-511", "512-1023", ">=1024"]
    assert [b.split(" ")[0] for b in report[report["slice"] == "load"]["bucket"]] == ["low", "mid", "high"]
