"""Across seeds: means with 95% confidence intervals, rankings with ties, rank agreement.

A unit (grid point x strategy x seed) yields one value per metric; seeds are
independent replications, so per grid point x strategy the mean of a metric
gets a Student-t interval ``mean +- t(0.975, n-1) * s / sqrt(n)`` (``s`` the
sample std, ``ddof=1``). With one seed there is no interval: ``ci_low`` and
``ci_high`` are NaN and ``n`` says why. NaN values (a latency of a unit with no
ok request) are left out of that metric's mean, and ``n`` counts what was used.

Strategies are ranked per grid point by an objective's mean (goodput by
default; any metric with a direction works). A strategy whose interval overlaps
the best one's is marked ``tied_with_best``: the data cannot tell them apart.
Without intervals (one seed) only an identical mean counts as a tie.

``rank_agreement`` compares two rankings of the same strategies (simulation vs
live, or two runs) with Kendall's tau-b and top-1 agreement.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from results.metrics import METRICS

KEYS = ["point_id", "strategy"]
#: The default objective, and the fallback when the run set no SLO (goodput is NaN).
DEFAULT_OBJECTIVE = "request_goodput"
RANKING_COLUMNS = ["point_id", "rank", "strategy", "objective", "mean", "ci_low", "ci_high", "n",
                   "tied_with_best"]
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


def aggregate(units: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Per grid point x strategy x metric: ``n, mean, std, ci_low, ci_high`` over seeds.

    ``units`` has one row per unit: ``point_id, strategy, seed`` and a column per
    metric. The result is long (one row per metric), in the input's order. Intervals
    are cut to the metric's possible values (``clip_interval``; ``ci_clipped``).
    """
    missing = [c for c in KEYS if c not in units.columns]
    if missing:
        raise ValueError(f"unit table lacks columns: {', '.join(missing)}")
    metrics = list(metrics) if metrics is not None else [m for m in METRICS if m in units.columns]
    rows: list[dict[str, Any]] = []
    for (point, strategy), group in units.groupby(KEYS, sort=False):
        for m in metrics:
            rows.append({"point_id": point, "strategy": strategy, "metric": m,
                         **clip_interval(confidence_interval(group[m].to_numpy()), m)})
    cols = KEYS + ["metric", "n", "mean", "std", "ci_low", "ci_high", "ci_clipped"]
    return pd.DataFrame(rows, columns=cols)


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


def rank_strategies(agg: pd.DataFrame, objective: str | None = None) -> pd.DataFrame:
    """Per grid point, strategies best first with ``rank`` and ``tied_with_best``.

    NaN means rank last. Equal means are ordered by strategy label so the result
    is deterministic.
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
        g["tied_with_best"] = [
            i == 0 or _tied(best, row) for i, row in enumerate(g.itertuples(index=False))
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
