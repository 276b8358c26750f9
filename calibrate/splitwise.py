"""Fit GPU latency profiles from Splitwise's public serving measurements.

``python -m calibrate.splitwise PATH/splitwise_perf_model.csv [--out sim/profiles]`` writes
one profile per (hardware, tensor parallelism) for Llama2-70B. Fitting profiles is
calibration's job: the simulator only reads them (``sim.latency``).

The data (Patel et al., "Splitwise", ISCA'24; repository ``Mutinifni/splitwise-sim``
``data/perf_model.csv``, MIT) times whole batches: ``prompt_time`` is the prefill
of ``batch_size`` prompts of ``prompt_size`` tokens in one forward pass, and
``token_time`` is one decode step of ``batch_size`` sequences (averaged over the
``token_size`` generated tokens, so the mean context is prompt + token_size / 2).
Both map onto our step-time model (``sim.latency``):

    prefill: step_s + token_s*b*P + seq_s*b + prefill_attn_s*b*P*(P+1)/2
    decode:  step_s + (token_s + seq_s)*b + decode_attn_s*b*(P + t/2)

so the five coefficients are fitted jointly, non-negative, minimising relative
error (each row divided by its measured time) with ``scipy.optimize.lsq_linear``.
Configurations that do strictly more work than another yet run much faster are
dropped first as broken measurements (A100 TP2 reports a batch-64 prefill five
times faster than its batch-32 one); dropped rows and residuals go in the
profile's ``fit`` section.

KV capacity is not in the data; it is estimated from the hardware: usable memory =
GPUs x 80 GB x 0.95 ``gpu_memory_utilization`` (above vLLM's 0.9 default: at 0.9
the fp16 70B model leaves no KV room on two GPUs, yet Splitwise measured TP2
batches of 64) minus fp16 weights (140 GB) minus ~1 GB per GPU of workspace,
divided by
Llama2-70B's KV size per token (80 layers x 2 x 8 KV heads x 128 x 2 bytes =
320 KiB). Engine limits follow vLLM's defaults: 1024 sequences and 8192 batched
tokens on H100-class GPUs, 256 and 2048 elsewhere.
"""
from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

import numpy as np

import sim
from sim.latency import COEFFICIENTS, PROFILE_DIR, EngineDefaults, LatencyModel, LatencyProfile

#: Where the simulator's shipped profiles live (written by default).
SHIPPED_PROFILES = Path(sim.__file__).resolve().parent / PROFILE_DIR

GPU_MEMORY_GB = 80.0
GPU_MEMORY_UTILIZATION = 0.95
WEIGHTS_GB = {"llama2-70b": 140.0}
ACTIVATION_GB_PER_GPU = 1.0
KV_BYTES_PER_TOKEN = {"llama2-70b": 80 * 2 * 8 * 128 * 2}
HARDWARE_NAMES = {"a100-80gb": "a100", "h100-80gb": "h100"}
SOURCE_URL = "https://github.com/Mutinifni/splitwise-sim/blob/main/data/perf_model.csv"


def design_rows(df) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Feature matrix (columns = COEFFICIENTS, seconds), targets (seconds), row kinds."""
    b = df["batch_size"].to_numpy(float)
    p = df["prompt_size"].to_numpy(float)
    t = df["token_size"].to_numpy(float)
    ones = np.ones_like(b)
    prefill = np.column_stack([ones, b * p, b, b * p * (p + 1) / 2, np.zeros_like(b)])
    decode = np.column_stack([ones, b, b, np.zeros_like(b), b * (p + t / 2)])
    x = np.vstack([prefill, decode])
    y = np.concatenate([df["prompt_time"].to_numpy(float), df["token_time"].to_numpy(float)]) / 1000.0
    kind = np.array(["prefill"] * len(df) + ["decode"] * len(df))
    return x, y, kind


def _solve(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.optimize import lsq_linear

    scale = x.max(axis=0)
    scale[scale == 0] = 1.0
    res = lsq_linear((x / scale) / y[:, None], np.ones_like(y), bounds=(0, np.inf), method="bvls")
    return res.x / scale


#: A configuration faster than one it dominates by more than this factor is broken.
MONOTONE_TOLERANCE = 0.8


def broken_configurations(df) -> list[dict]:
    """Configurations that do more work than another yet take much less time.

    A prefill of more prompts of at least the same length (or a decode step of a
    larger batch over at least the same context) cannot be faster; Splitwise's
    A100/H100 TP2 tables contain such rows (e.g. a batch-64 prefill five times
    faster than batch 32), which would otherwise dominate a least-squares fit.
    """
    med = df.groupby(["prompt_size", "batch_size", "token_size"])[["prompt_time", "token_time"]].median()
    bad = []
    for column, kind in (("prompt_time", "prefill"), ("token_time", "decode")):
        for (p, b, t), row in med.iterrows():
            dominated = med[(med.index.get_level_values(0) <= p) & (med.index.get_level_values(1) <= b)
                            & (med.index.get_level_values(2) <= t)]
            dominated = dominated.drop(index=(p, b, t))
            if len(dominated) and row[column] < MONOTONE_TOLERANCE * dominated[column].max():
                bad.append({"kind": kind, "prompt_size": int(p), "batch_size": int(b),
                            "token_size": int(t), "measured_ms": float(row[column]),
                            "slower_dominated_ms": float(dominated[column].max())})
    return bad


def fit_coefficients(df) -> tuple[LatencyModel, dict]:
    """Drop broken configurations (see ``broken_configurations``), then fit."""
    x, y, kind = design_rows(df)
    dropped = broken_configurations(df)
    keep = np.ones(len(y), dtype=bool)
    half = len(df)
    for d in dropped:
        match = ((df["prompt_size"] == d["prompt_size"]) & (df["batch_size"] == d["batch_size"])
                 & (df["token_size"] == d["token_size"])).to_numpy()
        offset = 0 if d["kind"] == "prefill" else half
        keep[offset:offset + half] &= ~match
    coef = _solve(x[keep], y[keep])
    model = LatencyModel(**dict(zip(COEFFICIENTS, (float(c) for c in coef))))
    rel = (x @ coef - y) / y
    diag = {
        "method": "non-negative least squares on relative error (scipy lsq_linear, bvls), "
                  "after dropping configurations faster than ones they dominate",
        "rows": int(keep.sum()),
        "dropped_rows": dropped,
        "median_abs_rel_error": {k: float(np.median(np.abs(rel[keep & (kind == k)])))
                                 for k in ("prefill", "decode")},
        "max_abs_rel_error": {k: float(np.max(np.abs(rel[keep & (kind == k)])))
                              for k in ("prefill", "decode")},
    }
    return model, diag


def kv_blocks(model_name: str, tp: int, block_size: int = 16) -> int:
    usable = tp * (GPU_MEMORY_GB * GPU_MEMORY_UTILIZATION - ACTIVATION_GB_PER_GPU) - WEIGHTS_GB[model_name]
    if usable <= 0:
        raise ValueError(f"{model_name} does not fit on {tp} GPUs")
    tokens = usable * 1e9 / KV_BYTES_PER_TOKEN[model_name]
    return int(tokens // block_size)


def build_profiles(csv_path: str | Path, model_name: str = "llama2-70b") -> list[LatencyProfile]:
    import pandas as pd

    data = pd.read_csv(csv_path)
    expected = {"model", "hardware", "prompt_size", "batch_size", "token_size", "prompt_time",
                "token_time", "tensor_parallel"}
    missing = expected - set(data.columns)
    if missing:
        raise ValueError(f"{csv_path}: missing columns {sorted(missing)}; is this Splitwise's perf_model.csv?")
    profiles = []
    for (hw, tp), df in data[data["model"] == model_name].groupby(["hardware", "tensor_parallel"]):
        if hw not in HARDWARE_NAMES:
            continue  # power-capped variants are left out
        short = HARDWARE_NAMES[hw]
        model, diag = fit_coefficients(df)
        h100_class = short == "h100"
        name = f"{short}-{model_name}-tp{int(tp)}"
        profiles.append(LatencyProfile(
            name=name,
            model=model,
            engine=EngineDefaults(
                num_kv_blocks=kv_blocks(model_name, int(tp)),
                block_size=16,
                max_num_seqs=1024 if h100_class else 256,
                max_num_batched_tokens=8192 if h100_class else 2048,
                async_scheduling=True,  # vLLM's default on GPU
            ),
            description=f"{model_name} on {int(tp)}x {hw.upper()} (tensor parallel {int(tp)}), "
                        "fitted to Splitwise's measured prefill and decode times",
            hardware=f"{int(tp)}x {hw}",
            served_model=model_name,
            provisional=False,
            source={
                "kind": "fit to public measurements",
                "data": SOURCE_URL,
                "citation": "Patel et al., Splitwise: Efficient Generative LLM Inference Using "
                            "Phase Splitting, ISCA 2024 (data MIT-licensed)",
                "script": "python -m calibrate.splitwise splitwise_perf_model.csv",
                "date": date.today().isoformat(),
                "kv_blocks": "derived from memory: see calibrate/splitwise.py",
            },
            fit=diag,
        ))
    return profiles


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m calibrate.splitwise",
        description="Fit the simulator's GPU latency profiles (Llama2-70B on A100/H100, "
                    "tensor parallel 2/4/8) to Splitwise's public perf_model.csv.",
    )
    parser.add_argument("csv", help="path to Splitwise's perf_model.csv")
    parser.add_argument("--out", default=str(SHIPPED_PROFILES),
                        help="folder to write <name>.json profiles to (default: the shipped profiles, "
                             "sim/profiles)")
    args = parser.parse_args(argv)
    try:
        profiles = build_profiles(args.csv)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'profile':26s} {'step ms':>8s} {'tok us':>7s} {'seq us':>7s} {'pf-attn ns':>10s} "
          f"{'dec-attn ns':>11s} {'kv blocks':>9s} {'prefill err':>11s} {'decode err':>10s}")
    for p in profiles:
        m = p.model
        path = p.save(Path(args.out) / f"{p.name}.json")
        err = p.fit["median_abs_rel_error"]
        if p.fit["dropped_rows"]:
            print(f"  {p.name}: dropped outlier configuration(s) "
                  + ", ".join(f"{d['kind']} P={d['prompt_size']} b={d['batch_size']}" for d in p.fit['dropped_rows']))
        print(f"{p.name:26s} {m.step_s*1e3:8.2f} {m.token_s*1e6:7.2f} {m.seq_s*1e6:7.1f} "
              f"{m.prefill_attn_s*1e9:10.3f} {m.decode_attn_s*1e9:11.2f} {p.engine.num_kv_blocks:9d} "
              f"{err['prefill']:10.1%} {err['decode']:10.1%}   -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
