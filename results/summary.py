"""A run's summary: metrics per unit, across seeds, rankings; ``summary.json``; the terminal table.

The simulator calls ``unit_metrics`` per unit as it finishes and ``build_summary``
at the end; ``summarize_run`` does both from a run directory on disk (reading
one record file at a time, so memory is bounded by the largest unit).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from results.health import RunHealth, assess
from results.jsonsafe import json_safe
from results.counters import read_counters
from results.metrics import BACKEND_COLUMNS, METRICS, UnitMetrics, unit_metrics
from results.records import read_records
from results.rundir import RunDir, Unit
from results.stats import RANKING_COLUMNS, aggregate, choose_objective, rank_strategies

SUMMARY_VERSION = 2


@dataclass(slots=True)
class RunSummary:
    """Everything the terminal table, ``summary.json`` and the report show."""

    manifest: dict[str, Any]
    units: pd.DataFrame  # one row per unit: point_id, strategy, seed, every metric
    backends: pd.DataFrame  # one row per unit x backend
    aggregate: pd.DataFrame  # long: point_id, strategy, metric, n, mean, std, ci_low, ci_high
    ranking: pd.DataFrame  # per point, strategies best first (see stats.rank_strategies)
    #: incomplete units (``results.health``); their strategies are left out of ``ranking``
    health: RunHealth = field(default_factory=lambda: assess(pd.DataFrame()))
    chosen_objective: str = ""  # what ranking ranks by, also when no strategy could be ranked
    #: per point x strategy with an overloaded seed: ``overloaded`` of ``seeds`` (results.saturation)
    saturation: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SATURATION_COLUMNS))

    def overloaded_pairs(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(point, strategy) -> (overloaded seeds, seeds), for pairs with any overloaded seed."""
        return {(r.point_id, r.strategy): (int(r.overloaded), int(r.seeds))
                for r in self.saturation.itertuples(index=False)}
    #: Per unit (point_id, strategy, seed): within-run bootstrap deviations of the latency
    #: percentiles (``results.bootstrap``); not written to ``summary.json``.
    replicates: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict)

    @property
    def objective(self) -> str:
        if self.chosen_objective:
            return self.chosen_objective
        return str(self.ranking["objective"].iloc[0]) if len(self.ranking) else ""

    @property
    def seeds(self) -> int:
        return int(self.units.groupby(["point_id", "strategy"]).size().max()) if len(self.units) else 0

    def to_json(self) -> dict[str, Any]:
        """The ``summary.json`` document (NaN written as null)."""
        rows = json_rows
        return {
            "summary_version": SUMMARY_VERSION,
            "experiment_id": self.manifest.get("experiment_id"),
            "objective": self.objective,
            "units": rows(self.units),
            "backends": rows(self.backends),
            "aggregate": rows(self.aggregate),
            "ranking": rows(self.ranking),
            "health": self.health.to_json(),
            "saturation": rows(self.saturation),
        }


def point_label(point: dict[str, Any]) -> str:
    """A readable name for a grid point: its label, else its axes, else its id."""
    pid = str(point["point_id"])
    axes = ", ".join(f"{k}={v}" for k, v in (point.get("axes") or {}).items())
    label = str(point.get("label") or "")
    return label if label and label != pid else axes or pid


def point_backends(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """Backend names per grid point, from the manifest (empty if it lists none)."""
    out = {}
    for p in manifest.get("points") or []:
        names = [b.get("name", f"backend-{i}") for i, b in enumerate(p.get("backends") or [])]
        if names:
            out[str(p["point_id"])] = names
    return out


def build_summary(
    manifest: dict[str, Any],
    results: Iterable[tuple[Unit, UnitMetrics]],
    objective: str | None = None,
) -> RunSummary:
    """Combine per-unit metrics into the run's summary, ordered as the manifest orders them."""
    unit_rows, backend_rows = [], []
    replicates: dict[tuple[str, str, int], dict[str, Any]] = {}
    for unit, m in results:
        key = {"point_id": unit.point_id, "strategy": unit.strategy, "seed": unit.seed}
        unit_rows.append({**key, **m.values})
        backend_rows.extend({**key, **b} for b in m.backends)
        if m.replicates:
            replicates[(unit.point_id, unit.strategy, unit.seed)] = m.replicates
    units = pd.DataFrame(unit_rows, columns=["point_id", "strategy", "seed", *METRICS])
    units = _manifest_order(units, manifest)
    backends = pd.DataFrame(backend_rows, columns=["point_id", "strategy", "seed", *BACKEND_COLUMNS])
    saturation = _saturation(units)
    # A seed whose queue grew without bound is not averaged with stable seeds of the
    # same configuration (results.saturation); a configuration overloaded in every
    # seed keeps them all, and is marked. Comparisons use the same seeds.
    stable = _stable_seeds(units, saturation)
    agg = aggregate(stable, replicates=replicates)
    health = assess(units, manifest)
    # Incomplete units' strategies are not ranked (results.health says why).
    unranked = health.unranked()
    keep = [(p, st) not in unranked for p, st in zip(agg["point_id"], agg["strategy"])]
    ranked = agg[keep] if unranked else agg
    chosen = choose_objective(agg, objective) if len(agg) else ""
    ranking = (rank_strategies(ranked, chosen, units=stable, replicates=replicates) if len(ranked)
               else pd.DataFrame(columns=RANKING_COLUMNS))
    return RunSummary(manifest, units, backends, agg, ranking, health, chosen, saturation,
                      replicates)


SATURATION_COLUMNS = ["point_id", "strategy", "overloaded", "seeds"]


def _saturation(units: pd.DataFrame) -> pd.DataFrame:
    if units.empty or "overloaded" not in units.columns:
        return pd.DataFrame(columns=SATURATION_COLUMNS)
    g = units.groupby(["point_id", "strategy"], sort=False)["overloaded"]
    df = pd.DataFrame({"overloaded": g.sum().astype(int), "seeds": g.size()}).reset_index()
    return df[df["overloaded"] > 0][SATURATION_COLUMNS].reset_index(drop=True)


def _stable_seeds(units: pd.DataFrame, saturation: pd.DataFrame) -> pd.DataFrame:
    """``units`` without the overloaded seeds of configurations that also have stable ones."""
    mixed = {(r.point_id, r.strategy) for r in saturation.itertuples(index=False)
             if r.overloaded < r.seeds}
    if not mixed:
        return units
    drop = [(p, st) in mixed and o > 0 for p, st, o in
            zip(units["point_id"], units["strategy"], units["overloaded"])]
    return units[~pd.Series(drop, index=units.index)]


def summarize_run(
    path: str | Path,
    *,
    objective: str | None = None,
    on_unit: Callable[[Unit, pa.Table], None] | None = None,
    progress: bool = True,
    write: bool = True,
) -> RunSummary:
    """Read every unit of a run, compute its metrics, and (by default) write ``summary.json``.

    ``on_unit(unit, table)`` sees each unit's records while they are loaded
    (the report collects chart data this way, in the same single pass).
    """
    run = RunDir.open(path)
    manifest = run.manifest
    files = run.record_files()
    if not files:
        raise _no_records_error(run)
    slo = manifest.get("slo") or {}
    names = point_backends(manifest)
    # Units in grid order (files sort as text: rate_12 before rate_4), so whatever
    # on_unit collects (chart data) is in that order too.
    rank = {pid: i for i, pid in enumerate(point_order(manifest))}
    files = sorted(files, key=lambda f: (rank.get(_hive(f, "point"), len(rank)), str(f)))
    results = []
    for f in tqdm(files, desc="units", unit="unit", disable=not progress, leave=False):
        table = read_records(f)
        unit = unit_of(f, table)
        if on_unit is not None:
            on_unit(unit, table)
        results.append((unit, unit_metrics(table, slo, backend_names=names.get(unit.point_id),
                                           counters=read_counters(f))))
    summary = build_summary(manifest, results, objective)
    if write:
        run.write_summary(summary.to_json())
    return summary


def _no_records_error(run: RunDir) -> Exception:
    from results.records import RecordSchemaError

    return RecordSchemaError(
        f"{run.path} has no record files (records/point=*/strategy=*/seed=*.parquet); "
        "the run has not finished any unit yet"
    )


def _hive(path: Path, key: str) -> str:
    """The value of a ``key=value`` folder in a record file's path ("" if none)."""
    for part in path.parts:
        if part.startswith(key + "="):
            return part.split("=", 1)[1]
    return ""


def unit_of(path: Path, table: pa.Table) -> Unit:
    """The unit a record file holds: from its rows, else from its hive path."""
    if table.num_rows:
        row = table.slice(0, 1).select(["point_id", "strategy", "seed"]).to_pylist()[0]
        return Unit(str(row["point_id"]), str(row["strategy"]), int(row["seed"]))
    parts = {p.split("=", 1)[0]: p.split("=", 1)[1] for p in path.parts if "=" in p}
    return Unit(parts.get("point", "?"), parts.get("strategy", "?"), int(path.stem.split("=")[-1]))


def point_order(manifest: dict[str, Any]) -> list[str]:
    """The manifest's grid point ids ordered by their axis values, numbers numerically
    (``rate=4`` before ``rate=12``), whatever order the scenario listed them in."""
    points = list(manifest.get("points") or [])

    def key(p: dict[str, Any]) -> tuple:
        out = []
        for v in (p.get("axes") or {}).values():
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                out.append((1, 0.0, str(v)))
            else:
                out.append((0, float(v), ""))
        return tuple(out)

    return [str(p["point_id"]) for p in sorted(points, key=key)]


def _manifest_order(units: pd.DataFrame, manifest: dict[str, Any]) -> pd.DataFrame:
    points = point_order(manifest)
    strategies = [str(s.get("label", s.get("name"))) for s in manifest.get("strategies") or []]

    def order(values: pd.Series, known: list[str]) -> pd.Series:
        pos = {v: i for i, v in enumerate(known)}
        return values.map(lambda v: pos.get(v, len(known)))

    if units.empty:
        return units
    units = units.assign(_p=order(units["point_id"], points), _s=order(units["strategy"], strategies))
    units = units.sort_values(["_p", "point_id", "_s", "strategy", "seed"], kind="stable")
    return units.drop(columns=["_p", "_s"]).reset_index(drop=True)


def json_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    """DataFrame rows as JSON-ready dicts: numpy scalars unwrapped, NaN as None."""
    return json_safe(df.to_dict("records"))


# --- terminal table -------------------------------------------------------------

TABLE_COLUMNS = [
    ("median_ttft_ms", "TTFT p50 ms"),
    ("p99_ttft_ms", "TTFT p99 ms"),
    ("median_tpot_ms", "TPOT p50 ms"),
    ("p99_tpot_ms", "TPOT p99 ms"),
    ("median_e2el_ms", "E2EL p50 ms"),
    ("request_throughput", "req/s"),
    ("request_goodput", "goodput req/s"),
    ("prefix_hit_rate", "prefix hit"),
    ("load_imbalance", "imbalance"),
    ("failed", "not ok"),
]


def format_value(mean: float, low: float = math.nan, high: float = math.nan) -> str:
    """``12.3``, ``12.3 ±0.4`` (half the 95% interval), or ``1.2 [0.00, 3.1]`` for an
    interval cut at an impossible value; ``-`` for NaN."""
    if not math.isfinite(mean):
        return "-"
    digits = 0 if abs(mean) >= 1000 else 1 if abs(mean) >= 10 else 2
    text = f"{mean:.{digits}f}"
    if math.isfinite(low) and math.isfinite(high) and high > low:
        half = (high - low) / 2
        if abs((mean - low) - (high - mean)) > 1e-9 * max(1.0, abs(mean)) + 1e-12:
            # cut at an impossible value (results.stats.clip_interval): show both ends
            text += f" [{low:.{digits}f}, {high:.{digits}f}]"
        else:
            text += f" ±{half:.{digits}f}"
    return text


def format_table(summary: RunSummary) -> str:
    """The per point x strategy table printed after a run (CIs when several seeds)."""
    agg = summary.aggregate.set_index(["point_id", "strategy", "metric"])
    rank = {(r.point_id, r.strategy): r for r in summary.ranking.itertuples(index=False)}
    labels = {str(p["point_id"]): point_label(p) for p in summary.manifest.get("points") or []}
    unranked = summary.health.unranked()
    overloaded_pairs = summary.overloaded_pairs()
    header = ["point", "strategy", "rank"] + [label for _, label in TABLE_COLUMNS]
    lines = []
    keys = summary.units[["point_id", "strategy"]].drop_duplicates().itertuples(index=False)
    for point, strategy in keys:
        r = rank.get((point, strategy))
        mark = ("" if r is None else f"{r.rank}{'=' if r.tied_with_best and r.rank > 1 else ''}")
        if (point, strategy) in unranked:
            mark = "n/r!"
        if (point, strategy) in overloaded_pairs:
            mark += "*"
        row = [labels.get(point, str(point)), str(strategy), mark]
        for metric, _ in TABLE_COLUMNS:
            a = agg.loc[(point, strategy, metric)]
            row.append(format_value(a["mean"], a["ci_low"], a["ci_high"]))
        lines.append(row)
    out = text_table(header, lines, left=2)
    out += table_notes(summary)
    if "ci_clipped" in summary.aggregate.columns and summary.aggregate["ci_clipped"].any():
        out.append("intervals are cut at values a metric cannot take (below 0, above 1 for "
                   "fractions): with few seeds the t-interval is wider than the possible range")
    overloaded = summary.overloaded_pairs()
    if overloaded:
        shown = [f"{labels.get(p, p)} / {st} ({k} of {n} seeds)" for (p, st), (k, n) in overloaded.items()]
        out.append("OVERLOADED (queue grew without bound, results.saturation): "
                   + ", ".join(shown[:8]) + (f", ... {len(shown) - 8} more" if len(shown) > 8 else ""))
        out.append("  their latencies grow with the run's length; means exclude overloaded seeds "
                   "where other seeds were stable; marked * in the table")
    warnings = summary.health.warnings(labels)
    if warnings:
        out.append("n/r! = not ranked: too many requests unfinished (see the warning above)")
        out = warnings + [""] + out + [""] + warnings[:1]
    return "\n".join(out)


def table_notes(summary: RunSummary) -> list[str]:
    """How to read the table: the ranking's tie rule and the intervals shown."""
    seeds = summary.seeds
    boot = ("ci_method" in summary.aggregate.columns
            and (summary.aggregate["ci_method"] == "bootstrap").any())
    tie = ("'=' marks a tie with the best: paired test over seeds, Holm-corrected over the "
           "point's strategies, p >= 0.05" if seeds > 1 or boot
           else "'=' marks a mean equal to the best's")
    lines = [f"ranked by {summary.objective} per point; {tie}"]
    if seeds > 1:
        lines.append(f"mean over {seeds} seeds; ± half-width of the 95% t-interval"
                     + ("; latency percentiles [95% two-stage bootstrap interval: seeds, then "
                        "blocks of requests]" if boot else ""))
    else:
        lines.append("one seed: " + ("latency percentiles [95% bootstrap interval over blocks of "
                                     "requests], no interval for the rest" if boot
                                     else "no confidence intervals"))
    lines.append("prefix hit: the engines' prefix_cache_hits / queries over the fleet; imbalance: "
                 "max / mean of the backends' work (uncached prompt + generated tokens)")
    return lines


def text_table(header: list[str], rows: list[list[str]], left: int | None = None) -> list[str]:
    """Aligned plain-text lines; the first ``left`` columns left-aligned (all when None)."""
    left = len(header) if left is None else left
    widths = [max([len(h)] + [len(str(r[i])) for r in rows]) for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]

