"""Confidence intervals over seeds, tie marking, Kendall tau-b and top-1 agreement."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from results.stats import (
    aggregate, confidence_interval, kendall_tau_b, rank_agreement, rank_strategies, t_quantile,
)

T_975_DF2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (tables)
T_975_DF3 = 3.182446305284263


def test_interval_by_hand():
    ci = confidence_interval([1.0, 2.0, 3.0])
    # mean 2, sample std 1, half-width t * 1 / sqrt(3)
    assert ci["n"] == 3 and ci["mean"] == 2 and ci["std"] == pytest.approx(1.0)
    assert ci["ci_low"] == pytest.approx(2 - T_975_DF2 / math.sqrt(3))
    assert ci["ci_high"] == pytest.approx(2 + T_975_DF2 / math.sqrt(3))


@pytest.mark.parametrize("df", [1, 2, 5, 30, 1000])
def test_t_quantile_is_scipys(df):
    from scipy.stats import t

    assert t_quantile(df) == pytest.approx(t.ppf(0.975, df), rel=1e-12)
    assert t_quantile(df, 0.9) == pytest.approx(t.ppf(0.95, df), rel=1e-12)


def test_one_seed_has_no_interval_and_nans_are_left_out():
    one = confidence_interval([5.0])
    assert one["n"] == 1 and one["mean"] == 5 and math.isnan(one["ci_low"])
    some = confidence_interval([1.0, float("nan"), 3.0, 5.0, 7.0])
    assert some["n"] == 4 and some["mean"] == 4
    assert some["ci_high"] - some["mean"] == pytest.approx(T_975_DF3 * np.std([1, 3, 5, 7], ddof=1) / 2)
    assert confidence_interval([])["n"] == 0


def units_frame():
    rows = []
    values = {"A": [10.0, 10.5, 9.5], "B": [9.6, 9.4, 9.5], "C": [5.0, 5.2, 4.8]}
    for strategy, xs in values.items():
        for seed, x in enumerate(xs):
            rows.append({"point_id": "p0", "strategy": strategy, "seed": seed,
                         "request_goodput": x, "p99_ttft_ms": 50 + 5 * x})
    return pd.DataFrame(rows)


def test_ranking_marks_overlapping_intervals_as_tied():
    agg = aggregate(units_frame(), ["request_goodput", "p99_ttft_ms"])
    r = rank_strategies(agg)
    assert r["objective"].iloc[0] == "request_goodput"
    assert r["strategy"].tolist() == ["A", "B", "C"]
    # A: 10 ± 1.24, B: 9.5 ± 0.25 overlap; C: 5 ± 0.5 does not
    assert r["tied_with_best"].tolist() == [True, True, False]
    # lower is better for a latency: C has the lowest p99 TTFT
    lat = rank_strategies(agg, "p99_ttft_ms")
    assert lat["strategy"].tolist() == ["C", "B", "A"]
    assert lat["tied_with_best"].tolist() == [True, False, False]


def test_ranking_with_one_seed_ties_only_equal_values():
    one = units_frame().query("seed == 0").copy()
    one.loc[one["strategy"] == "B", "request_goodput"] = 10.0
    r = rank_strategies(aggregate(one, ["request_goodput"]))
    assert r["strategy"].tolist() == ["A", "B", "C"]  # equal means ordered by label
    assert r["tied_with_best"].tolist() == [True, True, False]


def test_ranking_falls_back_without_slo_and_rejects_undirected_metrics():
    df = units_frame().assign(request_goodput=np.nan, request_throughput=[1, 1, 1, 2, 2, 2, 3, 3, 3])
    r = rank_strategies(aggregate(df, ["request_goodput", "request_throughput"]))
    assert r["objective"].iloc[0] == "request_throughput"
    assert r["strategy"].tolist() == ["C", "B", "A"]
    with pytest.raises(ValueError, match="cannot rank by 'duration'.*request_goodput"):
        rank_strategies(aggregate(df, ["request_goodput"]), "duration")


def test_nan_objective_ranks_last():
    df = units_frame()
    df.loc[df["strategy"] == "A", "p99_ttft_ms"] = np.nan
    r = rank_strategies(aggregate(df, ["p99_ttft_ms"]), "p99_ttft_ms")
    assert r["strategy"].tolist()[-1] == "A"
    assert not r["tied_with_best"].iloc[-1]


def test_kendall_on_known_permutations():
    order = ["a", "b", "c", "d"]
    assert rank_agreement(order, order) == {"tau": 1.0, "top1": True, "n": 4, "variant": "tau-b"}
    rev = rank_agreement(order, order[::-1])
    assert rev["tau"] == -1.0 and rev["top1"] is False
    # one adjacent swap: 5 concordant, 1 discordant pair of 6
    assert rank_agreement(order, ["b", "a", "c", "d"])["tau"] == pytest.approx(4 / 6)
    # only shared strategies count
    part = rank_agreement(order, ["d", "x", "c"])
    assert part["n"] == 2 and part["tau"] == -1.0
    assert math.isnan(rank_agreement(["a"], ["a"])["tau"])


def test_ties_and_top1_with_tied_best():
    # a ranks x and y together first; b puts y first: the best sets intersect
    got = rank_agreement({"x": 1, "y": 1, "z": 3}, ["y", "x", "z"])
    assert got["top1"] is True
    # tau-b with one tied pair in a: C=2, D=0, n0=3, ties_a=1 -> 2 / sqrt(2*3)
    assert got["tau"] == pytest.approx(2 / math.sqrt(6))
    with pytest.raises(ValueError, match="twice"):
        rank_agreement(["a", "a"], ["a"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=2, max_size=12))
def test_tau_b_matches_scipy(pairs):
    from scipy.stats import kendalltau

    a, b = (np.array(x, dtype=float) for x in zip(*pairs))
    ref = kendalltau(a, b, variant="b").statistic
    got = kendall_tau_b(a, b)
    assert (math.isnan(got) and math.isnan(ref)) or got == pytest.approx(ref)
