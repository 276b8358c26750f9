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
import html
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
from results.metrics import METRICS, parse_slo
from results.rundir import RunDir, Unit
from results.summary import (
    TABLE_COLUMNS, RunSummary, format_value, point_backends, point_label, summarize_run,
)

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
    summary: RunSummary
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
    data = ChartData(focus_point(manifest))
    summary = summarize_run(run.path, objective=objective, on_unit=data, progress=progress)
    data.finish()
    specs = make_charts(summary, data)
    out_path = Path(out) if out is not None else run.path / "report.html"
    chart_files: list[Path] = []
    if static:
        chart_files = save_static(specs, out_path.parent / "charts", progress=progress)
    sections = list(extra_sections) + validation_sections(run.path)
    page = render_html(summary, specs, run, sections, chart_dir="charts" if static else None)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out_path)
    return Report(out_path, chart_files, summary, specs)


#: Target number of points of the in-flight chart (all backends and strategies).
INFLIGHT_POINTS = 12_000


def make_charts(summary: RunSummary, data: ChartData) -> dict[str, dict[str, Any]]:
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
                out.append(Section(title, f"<p class=warn>{_e(f.name)} is not valid JSON: {_e(exc)}</p>"))
                continue
            out.append(Section(title, _json_html(doc)))
    return out


# --- HTML -------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#fafbfc}
main{max-width:1200px;margin:0 auto;padding:24px 32px 64px}
h1{font-size:1.6rem;margin:.2rem 0}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #dde1e6;padding-bottom:4px}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
.meta{color:#5b6472;font-size:.9rem}.meta b{color:#1d2330}
table{border-collapse:collapse;font-size:.85rem;margin:.4rem 0 1rem;background:#fff}
th,td{border:1px solid #dde1e6;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f0f2f5}td.l,th.l{text-align:left}
tr.best td{background:#eaf6ea}tr.tied td{background:#f5fbf0}
.chart{margin:12px 0 24px;background:#fff;border:1px solid #e6e9ed;padding:8px;overflow-x:auto}
pre{background:#f4f5f7;padding:10px;overflow-x:auto;font-size:.8rem;border:1px solid #e6e9ed}
.warn{color:#a33}.note{color:#5b6472;font-size:.85rem}
.banner{background:#fdecea;border:2px solid #c62828;color:#7f1d1d;padding:10px 14px;margin:12px 0}
tr.unranked td{background:#fdecea}
details summary{cursor:pointer;color:#2b5fb4}
nav a{margin-right:14px;font-size:.9rem}
"""


def render_html(
    summary: RunSummary,
    specs: dict[str, dict[str, Any]],
    run: RunDir,
    sections: Sequence[Section] = (),
    chart_dir: str | None = "charts",
) -> str:
    """The report page (a pure function of its inputs, apart from the vl-convert bundle)."""
    m = summary.manifest
    title = f"Routing report: {m.get('experiment_id') or run.path.name}"
    body = [f"<h1>{_e(title)}</h1>", _meta_html(summary, run), _health_html(summary)]
    body.append("<nav>" + "".join(
        f'<a href="#{a}">{_e(t)}</a>' for a, t in [
            ("ranking", "Ranking"), ("summary", "Summary"), ("charts", "Charts"),
            ("reliability", "Requests by status"), ("balance", "Load balance"),
            ("all-metrics", "All metrics"), ("scenario", "Scenario"), ("environment", "Environment"),
        ] + [(f"extra-{i}", s.title) for i, s in enumerate(sections)]) + "</nav>")
    body += [_ranking_html(summary), _summary_html(summary), _charts_html(specs, chart_dir),
             _status_html(summary), _balance_html(summary), _all_metrics_html(summary),
             _scenario_html(run), _environment_html(summary, run)]
    for i, s in enumerate(sections):
        body.append(f'<h2 id="extra-{i}">{_e(s.title)}</h2>\n{s.html}')
    bundle = _vega_bundle()
    spec_tags = "\n".join(
        f'<script type="application/json" id="spec-{_e(name)}">{_json_script(spec)}</script>'
        for name, spec in specs.items())
    names = json.dumps(list(specs))
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<link rel="icon" href="data:,">
<style>{_CSS}</style>
<script>{bundle}</script>
</head><body><main>
{chr(10).join(body)}
<p class="note">Generated {generated} by vllm-routing-lab <code>python -m results</code>.</p>
</main>
{spec_tags}
<script>
window.__report = {{total: {len(specs)}, rendered: 0, errors: []}};
for (const name of {names}) {{
  const spec = JSON.parse(document.getElementById("spec-" + name).textContent);
  vegaEmbed("#chart-" + name, spec, {{renderer: "svg",
      actions: {{export: true, source: false, compiled: false, editor: false}}}})
    .then(() => {{ window.__report.rendered += 1; }})
    .catch((err) => {{ window.__report.errors.push(name + ": " + err);
                       console.error("chart " + name + " failed:", err); }});
}}
</script>
</body></html>
"""


@functools.lru_cache(maxsize=1)
def _vega_bundle() -> str:
    """Vega + Vega-Lite + vega-embed as one script, matching altair's Vega-Lite version."""
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    return vlc.javascript_bundle(vl_version=vl_version_for_vl_convert())


def _meta_html(s: RunSummary, run: RunDir) -> str:
    m = s.manifest
    slo = parse_slo(m.get("slo"))
    slo_text = ", ".join(f"{k.upper()} &le; {v:g} ms" for k, v in slo.items()) or "none set"
    strategies = ", ".join(_e(x.get("label") or x.get("name")) for x in m.get("strategies") or []) \
        or _e(", ".join(dict.fromkeys(s.units["strategy"])))
    seeds = m.get("seeds") or sorted(set(s.units["seed"]))
    items = [
        ("mode", _e(m.get("mode", "?"))), ("scenario", _e(m.get("scenario", "?"))),
        ("created", _e(m.get("created", "?"))), ("grid points", str(s.units["point_id"].nunique())),
        ("strategies", strategies), ("seeds", _e(", ".join(map(str, seeds)))),
        ("requests", f"{int(s.units['num_requests'].sum()):,}"), ("SLO", slo_text),
        ("ranked by", _e(s.objective)),
    ]
    return '<p class="meta">' + " &nbsp;·&nbsp; ".join(f"{k}: <b>{v}</b>" for k, v in items) + "</p>"


def _ranking_html(s: RunSummary) -> str:
    out = ['<h2 id="ranking">Ranking per grid point</h2>',
           f'<p class="note">Strategies ordered by mean {_e(s.objective)} '
           f"({_e(METRICS[s.objective].unit) if s.objective in METRICS else ''}, "
           f"{'higher' if METRICS.get(s.objective) and METRICS[s.objective].better == 'higher' else 'lower'}"
           " is better). Green rows are tied with the best: their 95% intervals overlap "
           "(with one seed, only equal values tie).</p>"]
    labels = _point_labels(s)
    unranked = s.health.incomplete.groupby(["point_id", "strategy"], sort=False)["unfinished_share"].max()
    by_point = dict(tuple(s.ranking.groupby("point_id", sort=False)))
    for point in dict.fromkeys(s.units["point_id"]):
        g = by_point.get(point, s.ranking.iloc[0:0])
        out.append(f"<h3>{_e(labels.get(point, point))}</h3><table><tr><th>rank</th>"
                   "<th class=l>strategy</th><th>mean</th><th>95% CI</th><th>seeds</th><th>tie</th></tr>")
        for (p, strategy), share in unranked.items():
            if p == point:
                out.append(f'<tr class="unranked"><td>n/r</td><td class=l>{_e(strategy)}</td>'
                           f'<td colspan=4 class="l warn">not ranked: {share:.0%} of a unit\'s '
                           "requests unfinished (see the warning at the top)</td></tr>")
        for r in g.itertuples(index=False):
            cls = "best" if r.rank == 1 else "tied" if r.tied_with_best else ""
            ci = (f"{format_value(r.ci_low)} – {format_value(r.ci_high)}"
                  if math.isfinite(r.ci_low) else "n/a")
            out.append(f'<tr class="{cls}"><td>{r.rank}</td><td class=l>{_e(r.strategy)}</td>'
                       f"<td>{format_value(r.mean)}</td><td>{ci}</td><td>{r.n}</td>"
                       f"<td>{'best' if r.rank == 1 else 'tied' if r.tied_with_best else ''}</td></tr>")
        out.append("</table>")
    return "\n".join(out)


def _summary_html(s: RunSummary) -> str:
    agg = s.aggregate.set_index(["point_id", "strategy", "metric"])
    labels = _point_labels(s)
    head = "".join(f"<th>{_e(label)}</th>" for _, label in TABLE_COLUMNS)
    rows = []
    for point, strategy in s.units[["point_id", "strategy"]].drop_duplicates().itertuples(index=False):
        cells = "".join(
            f"<td>{format_value(*agg.loc[(point, strategy, metric), ['mean', 'ci_low', 'ci_high']])}</td>"
            for metric, _ in TABLE_COLUMNS)
        rows.append(f"<tr><td class=l>{_e(labels.get(point, point))}</td>"
                    f"<td class=l>{_e(strategy)}</td>{cells}</tr>")
    note = ("Values are means over seeds ± half-width of the 95% Student-t interval."
            if s.seeds > 1 else "One seed: values without confidence intervals.")
    return (f'<h2 id="summary">Summary</h2><p class="note">{note} Latencies over ok requests, '
            "as <code>vllm bench serve</code> computes them; <i>not ok</i> counts every other "
            "request (see <a href=\"#reliability\">by status</a>).</p>"
            f"<table><tr><th class=l>point</th><th class=l>strategy</th>{head}</tr>"
            + "".join(rows) + "</table>")


def _charts_html(specs: dict[str, dict[str, Any]], chart_dir: str | None) -> str:
    out = ['<h2 id="charts">Charts</h2>']
    if chart_dir:
        out.append(f'<p class="note">PNG and SVG copies: <code>{_e(chart_dir)}/&lt;name&gt;.png|svg</code>. '
                   "Drag to pan and scroll to zoom on the load charts.</p>")
    if "slo_attainment" not in specs:
        out.append('<p class="note">No SLO in the scenario: goodput and SLO attainment are not '
                   "defined; the goodput chart shows request throughput instead.</p>")
    for name in specs:
        out.append(f'<div class="chart" id="chart-{_e(name)}" data-chart="{_e(name)}"></div>')
    return "\n".join(out)


def _status_html(s: RunSummary) -> str:
    cols = ["num_requests", "completed", "num_error", "num_timeout", "num_rejected", "num_unfinished"]
    heads = ["requests", "ok", "error", "timeout", "rejected", "unfinished"]
    sums = s.units.groupby(["point_id", "strategy"], sort=False)[cols].sum()
    labels = _point_labels(s)
    rows = "".join(
        f"<tr><td class=l>{_e(labels.get(p, p))}</td><td class=l>{_e(st)}</td>"
        + "".join(f"<td>{int(r[c]):,}</td>" for c in cols) + "</tr>"
        for (p, st), r in sums.iterrows())
    return ('<h2 id="reliability">Requests by status</h2><p class="note">Totals over seeds. '
            "Every request sent is one row; nothing is dropped.</p><table><tr><th class=l>point</th>"
            "<th class=l>strategy</th>" + "".join(f"<th>{h}</th>" for h in heads) + f"</tr>{rows}</table>")


def _balance_html(s: RunSummary) -> str:
    labels = _point_labels(s)
    out = ['<h2 id="balance">Load balance</h2><p class="note">Share of dispatched requests per '
           "backend (all seeds pooled) and the peak number in flight on it at once "
           "(max over seeds).</p>"]
    if s.backends.empty:
        return out[0] + "<p>No request was dispatched.</p>"
    for point, g in s.backends.groupby("point_id", sort=False):
        names = list(dict.fromkeys(g["name"]))
        out.append(f"<h3>{_e(labels.get(point, point))}</h3><table><tr><th class=l>strategy</th>"
                   + "".join(f"<th>{_e(n)}</th>" for n in names) + "<th>max/mean</th></tr>")
        for strategy, gs in g.groupby("strategy", sort=False):
            req = gs.groupby("name", sort=False)["requests"].sum()
            peak = gs.groupby("name", sort=False)["peak_inflight"].max()
            total = req.sum()
            cells = "".join(
                f"<td>{req.get(n, 0) / total:.1%} · peak {int(peak.get(n, 0))}</td>" if total else "<td>-</td>"
                for n in names)
            imb = (req.max() / req.mean()) if total else math.nan
            out.append(f"<tr><td class=l>{_e(strategy)}</td>{cells}<td>{format_value(imb)}</td></tr>")
        out.append("</table>")
    return "\n".join(out)


def _all_metrics_html(s: RunSummary) -> str:
    agg = s.aggregate
    labels = _point_labels(s)
    keys = s.units[["point_id", "strategy"]].drop_duplicates()
    head = "".join(f"<th>{_e(labels.get(p, p))}<br>{_e(st)}</th>" for p, st in keys.itertuples(index=False))
    idx = agg.set_index(["metric", "point_id", "strategy"])
    rows = []
    for metric, info in METRICS.items():
        cells = "".join(
            f"<td>{format_value(*idx.loc[(metric, p, st), ['mean', 'ci_low', 'ci_high']])}</td>"
            for p, st in keys.itertuples(index=False))
        rows.append(f"<tr><td class=l>{_e(metric)}</td><td class=l>{_e(info.unit)}</td>{cells}</tr>")
    return ('<h2 id="all-metrics">All metrics</h2><details><summary>Show every metric '
            "(mean ± 95% CI half-width)</summary><table><tr><th class=l>metric</th><th class=l>unit</th>"
            f"{head}</tr>{''.join(rows)}</table></details>")


def _health_html(s: RunSummary) -> str:
    """A prominent banner when units are incomplete (``results.health``)."""
    lines = s.health.warnings(_point_labels(s))
    if not lines:
        return ""
    head, rest = lines[0].removeprefix("WARNING: "), [ln.strip() for ln in lines[1:]]
    return ('<div class="banner" role="alert"><b>Warning: incomplete units.</b> ' + _e(head)
            + "".join(f"<br>{_e(x)}" for x in rest) + "</div>")


def _scenario_html(run: RunDir) -> str:
    path = run.path / "scenario.toml"
    text = path.read_text(encoding="utf-8") if path.exists() else "(no scenario.toml in the run)"
    m = run.manifest
    rows = []
    for p in m.get("points") or []:
        groups: dict[tuple[str, str], int] = {}
        for b in p.get("backends") or []:
            key = (str(b.get("group", "?")), str(b.get("profile", "?")))
            groups[key] = groups.get(key, 0) + 1
        fleet = ", ".join(f"{n} x {prof} ({g})" for (g, prof), n in groups.items())
        rows.append(f"<tr><td class=l>{_e(point_label(p))}</td><td class=l>{_e(fleet)}</td></tr>")
    live = m.get("live") or {}
    where = f"<p class=note>Backends: {_e(live['backends'])}.</p>" if live.get("backends") else ""
    resolved = m.get("resolved_scenario")
    resolved_html = ("<details><summary>The scenario as run (file + --set, --seeds, --emulate)"
                     f"</summary><pre>{_e(json.dumps(resolved, indent=2))}</pre></details>"
                     if resolved else "")
    return ('<h2 id="scenario">Scenario</h2><h3>Fleet as run</h3>'
            "<table><tr><th class=l>point</th><th class=l>backends</th></tr>" + "".join(rows)
            + f"</table>{where}{resolved_html}<h3>The scenario file as given</h3>"
            "<p class=note>Before command-line changes (--set, --seeds, --emulate): the fleet "
            f"above is what ran.</p><pre>{_e(text)}</pre>")


def _environment_html(s: RunSummary, run: RunDir) -> str:
    env = s.manifest.get("environment") or {}
    rows = [(k, v) for k, v in env.items() if k != "versions"]
    rows += [(f"{k} version", v) for k, v in (env.get("versions") or {}).items()]
    table = "".join(f"<tr><td class=l>{_e(k)}</td><td class=l>{_e(v)}</td></tr>" for k, v in rows)
    failures = run.failures()
    fail = ""
    if failures:
        fail = "<h3 class=warn>Units that failed</h3>" + "".join(
            f"<details><summary>{_e(k)}</summary><pre>{_e(v)}</pre></details>" for k, v in failures.items())
    manifest = json.dumps(s.manifest, indent=2, default=str)
    return (f'<h2 id="environment">Environment and versions</h2><table>{table}</table>{fail}'
            f"<details><summary>manifest.json</summary><pre>{_e(manifest)}</pre></details>")


def _point_labels(s: RunSummary) -> dict[str, str]:
    return {str(p["point_id"]): point_label(p) for p in s.manifest.get("points") or []}


def _json_html(doc: Any) -> str:
    if isinstance(doc, dict) and all(not isinstance(v, (dict, list)) for v in doc.values()):
        return "<table>" + "".join(
            f"<tr><td class=l>{_e(k)}</td><td class=l>{_e(v)}</td></tr>" for k, v in doc.items()) + "</table>"
    return f"<pre>{_e(json.dumps(doc, indent=2))}</pre>"


def _json_script(spec: dict[str, Any]) -> str:
    """JSON safe inside a <script> element (no '</' can close it)."""
    return json.dumps(spec, allow_nan=False, default=str).replace("</", "<\\/")


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)
