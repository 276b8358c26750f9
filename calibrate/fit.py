"""Fit a latency profile to profiling data: closed form on idle requests, then replay.

Three stages:

1. **Closed form (idle phase).** A request alone on an idle engine has
   ``TTFT = overhead + step + seq + token*n + prefill_attn*n(n+1)/2`` (one
   prefill step, chunked past ``max_num_batched_tokens``) and
   ``TPOT = step + seq + token + decode_attn*context`` (see
   ``LatencyModel.single_request``). Non-negative least squares on relative
   errors gives every coefficient but the split of ``step + seq``.
2. **Replay (every phase).** Each measured unit is replayed through the engine
   model (``calibrate.replay``) with the current coefficients. For the schedule
   that replay produced, every request's simulated TTFT and TPOT is *linear* in
   the coefficients (a sum of the step times it waited through), so the relative
   errors against the measured values of the same requests are minimised by
   bounded linear least squares (``scipy.optimize.lsq_linear``, Huber-weighted so
   a request slowed by a noisy neighbour cannot drag the fit, each unit weighted
   equally). Replay again with the new coefficients; repeat until the schedule
   stops changing. Batched phases are what separate per-step from per-sequence
   cost.
3. **Polish.** The schedule-linearised fixed point ignores that the
   coefficients also move the schedule (longer steps batch more arrivals), so
   ``scipy.optimize.least_squares`` with wide finite differences finishes on
   the replayed residuals themselves.

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
from scipy.optimize import least_squares, lsq_linear

from calibrate.jsonsafe import json_safe
from calibrate.modeldir import shape_for_served
from calibrate.machine import command_line, loadavg, machine_info, utc_now
from calibrate.profiling import meta_path
from calibrate.replay import Linearized, linearize_units, prepare_units, simulate_units
from sim.latency import COEFFICIENTS, EngineDefaults, LatencyModel, LatencyProfile

#: Fitted parameters: the five step-time coefficients, then the per-request overhead.
PARAMS = COEFFICIENTS + ("overhead_s",)


class FitError(ValueError):
    """The profiling data cannot be fitted (missing columns, too few usable rows)."""


@dataclass
class FitResult:
    model: LatencyModel
    overhead_s: float
    init: dict[str, float]
    cost: float  # Huber cost of the relative errors at the result
    replays: int  # how many times every unit was replayed
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
    data = screen_stream_stalls(data)
    mp = meta_path(path)
    meta = json.loads(mp.read_text()) if mp.is_file() else {}
    return data, meta


#: Default weight of a request sent to an idle engine, relative to one of a loaded unit of the same size.
ANCHOR_WEIGHT = 1.0
#: A TPOT below this fraction of the idle median is a stalled stream, not a fast engine.
STALL_FRACTION = 0.2


def screen_stream_stalls(data: pd.DataFrame) -> pd.DataFrame:
    """Blank TPOTs far below the fastest possible (the idle engine's).

    When a CPU-starved client or API server delivers a request's tokens in one
    burst, its TPOT reads as microseconds: a measurement artefact that no step
    time can explain, and with relative errors it would dominate a fit. The
    request's TTFT and E2EL stay.
    """
    idle = data.loc[data["unit"] == "idle/idle", "tpot_s"]
    if idle.notna().sum() < 3:
        return data
    floor = STALL_FRACTION * float(idle.median())
    out = data.copy()
    out.loc[out["tpot_s"] < floor, "tpot_s"] = np.nan
    return out


def _idle_features(n: np.ndarray, cached: np.ndarray, out: np.ndarray, mnbt: int):
    """Design rows (columns: step+seq, token, prefill_attn, decode_attn, overhead) for TTFT and TPOT."""
    rows_t, rows_p = [], []
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
    keep_p = np.isfinite(y_p) & (y_p > 0) & np.isfinite(A_p[:, 3])
    A = np.vstack([A_t / y_t[:, None], A_p[keep_p] / y_p[keep_p, None]])
    b = np.ones(len(A))
    scale = np.maximum(np.abs(A).max(axis=0), 1e-300)
    x = _robust_solve(A / scale, b, np.ones(len(b)), delta=0.1)
    c0, token, pa, da, overhead = x / scale
    model = LatencyModel(step_s=float(0.8 * c0), token_s=float(token), seq_s=float(0.2 * c0),
                         prefill_attn_s=float(pa), decode_attn_s=float(da))
    return model, float(overhead)


def _vector(model: LatencyModel, overhead: float) -> np.ndarray:
    return np.array([getattr(model, c) for c in COEFFICIENTS] + [overhead], float)


def _unpack(theta: np.ndarray) -> tuple[LatencyModel, float]:
    return LatencyModel(**{c: float(v) for c, v in zip(COEFFICIENTS, theta[:5])}), float(theta[5])


def effect_scales(data: pd.DataFrame, engine: EngineDefaults) -> np.ndarray:
    """Per parameter, the value at which it adds about one typical step time to a step.

    The search runs on ``theta / scale``, so every variable is O(1) where it
    matters and a coefficient that starts at 0 can still grow to its share: the
    step-time model is linear in the coefficients, and so, for a fixed schedule,
    are the simulated latencies.
    """
    tpot = data["tpot_s"].to_numpy(float)
    typical = float(np.nanmedian(tpot[np.isfinite(tpot)])) if np.isfinite(tpot).any() else 0.02
    n = data["input_len"].to_numpy(float)
    longest = float(max(n.max(), 1.0))
    chunk = min(longest, engine.max_num_batched_tokens)
    seqs = float(max(data.get("inflight_requests", pd.Series([0])).max() + 1, 8))
    return np.array([
        typical,                          # step_s
        typical / chunk,                  # token_s: a full chunk of tokens
        typical / seqs,                   # seq_s: the largest batch seen
        typical / (chunk * chunk / 2.0),  # prefill_attn_s: a full chunk's causal pairs
        typical / (longest * seqs),       # decode_attn_s: the largest batch at the longest context
        typical,                          # overhead_s
    ])


def _weighted_system(data: pd.DataFrame, lin: Linearized, scale: np.ndarray,
                     anchor_weight: float = ANCHOR_WEIGHT):
    """Rows of ``(sim - measured) / measured`` as ``M @ (theta / scale) - v``, units weighted equally."""
    ttft = data["ttft_s"].to_numpy(float)
    tpot = data["tpot_s"].to_numpy(float)
    counts = data.groupby("unit")["unit"].transform("size").to_numpy(float)
    w = 1.0 / np.sqrt(counts)
    if "mode" in data:
        # Requests sent alone are the measurements free of batching and front-end queueing:
        # they anchor the coefficients.
        w = w * np.where(data["mode"].to_numpy() == "sequential", anchor_weight, 1.0)
    use_t = np.isfinite(ttft) & (ttft > 0) & np.isfinite(lin.ttft_const)
    use_p = np.isfinite(tpot) & (tpot > 0) & np.all(np.isfinite(lin.tpot_design), axis=1)
    m_t = lin.ttft_design[use_t] * scale * (w[use_t] / ttft[use_t])[:, None]
    v_t = (ttft[use_t] - lin.ttft_const[use_t]) * w[use_t] / ttft[use_t]
    m_p = lin.tpot_design[use_p] * scale * (w[use_p] / tpot[use_p])[:, None]
    v_p = w[use_p]
    return np.vstack([m_t, m_p]), np.concatenate([v_t, v_p]), np.concatenate([w[use_t], w[use_p]])


def _robust_solve(M: np.ndarray, v: np.ndarray, w: np.ndarray, delta: float, rounds: int = 4) -> np.ndarray:
    """Non-negative least squares with Huber weights on relative errors (IRLS)."""
    h = np.ones(len(v))
    x = np.zeros(M.shape[1])
    for _ in range(rounds):
        sq = np.sqrt(h)
        x = lsq_linear(M * sq[:, None], v * sq, bounds=(0.0, np.inf), method="bvls").x
        rel = np.abs(M @ x - v) / w  # each row's relative error, unweighted
        h = np.where(rel <= delta, 1.0, delta / np.maximum(rel, 1e-12))
    return x


def fit_replay(data: pd.DataFrame, engine: EngineDefaults, *, max_iter: int = 30, polish_nfev: int = 40,
               init: tuple[LatencyModel, float] | None = None, huber_delta: float = 0.1,
               anchor_weight: float = ANCHOR_WEIGHT) -> FitResult:
    """Stage 1, then stage 2 in two parts (see the module docstring).

    2a. Alternate two exact steps: replay every unit through the engine model
    with the current coefficients and record the schedule (which steps each
    request waited through, and each step's composition: then every latency is
    linear in the coefficients); solve the bounded linear least squares
    (``scipy.optimize.lsq_linear``) on relative TTFT and TPOT errors, robustly
    (Huber). Repeat until the coefficients stop changing.

    2b. That fixed point ignores how the coefficients move the schedule itself
    (slower steps batch more arrivals together), so polish with
    ``scipy.optimize.least_squares`` on the replayed residuals, with finite
    differences wide enough (10%) to average over schedule changes.
    """
    model0, overhead0 = init or closed_form_init(data, engine.max_num_batched_tokens)
    units = prepare_units(data, engine.block_size)
    scale = effect_scales(data, engine)
    evaluations = 0

    def residuals(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        nonlocal evaluations
        evaluations += 1
        theta = np.maximum(x, 0.0) * scale
        if theta[0] + theta[1] <= 0:
            theta[0] = 1e-9
        model, overhead = _unpack(theta)
        lin = linearize_units(units, len(data), model, engine, overhead)
        M, v, w = _weighted_system(data, lin, scale, anchor_weight)
        return M @ (theta / scale) - v, M, v, w

    def cost(r: np.ndarray, w: np.ndarray) -> float:
        a = np.abs(r) / w
        return float(np.sum(w ** 2 * np.where(a <= huber_delta, a ** 2, 2 * huber_delta * a - huber_delta ** 2)))

    x = _vector(model0, overhead0) / scale
    best_x, best_cost, history = x, math.inf, []
    for _ in range(max_iter):
        r, M, v, w = residuals(x)
        c = cost(r, w)
        history.append(c)
        if c < best_cost:
            best_x, best_cost = x, c
        new = _robust_solve(M, v, w, huber_delta)
        change = np.max(np.abs(new - x) / np.maximum(np.abs(x), 1e-3))
        x = new
        if change < 1e-4:
            break
    if polish_nfev > 0:
        res = least_squares(lambda z: residuals(z)[0], best_x, bounds=(0.0, np.inf), diff_step=0.1,
                            loss="soft_l1", f_scale=huber_delta, max_nfev=polish_nfev, xtol=1e-4)
        r, _, _, w = residuals(res.x)
        c = cost(r, w)
        history.append(c)
        if c < best_cost:
            best_x, best_cost = res.x, c
    # A coefficient a billionth of its effect scale changes no latency: write it as 0.
    x_final = np.where(best_x < 1e-9, 0.0, best_x)
    model, overhead = _unpack(x_final * scale)
    return FitResult(model, overhead, dict(zip(PARAMS, map(float, _vector(model0, overhead0)))), best_cost,
                     evaluations, "costs by iteration: " + ", ".join(f"{c:.4g}" for c in history))


def _rel(sim: float, real: float) -> float:
    return float((sim - real) / real) if real and math.isfinite(real) and math.isfinite(sim) else math.nan


def diagnostics(data: pd.DataFrame, units: list, engine: EngineDefaults,
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


def fit_profile(data_path: str | Path, name: str, *, description: str = "", max_iter: int = 30,
                polish_nfev: int = 40, hardware: str = "", anchor_weight: float = ANCHOR_WEIGHT,
                engine_overrides: dict | None = None) -> tuple[LatencyProfile, pd.DataFrame]:
    """Fit ``data_path`` into a named profile; also return the rows with simulated values."""
    data, meta = load_data(data_path)
    engine = engine_defaults(meta, **(engine_overrides or {}))
    result = fit_replay(data, engine, max_iter=max_iter, polish_nfev=polish_nfev, anchor_weight=anchor_weight)
    units = prepare_units(data, engine.block_size)
    diag = diagnostics(data, units, engine, result.model, result.overhead_s)
    frame = diag.pop("_frame")
    backend = meta.get("backend", {})
    served = str(backend.get("model", ""))
    shape = shape_for_served(served)
    machine = meta.get("machine", {})
    profile = LatencyProfile(
        name=name,
        model=result.model,
        engine=engine,
        description=description or (f"fitted to real vLLM {backend.get('version', '?')} serving "
                                    f"{shape.describe() if shape else served}"),
        hardware=hardware or f"{machine.get('cpu', 'unknown CPU')} ({machine.get('cpu_count', '?')}-core machine)",
        served_model=served,
        provisional=False,
        jitter_cv=jitter_from_idle(frame),
        request_overhead_s=max(float(result.overhead_s), 0.0),
        source=json_safe({
            "kind": "fitted",
            "data_file": str(data_path),
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
            "method": "closed-form NNLS on idle requests, then iterated bounded linear least squares "
                      "on relative TTFT/TPOT errors of every request replayed through sim.engine "
                      "(schedule-linearised, Huber, units weighted equally), polished by least_squares on the "
                      "replayed residuals",
            "request_overhead_s": result.overhead_s,
            "anchor_weight": anchor_weight,
            "init": result.init,
            "cost": result.cost,
            "replays": result.replays,
            "message": result.message,
            **diag,
        }),
    )
    return profile, frame
