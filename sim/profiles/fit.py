"""Fitting efficiency factors on measured step times, and scoring derived step times against them.

The measurements are steps of known composition and duration, in the shape of
Splitwise's public ``perf_model.csv`` (Patel et al., ISCA 2024; MIT;
``tests/data/splitwise_perf_model.csv``): ``prompt_time`` is the prefill of
``batch_size`` prompts of ``prompt_size`` tokens in one step, ``token_time`` one
decode step of ``batch_size`` sequences averaged over ``token_size`` tokens
(mean context ``prompt_size + token_size / 2``). Repeats of a configuration are
reduced to their median; configurations faster than one they dominate by more
than 20% are dropped as broken (the same rule as the fitted profiles use).

The fit evaluates candidate factors through the very ``LatencyModel.step_time``
the simulator calls, and minimises robust (soft-L1) relative errors with
``scipy.optimize.least_squares`` in log space, with a weak pull of each free
factor towards its starting value so factors the data cannot identify stay put.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from sim.profiles.architecture import ModelArch
from sim.profiles.arithmetic import step_arithmetic
from sim.profiles.derive import latency_model
from sim.profiles.errors import DeriveError
from sim.profiles.factors import FACTOR_NAMES, EfficiencyFactors
from sim.profiles.hardware import DeviceSpec, get_gpu
from sim.profiles.model_catalog import catalog_model

#: Factors fitted by default; hbm_efficiency and step_overhead_s stay at their start.
FITTED = ("matmul_efficiency", "attention_efficiency", "interconnect_efficiency", "layer_cycles",
          "allreduce_step_cycles", "seq_overhead_s", "prefill_floor_layer_s", "allreduce_spill_cost")
#: Where a fit starts, and what the weak prior pulls towards.
START = EfficiencyFactors(hbm_efficiency=0.9, matmul_efficiency=0.5, attention_efficiency=0.3,
                          interconnect_efficiency=0.5, layer_cycles=2e5, allreduce_step_cycles=1e4,
                          seq_overhead_s=1e-4, prefill_floor_layer_s=5e-4, step_overhead_s=0.0,
                          allreduce_spill_cost=10.0)
_EFFICIENCIES = {"hbm_efficiency", "matmul_efficiency", "attention_efficiency", "interconnect_efficiency"}
SPLITWISE_MODELS = {"llama2-70b": "llama-2-70b", "bloom-176b": "bloom-176b"}
SPLITWISE_GPUS = {"a100-80gb": "a100-sxm", "h100-80gb": "h100-sxm", "h100-80gb-pcap": "h100-sxm"}
MONOTONE_TOLERANCE = 0.8


def splitwise_steps(csv_path: str | Path) -> pd.DataFrame:
    """One row per measured step (median of repeats) with its composition; broken rows dropped."""
    data = pd.read_csv(csv_path)
    need = {"model", "hardware", "tensor_parallel", "prompt_size", "batch_size", "token_size", "prompt_time",
            "token_time"}
    missing = need - set(data.columns)
    if missing:
        raise DeriveError(f"{csv_path}: missing columns {sorted(missing)}; is this Splitwise's perf_model.csv?")
    keys = ["model", "hardware", "tensor_parallel", "prompt_size", "batch_size", "token_size"]
    med = data.groupby(keys, as_index=False)[["prompt_time", "token_time"]].median()
    rows = []
    for r in med.itertuples(index=False):
        if r.model not in SPLITWISE_MODELS or r.hardware not in SPLITWISE_GPUS:
            continue
        b, p, t = int(r.batch_size), int(r.prompt_size), int(r.token_size)
        common = dict(model=SPLITWISE_MODELS[r.model], gpu=SPLITWISE_GPUS[r.hardware], hardware=r.hardware,
                      tp=int(r.tensor_parallel), dtype="fp16", batch=b, prompt=p, tokens=t)
        rows.append({**common, "kind": "prefill", "num_tokens": b * p, "num_seqs": b,
                     "prefill_work": b * p * (p + 1) / 2.0, "decode_context": 0, "seconds": r.prompt_time / 1e3})
        rows.append({**common, "kind": "decode", "num_tokens": b, "num_seqs": b, "prefill_work": 0.0,
                     "decode_context": b * (p + t / 2.0), "seconds": r.token_time / 1e3})
    steps = pd.DataFrame(rows)
    return steps[~_broken(steps)].reset_index(drop=True)


def _broken(steps: pd.DataFrame) -> np.ndarray:
    """Rows that do at least the work of another row of their configuration yet run much faster."""
    bad = np.zeros(len(steps), dtype=bool)
    for _, g in steps.groupby(["model", "hardware", "tp", "kind"]):
        p, b, t, s = (g[c].to_numpy() for c in ("prompt", "batch", "tokens", "seconds"))
        for i, idx in enumerate(g.index):
            dominated = (p <= p[i]) & (b <= b[i]) & (t <= t[i])
            dominated[i] = False
            if dominated.any() and s[i] < MONOTONE_TOLERANCE * s[dominated].max():
                bad[steps.index.get_loc(idx)] = True
    return bad


class _Evaluator:
    """Predicts every row's step time for candidate factors (arithmetic computed once per group)."""

    def __init__(self, steps: pd.DataFrame, archs: dict[str, ModelArch] | None = None,
                 devices: dict[str, DeviceSpec] | None = None):
        self.groups = []
        archs, devices = archs or {}, devices or {}
        for (model, gpu, tp, dtype), g in steps.groupby(["model", "gpu", "tp", "dtype"], sort=False):
            arch = archs.get(model) or catalog_model(model)
            if arch is None:
                raise DeriveError(f"measurements name model {model!r}: not a shipped model and not in archs")
            arith = step_arithmetic(arch, int(tp), dtype)
            device = devices.get(gpu) or get_gpu(gpu)
            cols = [g[c].to_numpy() for c in ("num_tokens", "num_seqs", "prefill_work", "decode_context")]
            self.groups.append((g.index.to_numpy(), arith, device, list(zip(*cols))))
        self.n = len(steps)

    def predict(self, factors: EfficiencyFactors) -> np.ndarray:
        out = np.empty(self.n)
        for index, arith, device, rows in self.groups:
            model = latency_model(arith, device, factors)
            out[index] = [model.step_time(int(t), int(s), float(w), float(c)) for t, s, w, c in rows]
        return out


def predict(steps: pd.DataFrame, factors: EfficiencyFactors, archs: dict[str, ModelArch] | None = None,
            devices: dict[str, DeviceSpec] | None = None) -> np.ndarray:
    """Derived step time of every row, in seconds (models and devices by name, or from the dicts)."""
    return _Evaluator(steps.reset_index(drop=True), archs, devices).predict(factors)


def fit_factors(steps: pd.DataFrame, *, start: EfficiencyFactors = START, free: tuple[str, ...] = FITTED,
                prior_weight: float = 0.02, archs: dict[str, ModelArch] | None = None,
                devices: dict[str, DeviceSpec] | None = None) -> tuple[EfficiencyFactors, dict]:
    """Factors minimising the relative error of the derived step times on ``steps``."""
    from scipy.optimize import least_squares

    unknown = set(free) - set(FACTOR_NAMES)
    if unknown:
        raise DeriveError(f"unknown factor(s) {sorted(unknown)}; allowed: {', '.join(FACTOR_NAMES)}")
    if steps.empty:
        raise DeriveError("no measured steps to fit on")
    steps = steps.reset_index(drop=True)
    ev = _Evaluator(steps, archs, devices)
    y = steps["seconds"].to_numpy(float)
    base = asdict(start)
    x0 = np.log([max(base[n], 1e-12) for n in free])
    lo = np.array([np.log(0.02) if n in _EFFICIENCIES else np.log(1e-12) for n in free])
    hi = np.array([np.log(1.5) if n in _EFFICIENCIES else np.log(1e9) for n in free])
    x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
    weight = prior_weight * np.sqrt(len(y))

    def factors_of(z: np.ndarray) -> EfficiencyFactors:
        return start.with_values(**{n: float(np.exp(v)) for n, v in zip(free, z)})

    def residuals(z: np.ndarray) -> np.ndarray:
        rel = ev.predict(factors_of(z)) / y - 1.0
        return np.concatenate([rel, weight * (z - x0)])

    res = least_squares(residuals, x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.05, x_scale=1.0)
    fitted = factors_of(res.x)
    err = np.abs(ev.predict(fitted) / y - 1.0)
    kinds = steps["kind"].to_numpy()
    diag = {
        "method": "scipy least_squares on relative step-time errors (soft-L1, f_scale 0.05), log-space "
                  f"factors, prior weight {prior_weight} towards the start",
        "free": list(free),
        "rows": int(len(y)),
        "median_abs_rel_error": {k: float(np.median(err[kinds == k])) for k in ("prefill", "decode")
                                 if (kinds == k).any()},
        "p90_abs_rel_error": {k: float(np.quantile(err[kinds == k], 0.9)) for k in ("prefill", "decode")
                              if (kinds == k).any()},
        "optimizer": res.message,
    }
    return fitted, diag


def error_table(steps: pd.DataFrame, factors: EfficiencyFactors, by: str = "slice",
                archs: dict[str, ModelArch] | None = None, devices: dict[str, DeviceSpec] | None = None
                ) -> pd.DataFrame:
    """Median and p90 absolute relative error of prefill and decode step times per ``by`` value."""
    steps = steps.reset_index(drop=True)
    err = np.abs(predict(steps, factors, archs, devices) / steps["seconds"].to_numpy(float) - 1.0)
    frame = steps.assign(err=err)
    rows = []
    for key, g in frame.groupby(by, sort=False):
        row = {by: key, "rows": len(g)}
        for kind in ("prefill", "decode"):
            e = g.loc[g["kind"] == kind, "err"]
            row[f"{kind}_median"] = float(e.median()) if len(e) else float("nan")
            row[f"{kind}_p90"] = float(e.quantile(0.9)) if len(e) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)
