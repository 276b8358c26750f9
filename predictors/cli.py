"""``python -m predictors``: build datasets, train, evaluate and compare latency models."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from predictors.base import Predictor
from predictors.dataset import RunDataError, run_rows
from predictors.evaluate import evaluation_report, format_table, regression_metrics, split_indices
from predictors.features import (
    FEATURE_SCHEMA_VERSION,
    FEATURES,
    NUMERIC_FEATURES,
    TARGETS,
    FeatureError,
    target_name,
    training_rows,
)
from predictors.modelfile import ModelFileError, load_model, read_header, save_model
from predictors.registry import MODEL_KINDS, make_model, parse_params
from predictors.synthetic import synthetic_rows

#: Families ``compare`` trains by default, and the role each plays in the table.
COMPARE_ROLES: dict[str, str] = {
    "linear": "baseline",
    "tree": "direct tree",
    "mlp": "neural net",
    "transformer": "teacher",
    "distill": "student (tree)",
    "online_linear": "online, frozen after the train split",
}


def read_data(path: str | Path) -> pd.DataFrame:
    """A CSV (optionally gzipped) or Parquet table of schema rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return pd.read_csv(path)
    if name.endswith(".parquet"):
        return pd.read_parquet(path)
    raise ValueError(f"cannot read {path}: use a .csv, .csv.gz or .parquet file")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _split(frame: pd.DataFrame, target: str, seed: int, test_fraction: float):
    X, y, dropped = training_rows(frame, target)
    if len(y) == 0:
        raise FeatureError(f"no rows with a finite {TARGETS[target]} to learn from")
    train, test = split_indices(len(y), test_fraction, seed)
    return X, y, dropped, train, test


def _print_report(title: str, X: pd.DataFrame, y: np.ndarray, pred: np.ndarray, quantile) -> pd.DataFrame:
    report = evaluation_report(X, y, pred, quantile)
    print(title)
    print(format_table(report))
    return report


# --- commands ---------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    frame = read_data(args.data)
    model = make_model(
        args.model, target=args.target, quantile=args.quantile, seed=args.seed, **parse_params(args.param)
    )
    X, y, dropped, train, test = _split(frame, model.target, args.seed, args.test_fraction)
    start = time.perf_counter()
    model.fit(X.iloc[train].reset_index(drop=True), y[train])
    fit_s = time.perf_counter() - start
    heldout: dict[str, Any] = {}
    teacher = getattr(model, "teacher", None)  # distill: report the teacher beside its student
    if len(test):
        Xt = X.iloc[test].reset_index(drop=True)
        pred = model.predict(Xt)
        heldout = regression_metrics(y[test], pred, model.quantile)
        if teacher is not None:
            heldout = {"student": heldout, "teacher": regression_metrics(y[test], teacher.predict(Xt), model.quantile)}
    model.provenance.update(
        {
            "data": str(args.data),
            "data_sha256": file_sha256(args.data),
            "rows": len(frame),
            "rows_without_target": dropped,
            "rows_train": len(train),
            "rows_test": len(test),
            "split": {"seed": args.seed, "test_fraction": args.test_fraction},
            "fit_seconds": round(fit_s, 3),
            "heldout": heldout,
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
        }
    )
    path = save_model(model, args.out)
    q = "" if model.quantile is None else f" p{model.quantile * 100:g}"
    print(f"trained {model.kind}{q} {model.target} model on {len(train)} rows in {fit_s:.1f}s -> {path}")
    if len(test):
        _print_report(f"held-out rows: {len(test)}", Xt, y[test], pred, model.quantile)
        if teacher is not None:
            t = heldout["teacher"]
            print(f"teacher ({teacher.kind}, not saved) on the same rows: MAE {t['mae']:.4g}, "
                  f"MAPE {t['mape_pct']:.4g}%, R2 {t['r2']:.4g}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    frame = read_data(args.data)
    split = model.provenance.get("split", {})
    seed = args.seed if args.seed is not None else int(split.get("seed", 0))
    fraction = args.test_fraction if args.test_fraction is not None else float(split.get("test_fraction", 0.2))
    X, y, dropped, _, test = _split(frame, model.target, seed, fraction if args.split == "test" else 0.0)
    rows = test if args.split == "test" else np.arange(len(y))
    if len(rows) == 0:
        raise ValueError("the test split is empty: use --split all or a larger --test-fraction")
    if args.split == "test" and model.provenance.get("data_sha256") not in (None, file_sha256(args.data)):
        print(f"note: {args.data} is not the file this model was trained on; 'test' is a seeded split of it")
    Xe = X.iloc[rows].reset_index(drop=True)
    q = "" if model.quantile is None else f" p{model.quantile * 100:g}"
    report = _print_report(
        f"{model.kind}{q} {model.target} model on {len(rows)} {args.split} rows of {args.data} "
        f"(split seed {seed}, test fraction {fraction:g}; {dropped} rows without a target)",
        Xe, y[rows], model.predict(Xe), model.quantile,
    )
    if args.json:
        Path(args.json).write_text(report.to_json(orient="records", indent=1))
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    rows = run_rows(args.run, args.strategy)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.name.lower().endswith(".parquet"):
        rows.to_parquet(out, index=False)
    else:
        rows.to_csv(out, index=False)
    print(f"{len(rows)} training rows (ok requests) from {args.run} -> {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    frame = read_data(args.data)
    kinds = args.models.split(",") if args.models else list(COMPARE_ROLES)
    unknown = [k for k in kinds if k not in MODEL_KINDS]
    if unknown:
        raise ValueError(f"unknown model kind(s) {', '.join(unknown)}; available: {', '.join(MODEL_KINDS)}")
    params = _per_kind_params(args.param, kinds)
    target = target_name(args.target)
    X, y, dropped, train, test = _split(frame, target, args.seed, args.test_fraction)
    if len(test) == 0:
        raise ValueError("compare needs held-out rows: use a --test-fraction above 0")
    Xtr, Xte = X.iloc[train].reset_index(drop=True), X.iloc[test].reset_index(drop=True)
    rows16 = Xte.iloc[:16]
    _import_training_libraries(kinds)  # so that fit_s times fitting, not imports
    # The teacher is trained inside `distill`: report that one rather than train it twice.
    order = [k for k in kinds if k != "transformer"] if "distill" in kinds else kinds
    table = []
    for kind in tqdm(order, desc="models", unit="model", disable=None):
        model = make_model(kind, target=target, quantile=args.quantile, seed=args.seed, **params[kind])
        start = time.perf_counter()
        model.fit(Xtr, y[train])
        fit_s = time.perf_counter() - start
        entries = [(kind, model)]
        if kind == "distill" and "transformer" in kinds:
            entries.insert(0, ("transformer", model.teacher))
        for name, m in entries:
            pred = m.predict(Xte)
            table.append(
                {
                    "model": name,
                    "role": COMPARE_ROLES.get(name, ""),
                    "fit_s": fit_s if m is model else np.nan,
                    "us_per_16": decision_cost_us(m, rows16),
                    **regression_metrics(y[test], pred, args.quantile),
                }
            )
    result = pd.DataFrame(table).drop(columns=["n"])
    q = "mean" if args.quantile is None else f"p{args.quantile * 100:g}"
    print(
        f"{target} ({q}) on {args.data}: {len(train)} train / {len(test)} held-out rows "
        f"(seed {args.seed}; {dropped} rows without a target). us_per_16 = median time "
        "to predict 16 rows (one routing decision's worth)."
    )
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(result.to_json(orient="records", indent=1))
    return 0


def decision_cost_us(model: Predictor, rows: pd.DataFrame, repeats: int = 200) -> float:
    """Median microseconds of ``predict_rows`` on these rows (the routing fast path)."""
    raw = [tuple(r) for r in rows[list(NUMERIC_FEATURES)].to_numpy(np.float64).tolist()]
    groups = rows["group"].astype(str).tolist()
    model.predict_rows(raw, groups)  # warm up caches
    times = []
    reps = repeats if model.kind != "transformer" else 20
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        model.predict_rows(raw, groups)
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times)) / 1000.0


def cmd_synth(args: argparse.Namespace) -> int:
    rows = synthetic_rows(args.rows, seed=args.seed, groups=args.groups.split(","), noise=args.noise)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(out, index=False)
    print(f"{len(rows)} synthetic rows -> {out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    header = read_header(args.model)
    state = header.pop("state", {})
    header["state_keys"] = sorted(state)
    print(json.dumps(header, indent=2))
    return 0


def _per_kind_params(items: list[str] | None, kinds: list[str]) -> dict[str, dict[str, Any]]:
    params: dict[str, dict[str, Any]] = {k: {} for k in MODEL_KINDS}
    for key, value in parse_params(items).items():
        kind, dot, name = key.partition(".")
        if not dot or kind not in MODEL_KINDS:
            raise ValueError(f"compare --param expects KIND.KEY=VALUE (e.g. tree.max_depth=8), got {key!r}")
        params[kind][name] = value
    return params


def _import_training_libraries(kinds: list[str]) -> None:
    import sklearn.linear_model  # noqa: F401
    import sklearn.tree  # noqa: F401

    if {"mlp", "transformer", "distill"} & set(kinds):
        import torch  # noqa: F401


def _param_help() -> str:
    lines = []
    for kind in MODEL_KINDS:
        defaults = make_model(kind).get_params()
        lines.append(f"  {kind}: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in defaults.items()))
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    out = {}
    for mod in ("numpy", "pandas", "sklearn", "torch"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    return out


# --- argument parsing ---------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    kinds = ", ".join(MODEL_KINDS)
    parser = argparse.ArgumentParser(
        prog="python -m predictors",
        description=(
            "Latency predictors for routing: turn runs into training rows, train and evaluate "
            f"models over the feature schema (version {FEATURE_SCHEMA_VERSION}: "
            f"{', '.join(FEATURES)}), compare model families."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def data_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", required=True, help="training rows: .csv, .csv.gz or .parquet with the schema columns and targets")

    def split_args(p: argparse.ArgumentParser, default_fraction: float | None) -> None:
        p.add_argument("--seed", type=int, default=None if default_fraction is None else 0,
                       help="seed of the held-out split (and of model training)"
                       + ("; default: the one the model was trained with" if default_fraction is None else "; default 0"))
        p.add_argument("--test-fraction", type=float, default=default_fraction,
                       help="fraction of rows held out for evaluation"
                       + ("; default: the model's own" if default_fraction is None else f"; default {default_fraction}"))

    p = sub.add_parser(
        "train", help="train one model and save it", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a model on the train split of --data, print held-out metrics, save it.\n\n"
        "Hyperparameters (--param KEY=VALUE) and their defaults:\n" + _param_help(),
    )
    data_arg(p)
    p.add_argument("--model", required=True, choices=list(MODEL_KINDS), metavar="KIND", help=f"model family: {kinds}")
    p.add_argument("--target", default="ttft", choices=list(TARGETS), help="what to predict: ttft, tpot (time between tokens) or e2el; default ttft")
    p.add_argument("--quantile", type=float, default=None, help="train a quantile model at this level (e.g. 0.9 for p90) instead of the mean")
    p.add_argument("--out", required=True, help="model file to write (.json, or .safetensors for mlp/transformer; suffix added if omitted)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="model hyperparameter, repeatable (e.g. max_depth=8, hidden=[32,32]); values are JSON")
    split_args(p, 0.2)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a saved model on data", description="MAE, MAPE, R2 (and pinball loss, coverage for quantile models) overall, per input-length bucket (edges 128/512/1024) and per load tercile.")
    p.add_argument("--model", required=True, help="model file written by `train`")
    data_arg(p)
    p.add_argument("--split", choices=("test", "all"), default="test", help="evaluate on the held-out split (default) or on every row")
    p.add_argument("--json", help="also write the report rows to this JSON file")
    split_args(p, None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("dataset", help="run directory -> training rows", description="Turn a simulator/live run directory's ok records into training rows: features as the router saw them, group from the manifest, targets ttft_s/tpot_s/e2el_s.")
    p.add_argument("run", help="run directory (with manifest.json and records/)")
    p.add_argument("--out", required=True, help="output table (.csv, or .parquet)")
    p.add_argument("--strategy", action="append", help="only records of this strategy (repeatable); default all")
    p.set_defaults(func=cmd_dataset)

    p = sub.add_parser("compare", help="train and evaluate every model family on one split", description="Train each model family on the same train split and print one held-out table (accuracy, fit time, prediction cost per 16 rows).")
    data_arg(p)
    p.add_argument("--target", default="ttft", choices=list(TARGETS), help="what to predict; default ttft")
    p.add_argument("--quantile", type=float, default=None, help="compare quantile models at this level (e.g. 0.9)")
    p.add_argument("--models", help=f"comma-separated kinds; default all: {','.join(COMPARE_ROLES)}")
    p.add_argument("--param", action="append", metavar="KIND.KEY=VALUE", help="hyperparameter for one family, repeatable (e.g. mlp.epochs=50)")
    p.add_argument("--json", help="also write the table to this JSON file")
    split_args(p, 0.2)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("synth", help="write synthetic training rows", description="Synthetic rows from a known vLLM-shaped latency law (see predictors/synthetic.py), for demos and benchmarks.")
    p.add_argument("--rows", type=int, default=5000, help="number of rows; default 5000")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--seed", type=int, default=0, help="random seed; default 0")
    p.add_argument("--groups", default="a100,h100", help="comma-separated backend groups; default a100,h100")
    p.add_argument("--noise", type=float, default=0.15, help="log-normal noise sigma on the latencies; default 0.15")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("info", help="print a model file's header", description="Print a model file's JSON header (kind, schema version, target, groups, parameters, provenance) without loading torch.")
    p.add_argument("model", help="model file")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FeatureError, ModelFileError, RunDataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`| head`): not a failure. Point stdout at devnull so
        # that the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
