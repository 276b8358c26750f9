"""Altair charts of a run: latency and goodput vs offered load, CDFs, in-flight, SLO attainment.

Every function returns an ``alt.Chart`` (or layered/faceted chart) built from
plain DataFrames, so the same spec is embedded interactively in the HTML report
and rendered to PNG/SVG by vl-convert for papers. Charts tolerate a single grid
point, a single seed (no interval: only the mean is drawn) and strategies with
no successful request (their latency rows are NaN and are simply not drawn).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import altair as alt
import numpy as np
import pandas as pd

from results.metrics import METRICS, inflight_series
from results.summary import point_label

WIDTH, HEIGHT = 340, 220
#: Charts of latency / goodput against offered load: (file name, metric, title).
LOAD_CHARTS = [
    ("load_ttft_p50", "median_ttft_ms", "TTFT p50 vs offered load"),
    ("load_ttft_p99", "p99_ttft_ms", "TTFT p99 vs offered load"),
    ("load_tpot_p99", "p99_tpot_ms", "TPOT p99 vs offered load"),
    ("load_goodput", "request_goodput", "Goodput vs offered load"),
]
#: Grid axes taken as the offered load (first match wins), else the measured rate.
RATE_AXIS_SUFFIXES = ("request_rate", "rate", "qps", "rps")
CDF_QUANTILES = np.unique(np.r_[np.linspace(0, 0.98, 99), np.linspace(0.98, 1, 41)])


def strategy_scale(strategies: Sequence[str]) -> alt.Scale:
    """One colour per strategy, the same in every chart."""
    return alt.Scale(domain=list(strategies), scheme="tableau10")


def rate_axis(manifest: dict[str, Any]) -> str | None:
    """The grid axis that is the arrival rate, if the scenario sweeps one."""
    axes: list[str] = []
    for p in manifest.get("points") or []:
        for a in (p.get("axes") or {}):
            if a not in axes:
                axes.append(a)
    for suffix in RATE_AXIS_SUFFIXES:
        for a in axes:
            if a.lower().replace("-", "_").split(".")[-1].endswith(suffix):
                return a
    return None


def point_table(manifest: dict[str, Any], agg: pd.DataFrame) -> pd.DataFrame:
    """Per grid point: label, offered load (x of the load charts) and the other axes."""
    axis = rate_axis(manifest)
    measured = agg[agg["metric"] == "offered_rate"].groupby("point_id", sort=False)["mean"].mean()
    rows = []
    points = manifest.get("points") or [{"point_id": p} for p in agg["point_id"].unique()]
    for p in points:
        pid = str(p["point_id"])
        axes = p.get("axes") or {}
        others = {k: v for k, v in axes.items() if k != axis}
        load = axes.get(axis) if axis else None
        rows.append({
            "point_id": pid,
            "point": point_label(p),
            "offered_load": float(load) if load is not None else float(measured.get(pid, math.nan)),
            "config": ", ".join(f"{k}={v}" for k, v in others.items()) or "all",
        })
    df = pd.DataFrame(rows, columns=["point_id", "point", "offered_load", "config"])
    df.attrs["load_title"] = f"offered load ({axis}, req/s)" if axis else "offered load (measured, req/s)"
    return df


def load_chart(agg: pd.DataFrame, points: pd.DataFrame, metric: str, title: str,
               strategies: Sequence[str]) -> alt.TopLevelMixin:
    """Mean of ``metric`` vs offered load per strategy, with a 95% CI band and bars."""
    info = METRICS[metric]
    data = agg[agg["metric"] == metric].merge(points, on="point_id", how="inner")
    data = data[["strategy", "point", "config", "offered_load", "mean", "ci_low", "ci_high", "n"]]
    y_title = f"{info.label} ({info.unit})"
    x = alt.X("offered_load:Q", title=points.attrs.get("load_title", "offered load"),
              scale=alt.Scale(zero=False))
    color = alt.Color("strategy:N", scale=strategy_scale(strategies), title="strategy",
                      legend=alt.Legend(symbolOpacity=1, symbolType="stroke", symbolStrokeWidth=3))
    tooltip = ["strategy:N", "point:N", alt.Tooltip("offered_load:Q", format=".3g"),
               alt.Tooltip("mean:Q", format=".4g"), alt.Tooltip("ci_low:Q", format=".4g"),
               alt.Tooltip("ci_high:Q", format=".4g"), "n:Q"]
    # Every layer uses the same colour encoding: a layer with legend=None on the
    # shared scale would suppress the merged legend (the static PNGs had none).
    base = alt.Chart().encode(x=x)
    band = base.mark_area(opacity=0.18).encode(y="ci_low:Q", y2="ci_high:Q", color=color)
    bars = base.mark_rule().encode(y="ci_low:Q", y2="ci_high:Q", color=color)
    line = base.mark_line(point=True).encode(y=alt.Y("mean:Q", title=y_title), color=color,
                                             tooltip=tooltip)
    layered = alt.layer(band, bars, line, data=data).properties(width=WIDTH, height=HEIGHT)
    if data["config"].nunique() > 1:  # other grid axes: one panel per configuration
        return layered.facet(column=alt.Column("config:N", title=None), title=title)
    return layered.properties(title=title).interactive()


def cdf_rows(values_ms: np.ndarray) -> pd.DataFrame:
    """An empirical CDF reduced to fixed quantiles (keeps the report small)."""
    v = np.asarray(values_ms, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return pd.DataFrame(columns=["value_ms", "cdf"])
    q = CDF_QUANTILES
    return pd.DataFrame({"value_ms": np.quantile(v, q), "cdf": q})


def cdf_chart(cdfs: pd.DataFrame, metric: str, strategies: Sequence[str]) -> alt.TopLevelMixin:
    """CDF of a latency per strategy, one panel per grid point (seeds pooled).

    ``cdfs`` has ``point, strategy, value_ms, cdf`` rows (see ``cdf_rows``).
    """
    positive = cdfs[cdfs["value_ms"] > 0] if len(cdfs) else cdfs
    # Latencies span orders of magnitude across strategies: a log axis keeps the
    # fast ones apart instead of crushed against the origin.
    chart = alt.Chart(positive).mark_line(interpolate="step-after").encode(
        x=alt.X("value_ms:Q", title=f"{metric} (ms, log scale)", scale=alt.Scale(type="log")),
        y=alt.Y("cdf:Q", title="fraction of ok requests", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("strategy:N", scale=strategy_scale(strategies)),
        tooltip=["point:N", "strategy:N", alt.Tooltip("value_ms:Q", format=".4g"),
                 alt.Tooltip("cdf:Q", format=".3f")],
    ).properties(width=WIDTH - 80, height=HEIGHT - 40)
    title = f"CDF of {metric} (ok requests, seeds pooled)"
    if cdfs["point"].nunique() > 1:
        return chart.facet(facet=alt.Facet("point:N", title=None, sort=None), columns=3,
                           title=title)
    return chart.properties(title=title).interactive()


def inflight_rows(dispatch: np.ndarray, finish: np.ndarray, backend: np.ndarray,
                  names: Sequence[str], bins: int = 300) -> pd.DataFrame:
    """Per backend, the peak in-flight count in each of ``bins`` time bins.

    In-flight = dispatched and not yet finished ([dispatch_s, finish_s)); the
    peak per bin keeps short spikes visible while bounding the chart's size.
    """
    dispatch = np.asarray(dispatch, dtype=np.float64)
    finish = np.asarray(finish, dtype=np.float64)
    ok = np.isfinite(dispatch) & np.isfinite(finish) & (backend >= 0)
    if not ok.any():
        return pd.DataFrame(columns=["backend", "time_s", "inflight"])
    t0, t1 = float(dispatch[ok].min()), float(finish[ok].max())
    edges = np.linspace(t0, t1 if t1 > t0 else t0 + 1.0, bins + 1)
    frames = []
    for b, name in enumerate(names):
        mine = ok & (backend == b)
        times, level = inflight_series(dispatch[mine], finish[mine])
        # Level at each bin start, then the max with every event inside the bin.
        before = np.searchsorted(times, edges[:-1], side="right") - 1
        peak = np.where(before >= 0, level[np.maximum(before, 0)], 0) if len(times) else np.zeros(bins)
        if len(times):
            which = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, bins - 1)
            np.maximum.at(peak, which, level)
        frames.append(pd.DataFrame({"backend": name, "time_s": edges[:-1], "inflight": peak}))
    return pd.concat(frames, ignore_index=True)


def inflight_chart(rows: pd.DataFrame, title: str, strategies: Sequence[str]) -> alt.TopLevelMixin:
    """Per-backend in-flight requests over time, one row per strategy."""
    chart = alt.Chart(rows).mark_line(interpolate="step-after").encode(
        x=alt.X("time_s:Q", title="time since start (s)"),
        y=alt.Y("inflight:Q", title="in flight (peak per bin)"),
        color=alt.Color("backend:N", title="backend"),
        tooltip=["strategy:N", "backend:N", alt.Tooltip("time_s:Q", format=".1f"), "inflight:Q"],
    ).properties(width=WIDTH * 2, height=110)
    return chart.facet(row=alt.Row("strategy:N", title=None, sort=list(strategies)), title=title)


def slo_chart(agg: pd.DataFrame, points: pd.DataFrame, strategies: Sequence[str],
              slo_text: str) -> alt.TopLevelMixin:
    """SLO attainment (fraction of all requests meeting every SLO) per strategy, with CIs."""
    data = agg[agg["metric"] == "slo_attainment"].merge(points, on="point_id", how="inner")
    data = data[["strategy", "point", "mean", "ci_low", "ci_high", "n"]]
    color = alt.Color("strategy:N", scale=strategy_scale(strategies), legend=None)
    x = alt.X("strategy:N", sort=list(strategies), title=None)
    bars = alt.Chart().mark_bar().encode(
        x=x, color=color,
        y=alt.Y("mean:Q", title="SLO attainment", scale=alt.Scale(domain=[0, 1])),
        tooltip=["point:N", "strategy:N", alt.Tooltip("mean:Q", format=".3f"),
                 alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f"), "n:Q"],
    )
    rules = alt.Chart().mark_rule(color="black", clip=True).encode(x=x, y="ci_low:Q", y2="ci_high:Q")
    layered = alt.layer(bars, rules, data=data).properties(width=max(120, 36 * len(strategies)),
                                                            height=HEIGHT - 40)
    title = f"SLO attainment ({slo_text})"
    if data["point"].nunique() > 1:
        return layered.facet(facet=alt.Facet("point:N", title=None, sort=None), columns=4,
                             title=title)
    return layered.properties(title=title)


#: Pareto charts: (file name, x metric, y metric, title). Both as ``vllm bench sweep
#: plot_pareto`` (tokens/s per user against tokens/s per GPU; here per replica) and
#: goodput against tail latency.
PARETO_CHARTS = [
    ("pareto_tokens", "output_throughput_per_replica", "output_throughput_per_user",
     "Per-user vs per-replica output tokens/s (Pareto)"),
    ("pareto_goodput", "p99_ttft_ms", "request_goodput", "Goodput vs TTFT p99 (Pareto)"),
]


def pareto_front(x: np.ndarray, y: np.ndarray, x_higher: bool, y_higher: bool) -> np.ndarray:
    """Which points no other point beats on both axes (ties keep both)."""
    x = np.asarray(x, dtype=float) * (1 if x_higher else -1)
    y = np.asarray(y, dtype=float) * (1 if y_higher else -1)
    ok = np.isfinite(x) & np.isfinite(y)
    front = np.zeros(len(x), dtype=bool)
    for i in np.flatnonzero(ok):
        beaten = ok & (x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i]))
        front[i] = not beaten.any()
    return front


def pareto_chart(agg: pd.DataFrame, points: pd.DataFrame, x_metric: str, y_metric: str,
                 title: str, strategies: Sequence[str],
                 overloaded: dict[tuple[str, str], tuple[int, int]] | None = None) -> alt.TopLevelMixin:
    """One line per strategy through its grid points (in offered-load order), the Pareto
    front over every point ringed, overloaded points drawn as crosses and labelled."""
    overloaded = overloaded or {}
    wide = agg[agg["metric"].isin([x_metric, y_metric])].pivot_table(
        index=["point_id", "strategy"], columns="metric", values="mean", aggfunc="first")
    wide = wide.reindex(columns=[x_metric, y_metric]).reset_index()
    data = wide.merge(points, on="point_id", how="inner").rename(
        columns={x_metric: "x", y_metric: "y"})
    data["state"] = [("overloaded" if (p, s) in overloaded else "stable")
                     for p, s in zip(data["point_id"], data["strategy"])]
    data["front"] = False
    for _, g in data.groupby("config", sort=False):
        data.loc[g.index, "front"] = pareto_front(
            g["x"].to_numpy(), g["y"].to_numpy(), METRICS[x_metric].better == "higher",
            METRICS[y_metric].better == "higher")
    data = data.sort_values(["config", "strategy", "offered_load"])
    data = data[["strategy", "point", "config", "offered_load", "x", "y", "state", "front"]]
    xi, yi = METRICS[x_metric], METRICS[y_metric]
    color = alt.Color("strategy:N", scale=strategy_scale(strategies), title="strategy")
    x = alt.X("x:Q", title=f"{xi.label} ({xi.unit})", scale=alt.Scale(zero=False))
    y = alt.Y("y:Q", title=f"{yi.label} ({yi.unit})", scale=alt.Scale(zero=False))
    tooltip = ["strategy:N", "point:N", alt.Tooltip("x:Q", format=".4g", title=xi.label),
               alt.Tooltip("y:Q", format=".4g", title=yi.label), "state:N", "front:N"]
    base = alt.Chart().encode(x=x, y=y)
    line = base.mark_line().encode(color=color, order="offered_load:Q")
    marks = base.mark_point(filled=True, size=60).encode(
        color=color, tooltip=tooltip,
        shape=alt.Shape("state:N", scale=alt.Scale(domain=["stable", "overloaded"],
                                                    range=["circle", "cross"]), title="unit"))
    ring = base.transform_filter(alt.datum.front).mark_point(size=220, color="black",
                                                             strokeWidth=1.2)
    layered = alt.layer(line, marks, ring, data=data).properties(width=WIDTH, height=HEIGHT)
    sub = "ringed: Pareto front; crosses: overloaded"
    if data["config"].nunique() > 1:
        return layered.facet(column=alt.Column("config:N", title=None),
                             title=alt.TitleParams(title, subtitle=sub))
    return layered.properties(title=alt.TitleParams(title, subtitle=sub)).interactive()
