"""The feature schema and its encoder: names, imputation, groups, the fast path."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from predictor_helpers import fast_rows, known_rows

from predictors.features import (
    FEATURE_SCHEMA_VERSION,
    FEATURES,
    NULLABLE_FEATURES,
    NUMERIC_FEATURES,
    FeatureEncoder,
    FeatureError,
    target_column,
    target_name,
    training_rows,
)


def test_schema_names_match_the_routing_snapshot_and_the_records():
    # The names the brief fixes, in the fast path's order.
    assert NUMERIC_FEATURES == (
        "input_len", "prefix_hit_tokens", "inflight_requests", "inflight_tokens",
        "running", "waiting", "kv_usage", "scrape_age_s",
    )
    assert FEATURES[-1] == "group"
    assert FEATURE_SCHEMA_VERSION == 1
    from routing.types import BackendSnapshot

    snapshot_fields = set(BackendSnapshot.__dataclass_fields__)
    assert set(NUMERIC_FEATURES) - {"input_len"} <= snapshot_fields
    from results.records import RequestRecord

    record_fields = set(RequestRecord.__dataclass_fields__)
    for name in NUMERIC_FEATURES[1:]:
        assert f"router_{name}" in record_fields


def test_target_names_and_columns():
    assert target_column("ttft") == "ttft_s" and target_column("e2el_s") == "e2el_s"
    assert target_name("tpot_s") == "tpot"
    with pytest.raises(FeatureError, match="unknown target 'itl'; allowed: ttft, tpot, e2el"):
        target_column("itl")


def test_training_rows_drop_rows_without_a_target():
    frame = known_rows(10, seed=0)
    frame.loc[[2, 5], "tpot_s"] = np.nan
    X, y, dropped = training_rows(frame, "tpot")
    assert dropped == 2 and len(X) == len(y) == 8
    assert np.isfinite(y).all()


def test_missing_columns_are_all_named():
    frame = known_rows(5, seed=0).drop(columns=["kv_usage", "group"])
    with pytest.raises(FeatureError) as info:
        FeatureEncoder.fit(frame)
    assert "kv_usage, group" in str(info.value)


def test_only_nullable_columns_may_be_missing():
    frame = known_rows(5, seed=0)
    enc = FeatureEncoder.fit(frame)
    frame.loc[1, "inflight_tokens"] = np.nan
    with pytest.raises(FeatureError, match="column inflight_tokens has 1 missing"):
        enc.encode_frame(frame)


def test_imputation_uses_the_median_of_seen_values_and_sets_flags():
    frame = known_rows(200, seed=3)
    enc = FeatureEncoder.fit(frame)
    Z = enc.encode_frame(frame)
    names = enc.names
    for name in NULLABLE_FEATURES:
        col = frame[name].to_numpy(float)
        seen = col[np.isfinite(col)]
        missing = ~np.isfinite(col)
        assert missing.any()
        assert np.array_equal(Z[:, names.index(f"{name}_missing")], missing.astype(float))
        assert np.all(Z[missing, names.index(name)] == np.median(seen))
        assert np.array_equal(Z[~missing, names.index(name)], seen)
    assert np.isfinite(Z).all()


def test_groups_are_one_hot_and_unknown_groups_fail():
    frame = known_rows(50, seed=0)
    enc = FeatureEncoder.fit(frame)
    assert enc.groups == ["g0", "g1"]
    Z = enc.encode_frame(frame)
    assert np.array_equal(Z[:, enc.names.index("group=g1")], (frame["group"] == "g1").to_numpy(float))
    frame.loc[0, "group"] = "tpu"
    with pytest.raises(FeatureError, match=r"group\(s\) 'tpu' unknown to this model, which knows 'g0', 'g1'"):
        enc.encode_frame(frame)


def test_a_single_group_model_accepts_any_group_name():
    frame = known_rows(20, seed=0).assign(group="only")
    enc = FeatureEncoder.fit(frame)
    assert not any(n.startswith("group=") for n in enc.names)
    other = frame.assign(group="renamed")
    assert np.array_equal(enc.encode_frame(other), enc.encode_frame(frame))


def test_encoder_round_trips_through_its_dict():
    enc = FeatureEncoder.fit(known_rows(30, seed=0))
    again = FeatureEncoder.from_dict(enc.to_dict())
    assert again.names == enc.names and again.fill == enc.fill


_value = st.one_of(st.floats(0, 1e6, allow_nan=False), st.just(math.nan), st.just(math.inf))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 10_000), st.integers(0, 10_000), st.integers(0, 500), st.integers(0, 10**6),
            _value, _value, _value, _value, st.sampled_from(["g0", "g1"]),
        ),
        min_size=1, max_size=20,
    )
)
def test_fast_path_encodes_exactly_like_the_dataframe_path(rows):
    enc = FeatureEncoder.fit(known_rows(50, seed=0))
    frame = pd.DataFrame(rows, columns=list(FEATURES))
    fast, groups = fast_rows(frame)
    expected = enc.encode_frame(frame)
    for _ in range(2):  # the second call uses the cached group block
        assert np.array_equal(enc.encode_rows(fast, groups), expected)


def test_fast_path_cache_is_not_corrupted_by_imputation():
    enc = FeatureEncoder.fit(known_rows(50, seed=0))
    frame = known_rows(8, seed=5)
    rows, groups = fast_rows(frame)
    clean = [r[:4] + (1.0, 2.0, 0.5, 0.1) for r in rows]
    first = enc.encode_rows(clean, groups)
    dirty = [r[:4] + (math.nan, math.nan, math.nan, math.inf) for r in rows]
    enc.encode_rows(dirty, groups)
    assert np.array_equal(enc.encode_rows(clean, groups), first)


def test_fast_path_rejects_rows_of_the_wrong_width():
    enc = FeatureEncoder.fit(known_rows(10, seed=0))
    with pytest.raises(FeatureError, match="8 values"):
        enc.encode_rows([(1.0, 2.0)], ["g0"])
