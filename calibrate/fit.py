"""Fit a latency profile to profiling data: closed form on idle requests, then replay.

Two stages:

1. **Closed form (idle phase).** A request alone on an idle engine has
   ``TTFT = overhead + step + seq + token*n + prefill_attn*n(n+1)/2`` (one
   prefill step, chunked past ``max_num_batched_tokens``) and
   ``TPOT = step + seq + token + decode_attn*context`` (see
   ``LatencyModel.single_request``). Non-negative least squares on relative
   errors gives every coefficient but the split of ``step + seq``.
2. **Replay (every phase).** Each measured unit is replayed through the engine
   model (``calibrate.replay``) with the candidate coefficients, and
   ``scipy.optimize.least_squares`` minimises the log-ratio of simulated to
   measured TTFT and TPOT of the same requests, each unit weighted equally and
   with a soft-L1 loss so a request slowed by a noisy neighbour cannot drag the
   fit. Batched phases are what separate the per-step from the per-sequence cost.

The result is a ``sim.latency.LatencyProfile`` with provenance (``source``) and
diagnostics (``fit``: residuals per unit, per phase and per prompt-length bucket).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, nnls

from calibrate.jsonsafe import json_safe
from calibrate.machine import command_line, loadavg, machine_info, utc_now
from calibrate.profiling import meta_path
from calibrate.replay import PreparedUnit, prepare_units, simulate_units
from sim.latency import COEFFICIENTS, EngineDefaults, LatencyModel, LatencyProfile

#: Fitted parameters: the five step-time coefficients, then the per-request overhead.
PARAMS = COEFFICIENTS + ("overhead_s",)
#: Smallest value each parameter may take in the log-space search (seconds).
_FLOOR = np.array([1e-5, 1e-8, 1e-7, 1e-13, 1e-11, 1e-5])


class FitError(ValueError):
    """The profiling data cannot be fitted (missing columns, too few usable rows)."""


@dataclass
class FitResult:
    model: LatencyModel
    overhead_s: float
    init: dict[str, float]
    cost: float
    nfev: int
    success: bool
    message: str


def load_data(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """The profiling rows (ok, with output) and their metadata (``{}`` if absent)."""
    path = Path(path)
    if not path.is_file():
        raise FitError(f"profiling data {path} does not exist")
    data = pd.read_csv(path)
    need = ("unit", "phase", "input_len", "output_len", "ttft_s", "tpot_s", "e2el_s", "send_s",
            "request_id", "prefix_id", "shared_len", "ok")
    missing = [c for c in need if c not in data.columns]
    if missing:
        raise FitError(f"{path} lacks column(s) {', '.join(missing)}; write it with `python -m calibrate profile`")
    ok = data["ok"].astype(str).str.lower().isin(("true", "1"))
    data = data[ok & np.isfinite(data["ttft_s"]) & (data["output_len"] >= 1)].reset_index(drop=True)
    if data.empty:
        raise FitError(f"{path} has no successful requests to fit")
    mp = meta_path(path)
    meta = json.loads(mp.read_text()) if mp.is_file() else {}
    return data, meta


def _idle_features(n: np.ndarray, cached: np.ndarray, out: np.ndarray, mnbt: int):
    """Design rows (columns: step+seq, token, prefill_attn, decode_attn, overhead) for TTFT and TPOT."""
    rows_t, rows_p, steps = [], [], []
    for ni, ci, oi in zip(n, cached, out):
        remaining, computed, k, work = int(ni - ci), int(ci), 0, 0.0
        while remaining > 0:
            m = min(remaining, mnbt)
            work += m * (computed + (m + 1) / 2.0)
            computed += m
            remaining -= m
            k += 1
        rows_t.append([k, ni - ci, work, 0.0, 1.0])
        ctx = ni + 1 + (oi - 2) / 2.0 if oi > 1 else np.nan
        rows_p.append([1.0, 1.0, 0.0, ctx, 0.0])
        steps.append(k)
    return np.array(rows_t, float), np.array(rows_p, float)


def closed_form_init(data: pd.DataFrame, max_num_batched_tokens: int) -> tuple[LatencyModel, float]:
    """Coefficients from single requests on an idle engine (the ``idle`` and ``prefix/probe`` units)."""
    idle = data[data["unit"].isin(["idle/idle", "prefix/probe"])]
    if len(idle) < 4:
        idle = data[data["inflight_requests"] == 0] if "inflight_requests" in data else idle
    if len(idle) < 4:
        raise FitError(f"need at least 4 requests sent to an idle engine to start the fit, found {len(idle)}")
    n = idle["input_len"].to_numpy(float)
    cached = idle["prefix_hit_tokens"].to_numpy(float) if "prefix_hit_tokens" in idle else np.zeros(len(n))
    out = idle["output_len"].to_numpy(float)
    A_t, A_p = _idle_features(n, cached, out, max_num_batched_tokens)
    y_t = idle["ttft_s"].to_numpy(float)
    y_p = idle["tpot_s"].to_numpy(float)
    keep_p = np.isfinite(y_p) & np.isfinite(A_p[:, 3])
    A = np.vstack([A_t / y_t[:, None], A_p[keep_p] / y_p[keep_p, None]])
    b = np.ones(len(A))
    scale = np.maximum(np.abs(A).max(axis=0), 1e-300)
    x, _ = nnls(A / scale, b)
    c0, token, pa, da, overhead = x / scale
    model = LatencyModel(step_s=max(0.8 * c0, _FLOOR[0]), token_s=max(token, _FLOOR[1]),
                         seq_s=max(0.2 * c0, _FLOOR[2]), prefill_attn_s=max(pa, _FLOOR[3]),
                         decode_attn_s=max(da, _FLOOR[4]))
    return model, max(float(overhead), _FLOOR[5])


def _vector(model: LatencyModel, overhead: float) -> np.ndarray:
    return np.array([getattr(model, c) for c in COEFFICIENTS] + [overhead], float)


def _unpack(theta: np.ndarray) -> tuple[LatencyModel, float]:
    return LatencyModel(**{c: float(v) for c, v in zip(COEFFICIENTS, theta[:5])}), float(theta[5])


class _Objective:
    """Log-ratio residuals of simulated vs measured TTFT and TPOT, units weighted equally."""

    def __init__(self, data: pd.DataFrame, units: list[PreparedUnit], engine: EngineDefaults) -> None:
        self.units, self.engine, self.n = units, engine, len(data)
        self.ttft = data["ttft_s"].to_numpy(float)
        self.tpot = data["tpot_s"].to_numpy(float)
        counts = data.groupby("unit")["unit"].transform("size").to_numpy(float)
        self.w = 1.0 / np.sqrt(counts)
        self.has_tpot = np.isfinite(self.tpot) & (self.tpot > 0)
        self.calls = 0

    def simulate(self, theta: np.ndarray):
        model, overhead = _unpack(theta)
        return simulate_units(self.units, self.n, model, self.engine, overhead)

    def __call__(self, z: np.ndarray) -> np.ndarray:
        self.calls += 1
        s_ttft, s_tpot, _ = self.simulate(np.exp(z))
        r_t = np.log(np.maximum(s_ttft, 1e-9) / self.ttft)
        r_p = np.log(np.maximum(s_tpot[self.has_tpot], 1e-9) / self.tpot[self.has_tpot])
        r_t = np.where(np.isfinite(r_t), r_t, 5.0)  # an unfinished simulated request: a large miss
        r_p = np.where(np.isfinite(r_p), r_p, 5.0)
        return np.concatenate([r_t * self.w, r_p * self.w[self.has_tpot]])


def fit_replay(data: pd.DataFrame, engine: EngineDefaults, *, max_nfev: int = 80,
               init: tuple[LatencyModel, float] | None = None, fixed_zero: tuple[str, ...] = ()) -> FitResult:
    """Stage 1 then stage 2 (see the module docstring)."""
    model0, overhead0 = init or closed_form_init(data, engine.max_num_batched_tokens)
    units = prepare_units(data, engine.block_size)
    obj = _Objective(data, units, engine)
    theta0 = np.maximum(_vector(model0, overhead0), _FLOOR)
    z0 = np.log(theta0)
    lower = np.log(_FLOOR) - 1e-9
    upper = np.full(len(z0), np.log(10.0))
    z0 = np.clip(z0, lower + 1e-6, upper - 1e-6)
    res = least_squares(obj, z0, bounds=(lower, upper), loss="soft_l1", f_scale=0.1,
                        diff_step=0.05, x_scale=1.0, max_nfev=max_nfev, xtol=1e-4, ftol=1e-6)
    theta = np.exp(res.x)
    # Coefficients pinned at the search floor are not supported by the data: report them as 0.
    theta = np.where(res.x <= np.log(_FLOOR) + 1e-6, 0.0, theta)
    for name in fixed_zero:
        theta[PARAMS.index(name)] = 0.0
    model, overhead = _unpack(theta)
    return FitResult(model, overhead, dict(zip(PARAMS, map(float, theta0))), float(res.cost), int(obj.calls),
                     bool(res.success), str(res.message))


def _rel(sim: float, real: float) -> float:
    return float((sim - real) / real) if real and math.isfinite(real) and math.isfinite(sim) else math.nan


def diagnostics(data: pd.DataFrame, units: list[PreparedUnit], engine: EngineDefaults,
                model: LatencyModel, overhead: float) -> dict:
    """Measured vs simulated percentiles per unit, and median residuals per phase and bucket."""
    s_ttft, s_tpot, s_e2el = simulate_units(units, len(data), model, engine, overhead)
    frame = data.assign(sim_ttft_s=s_ttft, sim_tpot_s=s_tpot, sim_e2el_s=s_e2el)
    with np.errstate(divide="ignore", invalid="ignore"):
        frame["res_ttft"] = frame["sim_ttft_s"] / frame["ttft_s"] - 1.0
        frame["res_tpot"] = frame["sim_tpot_s"] / frame["tpot_s"] - 1.0

    def pct(col: str, q: float, g: pd.DataFrame) -> float:
        v = g[col].to_numpy(float)
        v = v[np.isfinite(v)]
        return float(np.percentile(v, q)) if len(v) else math.nan

    per_unit = {}
    for key, g in frame.groupby("unit", sort=False):
        entry = {"requests": int(len(g))}
        for metric in ("ttft", "tpot"):
            for q in (50, 90):
                real, sim = pct(f"{metric}_s", q, g), pct(f"sim_{metric}_s", q, g)
                entry[f"{metric}_p{q}_real_s"] = real
                entry[f"{metric}_p{q}_sim_s"] = sim
                entry[f"{metric}_p{q}_err"] = _rel(sim, real)
        real, sim = pct("e2el_s", 50, g), pct("sim_e2el_s", 50, g)
        entry.update({"e2el_p50_real_s": real, "e2el_p50_sim_s": sim, "e2el_p50_err": _rel(sim, real)})
        per_unit[str(key)] = entry

    def medians(by: str) -> dict:
        out = {}
        for key, g in frame.groupby(by, sort=False):
            out[str(key)] = {
                "requests": int(len(g)),
                "ttft_median_residual": float(np.nanmedian(g["res_ttft"])) if g["res_ttft"].notna().any() else math.nan,
                "tpot_median_residual": float(np.nanmedian(g["res_tpot"])) if g["res_tpot"].notna().any() else math.nan,
            }
        return out

    errs = [abs(v) for e in per_unit.values() for k, v in e.items() if k.endswith("_err") and math.isfinite(v)]
    return {
        "per_unit": per_unit,
        "per_phase": medians("phase"),
        "per_bucket": medians("bucket") if "bucket" in frame else {},
        "max_abs_unit_error": max(errs) if errs else math.nan,
        "median_abs_residual_ttft": float(np.nanmedian(np.abs(frame["res_ttft"]))),
        "median_abs_residual_tpot": float(np.nanmedian(np.abs(frame["res_tpot"]))),
        "_frame": frame,
    }


def jitter_from_idle(frame: pd.DataFrame) -> float:
    """Robust spread (1.4826 * MAD) of idle TTFT log-residuals: step-time noise as a CV."""
    idle = frame[frame["unit"] == "idle/idle"]
    r = np.log((idle["sim_ttft_s"] / idle["ttft_s"]).to_numpy(float))
    r = r[np.isfinite(r)]
    if len(r) < 4:
        return 0.0
    return float(min(0.5, 1.4826 * np.median(np.abs(r - np.median(r)))))


def engine_defaults(meta: dict, *, num_kv_blocks: int | None = None, block_size: int | None = None,
                    max_num_seqs: int | None = None, max_num_batched_tokens: int | None = None) -> EngineDefaults:
    """Engine limits: explicit values, else what profiling recorded from the server."""
    backend = meta.get("backend", {})
    settings = meta.get("settings", {})
    blocks = num_kv_blocks or backend.get("num_kv_blocks") or -1
    if blocks is None or blocks < 1:
        raise FitError("the number of KV blocks is unknown: the profiling metadata has none "
                       "(vllm:cache_config_info missing); pass --num-kv-blocks")
    return EngineDefaults(
        num_kv_blocks=int(blocks),
        block_size=int(block_size or meta.get("block_size") or backend.get("block_size") or 16),
        max_num_seqs=int(max_num_seqs or settings.get("max_num_seqs") or 256),
        max_num_batched_tokens=int(max_num_batched_tokens or settings.get("max_num_batched_tokens") or 2048),
    )


def fit_profile(data_path: str | Path, name: str, *, description: str = "", max_nfev: int = 80,
                engine_overrides: dict | None = None) -> tuple[LatencyProfile, pd.DataFrame]:
    """Fit ``data_path`` into a named profile; also return the rows with simulated values."""
    data, meta = load_data(data_path)
    engine = engine_defaults(meta, **(engine_overrides or {}))
    result = fit_replay(data, engine, max_nfev=max_nfev)
    units = prepare_units(data, engine.block_size)
    diag = diagnostics(data, units, engine, result.model, result.overhead_s)
    frame = diag.pop("_frame")
    backend = meta.get("backend", {})
    shape = meta.get("shape") or backend.get("model", "")
    profile = LatencyProfile(
        name=name,
        model=result.model,
        engine=engine,
        description=description or f"fitted to real vLLM {backend.get('version', '?')} serving {shape}",
        hardware=f"{meta.get('machine', {}).get('cpu', 'unknown')} ({meta.get('settings', {}).get('cores', 'see source')})",
        served_model=str(backend.get("model", "")),
        provisional=False,
        jitter_cv=jitter_from_idle(frame),
        source=json_safe({
            "kind": "fitted",
            "data_file": str(Path(data_path).name),
            "rows": int(len(data)),
            "profiled": meta.get("created"),
            "profile_command": meta.get("command"),
            "backend": backend,
            "machine": meta.get("machine", machine_info()),
            "profiling_loadavg": [u.get("loadavg_before") for u in meta.get("unit_log", [])][:1]
                                 + [u.get("loadavg_after") for u in meta.get("unit_log", [])][-1:],
            "fitted": utc_now(),
            "fit_command": command_line(),
            "fit_loadavg": loadavg(),
        }),
        fit=json_safe({
            "method": "closed-form NNLS on idle requests, then least squares on log TTFT/TPOT "
                      "of every request replayed through sim.engine (soft-L1, units weighted equally)",
            "request_overhead_s": result.overhead_s,
            "init": result.init,
            "cost": result.cost,
            "simulations": result.nfev,
            "converged": result.success,
            "message": result.message,
            **diag,
        }),
    )
    return profile, frame
