"""Confidence intervals over seeds, tie marking, Kendall tau-b and top-1 agreement."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from results.stats import (
    aggregate, compare_to_reference, confidence_interval, holm, kendall_tau_b, paired_t,
    rank_agreement, rank_strategies, t_quantile,
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


# --- Holm, paired tests, corrected rankings and verdicts ------------------------------------


def test_holm_by_hand():
    # sorted: 0.005 x4 = 0.02; 0.01 x3 = 0.03; 0.03 x2 = 0.06; 0.04 x1 = 0.04 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]).tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is no test: left out of m and kept NaN; the others are adjusted among themselves
    got = holm([0.02, math.nan, 0.03])
    assert got[0] == pytest.approx(0.04) and math.isnan(got[1]) and got[2] == pytest.approx(0.04)
    # adjusted values never exceed 1
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]
    assert holm([]).tolist() == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_holm_is_between_raw_and_bonferroni(p):
    adj = holm(p)
    m = len(p)
    for raw, a in zip(p, adj):
        assert raw - 1e-12 <= a <= min(1.0, m * raw) + 1e-12
    # monotone: a smaller raw p-value never gets a larger adjusted one
    order = np.argsort(p, kind="stable")
    assert (np.diff(adj[order]) >= -1e-12).all()


def test_paired_t_by_hand():
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3) = 3.4641 on 2 df;
    # two-sided p = 1 - t / sqrt(t^2 + 2) for 2 df = 1 - 3.4641 / 3.7417 = 0.07418
    got = paired_t([1.0, 2.0, 3.0])
    assert got["mean"] == 2 and got["p_value"] == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14))
    assert got["ci_low"] == pytest.approx(2 - T_975_DF2 / math.sqrt(3))
    assert paired_t([2.0, 2.0])["p_value"] == 0.0 and paired_t([0.0, 0.0])["p_value"] == 1.0
    assert math.isnan(paired_t([1.0])["p_value"])


def verdict_units():
    """Point p0: B is 1.0 better than A on every seed; C differs from A by +-0.1 noise."""
    rows = []
    for seed in range(5):
        noise = 0.1 if seed % 2 else -0.1
        for strategy, x in (("A", 10.0 + seed), ("B", 11.0 + seed), ("C", 10.0 + seed + noise)):
            rows.append({"point_id": "p0", "strategy": strategy, "seed": seed,
                         "request_goodput": x, "p99_ttft_ms": 100.0 - x})
    return pd.DataFrame(rows)


def test_ranking_ties_by_holm_corrected_paired_tests():
    units = verdict_units()
    agg = aggregate(units, ["request_goodput"])
    # the intervals over seeds overlap (the seeds differ by 4), so overlap calls all tied ...
    assert rank_strategies(agg)["tied_with_best"].tolist() == [True, True, True]
    # ... but paired by seed, B beats A and C on every seed (by 1.0; by 1.1 or 0.9)
    r = rank_strategies(agg, units=units)
    assert r["strategy"].tolist() == ["B", "A", "C"]  # C averages 0.02 below A
    assert r["tied_with_best"].tolist() == [True, False, False]
    assert math.isnan(r["p_value"].iloc[0])
    # B - A = 1 on every seed: p = 0; B - C = 1.1, 0.9, 1.1, 0.9, 1.1: mean 1.02, sd 0.1095,
    # t = 1.02 / (0.1095 / sqrt 5) = 20.8 on 4 df
    assert r.loc[r["strategy"] == "A", "p_holm"].iloc[0] == 0.0
    pc = r.loc[r["strategy"] == "C", "p_value"].iloc[0]
    from scipy.stats import t as student

    assert pc == pytest.approx(2 * student.sf(1.02 / (np.std([1.1, 0.9, 1.1, 0.9, 1.1], ddof=1) / math.sqrt(5)), 4))
    # Holm over the family {A: 0, C: pc}: C is the larger, multiplied by 1
    assert r.loc[r["strategy"] == "C", "p_holm"].iloc[0] == pytest.approx(pc)


def test_compare_to_reference_gives_holm_verdicts():
    units = verdict_units()
    v = compare_to_reference(units, {"p0": "A"}, ["request_goodput", "p99_ttft_ms"])
    assert set(v.columns) >= {"diff", "p_value", "p_holm", "verdict", "method"}
    g = v[v["metric"] == "request_goodput"].set_index("strategy")
    assert g.loc["B", "verdict"] == "better" and g.loc["B", "diff"] == pytest.approx(1.0)
    # C - A alternates -0.1 / +0.1 around 0: a tie
    assert g.loc["C", "verdict"] == "tie"
    lat = v[v["metric"] == "p99_ttft_ms"].set_index("strategy")
    assert lat.loc["B", "verdict"] == "better"  # lower latency is better
    assert lat.loc["B", "method"] == "t"  # no replicates given: the paired t-test
    # one seed only: no test, no verdict
    one = compare_to_reference(units[units["seed"] == 0], {"p0": "A"}, ["request_goodput"])
    assert set(one["verdict"]) == {"?"}


def test_percentile_comparisons_use_the_bootstrap_when_units_carry_replicates():
    units = verdict_units()
    reps = {("p0", s, seed): {"p99_ttft_ms": np.linspace(-2, 2, 50)}
            for s in "ABC" for seed in range(5)}
    v = compare_to_reference(units, {"p0": "A"}, ["p99_ttft_ms"], reps)
    assert set(v["method"]) == {"bootstrap"}
    b = v.set_index("strategy").loc["B"]
    assert b["verdict"] == "better" and b["diff"] == pytest.approx(-1.0)
    agg = aggregate(units, ["p99_ttft_ms", "request_goodput"], replicates=reps)
    methods = dict(zip(agg["metric"], agg["ci_method"]))
    assert methods == {"p99_ttft_ms": "bootstrap", "request_goodput": "t"}
