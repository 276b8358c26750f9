"""Reproduce the predictive-routing experiment (docs/results.md) from a clean checkout.

Question: does routing on a learned latency prediction beat the heuristics, and
which model is worth its cost per decision? Run from the repository root (the
scenario files name their models relative to it):

    .venv/bin/python experiments/run_predictive_experiment.py              # everything
    .venv/bin/python experiments/run_predictive_experiment.py --stages sweep,report,tables
    .venv/bin/python experiments/run_predictive_experiment.py --scenarios burst --num-requests 600 \\
        --out runs/pe-small                                               # a quick look

Stages, in order; each one skips what is already done, so rerunning after an
interruption continues where it stopped:

  data      training runs: the experiment scenario with the training strategies
            (random, round_robin, least_load, power_of_two) on the training seeds
            (100-102, disjoint from the evaluation seeds 0-4), ``python -m sim
            --resume``; ``python -m predictors dataset`` turns them into rows, and a
            seeded sample of at most --sample-rows rows is what every model trains on
  train     ``python -m predictors train`` for each model of MODELS (80/20 split,
            seed 0); the log of each is kept beside the model file
  sweep     ``python -m sim experiments/<scenario>.toml --resume``: every strategy of
            the file on the evaluation seeds
  report    ``python -m results <run>``: the summary table and report.html
  accuracy  ``python -m predictors evaluate`` of each model on (a) its held-out split,
            (b) rows of the heuristics' evaluation runs (other seeds, same loads),
            (c) rows of the runs it routed itself (the loads its own choices made)
  tables    the markdown tables of docs/results.md -> <out>/tables.md

Models go to models/predictive-experiment/<scenario>/, where the scenario files
name them; with --models DIR they go to DIR/<scenario>/ and the sweep passes the
strategies with those paths through ``--set router.strategies=...``. Everything
else goes under --out (default runs/predictive-experiment).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

EXPERIMENTS = Path(__file__).resolve().parent
SCENARIOS = ("heterogeneous", "burst", "azure-replay")
STAGES = ("data", "train", "sweep", "report", "accuracy", "tables")
MODELS_ROOT = Path("models/predictive-experiment")
TRAIN_STRATEGIES = ("random", "round_robin", "least_load", "power_of_two")
TRAIN_SEEDS = (100, 101, 102)
HEURISTICS = ("round_robin", "least_load", "least_tokens", "power_of_two")
#: (metric, name in the verdict table, higher is better)
VERDICT_METRICS = (("request_goodput", "goodput", True), ("p99_ttft_ms", "TTFT p99", False),
                   ("slo_attainment", "SLO attainment", True))
PY = sys.executable


@dataclass(frozen=True)
class ModelSpec:
    """One model file to train: ``<stem><suffix>`` under the scenario's model folder."""

    stem: str
    kind: str
    target: str
    quantile: float | None = None

    @property
    def suffix(self) -> str:
        return ".safetensors" if self.kind in ("mlp", "transformer") else ".json"


MODELS = (
    ModelSpec("ttft-linear", "linear", "ttft"),
    ModelSpec("ttft-tree", "tree", "ttft"),
    ModelSpec("ttft-mlp", "mlp", "ttft"),
    ModelSpec("ttft-distill", "distill", "ttft"),
    ModelSpec("e2el-tree", "tree", "e2el"),
    ModelSpec("e2el-mlp", "mlp", "e2el"),
    ModelSpec("ttft-p90-linear", "linear", "ttft", 0.9),
    ModelSpec("ttft-p90-tree", "tree", "ttft", 0.9),
    ModelSpec("ttft-p90-mlp", "mlp", "ttft", 0.9),
    ModelSpec("ttft-online", "online_linear", "ttft"),
)


class Step:
    """Numbered progress lines with elapsed time, one per command."""

    def __init__(self) -> None:
        self.n = 0
        self.start = time.perf_counter()

    def __call__(self, text: str) -> None:
        self.n += 1
        elapsed = time.perf_counter() - self.start
        print(f"\n[{self.n:3d} | {elapsed / 60:5.1f} min] {text}", flush=True)


step = Step()


def run(cmd: list[str], log: Path | None = None) -> str:
    """Run a command, failing loudly; with ``log``, keep its stdout there (and return it)."""
    print("  $ " + shlex.join(cmd), flush=True)
    if log is None:
        subprocess.run(cmd, check=True)
        return ""
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(done.stdout)
    return done.stdout


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def newer(target: Path, *sources: Path) -> bool:
    """``target`` exists and is at least as new as every source."""
    return target.exists() and all(target.stat().st_mtime >= s.stat().st_mtime for s in sources)


# --- scenario files -------------------------------------------------------------------
def scenario_file(name: str) -> Path:
    return EXPERIMENTS / f"{name}.toml"


def strategy_entries(name: str) -> list:
    """The ``router.strategies`` list of the experiment scenario file."""
    return tomllib.loads(scenario_file(name).read_text())["router"]["strategies"]


def strategy_models(name: str, models_root: Path = MODELS_ROOT) -> dict[str, Path]:
    """Strategy label -> model file (moved under ``models_root``); labels without a model omitted."""
    out = {}
    for entry in strategy_entries(name):
        if isinstance(entry, dict) and entry.get("model"):
            path = Path(entry["model"])
            out[entry.get("label", entry["name"])] = Path(models_root) / path.relative_to(MODELS_ROOT)
    return out


def strategies_override(name: str, models_root: Path) -> str:
    """``router.strategies`` as an inline TOML value, with the model paths under ``models_root``."""
    def value(v) -> str:
        return json.dumps(v) if isinstance(v, str) else repr(v)  # JSON strings are valid TOML strings

    items = []
    for entry in strategy_entries(name):
        if isinstance(entry, str):
            items.append(value(entry))
            continue
        entry = dict(entry)
        if entry.get("model"):
            entry["model"] = str(Path(models_root) / Path(entry["model"]).relative_to(MODELS_ROOT))
        items.append("{ " + ", ".join(f"{k} = {value(v)}" for k, v in entry.items()) + " }")
    return "[" + ", ".join(items) + "]"


def strategy_labels(name: str) -> list[str]:
    return [e if isinstance(e, str) else e.get("label", e["name"]) for e in strategy_entries(name)]


def check_scenario_models(name: str) -> None:
    """Every model the scenario file names is one the driver trains (the two lists must agree)."""
    produced = {MODELS_ROOT / name / (m.stem + m.suffix) for m in MODELS}
    for entry in strategy_entries(name):
        if not (isinstance(entry, dict) and entry.get("model")):
            continue
        label, path = entry.get("label", entry["name"]), Path(entry["model"])
        if path not in produced:
            raise SystemExit(
                f"{scenario_file(name)}: strategy {label!r} names {path}, which this driver does not "
                f"train; models it trains: {', '.join(sorted(str(p) for p in produced))}"
            )


def sim_overrides(args: argparse.Namespace) -> list[str]:
    return ["--set", f"num_requests={args.num_requests}"] if args.num_requests else []


def sim_command(scenario: Path, out: Path, args: argparse.Namespace, extra: list[str]) -> list[str]:
    cmd = [PY, "-m", "sim", str(scenario), "--out", str(out), "--workers", str(args.workers), *extra,
           *sim_overrides(args)]
    if (out / "manifest.json").exists():
        cmd.append("--resume")
    return cmd


# --- stages ---------------------------------------------------------------------------
def paths(args: argparse.Namespace, name: str) -> dict[str, Path]:
    out = Path(args.out)
    return {
        "train_run": out / "train" / name,
        "rows": out / "data" / f"{name}.parquet",
        "sample": out / "data" / f"{name}-sample.parquet",
        "eval_run": out / "eval" / name,
        "eval_models": out / "eval" / f"{name}.models.json",
        "accuracy": out / "accuracy" / name,
        "models": Path(args.models) / name,
    }


def stage_data(args: argparse.Namespace, name: str) -> None:
    p = paths(args, name)
    step(f"data {name}: training runs (strategies {', '.join(TRAIN_STRATEGIES)}; seeds {args.train_seeds})")
    strategies = "[" + ",".join(f'"{s}"' for s in TRAIN_STRATEGIES) + "]"
    run(sim_command(scenario_file(name), p["train_run"], args,
                    ["--seeds", args.train_seeds, "--set", f"router.strategies={strategies}"]))
    summary = p["train_run"] / "summary.json"
    if not summary.exists():
        raise SystemExit(f"{p['train_run']} has no summary.json: some training units failed (see failures/)")
    step(f"data {name}: records -> training rows")
    if newer(p["rows"], summary):
        print(f"  {p['rows']} is up to date")
    else:
        run([PY, "-m", "predictors", "dataset", str(p["train_run"]), "--out", str(p["rows"])])
    if newer(p["sample"], p["rows"]):
        print(f"  {p['sample']} is up to date")
    else:
        n = sample_rows(p["rows"], p["sample"], args.sample_rows)
        print(f"  seeded sample of {n} rows -> {p['sample']}")


def sample_rows(src: Path, dst: Path, limit: int) -> int:
    """At most ``limit`` rows of ``src``, drawn uniformly with seed 0, in their original order."""
    frame = pd.read_parquet(src)
    if len(frame) > limit:
        frame = frame.sample(n=limit, random_state=0).sort_index()
    dst.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(dst, index=False)
    return len(frame)


def stage_train(args: argparse.Namespace, name: str) -> None:
    from predictors.modelfile import read_header

    p = paths(args, name)
    if not p["sample"].exists():
        raise SystemExit(f"no training rows at {p['sample']}: run the data stage first")
    data_sha = sha256(p["sample"])
    for spec in MODELS:
        model = p["models"] / (spec.stem + spec.suffix)
        step(f"train {name}: {spec.stem} ({spec.kind}, {spec.target}"
             + (f", p{spec.quantile * 100:g})" if spec.quantile else ")"))
        if model.exists() and not args.retrain:
            if read_header(model).get("provenance", {}).get("data_sha256") == data_sha:
                print(f"  {model} was trained on these rows; kept (--retrain to redo)")
                continue
        cmd = [PY, "-m", "predictors", "train", "--data", str(p["sample"]), "--model", spec.kind,
               "--target", spec.target, "--out", str(p["models"] / spec.stem), "--seed", "0"]
        if spec.quantile is not None:
            cmd += ["--quantile", str(spec.quantile)]
        out = run(cmd, log=p["models"] / f"{spec.stem}.train.txt")
        print("  " + "\n  ".join(line for line in out.splitlines() if line.startswith(("trained", "teacher", "  overall"))))


def model_digests(name: str, models_root: Path) -> dict[str, str]:
    return {str(path): sha256(path) for path in sorted(set(strategy_models(name, models_root).values()))}


def stage_sweep(args: argparse.Namespace, name: str) -> None:
    p = paths(args, name)
    models_root = Path(args.models)
    missing = [str(m) for m in strategy_models(name, models_root).values() if not m.exists()]
    if missing:
        raise SystemExit(f"models missing for {name}: {', '.join(missing)}; run the train stage first")
    digests = model_digests(name, models_root)
    # The simulator's --resume checks the scenario, not the model files it names: do it here.
    if (p["eval_run"] / "manifest.json").exists() and p["eval_models"].exists():
        before = json.loads(p["eval_models"].read_text())
        changed = [k for k in set(before) | set(digests) if before.get(k) != digests.get(k)]
        if changed:
            raise SystemExit(
                f"{p['eval_run']} was started with other model files ({', '.join(sorted(changed))}); "
                f"delete {p['eval_run']} and {p['eval_models']} to sweep again with the new ones")
    p["eval_models"].parent.mkdir(parents=True, exist_ok=True)
    p["eval_models"].write_text(json.dumps(digests, indent=1))
    step(f"sweep {name}: {len(strategy_labels(name))} strategies on the evaluation seeds")
    extra = ["--seeds", args.seeds] if args.seeds else []
    if models_root != MODELS_ROOT:
        extra += ["--set", f"router.strategies={strategies_override(name, models_root)}"]
    run(sim_command(scenario_file(name), p["eval_run"], args, extra))


def stage_report(args: argparse.Namespace, name: str) -> None:
    p = paths(args, name)
    step(f"report {name}: {p['eval_run']}/report.html")
    run([PY, "-m", "results", str(p["eval_run"])], log=p["eval_run"] / "report.txt")
    print(f"  table in {p['eval_run'] / 'report.txt'}")


def stage_accuracy(args: argparse.Namespace, name: str) -> None:
    p = paths(args, name)
    acc = p["accuracy"]
    acc.mkdir(parents=True, exist_ok=True)
    models = strategy_models(name, Path(args.models))
    jobs = []  # (model path, data, split, json)
    for spec in MODELS:
        model = p["models"] / (spec.stem + spec.suffix)
        jobs.append((model, p["sample"], "test", acc / f"{spec.stem}.heldout.json"))
    if (p["eval_run"] / "summary.json").exists():
        heur = acc / "rows-heuristics.parquet"
        if not newer(heur, p["eval_run"] / "summary.json"):
            step(f"accuracy {name}: rows of the heuristics' evaluation runs")
            cmd = [PY, "-m", "predictors", "dataset", str(p["eval_run"]), "--out", str(acc / "rows-heuristics-all.parquet")]
            for h in HEURISTICS:
                cmd += ["--strategy", h]
            run(cmd)
            sample_rows(acc / "rows-heuristics-all.parquet", heur, args.sample_rows)
            (acc / "rows-heuristics-all.parquet").unlink()
        for spec in MODELS:
            model = p["models"] / (spec.stem + spec.suffix)
            jobs.append((model, heur, "all", acc / f"{spec.stem}.other-seeds.json"))
        for label, model in models.items():
            own = acc / f"rows-{label}.parquet"
            if not newer(own, p["eval_run"] / "summary.json"):
                step(f"accuracy {name}: rows of {label}'s own evaluation runs")
                run([PY, "-m", "predictors", "dataset", str(p["eval_run"]), "--strategy", label, "--out", str(own)])
            jobs.append((model, own, "all", acc / f"{model.stem}.own-{label}.json"))
    else:
        print(f"  no sweep of {name} yet: held-out accuracy only")
    for model, data, split, out in jobs:
        if newer(out, model, data):
            continue
        step(f"accuracy {name}: {model.name} on {data.name} ({split})")
        run([PY, "-m", "predictors", "evaluate", "--model", str(model), "--data", str(data),
             "--split", split, "--json", str(out)], log=out.with_suffix(".txt"))


# --- tables ---------------------------------------------------------------------------
def fmt(mean: float, lo: float = math.nan, hi: float = math.nan, digits: int = 1) -> str:
    if not math.isfinite(mean):
        return "-"
    text = f"{mean:.{digits}f}"
    if math.isfinite(lo) and math.isfinite(hi):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def paired(units: pd.DataFrame, point: str, a: str, b: str, metric: str) -> dict[str, float]:
    """Mean and 95% t interval of ``metric(a) - metric(b)`` over the seeds both ran (same traces)."""
    from results.stats import confidence_interval

    sub = units[units["point_id"] == point].pivot(index="seed", columns="strategy", values=metric)
    diff = (sub[a] - sub[b]).dropna().to_numpy()
    return confidence_interval(diff)


def delta(units: pd.DataFrame, point: str, a: str, b: str, metric: str, digits: int, scale: float) -> str:
    """The paired difference as text, bold when its interval excludes 0."""
    ci = paired(units, point, a, b, metric)
    text = fmt(scale * ci["mean"], scale * ci["ci_low"], scale * ci["ci_high"], digits)
    return f"**{text}**" if verdict(ci, True) != "tie" else text


def verdict(ci: dict[str, float], higher_better: bool) -> str:
    """``better``/``worse`` when the paired interval excludes 0, else ``tie``."""
    lo, hi = ci["ci_low"], ci["ci_high"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "?"
    if lo > 0:
        return "better" if higher_better else "worse"
    if hi < 0:
        return "worse" if higher_better else "better"
    return "tie"


def group_shares(summary: dict, manifest: dict) -> pd.DataFrame:
    """Per point x strategy: mean share of requests per backend group (over seeds)."""
    group_of = {(pt["point_id"], i): b.get("group", "default")
                for pt in manifest["points"] for i, b in enumerate(pt["backends"])}
    b = pd.DataFrame(summary["backends"])
    b["group"] = [group_of[(p, i)] for p, i in zip(b["point_id"], b["backend"])]
    per_seed = b.groupby(["point_id", "strategy", "seed", "group"])["share"].sum().reset_index()
    return per_seed.groupby(["point_id", "strategy", "group"])["share"].mean().unstack("group")


def sweep_tables(name: str, run: Path) -> list[str]:
    from results.summary import point_label

    summary = json.loads((run / "summary.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    units = pd.DataFrame(summary["units"])
    agg = pd.DataFrame(summary["aggregate"]).set_index(["point_id", "strategy", "metric"])
    ranking = pd.DataFrame(summary["ranking"])
    shares = group_shares(summary, manifest)
    groups = list(shares.columns) if len(shares.columns) > 1 else []
    labels = {pt["point_id"]: point_label(pt) for pt in manifest["points"]}
    seeds = sorted(units["seed"].unique())
    lines = [f"### {name}", "",
             f"Run `{run}`, seeds {', '.join(map(str, seeds))}; {int(units['num_requests'].iloc[0])} requests per run. "
             "Mean over seeds [95% t interval]. Rank by goodput; `=` tied with the best (intervals overlap). "
             "Δ columns: paired difference to the best heuristic at that point over the same seeds "
             "(same traces), with its 95% interval; **bold** where the interval excludes 0. "
             "TPOT p99 and load imbalance (requests on the busiest backend / mean): means over seeds"
             + ("; group shares: mean share of requests sent to each backend group." if groups else "."), ""]

    def a(point: str, strategy: str, metric: str) -> tuple[float, float, float]:
        r = agg.loc[(point, strategy, metric)]
        return r["mean"], r["ci_low"], r["ci_high"]

    for point in ranking["point_id"].unique():
        r = ranking[ranking["point_id"] == point]
        heur = r[r["strategy"].isin(HEURISTICS)]
        best_h = heur.iloc[0]["strategy"]
        lines += [f"**{labels.get(point, point)}** (best heuristic: {best_h})", ""]
        head = ["rank", "strategy", "goodput req/s", "Δ goodput", "TTFT p99 ms", "Δ TTFT p99 ms",
                "SLO attainment %", "Δ SLO attainment pp", "TPOT p99 ms", "load imbalance"] + [f"{g} share %" for g in groups]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in r.itertuples(index=False):
            s = row.strategy
            g = a(point, s, "request_goodput")
            t = a(point, s, "p99_ttft_ms")
            att = [100 * v for v in a(point, s, "slo_attainment")]
            imb = a(point, s, "load_imbalance")
            if s == best_h:
                dg = dt = da = "(reference)"
            else:
                dg, dt, da = (delta(units, point, s, best_h, m, digits, scale)
                              for m, digits, scale in (("request_goodput", 2, 1), ("p99_ttft_ms", 0, 1),
                                                       ("slo_attainment", 1, 100)))
            cells = [f"{row.rank}{'=' if row.tied_with_best else ''}", s, fmt(*g, digits=2), dg,
                     fmt(*t, digits=0), dt, fmt(*att, digits=1), da,
                     fmt(a(point, s, "p99_tpot_ms")[0], digits=0), fmt(imb[0], digits=2)]
            cells += [fmt(100 * shares.loc[(point, s), grp], digits=1) for grp in groups]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def verdict_table(names: list[str], out: Path) -> list[str]:
    """Per predictive strategy: points where it is better / tied / worse than the best heuristic."""
    rows: dict[str, dict[str, list[int]]] = {
        s: {key: [0, 0, 0] for _, key, _ in VERDICT_METRICS}
        for name in names for s in strategy_labels(name) if s not in HEURISTICS
    }
    npoints = 0
    for name in names:
        run = out / "eval" / name
        if not (run / "summary.json").exists():
            continue
        summary = json.loads((run / "summary.json").read_text())
        units = pd.DataFrame(summary["units"])
        ranking = pd.DataFrame(summary["ranking"])
        for point in ranking["point_id"].unique():
            npoints += 1
            r = ranking[ranking["point_id"] == point]
            best_h = r[r["strategy"].isin(HEURISTICS)].iloc[0]["strategy"]
            for s in r["strategy"]:
                if s in HEURISTICS:
                    continue
                entry = rows[s]
                for metric, key, higher in VERDICT_METRICS:
                    v = verdict(paired(units, point, s, best_h, metric), higher)
                    if v in ("better", "tie", "worse"):
                        entry[key][("better", "tie", "worse").index(v)] += 1
    lines = [f"Against the best heuristic of each grid point ({npoints} points), paired over seeds: "
             "points where the strategy is better / tied / worse (95% interval of the difference excludes 0 or not).",
             "", "| strategy | " + " | ".join(f"{key} better / tie / worse" for _, key, _ in VERDICT_METRICS) + " |",
             "|---" * (1 + len(VERDICT_METRICS)) + "|"]
    for s, e in rows.items():
        lines.append(f"| {s} | " + " | ".join(" / ".join(map(str, e[key])) for _, key, _ in VERDICT_METRICS) + " |")
    return lines + [""]


def accuracy_tables(name: str, args: argparse.Namespace) -> list[str]:
    from predictors.modelfile import read_header

    p = paths(args, name)
    acc = p["accuracy"]
    by_model = {path.stem: label for label, path in strategy_models(name, Path(args.models)).items()}
    lines = [f"### {name}", "",
             "MAE in ms; R² (for p90 models: pinball loss in ms and coverage instead). Held-out: the 20% split "
             "of the training rows (seeds 100-102). Other seeds: rows of the four heuristics' evaluation runs "
             "(seeds 0-4). Own routing: rows of the runs the model routed itself.", "",
             "| model | strategy | fit s | held-out MAE | held-out R² / pinball, coverage | other seeds MAE "
             "| other seeds R² / pinball, coverage | own routing MAE | own routing R² / pinball, coverage |",
             "|---|---|---|---|---|---|---|---|---|"]

    def overall(path: Path) -> dict | None:
        if not path.exists():
            return None
        rows = json.loads(path.read_text())
        return next((r for r in rows if r.get("slice") == "overall"), None)

    def cells(r: dict | None, quantile: float | None) -> list[str]:
        if r is None:
            return ["-", "-"]
        second = (f"{1000 * r['pinball']:.1f} ms, {r['coverage']:.3f}" if quantile else f"{r['r2']:.3f}")
        return [f"{1000 * r['mae']:.0f}", second]

    for spec in MODELS:
        model = p["models"] / (spec.stem + spec.suffix)
        if not model.exists():
            continue
        header = read_header(model)
        prov = header.get("provenance", {})
        label = by_model.get(spec.stem, "-")
        row = [spec.stem, label, f"{prov.get('fit_seconds', math.nan):.1f}"]
        row += cells(overall(acc / f"{spec.stem}.heldout.json"), spec.quantile)
        row += cells(overall(acc / f"{spec.stem}.other-seeds.json"), spec.quantile)
        row += cells(overall(acc / f"{spec.stem}.own-{label}.json"), spec.quantile)
        lines.append("| " + " | ".join(row) + " |")
        teacher = prov.get("heldout", {}).get("teacher") if spec.kind == "distill" else None
        if teacher:
            lines.append(f"| (its teacher, not saved) | - | - | {1000 * teacher['mae']:.0f} | {teacher['r2']:.3f} | - | - | - | - |")
    return lines + [""]


def stage_tables(args: argparse.Namespace, names: list[str]) -> None:
    out = Path(args.out)
    step(f"tables -> {out / 'tables.md'}")
    lines = ["# Tables of the predictive-routing experiment", "",
             "Written by experiments/run_predictive_experiment.py.", "", "## Verdicts", ""]
    lines += verdict_table(names, out)
    lines += ["## Routing results", ""]
    for name in names:
        run = out / "eval" / name
        if (run / "summary.json").exists():
            lines += sweep_tables(name, run)
    lines += ["## Model accuracy", ""]
    for name in names:
        lines += accuracy_tables(name, args)
    (out / "tables.md").write_text("\n".join(lines))
    print(f"  wrote {out / 'tables.md'}")


# --- command line ---------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="experiments/run_predictive_experiment.py",
        description=__doc__.split("\n\n", 1)[0] + " Run from the repository root.",
        epilog="Stages: " + ", ".join(STAGES) + ". See the module docstring and docs/results.md.",
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated experiment scenarios (files experiments/<name>.toml); default {','.join(SCENARIOS)}")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated stages to run, in this order: {','.join(STAGES)}; default all")
    parser.add_argument("--out", default="runs/predictive-experiment",
                        help="folder for training runs, rows, evaluation runs, accuracy reports and tables.md; "
                        "default runs/predictive-experiment")
    parser.add_argument("--models", default=str(MODELS_ROOT),
                        help=f"folder for the trained models (one subfolder per scenario); default {MODELS_ROOT}, "
                        "the paths the scenario files name (another folder is passed to the simulator with --set)")
    parser.add_argument("--workers", type=int, default=2, help="simulator worker processes; default 2")
    parser.add_argument("--train-seeds", default=",".join(map(str, TRAIN_SEEDS)),
                        help="seeds of the training runs; default 100,101,102 (keep them disjoint from the evaluation seeds)")
    parser.add_argument("--seeds", default=None,
                        help="evaluation seeds, replacing the scenario files' (0,1,2,3,4); use another --out with it")
    parser.add_argument("--num-requests", type=int, default=None,
                        help="requests per run for training and evaluation, replacing the scenario files' "
                        "(smaller for a quick look; use another --out with it)")
    parser.add_argument("--sample-rows", type=int, default=40000,
                        help="training rows per scenario (a seeded sample of the training runs' rows); default 40000")
    parser.add_argument("--retrain", action="store_true",
                        help="train the models again even if they were trained on the current rows "
                        "(then delete the evaluation runs too: the sweep refuses to mix models)")
    args = parser.parse_args(argv)
    for key, allowed in (("scenarios", SCENARIOS), ("stages", STAGES)):
        chosen = [s for s in getattr(args, key).split(",") if s]
        bad = [s for s in chosen if s not in allowed]
        if bad or not chosen:
            parser.error(f"--{key}: unknown {', '.join(bad) or '(none given)'}; allowed: {', '.join(allowed)}")
        setattr(args, key, chosen)
    if args.seeds and set(args.seeds.split(",")) & set(args.train_seeds.split(",")):
        parser.error(f"--seeds {args.seeds} overlap --train-seeds {args.train_seeds}: evaluation must not reuse training seeds")
    if args.workers < 1 or args.sample_rows < 100:
        parser.error("--workers must be >= 1 and --sample-rows >= 100")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path("scenarios").is_dir() or not Path("experiments").is_dir():
        raise SystemExit("run from the repository root: the scenario files name their models relative to it")
    for name in args.scenarios:
        check_scenario_models(name)
    per_scenario = {"data": stage_data, "train": stage_train, "sweep": stage_sweep,
                    "report": stage_report, "accuracy": stage_accuracy}
    for stage in STAGES:
        if stage not in args.stages:
            continue
        if stage == "tables":
            stage_tables(args, list(args.scenarios))
            continue
        for name in args.scenarios:
            per_scenario[stage](args, name)
    print(f"\ndone in {(time.perf_counter() - step.start) / 60:.1f} min; tables in {Path(args.out) / 'tables.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
