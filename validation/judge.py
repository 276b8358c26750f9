"""Judging a validation: simulated vs live metrics, rankings and a verdict, as a JSON document.

Everything here is a pure function of two run summaries (the re-simulated
scaled workload and its live replay), so the rules can be tested on made-up
summaries. The relative error of a metric is the simulator's, against the live
value taken as the truth: ``(sim - live) / |live|`` (``results.compare`` with
the live run as A).

Verdict rules (documented in docs/validation.md):

- per grid point, the strategies' rankings by the objective: **agree** when the
  best strategy is the same and Kendall tau-b >= ``AGREE_TAU``; **disagree** when
  the best differs and tau-b <= 0; **partial** otherwise. Over all points: agree
  if every point agrees, disagree if every point disagrees, else partial.
- metrics: for each of ``VERDICT_METRICS`` the median absolute error over the
  configurations (point x strategy); the largest of these medians decides:
  **close** (<= ``CLOSE_ERROR``), **rough** (<= ``ROUGH_ERROR``), else **off**.
  p99s are reported but not judged: on a few hundred requests they rest on a
  handful of them.
- a point whose live requests failed far more often than simulated (the share not
  ok exceeds the simulated share by more than ``LIVE_FAILED_SHARE``: a dead or
  misconfigured backend) is **failed**: its live ranking measures the failures, not
  the strategies, so it is left out of the overall ranking verdict, which is
  **failed** when no point is left.

Besides the rankings of the means over seeds, each point is also ranked **seed by
seed** (the same seed's simulated and live units, which replayed the same requests):
tau-b and top-1 per seed and their spread (mean, min, max, top-1 share) say whether an
agreement holds across seeds or rests on one lucky draw. **Prefix-hit rates** (the
engines' prefix-cache hits over queries, ``prefix_hit_rate``) are set simulated beside
live per point and strategy: cache-aware policies can only rank alike on both sides if
they hit alike.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from results.compare import compare
from results.stats import direction, rank_agreement
from results.summary import RunSummary, json_rows

#: Reported per configuration, in this order (the issue's list).
REPORTED = ("median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "median_e2el_ms",
            "request_throughput", "request_goodput", "failed")
#: Judged by the metrics verdict.
VERDICT_METRICS = ("median_ttft_ms", "median_tpot_ms", "median_e2el_ms", "request_throughput",
                   "request_goodput")
AGREE_TAU = 0.8
LIVE_FAILED_SHARE = 0.2
CLOSE_ERROR = 0.15
ROUGH_ERROR = 0.50
SHORT = {"median_ttft_ms": "TTFT p50 ms", "p99_ttft_ms": "TTFT p99 ms", "median_tpot_ms": "TPOT p50 ms",
         "p99_tpot_ms": "TPOT p99 ms", "median_e2el_ms": "E2EL p50 ms",
         "request_throughput": "req/s", "request_goodput": "goodput req/s",
         "slo_attainment": "SLO attainment", "failed": "not ok"}


def thresholds() -> dict[str, Any]:
    return {"agree_tau": AGREE_TAU, "close_error": CLOSE_ERROR, "rough_error": ROUGH_ERROR,
            "live_failed_share": LIVE_FAILED_SHARE, "judged_metrics": list(VERDICT_METRICS)}


def point_verdict(tau: float, top1: bool) -> str:
    """One point's ranking verdict (see the module docstring)."""
    if top1 and math.isfinite(tau) and tau >= AGREE_TAU:
        return "agree"
    if not top1 and (not math.isfinite(tau) or tau <= 0):
        return "disagree"
    return "partial"


def overall_ranking_verdict(per_point: Sequence[str]) -> str:
    if not per_point:
        return "undecided"
    judged = [v for v in per_point if v != "failed"]
    if not judged:
        return "failed"
    per_point = judged
    if all(v == "agree" for v in per_point):
        return "agree"
    if all(v == "disagree" for v in per_point):
        return "disagree"
    return "partial"


def metrics_verdict(worst_median_error: float) -> str:
    if not math.isfinite(worst_median_error):
        return "undecided"
    if worst_median_error <= CLOSE_ERROR:
        return "close"
    return "rough" if worst_median_error <= ROUGH_ERROR else "off"


def failed_share(summary: RunSummary, point_id: str) -> float:
    """The share of a point's requests (every strategy and seed) that were not ok."""
    u = summary.units[summary.units["point_id"] == point_id]
    total = float(u["num_requests"].sum())
    return float(u["failed"].sum()) / total if total else math.nan


def tied_ranks(summary: RunSummary, point_id: str, objective: str) -> dict[str, float]:
    """Strategy -> rank by the objective's mean at one point; equal means share a rank.

    (``results.stats.rank_strategies`` breaks exact ties by label, which would
    make two all-tied rankings look identical; Kendall tau-b needs the ties.)
    """
    agg = summary.aggregate
    sub = agg[(agg["point_id"] == point_id) & (agg["metric"] == objective)]
    mean = sub.set_index("strategy")["mean"].astype(float)
    key = -mean if direction(objective) == "higher" else mean
    return key.fillna(math.inf).rank(method="min").to_dict()


def ordering(ranks: dict[str, float]) -> str:
    """``a > b = c``: best first, ``=`` between equal ranks."""
    names = sorted(ranks, key=lambda s: (ranks[s], s))
    out = names[:1]
    for prev, name in zip(names, names[1:]):
        out.append(("= " if ranks[name] == ranks[prev] else "> ") + name)
    return " ".join(out)


def unit_ranks(summary: RunSummary, point_id: str, seed: int, objective: str) -> dict[str, float]:
    """Strategy -> rank by one seed's unit value at one point (equal values share a rank)."""
    u = summary.units
    sub = u[(u["point_id"] == point_id) & (u["seed"] == seed)]
    if objective not in sub.columns or sub.empty:
        return {}
    value = sub.set_index("strategy")[objective].astype(float)
    key = -value if direction(objective) == "higher" else value
    return key.fillna(math.inf).rank(method="min").to_dict()


def per_seed_rankings(sim: RunSummary, live: RunSummary, objective: str) -> list[dict[str, Any]]:
    """Per point: tau-b and top-1 of each seed's simulated vs live ranking, and their spread."""
    out = []
    live_points = set(live.units["point_id"])
    for point in dict.fromkeys(sim.units["point_id"]):
        if point not in live_points:
            continue
        seeds = sorted(set(sim.units.loc[sim.units["point_id"] == point, "seed"])
                       & set(live.units.loc[live.units["point_id"] == point, "seed"]))
        rows = []
        for seed in seeds:
            rs, rl = unit_ranks(sim, point, seed, objective), unit_ranks(live, point, seed, objective)
            agree = rank_agreement(rs, rl)
            tau = float(agree["tau"])
            rows.append({"seed": int(seed), "sim": ordering(rs), "live": ordering(rl),
                         "tau": tau if math.isfinite(tau) else None, "top1": bool(agree["top1"])})
        taus = [r["tau"] for r in rows if r["tau"] is not None]
        out.append({"point_id": point, "objective": objective, "seeds": rows,
                    "tau_mean": float(np.mean(taus)) if taus else None,
                    "tau_min": float(np.min(taus)) if taus else None,
                    "tau_max": float(np.max(taus)) if taus else None,
                    "tau_sd": float(np.std(taus, ddof=1)) if len(taus) > 1 else None,
                    "top1_share": (sum(r["top1"] for r in rows) / len(rows)) if rows else None})
    return out


def hit_rates(sim: RunSummary, live: RunSummary) -> list[dict[str, Any]]:
    """Prefix-hit rate per point and strategy, simulated vs live (means over seeds)."""
    def means(summary: RunSummary) -> dict[tuple[str, str], float]:
        u = summary.units
        if "prefix_hit_rate" not in u.columns:
            return {}
        g = u.groupby(["point_id", "strategy"], sort=False)["prefix_hit_rate"].mean()
        return {k: float(v) for k, v in g.items()}
    ms, ml = means(sim), means(live)
    rows = []
    for key, sv in ms.items():
        if key not in ml:
            continue
        lv = ml[key]
        diff = sv - lv if math.isfinite(sv) and math.isfinite(lv) else math.nan
        rows.append({"point_id": key[0], "strategy": key[1],
                     "sim": sv if math.isfinite(sv) else None, "live": lv if math.isfinite(lv) else None,
                     "diff": diff if math.isfinite(diff) else None})
    return rows


def judge(sim: RunSummary, live: RunSummary, objective: str) -> dict[str, Any]:
    """Metrics with errors, rankings by ``objective`` with tau-b and top-1, error statistics, verdict."""
    reported = REPORTED + ((objective,) if objective not in REPORTED else ())
    c = compare(live, sim, reported)
    metrics = c.metrics.rename(columns={"a": "live", "b": "sim", "rel_diff": "error"})
    metrics = metrics[["point_id", "strategy", "metric", "sim", "live", "error"]]
    rankings = []
    live_points = set(live.units["point_id"])
    for point in dict.fromkeys(sim.units["point_id"]):
        if point not in live_points:
            continue
        rs, rl = tied_ranks(sim, point, objective), tied_ranks(live, point, objective)
        agree = rank_agreement(rs, rl)
        failed = {"sim": failed_share(sim, point), "live": failed_share(live, point)}
        verdict = ("failed" if failed["live"] - failed["sim"] > LIVE_FAILED_SHARE
                   else point_verdict(float(agree["tau"]), bool(agree["top1"])))
        rankings.append({"point_id": point, "objective": objective,
                         "sim": ordering(rs), "live": ordering(rl),
                         "n": int(agree["n"]), "tau": float(agree["tau"]), "top1": bool(agree["top1"]),
                         "failed_share": failed, "verdict": verdict})
    errors = []
    for m in VERDICT_METRICS:
        e = metrics.loc[metrics["metric"] == m, "error"].to_numpy(dtype=float)
        e = np.abs(e[np.isfinite(e)])
        errors.append({"metric": m, "n": int(len(e)),
                       "median_abs_error": float(np.median(e)) if len(e) else math.nan,
                       "max_abs_error": float(np.max(e)) if len(e) else math.nan})
    finite = [e for e in errors if math.isfinite(e["median_abs_error"])]
    worst = max(finite, key=lambda e: e["median_abs_error"]) if finite else None
    ranking = overall_ranking_verdict([r["verdict"] for r in rankings])
    level = metrics_verdict(worst["median_abs_error"] if worst else math.nan)
    verdict = {"ranking": ranking, "metrics": level,
               "worst_metric": worst["metric"] if worst else None,
               "worst_median_abs_error": worst["median_abs_error"] if worst else None,
               "text": verdict_text(ranking, level, rankings, worst)}
    return {"metrics": json_rows(metrics), "rankings": rankings,
            "per_seed": per_seed_rankings(sim, live, objective), "hit_rates": hit_rates(sim, live),
            "metric_errors": errors, "verdict": verdict, "thresholds": thresholds(),
            "only_sim": c.only_b, "only_live": c.only_a}


def verdict_text(ranking: str, level: str, rankings: list[dict[str, Any]],
                 worst: dict[str, Any] | None) -> str:
    top1 = sum(r["top1"] for r in rankings)
    taus = [r["tau"] for r in rankings if r["tau"] is not None and math.isfinite(r["tau"])]
    tau = f"mean tau-b {np.mean(taus):+.2f}" if taus else "tau-b undefined"
    words = {"agree": "rankings agree", "partial": "rankings partly agree",
             "disagree": "rankings disagree", "undecided": "no ranking to compare",
             "failed": "no ranking to compare: the live side failed"}
    text = f"{words[ranking]} ({tau}, same best strategy at {top1}/{len(rankings)} points)"
    failed = [r for r in rankings if r["verdict"] == "failed"]
    if failed:
        worst_share = max(r["failed_share"]["live"] for r in failed)
        text += (f"; live requests failed at {len(failed)}/{len(rankings)} points (up to "
                 f"{worst_share:.0%} not ok; see the live run's records), left out of the ranking verdict")
    if worst is not None:
        text += (f"; simulated metrics {level} (largest median error {worst['median_abs_error']:.0%}, "
                 f"{SHORT.get(worst['metric'], worst['metric'])})")
    return text


__all__ = ["AGREE_TAU", "CLOSE_ERROR", "REPORTED", "ROUGH_ERROR", "SHORT", "VERDICT_METRICS", "hit_rates",
           "judge", "metrics_verdict", "overall_ranking_verdict", "per_seed_rankings", "point_verdict",
           "thresholds", "tied_ranks", "unit_ranks"]
