"""Across seeds: intervals, paired comparisons with multiplicity correction, rank agreement.

A unit (grid point x strategy x seed) yields one value per metric; seeds are
independent replications. Per grid point x strategy:

- most metrics get a Student-t interval ``mean +- t(0.975, n-1) * s / sqrt(n)``
  (``s`` the sample std, ``ddof=1``);
- latency percentiles (``results.bootstrap.BOOTSTRAP_METRICS``: median, p90, p95,
  p99 of TTFT, TPOT and E2EL) get the expanded percentile interval of a two-stage
  bootstrap (seeds, then blocks of requests within each run) when the units carry
  within-run replicates: a t-interval over five seeds of a p99 knows nothing of each
  run's own tail, and covers too rarely when runs have queueing episodes
  (``results.bootstrap`` has the method and the measured coverage; ``ci_method``
  says which interval a row has).

With one seed a t-interval does not exist (NaN, ``n`` says why). NaN values (a
latency of a unit with no ok request) are left out of that metric, and ``n``
counts what was used.

**Comparisons** (``compare_paired``) are paired: every strategy of a grid point
ran the same traces (the same seeds), so the difference of two strategies is taken
seed by seed; its p-value comes from a paired t-test (``t = mean(d) / (s_d /
sqrt(n))``, ``n - 1`` degrees of freedom) or, for latency percentiles, from the
same statistic with the standard error of the paired two-stage bootstrap
(``results.bootstrap.bootstrap_t``). A ranking makes many comparisons at once, so their
p-values are adjusted by **Holm's step-down method** (Holm, Scandinavian Journal of
Statistics 1979): the family-wise error rate, the chance of calling even one tie a
difference, stays at most ``alpha``.

**Rankings** (``rank_strategies``): strategies ranked per grid point by an
objective's mean (goodput by default; any metric with a direction works). Each is
compared with the best; ``tied_with_best`` is true when its Holm-adjusted p-value
(over the point's comparisons) is at least ``alpha = 0.05``: the data cannot tell
it from the best. Without unit values (an aggregate alone) or with fewer than two
shared seeds, an overlap of the two intervals counts as a tie (one seed: only an
identical mean).

``rank_agreement`` compares two rankings of the same strategies (simulation vs
live, or two runs) with Kendall's tau-b and top-1 agreement.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from results.bootstrap import (
    BOOTSTRAP_METRICS, bootstrap_t, expanded_interval, paired_two_stage, two_stage,
)
from results.metrics import METRICS

KEYS = ["point_id", "strategy"]
#: The default objective, and the fallback when the run set no SLO (goodput is NaN).
DEFAULT_OBJECTIVE = "request_goodput"
RANKING_COLUMNS = ["point_id", "rank", "strategy", "objective", "mean", "ci_low", "ci_high", "n",
                   "tied_with_best", "p_value", "p_holm"]
#: Family-wise error rate of the verdicts.
ALPHA = 0.05
#: Columns of ``compare_to_reference``.
VERDICT_COLUMNS = ["point_id", "strategy", "reference", "metric", "n", "diff", "ci_low", "ci_high",
                   "p_value", "p_holm", "verdict", "method"]
FALLBACK_OBJECTIVE = "request_throughput"


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t critical value: ``t.ppf(0.5 + level / 2, df)``.

    ``scipy.special.stdtrit`` is the same inverse CDF as ``scipy.stats.t.ppf``
    without importing ``scipy.stats`` (about 1 s, paid by every simulator run).
    """
    from scipy.special import stdtrit

    return float(stdtrit(df, 0.5 + level / 2))


def confidence_interval(values: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample std, interval and ``n`` of the finite values (NaN interval when n < 2)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(np.mean(x))
    if n == 1:
        return {"n": 1, "mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    std = float(np.std(x, ddof=1))
    half = t_quantile(n - 1, level) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def metric_range(metric: str) -> tuple[float, float]:
    """The values a metric can take: every metric is >= 0; fractions are <= 1 too."""
    info = METRICS.get(metric)
    return (0.0, 1.0) if info is not None and info.unit == "fraction" else (0.0, math.inf)


def clip_interval(ci: dict[str, float], metric: str) -> dict[str, float]:
    """The interval cut to ``metric_range`` (``ci_clipped`` says whether it was).

    With two or three seeds a t-interval is often wider than the values a metric can
    take (goodput below zero); the cut interval keeps every possible value it held.
    """
    lo, hi = metric_range(metric)
    low, high = ci["ci_low"], ci["ci_high"]
    clipped = bool((math.isfinite(low) and low < lo) or (math.isfinite(high) and high > hi))
    if clipped:
        ci = {**ci, "ci_low": max(low, lo), "ci_high": min(high, hi)}
    return {**ci, "ci_clipped": clipped}


#: Per unit ``(point_id, strategy, seed)``: within-run bootstrap deviations by metric.
Replicates = Mapping[tuple[str, str, int], Mapping[str, np.ndarray]]


def aggregate(units: pd.DataFrame, metrics: Sequence[str] | None = None,
              replicates: Replicates | None = None) -> pd.DataFrame:
    """Per grid point x strategy x metric: ``n, mean, std, ci_low, ci_high`` over seeds.

    ``units`` has one row per unit: ``point_id, strategy, seed`` and a column per
    metric. The result is long (one row per metric), in the input's order. With
    ``replicates`` (``UnitMetrics.replicates`` per unit), latency percentiles get the
    two-stage bootstrap interval (``ci_method = "bootstrap"``), the others the
    t-interval (``"t"``). Intervals are cut to the metric's possible values
    (``clip_interval``; ``ci_clipped``).
    """
    missing = [c for c in KEYS if c not in units.columns]
    if missing:
        raise ValueError(f"unit table lacks columns: {', '.join(missing)}")
    metrics = list(metrics) if metrics is not None else [m for m in METRICS if m in units.columns]
    rows: list[dict[str, Any]] = []
    for (point, strategy), group in units.groupby(KEYS, sort=False):
        for m in metrics:
            ci = confidence_interval(group[m].to_numpy())
            method = "t"
            if replicates is not None and m in BOOTSTRAP_METRICS and ci["n"] >= 1:
                values, devs = _seed_values(group, m, point, strategy, replicates)
                if any(len(d) for d in devs.values()):
                    lo, hi = expanded_interval(two_stage(values, devs, (point, m)), ci["n"])
                    ci = {**ci, "ci_low": lo, "ci_high": hi}
                    method = "bootstrap"
            rows.append({"point_id": point, "strategy": strategy, "metric": m,
                         **clip_interval(ci, m), "ci_method": method})
    cols = KEYS + ["metric", "n", "mean", "std", "ci_low", "ci_high", "ci_clipped", "ci_method"]
    return pd.DataFrame(rows, columns=cols)


def _seed_values(group: pd.DataFrame, metric: str, point: str, strategy: str,
                 replicates: Replicates | None) -> tuple[dict[int, float], dict[int, np.ndarray]]:
    """Per seed: the metric's value and the unit's bootstrap deviations (empty if none)."""
    values = {int(s): float(v) for s, v in zip(group["seed"], group[metric])}
    devs = {}
    for seed in values:
        reps = (replicates or {}).get((point, strategy, seed)) or {}
        devs[seed] = np.asarray(reps.get(metric, ()), dtype=np.float64)
    return values, devs


# --- paired comparisons and Holm's correction ----------------------------------------------


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted in ``m``).

    With the ``m`` finite p-values sorted, ``p_(1) <= ... <= p_(m)``, the adjusted
    ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``; rejecting where ``p~ < alpha``
    is Holm's procedure at family-wise level ``alpha``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    m = int(finite.sum())
    if m == 0:
        return out
    idx = np.nonzero(finite)[0]
    order = idx[np.argsort(p[idx], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def paired_t(diffs: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean of paired differences, its t-interval and two-sided p-value of "mean = 0".

    ``n < 2``: no interval and p NaN. All differences equal: the interval is that
    value and p is 0 (a constant nonzero difference) or 1 (all zero).
    """
    ci = confidence_interval(diffs, level)
    n = ci["n"]
    if n < 2:
        return {**ci, "p_value": math.nan}
    if ci["std"] == 0:
        return {**ci, "p_value": 0.0 if ci["mean"] != 0 else 1.0}
    from scipy.special import stdtr

    t = ci["mean"] / (ci["std"] / math.sqrt(n))
    return {**ci, "p_value": float(2 * stdtr(n - 1, -abs(t)))}


def compare_paired(units: pd.DataFrame, point: str, a: str, b: str, metric: str,
                   replicates: Replicates | None = None) -> dict[str, Any]:
    """``metric(a) - metric(b)`` at grid point ``point``, paired by seed.

    Latency percentiles with replicates: the paired two-stage bootstrap
    (``results.bootstrap``), which works from one shared seed on. Other metrics: the
    paired t-test (needs two shared seeds). Returns ``n`` (shared seeds), ``diff``
    (mean difference), ``ci_low``/``ci_high`` (95%), ``p_value`` and ``method``.
    """
    sub = units[units["point_id"] == point]
    va = {int(s): float(v) for s, v in zip(sub.loc[sub["strategy"] == a, "seed"],
                                            sub.loc[sub["strategy"] == a, metric])}
    vb = {int(s): float(v) for s, v in zip(sub.loc[sub["strategy"] == b, "seed"],
                                            sub.loc[sub["strategy"] == b, metric])}
    shared = sorted(s for s in set(va) & set(vb) if math.isfinite(va[s]) and math.isfinite(vb[s]))
    diffs = [va[s] - vb[s] for s in shared]
    out = {"n": len(shared), "diff": float(np.mean(diffs)) if diffs else math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "method": "t"}
    if metric in BOOTSTRAP_METRICS and replicates is not None and shared:
        def devs(strategy: str) -> dict[int, np.ndarray]:
            return {s: np.asarray(((replicates.get((point, strategy, s)) or {}).get(metric, ())),
                                  dtype=np.float64) for s in shared}

        da, db = devs(a), devs(b)
        if any(len(d) for d in da.values()) or any(len(d) for d in db.values()):
            draws = paired_two_stage({s: va[s] for s in shared}, {s: vb[s] for s in shared},
                                     da, db, (point, metric))
            test = bootstrap_t(out["diff"], draws, len(shared))
            return {**out, "ci_low": test["ci_low"], "ci_high": test["ci_high"],
                    "p_value": test["p_value"], "method": "bootstrap"}
    t = paired_t(diffs)
    return {**out, "ci_low": t["ci_low"], "ci_high": t["ci_high"], "p_value": t["p_value"]}


def verdict_of(diff: float, p_holm: float, better: str, alpha: float = ALPHA) -> str:
    """``better``/``worse`` (than the reference) when the adjusted p-value is below
    ``alpha``, ``tie`` when not, ``?`` when there is no test (fewer than two seeds)."""
    if not (math.isfinite(p_holm) and math.isfinite(diff)):
        return "?"
    if p_holm >= alpha or diff == 0:
        return "tie"
    return "better" if (diff > 0) == (better == "higher") else "worse"


def compare_to_reference(units: pd.DataFrame, references: Mapping[str, str], metrics: Sequence[str],
                         replicates: Replicates | None = None, alpha: float = ALPHA) -> pd.DataFrame:
    """Every strategy against a reference strategy per grid point, Holm-corrected.

    ``references``: grid point -> the reference strategy there. For each point and
    metric, every other strategy is compared with the reference (``compare_paired``)
    and the p-values of that family (one point, one metric) are adjusted together
    (``holm``); ``verdict`` is better / tie / worse / ``?``.
    """
    rows = []
    for point, ref in references.items():
        others = [s for s in dict.fromkeys(units.loc[units["point_id"] == point, "strategy"]) if s != ref]
        for metric in metrics:
            better = direction(metric)
            family = [{"point_id": point, "strategy": s, "reference": ref, "metric": metric,
                       **compare_paired(units, point, s, ref, metric, replicates)} for s in others]
            adjusted = holm([r["p_value"] for r in family])
            for r, p in zip(family, adjusted):
                r["p_holm"] = float(p)
                r["verdict"] = verdict_of(r["diff"], float(p), better, alpha)
            rows += family
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def direction(metric: str) -> str:
    """'lower' or 'higher' is better; a clear error for metrics without one."""
    info = METRICS.get(metric)
    if info is None or info.better is None:
        ranked = ", ".join(m for m, i in METRICS.items() if i.better)
        raise ValueError(f"cannot rank by {metric!r}: it has no better direction; use one of {ranked}")
    return info.better


def choose_objective(agg: pd.DataFrame, objective: str | None) -> str:
    """The objective to rank by: the one asked for, else goodput, else throughput."""
    if objective is not None:
        direction(objective)
        return objective
    good = agg.loc[agg["metric"] == DEFAULT_OBJECTIVE, "mean"]
    return DEFAULT_OBJECTIVE if np.isfinite(good.to_numpy(dtype=float)).any() else FALLBACK_OBJECTIVE


def rank_strategies(agg: pd.DataFrame, objective: str | None = None, *,
                    units: pd.DataFrame | None = None, replicates: Replicates | None = None,
                    alpha: float = ALPHA) -> pd.DataFrame:
    """Per grid point, strategies best first with ``rank``, ``tied_with_best`` and p-values.

    With ``units`` (one row per unit, as ``aggregate`` takes), each strategy is
    compared with the best by the paired test of ``compare_paired`` and the point's
    p-values are Holm-adjusted (``p_value``, ``p_holm``); ``tied_with_best`` when
    ``p_holm >= alpha``. A comparison without a test (fewer than two shared seeds for
    a t-test) falls back to the overlap of the two intervals. NaN means rank last.
    Equal means are ordered by strategy label so the result is deterministic.
    """
    objective = choose_objective(agg, objective)
    better = direction(objective)
    sub = agg[agg["metric"] == objective]
    if sub.empty:
        raise ValueError(f"no values of {objective!r} to rank by")
    out = []
    for point, group in sub.groupby("point_id", sort=False):
        g = group.copy()
        key = -g["mean"] if better == "higher" else g["mean"]
        g = g.assign(_key=key.fillna(math.inf)).sort_values(["_key", "strategy"], kind="stable")
        g = g.drop(columns="_key").reset_index(drop=True)
        g["rank"] = np.arange(1, len(g) + 1)
        best = g.iloc[0]
        pvalues = [math.nan] * len(g)
        if units is not None and objective in units.columns:
            for i, s in enumerate(g["strategy"]):
                if i and math.isfinite(best["mean"]):
                    pvalues[i] = compare_paired(units, point, s, best["strategy"], objective,
                                                replicates)["p_value"]
        adjusted = holm(pvalues)
        g["p_value"], g["p_holm"] = pvalues, adjusted
        g["tied_with_best"] = [
            i == 0 or (bool(adjusted[i] >= alpha) if math.isfinite(adjusted[i])
                       else _tied(best, row))
            for i, row in enumerate(g.itertuples(index=False))
        ]
        g["objective"] = objective
        out.append(g)
    return pd.concat(out, ignore_index=True)[RANKING_COLUMNS]


def _tied(best: Any, row: Any) -> bool:
    if not (np.isfinite(best["mean"]) and np.isfinite(row.mean)):
        return False
    intervals = all(np.isfinite(v) for v in (best["ci_low"], best["ci_high"], row.ci_low, row.ci_high))
    if not intervals:
        return bool(best["mean"] == row.mean)
    return bool(row.ci_low <= best["ci_high"] and best["ci_low"] <= row.ci_high)


def rank_agreement(
    ranking_a: Sequence[str] | Mapping[str, float],
    ranking_b: Sequence[str] | Mapping[str, float],
) -> dict[str, Any]:
    """Kendall tau-b and top-1 agreement of two rankings over their common strategies.

    A ranking is a sequence of labels, best first, or a mapping label -> rank
    (lower is better; equal ranks are ties). Tau-b is used because it corrects
    for ties (a ranking may put tied strategies at one rank); on rankings without
    ties it equals tau-a. ``top1`` is True when the two rankings' best strategies
    coincide (with ties at the top: when the sets of best strategies intersect).
    ``tau`` is NaN when fewer than two strategies are shared or a ranking is all ties.
    """
    ra, rb = _as_ranks(ranking_a), _as_ranks(ranking_b)
    common = [s for s in ra if s in rb]
    n = len(common)
    if n == 0:
        return {"tau": math.nan, "top1": False, "n": 0, "variant": "tau-b"}
    a = np.array([ra[s] for s in common], dtype=np.float64)
    b = np.array([rb[s] for s in common], dtype=np.float64)
    top1 = bool(set(np.array(common)[a == a.min()]) & set(np.array(common)[b == b.min()]))
    return {"tau": kendall_tau_b(a, b), "top1": top1, "n": n, "variant": "tau-b"}


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two score vectors (O(n^2): rankings here are short)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(a)
    if n < 2:
        return math.nan
    i, j = np.triu_indices(n, k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n0 = len(i)
    tied_a, tied_b = int((da == 0).sum()), int((db == 0).sum())
    denom = math.sqrt((n0 - tied_a) * (n0 - tied_b))
    if denom == 0:
        return math.nan
    return float((da * db).sum() / denom)


def _as_ranks(ranking: Sequence[str] | Mapping[str, float]) -> dict[str, float]:
    if isinstance(ranking, Mapping):
        return {str(k): float(v) for k, v in ranking.items()}
    if isinstance(ranking, str):
        raise TypeError("a ranking is a sequence of strategy labels or a mapping, not a string")
    labels = list(ranking)
    if len(set(labels)) != len(labels):
        raise ValueError(f"a ranking lists a strategy twice: {labels}")
    return {str(s): float(i) for i, s in enumerate(labels)}


def ranking_of(ranks: pd.DataFrame, point_id: str) -> dict[str, float]:
    """One grid point's ranking from ``rank_strategies`` as label -> rank."""
    sub = ranks[ranks["point_id"] == point_id]
    return dict(zip(sub["strategy"], sub["rank"].astype(float)))
