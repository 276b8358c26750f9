"""Judging a validation: simulated vs live metrics, rankings, a verdict; as JSON, text and HTML.

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
"""
from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from results.compare import compare
from results.stats import direction, rank_agreement
from results.summary import RunSummary, format_value, json_rows, text_table

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
    return {"metrics": json_rows(metrics), "rankings": rankings, "metric_errors": errors,
            "verdict": verdict, "thresholds": thresholds(), "only_sim": c.only_b,
            "only_live": c.only_a}


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


# --- rendering -------------------------------------------------------------------------------
def _err(x: Any) -> str:
    return f"{x:+.0%}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def _val(x: Any) -> str:
    return format_value(float(x)) if isinstance(x, (int, float)) else "-"


def _point_rows(doc: dict[str, Any], point_id: str) -> tuple[list[str], list[list[str]]]:
    rows = [r for r in doc["metrics"] if r["point_id"] == point_id]
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    cell = {(r["strategy"], r["metric"]): r for r in rows}
    header = ["metric"]
    for s in strategies:
        header += [f"{s} sim", "live", "err"]
    body = []
    for m in dict.fromkeys(r["metric"] for r in rows):
        line = [SHORT.get(m, m)]
        for s in strategies:
            r = cell.get((s, m), {})
            line += [_val(r.get("sim")), _val(r.get("live")), _err(r.get("error"))]
        body.append(line)
    return header, body


def format_text(doc: dict[str, Any]) -> str:
    """The terminal report: per point a metric table and the two rankings, then the verdict."""
    out = []
    rankings = {r["point_id"]: r for r in doc["rankings"]}
    for p in doc["points"]:
        pid = p["point_id"]
        out.append(f"point {p['label']}: {_scale_note(p)}")
        header, body = _point_rows(doc, pid)
        out += text_table(header, body, left=1)
        r = rankings.get(pid)
        if r is not None:
            out.append(f"ranking by {r['objective']}:  sim {r['sim']}  |  live {r['live']}  |  "
                       f"tau-b {_tau(r['tau'])}, top-1 {'same' if r['top1'] else 'differs'}  "
                       f"-> {r['verdict']}")
        out.append("")
    out.append("err = (sim - live) / live.  verdict: " + doc["verdict"]["text"])
    return "\n".join(out)


def _tau(t: float | None) -> str:
    return f"{t:+.2f}" if t is not None and math.isfinite(t) else "undefined"


def _scale_note(p: dict[str, Any]) -> str:
    n, full = p["requests"], p["full_requests"]
    seeds = p["seeds"]
    counts = sorted(set(n.values()))
    count = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
    full_counts = sorted(set(full.values()))
    if counts == full_counts:
        return f"all {count} requests per unit ({len(seeds)} seed(s)), about {p['predicted_unit_s']:.0f} s each"
    return (f"first {count} of {full_counts[-1]} requests per unit (arrivals in the first "
            f"{p['cut_s']:.1f} s), scaled to about {p['predicted_unit_s']:.0f} s per unit")


def _machine_note(m: dict[str, Any]) -> str:
    def avg(x: Any) -> str:
        return "/".join(f"{v:.1f}" for v in x) if x else "?"
    return (f"machine: {m.get('cpu_count', '?')} cores; load average (1/5/15 min) "
            f"{avg(m.get('loadavg_before_live'))} before the live replay, "
            f"{avg(m.get('loadavg_after_live'))} after")


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def render_html(doc: dict[str, Any]) -> str:
    """The report section: verdict, what ran, per point the metric table and both rankings."""
    v = doc["verdict"]
    colour = {"agree": "#1d7a1d", "partial": "#a66f00", "disagree": "#a33", "failed": "#a33"}.get(
        v["ranking"], "#333")
    parts = [f"<p><b style='color:{colour}'>{_e(v['text'])}</b></p>",
             "<p class=note>" + "<br>".join(_e(x) for x in (
                 f"live run: {doc['live_run']} ({doc['target']['description']})",
                 f"re-simulated: {doc['resimulated_run']}",
                 f"command: {doc.get('command') or '-'}",
                 f"budget: {doc['budget_s']:.0f} s of replay, about {doc['per_unit_budget_s']:.0f} s "
                 f"per unit; err = (sim - live) / |live|",
                 _machine_note(doc.get("machine") or {}))) + "</p>"]
    for c in doc.get("checks") or []:
        parts.append(f"<p class=warn>{_e(c['level'])}: {_e(c['message'])}</p>")
    rankings = {r["point_id"]: r for r in doc["rankings"]}
    for p in doc["points"]:
        parts.append(f"<h3>{_e(p['label'])}</h3><p class=note>{_e(_scale_note(p))}</p>")
        header, body = _point_rows(doc, p["point_id"])
        parts.append("<table><tr>" + "".join(
            f"<th class=l>{_e(h)}</th>" if i == 0 else f"<th>{_e(h)}</th>" for i, h in enumerate(header))
            + "</tr>" + "".join("<tr>" + "".join(
                f"<td class=l>{_e(c)}</td>" if i == 0 else f"<td>{_e(c)}</td>" for i, c in enumerate(row))
                + "</tr>" for row in body) + "</table>")
        r = rankings.get(p["point_id"])
        if r is not None:
            parts.append(
                f"<p>ranking by {_e(r['objective'])}: simulator <b>{_e(r['sim'])}</b>; "
                f"live <b>{_e(r['live'])}</b>; Kendall tau-b {_e(_tau(r['tau']))}, best "
                f"strategy {'the same' if r['top1'] else 'different'}: <b>{_e(r['verdict'])}</b></p>")
    t = doc["thresholds"]
    parts.append(f"<p class=note>Verdict rules: a point agrees when the best strategy is the same and "
                 f"tau-b &ge; {t['agree_tau']}, disagrees when the best differs and tau-b &le; 0, "
                 f"fails when its live not-ok share exceeds the simulated one by more than "
                 f"{t.get('live_failed_share', LIVE_FAILED_SHARE):.0%}; "
                 f"metrics are close when every judged metric's median |err| &le; {t['close_error']:.0%}, "
                 f"rough up to {t['rough_error']:.0%}, off beyond (docs/validation.md).</p>")
    return "\n".join(parts)


__all__ = ["REPORTED", "VERDICT_METRICS", "format_text", "judge", "point_verdict", "render_html",
           "thresholds"]
