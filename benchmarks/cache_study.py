"""The cache-routing study of docs/cache-routing.md, end to end, with one command.

    python benchmarks/cache_study.py                      # everything; resumes where it stopped
    python benchmarks/cache_study.py --tables-only        # only reprint the tables of finished runs
    python benchmarks/cache_study.py --parts chat-h100x8,chat-closed   # some parts

Four workload families (``scenarios/cache-study-{chat,sysprompt,mooncake,azure}.toml``),
each on three fleets: the file's own 8 x H100 (three rates), 16 x H100 (one rate, near
or past what it sustains) and the mixed fleet of ``scenarios/mixed-fleet.toml`` (2 x H100
+ 6 x L40S, Llama-3.1-8B, with that scenario's SLOs; one rate), plus multi-turn chat with closed
sessions (``arrivals.sessions = "closed"``) at the middle rate. Every part runs the
file's strategies and ``pred-linear-ttft`` (lowest predicted TTFT from a linear model,
the predictive strategy docs/results.md found best for its cost), trained per workload
and fleet family on its own runs of the four heuristics (seed 100; the study uses
seeds 0-4). Each part is one ``python -m sim ... --resume`` command (printed), each
finished run is summarised with the lab's own statistics (``results``), and the
tables of the doc are printed and written to ``<out>/tables.md``.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable

#: The mixed fleet of scenarios/mixed-fleet.toml, as a ``--set`` value.
MIXED_GROUPS = ('cluster.groups=[{name="h100",count=2,profile={model="llama-3.1-8b",gpu="h100-sxm",tp=1,'
                'dtype="bf16"}},{name="l40s",count=6,profile={model="llama-3.1-8b",gpu="l40s",tp=1,dtype="bf16"}}]')
#: The heuristics the predictive model is trained on (as docs/results.md's experiment).
TRAIN_STRATEGIES = ("random", "round_robin", "least_load", "power_of_two")
TRAIN_SEED = "100"
PREDICTIVE_LABEL = "pred-linear-ttft"
BASELINES = ("round_robin", "least_load", "least_kv", "power_of_two", PREDICTIVE_LABEL)


@dataclass(frozen=True)
class Workload:
    name: str
    rate_key: str  # arrivals.rate or arrivals.target_rate
    #: rates per fleet (the 8 x H100 ones are the file's)
    rates: dict[str, list[float]]
    #: requests per unit per fleet
    requests: dict[str, int]
    #: SLO overrides on the mixed fleet (Llama-3.1-8B answers faster than a 70B)
    mixed_slo: dict[str, float] = field(default_factory=lambda: {"ttft_ms": 1000.0, "tpot_ms": 50.0})

    @property
    def scenario(self) -> Path:
        return ROOT / "scenarios" / f"cache-study-{self.name}.toml"


WORKLOADS = {
    w.name: w for w in (
        Workload("chat", "arrivals.rate", {"h100x8": [12.0, 24.0, 36.0], "h100x16": [72.0],
                                           "mixed": [36.0]},
                 {"h100x8": 1000, "h100x16": 1000, "mixed": 1000}),
        Workload("sysprompt", "arrivals.rate", {"h100x8": [12.0, 24.0, 36.0], "h100x16": [72.0],
                                                "mixed": [36.0]},
                 {"h100x8": 800, "h100x16": 800, "mixed": 800}),
        Workload("mooncake", "arrivals.target_rate", {"h100x8": [2.0, 4.0, 6.0], "h100x16": [8.0],
                                                      "mixed": [4.0]},
                 {"h100x8": 600, "h100x16": 600, "mixed": 600},
                 mixed_slo={"ttft_ms": 5000.0, "tpot_ms": 50.0}),
        Workload("azure", "arrivals.target_rate", {"h100x8": [15.0, 30.0, 45.0], "h100x16": [90.0],
                                                   "mixed": [45.0]},
                 {"h100x8": 1000, "h100x16": 1000, "mixed": 1000}),
    )
}
FLEETS = ("h100x8", "h100x16", "mixed")
FLEET_WORDS = {"h100x8": "8 x H100", "h100x16": "16 x H100", "mixed": "2 x H100 + 6 x L40S (Llama-3.1-8B)"}
#: closed sessions: chat on 8 x H100 at its middle rate (the open-loop twin is chat-h100x8),
#: with the default think time (lognormal, mean 211.5 s, fitted to the Mooncake trace's
#: gaps) and with a short one (exponential, mean 10 s) that keeps the fleet loaded
CLOSED = {"chat-closed": ("chat", "h100x8", 24.0, 3000, None),
          "chat-closed-think10": ("chat", "h100x8", 24.0, 3000, '{ dist = "exponential", mean = 10.0 }')}


def toml_list(values: list[float]) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def fleet_sets(w: Workload, fleet: str) -> list[str]:
    sets = [f"num_requests={w.requests[fleet]}", f"{w.rate_key}={toml_list(w.rates[fleet])}"]
    if fleet == "h100x16":
        sets.append("cluster.groups.h100.count=16")
    elif fleet == "mixed":
        sets.append(MIXED_GROUPS)
        sets += [f"slo.{k}={v}" for k, v in w.mixed_slo.items()]
    return sets


def family(fleet: str) -> str:
    """Fleets that share a predictive model (same profiles: features are per backend)."""
    return "mixed" if fleet == "mixed" else "h100"


def run(cmd: list[str], dry: bool = False) -> None:
    print("$ " + " ".join(_quote(c) for c in cmd), flush=True)
    if dry:
        return
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)


def _quote(s: str) -> str:
    return f"'{s}'" if any(c in s for c in " []{}\"=") and not s.startswith("--") else s


def sim_cmd(scenario: Path, out: Path, sets: list[str], seeds: str | None, workers: int) -> list[str]:
    cmd = [PY, "-m", "sim", str(scenario), "--out", str(out), "--workers", str(workers), "--quiet"]
    if seeds:
        cmd += ["--seeds", seeds]
    for s in sets:
        cmd += ["--set", s]
    if (out / "manifest.json").exists():
        cmd.append("--resume")
    return cmd


def file_strategies(w: Workload) -> list:
    from scenarios.toml_compat import tomllib

    return tomllib.loads(w.scenario.read_text())["router"]["strategies"]


def toml_value(v) -> str:
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{" + ", ".join(f'"{k}" = {toml_value(x)}' for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def model_path(out: Path, w: Workload, fleet: str) -> Path:
    return out / "models" / f"{w.name}-{family(fleet)}" / "ttft-linear.json"


def train(out: Path, w: Workload, fleet: str, workers: int, dry: bool) -> Path:
    """Train the linear TTFT model for this workload and fleet family (once)."""
    model = model_path(out, w, fleet)
    if model.exists():
        return model
    fam_fleet = "mixed" if family(fleet) == "mixed" else "h100x8"
    tr = out / "train" / f"{w.name}-{family(fleet)}"
    strategies = "[" + ",".join(f'"{s}"' for s in TRAIN_STRATEGIES) + "]"
    run(sim_cmd(w.scenario, tr, fleet_sets(w, fam_fleet) + [f"router.strategies={strategies}"],
                TRAIN_SEED, workers), dry)
    rows = tr / "rows.parquet"
    run([PY, "-m", "predictors", "dataset", str(tr), "--out", str(rows)], dry)
    model.parent.mkdir(parents=True, exist_ok=True)
    run([PY, "-m", "predictors", "train", "--data", str(rows), "--model", "linear", "--target", "ttft",
         "--out", str(model), "--seed", "0"], dry)
    return model


@dataclass(frozen=True)
class Part:
    name: str
    workload: Workload
    fleet: str
    sets: list[str]


def parts() -> list[Part]:
    """In the order they run: the 8 x H100 grids, closed sessions, the other fleets."""
    out = [Part(f"{w.name}-{fleet}", w, fleet, fleet_sets(w, fleet))
           for fleet in FLEETS for w in WORKLOADS.values()]
    closed = []
    for name, (wname, fleet, rate, n, think) in CLOSED.items():
        w = WORKLOADS[wname]
        sets = [f"num_requests={n}", f"{w.rate_key}={toml_list([rate])}", 'arrivals.sessions="closed"']
        if think:
            sets.append(f"arrivals.think_time={think}")
        closed.append(Part(name, w, fleet, sets))
    return out[:len(WORKLOADS)] + closed[:1] + out[len(WORKLOADS):] + closed[1:]


def sweep(out: Path, part: Part, workers: int, dry: bool) -> Path:
    model = train(out, part.workload, part.fleet, workers, dry)
    shown = model.relative_to(ROOT) if model.is_relative_to(ROOT) else model
    strategies = file_strategies(part.workload) + [
        {"name": "predictive", "label": PREDICTIVE_LABEL, "model": str(shown), "objective": "ttft"}]
    run_dir = out / part.name
    run(sim_cmd(part.workload.scenario, run_dir, part.sets + [f"router.strategies={toml_value(strategies)}"],
                None, workers), dry)
    return run_dir


# --- tables ---------------------------------------------------------------------------
METRICS = ("request_goodput", "slo_attainment", "median_ttft_ms", "p99_ttft_ms", "prefix_hit_rate",
           "expected_hit_rate", "load_imbalance")


def fmt(x: float, digits: int = 1) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:,.{digits}f}"


def summarize(run_dir: Path):
    from results.summary import summarize_run

    return summarize_run(run_dir, progress=False)


def point_tables(part: Part, summary) -> tuple[list[str], list[dict]]:
    """One markdown table per grid point; and one verdict row per point and strategy."""
    import pandas as pd

    from results.stats import compare_to_reference
    from results.summary import point_label

    agg = summary.aggregate
    ranking = summary.ranking
    labels = {str(p["point_id"]): point_label(p) for p in summary.manifest.get("points", [])}
    units = summary.units
    sat = summary.overloaded_pairs()
    lines, verdicts = [], []
    for point, rk in ranking.groupby("point_id", sort=False):
        rk = rk.sort_values("rank")
        best = str(rk.iloc[0]["strategy"])
        a = agg[agg["point_id"] == point].set_index(["strategy", "metric"])
        p99s = agg[(agg["point_id"] == point) & (agg["metric"] == "p99_ttft_ms")
                   & agg["strategy"].isin(list(rk["strategy"]))].sort_values(["mean", "strategy"])
        best_p99 = str(p99s.iloc[0]["strategy"]) if len(p99s) else best
        # every strategy against the best of each metric, Holm-corrected over the point's
        # strategies (results.stats; TTFT p99 by the paired two-stage bootstrap)
        ver = pd.concat([
            compare_to_reference(units, {point: best}, ["request_goodput"], summary.replicates),
            compare_to_reference(units, {point: best_p99}, ["p99_ttft_ms"], summary.replicates)])
        v = {(r.strategy, r.metric): r for r in ver.itertuples(index=False)}

        def m(s: str, metric: str) -> tuple[float, float, float]:
            try:
                r = a.loc[(s, metric)]
            except KeyError:
                return (math.nan, math.nan, math.nan)
            return float(r["mean"]), float(r["ci_low"]), float(r["ci_high"])

        lines += ["", f"**{part.name}: {labels.get(point, point)}** (best goodput: {best}; "
                  f"best TTFT p99: {best_p99})", "",
                  "| rank | strategy | goodput req/s | SLO att. % | TTFT p50 ms | TTFT p99 ms | hit % | expected hit % | imbalance | vs best: goodput | vs best: TTFT p99 |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        ranked = list(rk["strategy"])
        unranked = [s for s in dict.fromkeys(units.loc[units["point_id"] == point, "strategy"]) if s not in ranked]
        for s in ranked + unranked:
            g, glo, ghi = m(s, "request_goodput")
            p99, plo, phi = m(s, "p99_ttft_ms")
            row = rk[rk["strategy"] == s]
            rank = (f"{int(row.iloc[0]['rank'])}{'=' if bool(row.iloc[0]['tied_with_best']) else ''}"
                    if len(row) else "n/r")
            over = sat.get((point, s))
            if over:
                rank += f" ({over[0]}/{over[1]} overloaded)"
            vg = "(best)" if s == best else getattr(v.get((s, "request_goodput")), "verdict", "?")
            vp = "(best)" if s == best_p99 else getattr(v.get((s, "p99_ttft_ms")), "verdict", "?")
            lines.append(
                f"| {rank} | {s} | {fmt(g, 2)} [{fmt(glo, 2)}, {fmt(ghi, 2)}] | {fmt(100 * m(s, 'slo_attainment')[0])} | "
                f"{fmt(m(s, 'median_ttft_ms')[0], 0)} | {fmt(p99, 0)} [{fmt(plo, 0)}, {fmt(phi, 0)}] | "
                f"{fmt(100 * m(s, 'prefix_hit_rate')[0])} | {fmt(100 * m(s, 'expected_hit_rate')[0])} | "
                f"{fmt(m(s, 'load_imbalance')[0], 2)} | {vg} | {vp} |")
            verdicts.append({"part": part.name, "point": labels.get(point, point), "strategy": s,
                             "best": best, "goodput": vg, "p99": vp,
                             "goodput_mean": g, "p99_mean": p99,
                             "hit": m(s, "prefix_hit_rate")[0], "imbalance": m(s, "load_imbalance")[0],
                             "slo": m(s, "slo_attainment")[0]})
    return lines, verdicts


def part_tables(part: Part, run_dir: Path) -> tuple[list[str], list[dict]]:
    """A finished part's tables and verdicts, cached beside its records (``study-tables.json``)
    until a unit is added."""
    import json

    cache = run_dir / "study-tables.json"
    stamp = [str(p.relative_to(run_dir)) for p in sorted(run_dir.glob("records/**/*.parquet"))]
    if cache.exists():
        doc = json.loads(cache.read_text())
        if doc.get("units") == stamp and doc.get("version") == TABLES_VERSION:
            return doc["lines"], doc["verdicts"]
    lines, verdicts = point_tables(part, summarize(run_dir))
    cache.write_text(json.dumps({"version": TABLES_VERSION, "units": stamp, "lines": lines,
                                 "verdicts": verdicts}, allow_nan=True))
    return lines, verdicts


TABLES_VERSION = 1


def verdict_summary(verdicts: list[dict]) -> list[str]:
    """Per strategy: grid points where it ties the best (or is best) / is worse, goodput and TTFT p99."""
    import pandas as pd

    df = pd.DataFrame(verdicts)
    if df.empty:
        return []
    lines = ["", "| strategy | goodput: best or tied / worse | TTFT p99: best or tied / worse | points |",
             "|---|---|---|---|"]
    rows = []
    for s, g in df.groupby("strategy", sort=False):
        ok_g = int(g["goodput"].isin(["(best)", "tie"]).sum())
        ok_p = int(g["p99"].isin(["(best)", "tie"]).sum())
        rows.append((-(ok_g + ok_p), s, f"| {s} | {ok_g} / {int((g['goodput'] == 'worse').sum())} | "
                     f"{ok_p} / {int((g['p99'] == 'worse').sum())} | {len(g)} |"))
    return lines + [r[2] for r in sorted(rows)]


#: The policies the hot-spot table follows: pure affinity and the guarded variants.
HOTSPOT = ("round_robin", "least_load", "prefix_affinity", "cache_aware", "session_affinity", "consistent_hash",
           "consistent_hash-bounded", "weighted", "kv_cost")


def overview(verdicts: list[dict]) -> list[str]:
    """Two tables over every part and point: who wins, and where affinity hot-spots."""
    import pandas as pd

    df = pd.DataFrame(verdicts)
    if df.empty:
        return []
    lines = ["", "#### Who wins (goodput; TTFT p99 of the same strategies)", "",
             "| part | load | best goodput | best baseline, load-only or predictive (goodput, TTFT p99) | best goodput strategy (TTFT p99, hit %) | "
             "baselines worse than best (goodput / TTFT p99) | cache/session policies worse than best (goodput / TTFT p99) |",
             "|---|---|---|---|---|---|---|"]
    for (part, point), g in df.groupby(["part", "point"], sort=False):
        g = g.set_index("strategy")
        best = g["best"].iloc[0]
        base = g.loc[[s for s in BASELINES if s in g.index]]
        bb = base["goodput_mean"].idxmax() if base["goodput_mean"].notna().any() else ""
        cache = g.loc[[s for s in g.index if s not in BASELINES]]
        worse = lambda x, col: int((x[col] == "worse").sum())  # noqa: E731
        lines.append(
            f"| {part} | {point.split('=')[-1]} | {fmt(g.loc[best, 'goodput_mean'], 2)} | "
            f"{bb} ({fmt(g.loc[bb, 'goodput_mean'], 2) if bb else ''}, {fmt(g.loc[bb, 'p99_mean'], 0) if bb else ''}) | "
            f"{best} ({fmt(g.loc[best, 'p99_mean'], 0)}, {fmt(100 * g.loc[best, 'hit'], 0)}) | "
            f"{worse(base, 'goodput')} / {worse(base, 'p99')} of {len(base)} | "
            f"{worse(cache, 'goodput')} / {worse(cache, 'p99')} of {len(cache)} |")
    lines += ["", "#### Hot spots: load imbalance (busiest backend's work / mean) and TTFT p99 ms as load grows", "",
              "| part | load | " + " | ".join(HOTSPOT) + " |", "|---|---|" + "---|" * len(HOTSPOT)]
    for (part, point), g in df.groupby(["part", "point"], sort=False):
        g = g.set_index("strategy")
        cells = []
        for s in HOTSPOT:
            if s not in g.index:
                cells.append("")
                continue
            mark = {"worse": "↓", "(best)": "★"}.get(g.loc[s, "goodput"], "")
            cells.append(f"{fmt(g.loc[s, 'imbalance'], 2)} / {fmt(g.loc[s, 'p99_mean'], 0)}{mark}")
        lines.append(f"| {part} | {point.split('=')[-1]} | " + " | ".join(cells) + " |")
    lines += ["", "★ best goodput at that point; ↓ goodput worse than the best (Holm-corrected, 5%)."]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "cache-study"), help="where runs, models and tables go")
    ap.add_argument("--workers", type=int, default=1, help="python -m sim --workers (default 1)")
    ap.add_argument("--parts", default="", help="comma-separated part names (default: all): "
                    + ", ".join(p.name for p in parts()))
    ap.add_argument("--tables-only", action="store_true", help="no simulation: tables of finished runs")
    ap.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = ap.parse_args(argv)
    out = Path(args.out)
    chosen = [p for p in parts() if not args.parts or p.name in args.parts.split(",")]
    unknown = set(filter(None, args.parts.split(","))) - {p.name for p in parts()}
    if unknown:
        ap.error(f"--parts: unknown {', '.join(sorted(unknown))}; choose from {', '.join(p.name for p in parts())}")
    sys.path.insert(0, str(ROOT))
    lines, verdicts = ["# Cache-routing study tables (benchmarks/cache_study.py)"], []
    for part in chosen:
        run_dir = out / part.name
        if not args.tables_only:
            sweep(out, part, args.workers, args.dry_run)
        if args.dry_run or not (run_dir / "manifest.json").exists():
            continue
        try:
            t, v = part_tables(part, run_dir)
        except Exception as exc:  # noqa: BLE001 - report the part, keep the others
            lines += ["", f"**{part.name}**: no summary ({type(exc).__name__}: {exc})"]
            continue
        fleet = FLEET_WORDS[part.fleet] + (", closed sessions" if "closed" in part.name else "")
        lines += ["", f"### {part.name} ({fleet})"]
        lines += t
        verdicts += v
    if verdicts:
        lines += ["", "### Overview"] + overview(verdicts)
        lines += ["", "### Verdicts over all grid points"] + verdict_summary(verdicts)
        import pandas as pd

        pd.DataFrame(verdicts).to_csv(out / "verdicts.csv", index=False)
    text = "\n".join(lines) + "\n"
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)
        (out / "tables.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
