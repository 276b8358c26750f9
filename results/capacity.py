"""Capacity results (``capacity.json``): the table, the chart and the report section.

``python -m sim SCENARIO --capacity`` writes ``capacity.json`` into its run
directory (``sim.capacity`` says how the search runs); this module reads it for
the terminal table and for ``python -m results``: a capacity-only run gets a
report of its own, a run that also holds records gets a "Capacity" section.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from results.summary import text_table

CAPACITY_FILE = "capacity.json"


def read_capacity(run_path: str | Path) -> dict[str, Any] | None:
    """The run's ``capacity.json``, or None when it has none."""
    path = Path(run_path) / CAPACITY_FILE
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or doc.get("capacity_version") != 1:
        raise ValueError(f"{path} is not a capacity file of version 1")
    return doc


def _fmt(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    x = float(x)
    return f"{x:.0f}" if abs(x) >= 100 or x.is_integer() else f"{x:.3g}"


def capacity_rows(doc: dict[str, Any]) -> pd.DataFrame:
    """One row per fleet x strategy: capacity (the bracket's lower end), bracket, attainments."""
    fleets = {f["fleet_id"]: f for f in doc.get("fleets") or []}
    rows = []
    for r in doc.get("results") or []:
        f = fleets.get(r["fleet_id"], {})
        probes = {p["load"]: p for p in r.get("probes") or []}
        lo, hi = r.get("lo"), r.get("hi")
        at_lo = probes.get(lo, {}).get("mean") if lo is not None else None
        at_hi = probes.get(hi, {}).get("mean") if hi is not None else None
        rows.append({"fleet": f.get("label", r["fleet_id"]), "strategy": r["strategy"],
                     "capacity": lo, "lo": lo, "hi": hi, "unit": f.get("unit", ""),
                     "attainment_at_lo": at_lo, "attainment_at_hi": at_hi,
                     "probes": len(probes), "note": r.get("note", "")})
    return pd.DataFrame(rows, columns=["fleet", "strategy", "capacity", "lo", "hi", "unit",
                                       "attainment_at_lo", "attainment_at_hi", "probes", "note"])


def format_capacity(doc: dict[str, Any]) -> str:
    """The terminal table: per fleet, strategies by capacity, highest first."""
    df = capacity_rows(doc)
    target = doc.get("target_attainment")
    slo = ", ".join(f"{k} <= {v:g}" for k, v in (doc.get("slo") or {}).items())
    lines = [f"capacity: the highest load at which mean SLO attainment over seeds "
             f"{doc.get('seeds')} stays >= {target:g} (SLO: {slo or 'none'})", ""]
    body = []
    df = df.assign(_c=df["capacity"].fillna(-1.0))
    for fleet, g in df.groupby("fleet", sort=False):
        for r in g.sort_values("_c", ascending=False).itertuples(index=False):
            body.append([str(fleet), r.strategy, f"{_fmt(r.capacity)} {r.unit}",
                         f"[{_fmt(r.lo)}, {_fmt(r.hi)}]", _fmt(r.attainment_at_lo),
                         _fmt(r.attainment_at_hi), str(r.probes), r.note])
    lines += text_table(["fleet", "strategy", "capacity", "bracket [met, missed]",
                         "attain. met", "attain. missed", "probes", "note"], body, left=2)
    lines.append("capacity = the bracket's lower end (met the target); the true capacity lies "
                 "in the bracket")
    return "\n".join(lines)


def probe_rows(doc: dict[str, Any]) -> pd.DataFrame:
    """Every probe: fleet, strategy, load, mean attainment (the chart's points)."""
    fleets = {f["fleet_id"]: f.get("label", f["fleet_id"]) for f in doc.get("fleets") or []}
    rows = [{"fleet": fleets.get(r["fleet_id"], r["fleet_id"]), "strategy": r["strategy"],
             "load": p["load"], "attainment": p["mean"], "passed": p["passed"]}
            for r in doc.get("results") or [] for p in r.get("probes") or []]
    return pd.DataFrame(rows, columns=["fleet", "strategy", "load", "attainment", "passed"])


def capacity_chart(doc: dict[str, Any]):
    """SLO attainment against load per strategy (every probe), with the target as a rule."""
    import altair as alt

    from results.charts import HEIGHT, WIDTH

    data = probe_rows(doc).sort_values(["fleet", "strategy", "load"])
    unit = next((f.get("unit", "") for f in doc.get("fleets") or []), "")
    target = float(doc.get("target_attainment", 0.9))
    strategies = list(dict.fromkeys(data["strategy"]))
    color = alt.Color("strategy:N", scale=alt.Scale(domain=strategies, scheme="tableau10"))
    line = alt.Chart().mark_line(point=True).encode(
        x=alt.X("load:Q", title=f"load ({unit})", scale=alt.Scale(type="log")),
        y=alt.Y("attainment:Q", title="SLO attainment (mean over seeds)",
                scale=alt.Scale(domain=[0, 1])),
        color=color,
        tooltip=["fleet:N", "strategy:N", alt.Tooltip("load:Q", format=".4g"),
                 alt.Tooltip("attainment:Q", format=".3f"), "passed:N"])
    rule = alt.Chart().mark_rule(strokeDash=[4, 4], color="black").encode(
        y=alt.datum(target))
    layered = alt.layer(line, rule, data=data).properties(width=WIDTH, height=HEIGHT)
    title = f"Capacity search: SLO attainment vs load (target {target:g}, dashed)"
    if data["fleet"].nunique() > 1:
        return layered.facet(column=alt.Column("fleet:N", title=None), title=title)
    return layered.properties(title=title)


def capacity_section_html(doc: dict[str, Any]) -> str:
    """The report section: the table (the chart is added to the report's charts)."""
    df = capacity_rows(doc)
    e = html.escape
    head = "".join(f"<th>{h}</th>" for h in ("fleet", "strategy", "capacity", "bracket [met, missed]",
                                             "attainment met", "attainment missed", "probes", "note"))
    body = "".join(
        f"<tr><td class=l>{e(str(r.fleet))}</td><td class=l>{e(str(r.strategy))}</td>"
        f"<td>{_fmt(r.capacity)} {e(str(r.unit))}</td><td>[{_fmt(r.lo)}, {_fmt(r.hi)}]</td>"
        f"<td>{_fmt(r.attainment_at_lo)}</td><td>{_fmt(r.attainment_at_hi)}</td>"
        f"<td>{r.probes}</td><td class=l>{e(str(r.note))}</td></tr>"
        for r in df.itertuples(index=False))
    slo = ", ".join(f"{e(k)} &le; {v:g}" for k, v in (doc.get("slo") or {}).items())
    return (f'<p class="note">The highest load per strategy and fleet at which SLO attainment '
            f"(mean over seeds {e(str(doc.get('seeds')))}) stays at or above "
            f"{doc.get('target_attainment'):g} ({slo}), found by bisection: the capacity is the "
            "bracket's lower end, where the target was met; at its upper end it was missed "
            "(<code>python -m sim SCENARIO --capacity</code>).</p>"
            f"<table><tr>{head}</tr>{body}</table>")
