"""Compare two runs: metrics side by side with relative differences, rank agreement per point.

Typical use: a simulated run against the live run of the same scenario (the
validation issue), or one strategy set against another. Grid points and
strategies are matched by id and label; only those present in both are
compared, and the ones present in a single run are listed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from results.stats import rank_agreement, ranking_of
from results.summary import RunSummary, format_value, json_rows, text_table

DEFAULT_METRICS = (
    "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "median_e2el_ms",
    "request_throughput", "request_goodput", "slo_attainment", "prefix_hit_rate",
    "expected_hit_rate", "load_imbalance", "failed",
)


@dataclass(slots=True)
class Comparison:
    metrics: pd.DataFrame  # point_id, strategy, metric, a, b, rel_diff
    agreement: pd.DataFrame  # point_id, objective, n, tau, top1, best_a, best_b
    only_a: list[str]
    only_b: list[str]


def compare(a: RunSummary, b: RunSummary, metrics: Sequence[str] = DEFAULT_METRICS) -> Comparison:
    """Side-by-side means and ``(b - a) / |a|``, plus Kendall tau-b and top-1 per shared point."""
    if a.objective != b.objective:
        raise ValueError(
            f"the runs are ranked by different objectives ({a.objective!r} vs {b.objective!r}); "
            "pass --objective to rank both by the same metric")
    key = ["point_id", "strategy", "metric"]
    sa = a.aggregate[a.aggregate["metric"].isin(metrics)][key + ["mean"]].rename(columns={"mean": "a"})
    sb = b.aggregate[b.aggregate["metric"].isin(metrics)][key + ["mean"]].rename(columns={"mean": "b"})
    both = sa.merge(sb, on=key, how="inner")
    both["rel_diff"] = [(y - x) / abs(x) if x not in (0.0,) and math.isfinite(x) else math.nan
                        for x, y in zip(both["a"], both["b"])]
    ua = set(map(tuple, a.units[["point_id", "strategy"]].to_numpy().tolist()))
    ub = set(map(tuple, b.units[["point_id", "strategy"]].to_numpy().tolist()))
    rows = []
    points_b = set(b.ranking["point_id"])
    for point in dict.fromkeys(a.ranking["point_id"]):
        if point not in points_b:
            continue
        ra, rb = ranking_of(a.ranking, point), ranking_of(b.ranking, point)
        agree = rank_agreement(ra, rb)
        rows.append({"point_id": point, "objective": a.objective, "n": agree["n"],
                     "tau": agree["tau"], "top1": agree["top1"],
                     "best_a": min(ra, key=ra.get), "best_b": min(rb, key=rb.get)})
    agreement = pd.DataFrame(rows, columns=["point_id", "objective", "n", "tau", "top1", "best_a", "best_b"])
    return Comparison(both, agreement, sorted("/".join(k) for k in ua - ub),
                      sorted("/".join(k) for k in ub - ua))


def format_comparison(c: Comparison, name_a: str = "A", name_b: str = "B") -> str:
    """Plain-text tables for the terminal."""
    lines = [f"A = {name_a}", f"B = {name_b}", ""]
    header = ["point", "strategy", "metric", "A", "B", "B vs A"]
    body = []
    for r in c.metrics.itertuples(index=False):
        rel = f"{r.rel_diff:+.1%}" if math.isfinite(r.rel_diff) else "-"
        body.append([r.point_id, r.strategy, r.metric, format_value(r.a), format_value(r.b), rel])
    lines += text_table(header, body)
    lines.append("")
    if c.agreement.empty:
        lines.append("no grid point in common: no rank agreement")
    else:
        body = [[r.point_id, str(r.n), "-" if not math.isfinite(r.tau) else f"{r.tau:+.3f}",
                 "yes" if r.top1 else "no", r.best_a, r.best_b] for r in c.agreement.itertuples(index=False)]
        lines.append(f"rank agreement by {c.agreement['objective'].iloc[0]} (Kendall tau-b, top-1):")
        lines += text_table(["point", "strategies", "tau-b", "top-1", "best in A", "best in B"], body)
    for name, only in (("A", c.only_a), ("B", c.only_b)):
        if only:
            lines.append(f"only in {name}: {', '.join(only)}")
    return "\n".join(lines)


def to_json(c: Comparison) -> dict[str, Any]:
    return {"metrics": json_rows(c.metrics), "agreement": json_rows(c.agreement),
            "only_a": c.only_a, "only_b": c.only_b}
