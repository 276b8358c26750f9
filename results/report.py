"""The self-contained HTML report of a run, plus PNG/SVG copies of every chart.

``build_report(run)`` reads the run once (unit by unit), computes the summary,
collects chart data, and writes ``report.html`` (Vega, Vega-Lite and
vega-embed inlined from vl-convert's bundle, so it opens offline) and
``charts/<name>.png|svg``.

Extra sections (the hook for validation, and anything later): pass
``extra_sections=[Section(title, html)]``, or drop files in
``<run>/validation/``: ``*.html`` fragments are inlined as they are (they are
written by this project's own tools, not by users), ``*.json`` files are shown
as a table (a flat object) or as formatted JSON.
"""
from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from results import charts
from results.capacity import capacity_chart, capacity_section_html, read_capacity
from results.metrics import METRICS, parse_slo
from results.rundir import RunDir, Unit
from results.summary import (
    TABLE_COLUMNS, RunSummary, format_value, point_backends, point_label, summarize_run, table_notes,
)
from results.templating import render

VALIDATION_DIR = "validation"


@dataclass(frozen=True, slots=True)
class Section:
    """An extra report section: a title and an HTML fragment."""

    title: str
    html: str


@dataclass(slots=True)
class Report:
    html_path: Path
    chart_files: list[Path]
    summary: RunSummary | None  # None: a capacity-only run (results.capacity)
    charts: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> Vega-Lite spec


# --- chart data collected while the run is read --------------------------------


class ChartData:
    """Gathers CDF and in-flight data unit by unit, keeping memory bounded.

    CDFs pool the seeds of a grid point x strategy; files arrive grouped by
    point and strategy, so each group is reduced to ``charts.CDF_QUANTILES``
    as soon as the next one starts. In-flight series are kept for one grid
    point (``focus_point``) and the first seed of each strategy.
    """

    def __init__(self, focus_point: str | None) -> None:
        self.focus_point = focus_point
        self._key: tuple[str, str] | None = None
        self._buf: dict[str, list[np.ndarray]] = {"TTFT": [], "E2EL": []}
        self.cdf_frames: list[pd.DataFrame] = []
        self.inflight: dict[str, tuple[int, pa.Table]] = {}

    def __call__(self, unit: Unit, table: pa.Table) -> None:
        key = (unit.point_id, unit.strategy)
        if key != self._key:
            self._flush()
            self._key = key
        cols = table.select(["status", "arrival_s", "first_token_s", "last_token_s"]).to_pandas()
        ok = cols["status"].to_numpy() == "ok"
        arr = cols["arrival_s"].to_numpy()[ok]
        self._buf["TTFT"].append((cols["first_token_s"].to_numpy()[ok] - arr) * 1000)
        self._buf["E2EL"].append((cols["last_token_s"].to_numpy()[ok] - arr) * 1000)
        focus = self.focus_point is None or unit.point_id == self.focus_point
        have = self.inflight.get(unit.strategy)
        if focus and (have is None or unit.seed < have[0]):
            self.focus_point = unit.point_id
            self.inflight[unit.strategy] = (
                unit.seed, table.select(["backend", "dispatch_s", "finish_s"]))

    def _flush(self) -> None:
        if self._key is None:
            return
        point, strategy = self._key
        for metric, parts in self._buf.items():
            df = charts.cdf_rows(np.concatenate(parts) if parts else np.zeros(0))
            if len(df):
                self.cdf_frames.append(df.assign(point_id=point, strategy=strategy, metric=metric))
        self._buf = {"TTFT": [], "E2EL": []}

    def finish(self) -> None:
        self._flush()
        self._key = None


def focus_point(manifest: dict[str, Any]) -> str | None:
    """The grid point whose in-flight series is drawn: the highest arrival rate, else the last."""
    points = manifest.get("points") or []
    if not points:
        return None
    axis = charts.rate_axis(manifest)
    if axis:
        with_rate = [p for p in points if isinstance((p.get("axes") or {}).get(axis), (int, float))]
        if with_rate:
            return str(max(with_rate, key=lambda p: p["axes"][axis])["point_id"])
    return str(points[-1]["point_id"])


# --- building ---------------------------------------------------------------------


def build_report(
    path: str | Path,
    *,
    out: str | Path | None = None,
    static: bool = True,
    objective: str | None = None,
    extra_sections: Sequence[Section] = (),
    progress: bool = True,
) -> Report:
    """Write ``report.html`` (default: in the run directory) and ``charts/*.png|svg``."""
    run = RunDir.open(path)
    manifest = run.manifest
    capacity = read_capacity(run.path)
    out_path = Path(out) if out is not None else run.path / "report.html"
    if capacity is not None and not run.record_files():
        return _capacity_report(run, capacity, out_path, static, progress)
    data = ChartData(focus_point(manifest))
    summary = summarize_run(run.path, objective=objective, on_unit=data, progress=progress)
    data.finish()
    specs = make_charts(summary, data, capacity)
    chart_files: list[Path] = []
    if static:
        chart_files = save_static(specs, out_path.parent / "charts", progress=progress)
    sections = list(extra_sections) + validation_sections(run.path)
    if capacity is not None:
        sections.insert(0, Section("Capacity", capacity_section_html(capacity)))
    page = render_html(summary, specs, run, sections, chart_dir="charts" if static else None)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out_path)
    return Report(out_path, chart_files, summary, specs)


def _capacity_report(run: RunDir, capacity: dict[str, Any], out_path: Path, static: bool,
                     progress: bool) -> Report:
    """The report of a run that holds a capacity search only (``python -m sim --capacity``)."""
    with alt.data_transformers.enable("default", max_rows=None):
        specs = {"capacity": capacity_chart(capacity).to_dict()}
    chart_files = save_static(specs, out_path.parent / "charts", progress=progress) if static else []
    m = run.manifest
    page = render(TEMPLATES, "capacity.html.j2",
                  title=f"Capacity report: {m.get('experiment_id') or run.path.name}",
                  section=capacity_section_html(capacity), specs=specs, bundle=_vega_bundle(),
                  scenario=_scenario(run),
                  generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out_path)
    return Report(out_path, chart_files, None, specs)


#: Target number of points of the in-flight chart (all backends and strategies).
INFLIGHT_POINTS = 12_000


def make_charts(summary: RunSummary, data: ChartData,
                capacity: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Every chart of the report as a Vega-Lite spec, by file name."""
    manifest = summary.manifest
    agg = summary.aggregate
    strategies = list(dict.fromkeys(summary.units["strategy"]))
    points = charts.point_table(manifest, agg)
    built: dict[str, alt.TopLevelMixin] = {}
    for name, metric, title in charts.LOAD_CHARTS:
        if metric == "request_goodput" and not _any_finite(agg, metric):
            metric, title = "request_throughput", "Request throughput vs offered load (no SLO set)"
        built[name] = charts.load_chart(agg, points, metric, title, strategies)
    labels = dict(zip(points["point_id"], points["point"]))
    cdfs = (pd.concat(data.cdf_frames, ignore_index=True) if data.cdf_frames
            else pd.DataFrame(columns=["value_ms", "cdf", "point_id", "strategy", "metric"]))
    cdfs["point"] = cdfs["point_id"].map(lambda p: labels.get(p, p))
    for metric in ("TTFT", "E2EL"):
        sub = cdfs[cdfs["metric"] == metric][["point", "strategy", "value_ms", "cdf"]]
        built[f"cdf_{metric.lower()}"] = charts.cdf_chart(sub, metric, strategies)
    if data.inflight:
        names_by_point = point_backends(manifest)
        frames = []
        for strategy, (seed, table) in data.inflight.items():
            backend = table.column("backend").to_numpy().astype(np.int64)
            names = names_by_point.get(data.focus_point or "") or [
                f"backend-{b}" for b in range(int(backend.max()) + 1 if len(backend) else 0)]
            # About INFLIGHT_POINTS points in all, whatever the fleet and strategy count.
            bins = int(np.clip(INFLIGHT_POINTS // max(1, len(names) * len(data.inflight)), 40, 300))
            rows = charts.inflight_rows(table.column("dispatch_s").to_numpy(),
                                        table.column("finish_s").to_numpy(), backend, names, bins=bins)
            frames.append(rows.assign(strategy=strategy))
        rows = pd.concat(frames, ignore_index=True)
        label = labels.get(data.focus_point, data.focus_point)
        built["inflight"] = charts.inflight_chart(
            rows, f"Requests in flight per backend at {label} (first seed)", strategies)
    slo = parse_slo(manifest.get("slo"))
    if slo:
        text = ", ".join(f"{k.upper()} <= {v:g} ms" for k, v in slo.items())
        built["slo_attainment"] = charts.slo_chart(agg, points, strategies, text)
    for name, x_metric, y_metric, title in charts.PARETO_CHARTS:
        if y_metric == "request_goodput" and not _any_finite(agg, y_metric):
            y_metric, title = "request_throughput", "Request throughput vs TTFT p99 (no SLO set)"
        built[name] = charts.pareto_chart(agg, points, x_metric, y_metric, title, strategies,
                                          summary.overloaded_pairs())
    if capacity is not None:
        built["capacity"] = capacity_chart(capacity)
    # Chart data is bounded by construction (quantile CDFs, binned in-flight series),
    # so altair's generic 5,000-row guard does not apply.
    with alt.data_transformers.enable("default", max_rows=None):
        return {name: chart.to_dict() for name, chart in built.items()}


def _any_finite(agg: pd.DataFrame, metric: str) -> bool:
    return bool(np.isfinite(agg.loc[agg["metric"] == metric, "mean"].to_numpy(dtype=float)).any())


def save_static(specs: dict[str, dict[str, Any]], folder: Path, *, progress: bool = True) -> list[Path]:
    """PNG (2x) and SVG copies of each chart, via vl-convert (no browser needed)."""
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    version = vl_version_for_vl_convert()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, spec in tqdm(specs.items(), desc="charts", unit="chart", disable=not progress,
                           leave=False):
        svg = folder / f"{name}.svg"
        svg.write_text(vlc.vegalite_to_svg(spec, vl_version=version), encoding="utf-8")
        png = folder / f"{name}.png"
        png.write_bytes(vlc.vegalite_to_png(spec, vl_version=version, scale=2))
        written += [png, svg]
    return written


def validation_sections(run_path: Path) -> list[Section]:
    """Sections from ``<run>/validation/*.html`` and ``*.json`` (see the module docstring)."""
    folder = run_path / VALIDATION_DIR
    if not folder.is_dir():
        return []
    out = []
    for f in sorted(folder.iterdir()):
        title = f"Validation: {f.stem.replace('_', ' ')}"
        if f.suffix == ".html":
            out.append(Section(title, f.read_text(encoding="utf-8")))
        elif f.suffix == ".json":
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                out.append(Section(title, render(TEMPLATES, "json_section.html.j2", table=None, text="",
                                                 error=f"{f.name} is not valid JSON: {exc}")))
                continue
            out.append(Section(title, _json_html(doc)))
    return out


# --- HTML: what goes in each table here, the layout in templates/report.html.j2 ----------
TEMPLATES = Path(__file__).resolve().parent / "templates"
NAV = [("ranking", "Ranking"), ("summary", "Summary"), ("charts", "Charts"),
       ("reliability", "Requests by status"), ("balance", "Load balance and prefix cache"),
       ("all-metrics", "All metrics"), ("scenario", "Scenario"), ("environment", "Environment")]


def render_html(
    summary: RunSummary,
    specs: dict[str, dict[str, Any]],
    run: RunDir,
    sections: Sequence[Section] = (),
    chart_dir: str | None = "charts",
) -> str:
    """The report page (a pure function of its inputs, apart from the vl-convert bundle)."""
    m = summary.manifest
    return render(
        TEMPLATES, "report.html.j2",
        title=f"Routing report: {m.get('experiment_id') or run.path.name}",
        meta=_meta(summary), health=_health(summary),
        nav=NAV + [(f"extra-{i}", s.title) for i, s in enumerate(sections)],
        ranking=_ranking(summary), summary=_summary(summary), specs=specs, chart_dir=chart_dir,
        has_slo_chart="slo_attainment" in specs, status=_status(summary), balance=_balance(summary),
        all_metrics=_all_metrics(summary), scenario=_scenario(run), environment=_environment(summary, run),
        sections=sections, bundle=_vega_bundle(),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))


@functools.lru_cache(maxsize=1)
def _vega_bundle() -> str:
    """Vega + Vega-Lite + vega-embed as one script, matching altair's Vega-Lite version."""
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    return vlc.javascript_bundle(vl_version=vl_version_for_vl_convert())


def _meta(s: RunSummary) -> list[tuple[str, str]]:
    m = s.manifest
    slo = parse_slo(m.get("slo"))
    slo_text = ", ".join(f"{k.upper()} \u2264 {v:g} ms" for k, v in slo.items()) or "none set"
    strategies = ", ".join(str(x.get("label") or x.get("name")) for x in m.get("strategies") or []) \
        or ", ".join(dict.fromkeys(s.units["strategy"]))
    seeds = m.get("seeds") or sorted(set(s.units["seed"]))
    return [
        ("mode", str(m.get("mode", "?"))), ("scenario", str(m.get("scenario", "?"))),
        ("created", str(m.get("created", "?"))), ("grid points", str(s.units["point_id"].nunique())),
        ("strategies", strategies), ("seeds", ", ".join(map(str, seeds))),
        ("requests", f"{int(s.units['num_requests'].sum()):,}"), ("SLO", slo_text),
        ("ranked by", s.objective),
    ]


def _health(s: RunSummary) -> list[str]:
    """The banner's lines when units are incomplete (``results.health``); empty otherwise."""
    lines = s.health.warnings(_point_labels(s))
    if not lines:
        return []
    return [lines[0].removeprefix("WARNING: "), *(ln.strip() for ln in lines[1:])]


def _ranking(s: RunSummary) -> dict[str, Any]:
    info = METRICS.get(s.objective)
    labels = _point_labels(s)
    unranked = s.health.incomplete.groupby(["point_id", "strategy"], sort=False)["unfinished_share"].max()
    by_point = dict(tuple(s.ranking.groupby("point_id", sort=False)))
    points = []
    for point in dict.fromkeys(s.units["point_id"]):
        g = by_point.get(point, s.ranking.iloc[0:0])
        rows = [{"cls": "best" if r.rank == 1 else "tied" if r.tied_with_best else "",
                 "rank": r.rank, "strategy": r.strategy, "mean": format_value(r.mean),
                 "ci": (f"{format_value(r.ci_low)} \u2013 {format_value(r.ci_high)}"
                        if math.isfinite(r.ci_low) else "n/a"),
                 "n": r.n, "tie": "best" if r.rank == 1 else "tied" if r.tied_with_best else "",
                 "p": _p_text(getattr(r, "p_holm", math.nan))}
                for r in g.itertuples(index=False)]
        points.append({"label": labels.get(point, point), "rows": rows,
                       "unranked": [(st, f"{share:.0%}") for (p, st), share in unranked.items() if p == point]})
    return {"objective": s.objective, "unit": info.unit if info else "",
            "better": "higher" if info and info.better == "higher" else "lower", "points": points}


def _p_text(p: float) -> str:
    if not (isinstance(p, float) and math.isfinite(p)):
        return ""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _summary(s: RunSummary) -> dict[str, Any]:
    agg = s.aggregate.set_index(["point_id", "strategy", "metric"])
    overloaded = s.overloaded_pairs()
    labels = _point_labels(s)
    rows = []
    for point, strategy in s.units[["point_id", "strategy"]].drop_duplicates().itertuples(index=False):
        k_n = overloaded.get((point, strategy))
        shown = f"{strategy} (overloaded in {k_n[0]} of {k_n[1]} seeds)" if k_n else strategy
        rows.append([labels.get(point, point), shown] + [
            format_value(*agg.loc[(point, strategy, metric), ["mean", "ci_low", "ci_high"]])
            for metric, _ in TABLE_COLUMNS])
    note = " ".join(line[0].upper() + line[1:] + "." for line in table_notes(s)[1:])
    if overloaded:
        note += (" A unit marked overloaded had a queue that grew without bound (its latencies "
                 "grow with the run's length; results.saturation); means leave out overloaded "
                 "seeds where other seeds of the same configuration were stable.")
    return {"note": note, "columns": [label for _, label in TABLE_COLUMNS], "rows": rows}


def _status(s: RunSummary) -> dict[str, Any]:
    cols = ["num_requests", "completed", "num_error", "num_timeout", "num_rejected", "num_unfinished",
            "num_skipped"]
    sums = s.units.groupby(["point_id", "strategy"], sort=False)[cols].sum()
    labels = _point_labels(s)
    return {"columns": ["requests", "ok", "error", "timeout", "rejected", "unfinished", "skipped"],
            "rows": [[labels.get(p, p), st] + [f"{int(r[c]):,}" for c in cols]
                     for (p, st), r in sums.iterrows()]}


def _balance(s: RunSummary) -> list[dict[str, Any]]:
    labels = _point_labels(s)
    out = []
    if s.backends.empty:
        return out
    agg = s.aggregate.set_index(["point_id", "strategy", "metric"])

    def mean(point: str, strategy: str, metric: str) -> float:
        key = (point, strategy, metric)
        return float(agg.loc[key, "mean"]) if key in agg.index else math.nan

    for point, g in s.backends.groupby("point_id", sort=False):
        names = list(dict.fromkeys(g["name"]))
        rows = []
        for strategy, gs in g.groupby("strategy", sort=False):
            by = gs.groupby("name", sort=False)
            req, work = by["requests"].sum(), by["work_tokens"].sum()
            peak = by["peak_inflight"].max()
            queries, hits = by["prefix_queries"].sum(min_count=1), by["prefix_hits"].sum(min_count=1)
            total, work_total = req.sum(), work.sum()
            cells = []
            for n in names:
                if not total:
                    cells.append("-")
                    continue
                q, h = queries.get(n, math.nan), hits.get(n, math.nan)
                hit = f" \u00b7 hit {h / q:.0%}" if q == q and h == h and q > 0 else ""
                share = work.get(n, 0) / work_total if work_total else math.nan
                cells.append(f"{req.get(n, 0) / total:.1%} req \u00b7 {share:.1%} work{hit} "
                             f"\u00b7 peak {int(peak.get(n, 0))}")
            rows.append({"strategy": strategy, "cells": cells,
                         "imbalance": format_value(mean(point, strategy, "load_imbalance")),
                         "inflight": format_value(mean(point, strategy, "inflight_imbalance")),
                         "hit": _pct(mean(point, strategy, "prefix_hit_rate")),
                         "expected": _pct(mean(point, strategy, "expected_hit_rate"))})
        out.append({"label": labels.get(point, point), "names": names, "rows": rows})
    return out


def _pct(x: float) -> str:
    return f"{x:.1%}" if math.isfinite(x) else "-"


def _all_metrics(s: RunSummary) -> dict[str, Any]:
    labels = _point_labels(s)
    keys = list(s.units[["point_id", "strategy"]].drop_duplicates().itertuples(index=False))
    idx = s.aggregate.set_index(["metric", "point_id", "strategy"])
    rows = [[metric, info.unit] + [format_value(*idx.loc[(metric, p, st), ["mean", "ci_low", "ci_high"]])
                                   for p, st in keys]
            for metric, info in METRICS.items()]
    return {"columns": [(labels.get(p, p), st) for p, st in keys], "rows": rows}


def _scenario(run: RunDir) -> dict[str, Any]:
    path = run.path / "scenario.toml"
    m = run.manifest
    fleet = []
    for p in m.get("points") or []:
        groups: dict[tuple[str, str], int] = {}
        for b in p.get("backends") or []:
            key = (str(b.get("group", "?")), str(b.get("profile", "?")))
            groups[key] = groups.get(key, 0) + 1
        fleet.append((point_label(p), ", ".join(f"{n} x {prof} ({g})" for (g, prof), n in groups.items())))
    resolved = m.get("resolved_scenario")
    return {"fleet": fleet, "backends": (m.get("live") or {}).get("backends"),
            "resolved": json.dumps(resolved, indent=2) if resolved else "",
            "text": path.read_text(encoding="utf-8") if path.exists() else "(no scenario.toml in the run)"}


def _environment(s: RunSummary, run: RunDir) -> dict[str, Any]:
    env = s.manifest.get("environment") or {}
    rows = [(k, v) for k, v in env.items() if k != "versions"]
    rows += [(f"{k} version", v) for k, v in (env.get("versions") or {}).items()]
    return {"rows": rows, "failures": run.failures(),
            "manifest": json.dumps(s.manifest, indent=2, default=str)}


def _point_labels(s: RunSummary) -> dict[str, str]:
    return {str(p["point_id"]): point_label(p) for p in s.manifest.get("points") or []}


def _json_html(doc: Any) -> str:
    if isinstance(doc, dict) and all(not isinstance(v, (dict, list)) for v in doc.values()):
        return render(TEMPLATES, "json_section.html.j2", table=list(doc.items()), text="", error="")
    return render(TEMPLATES, "json_section.html.j2", table=None, text=json.dumps(doc, indent=2), error="")
