"""A validation document (``validation.judge``) as a terminal table and as an HTML report section."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from results.summary import format_value, text_table
from results.templating import render
from validation.judge import LIVE_FAILED_SHARE, SHORT


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
    per_seed = {r["point_id"]: r for r in doc.get("per_seed") or []}
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
        seeds = per_seed.get(pid)
        if seeds is not None and seeds["seeds"]:
            out.append("per seed: " + "; ".join(
                f"seed {x['seed']} tau-b {_tau(x['tau'])} top-1 {'same' if x['top1'] else 'differs'}"
                for x in seeds["seeds"]))
            out.append("  " + _spread(seeds))
        hits = [h for h in doc.get("hit_rates") or [] if h["point_id"] == pid]
        if hits:
            out.append("prefix-hit rate sim / live: " + ", ".join(
                f"{h['strategy']} {_pct(h['sim'])} / {_pct(h['live'])}" for h in hits))
        out.append("")
    out.append("err = (sim - live) / live.  verdict: " + doc["verdict"]["text"])
    return "\n".join(out)


def _pct(x: Any) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def _spread(seeds: dict[str, Any]) -> str:
    """Tau-b over the seeds (mean, min..max, sd) and how often the best strategy agreed."""
    if seeds.get("tau_mean") is None:
        return f"tau-b undefined at every seed; top-1 the same at {seeds['top1_share']:.0%} of seeds"
    sd = f", sd {seeds['tau_sd']:.2f}" if seeds.get("tau_sd") is not None else ""
    return (f"tau-b over {len(seeds['seeds'])} seeds: mean {seeds['tau_mean']:+.2f}, "
            f"range {seeds['tau_min']:+.2f}..{seeds['tau_max']:+.2f}{sd}; top-1 the same at "
            f"{seeds['top1_share']:.0%} of seeds")


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


TEMPLATES = Path(__file__).resolve().parent / "templates"
COLOURS = {"agree": "#1d7a1d", "partial": "#a66f00", "disagree": "#a33", "failed": "#a33"}


def render_html(doc: dict[str, Any]) -> str:
    """The report section: verdict, what ran, per point the metric table and both rankings."""
    v = doc["verdict"]
    rankings = {r["point_id"]: r for r in doc["rankings"]}
    per_seed = {r["point_id"]: r for r in doc.get("per_seed") or []}
    points = []
    for p in doc["points"]:
        header, rows = _point_rows(doc, p["point_id"])
        r = rankings.get(p["point_id"])
        seeds = per_seed.get(p["point_id"])
        hits = [h for h in doc.get("hit_rates") or [] if h["point_id"] == p["point_id"]]
        points.append({"label": p["label"], "note": _scale_note(p), "header": header, "rows": rows,
                       "ranking": None if r is None else {
                           "objective": r["objective"], "sim": r["sim"], "live": r["live"],
                           "tau": _tau(r["tau"]), "top1": "the same" if r["top1"] else "different",
                           "verdict": r["verdict"]},
                       "seeds": [] if seeds is None else [
                           {"seed": x["seed"], "sim": x["sim"], "live": x["live"],
                            "tau": _tau(x["tau"]), "top1": "same" if x["top1"] else "differs"}
                           for x in seeds["seeds"]],
                       "spread": _spread(seeds) if seeds and seeds["seeds"] else "",
                       "hits": [{"strategy": h["strategy"], "sim": _pct(h["sim"]),
                                 "live": _pct(h["live"])} for h in hits]})
    t = doc["thresholds"]
    return render(
        TEMPLATES, "section.html.j2",
        colour=COLOURS.get(v["ranking"], "#333"), verdict=v["text"],
        notes=[f"live run: {doc['live_run']} ({doc['target']['description']})",
               f"re-simulated: {doc['resimulated_run']}",
               f"command: {doc.get('command') or '-'}",
               f"budget: {doc['budget_s']:.0f} s of replay, about {doc['per_unit_budget_s']:.0f} s "
               f"per unit; err = (sim - live) / |live|",
               _machine_note(doc.get("machine") or {})],
        checks=doc.get("checks") or [], points=points,
        rules={"agree_tau": t["agree_tau"], "close": f"{t['close_error']:.0%}",
               "rough": f"{t['rough_error']:.0%}",
               "failed_share": f"{t.get('live_failed_share', LIVE_FAILED_SHARE):.0%}"})


__all__ = ["format_text", "render_html"]
