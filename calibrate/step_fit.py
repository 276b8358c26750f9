"""The step-time model fitted to the profiled engine steps themselves.

The replay fit (``calibrate.fit``) matches each loaded unit's latency percentiles,
and a request's latency is a sum of steps, front-end jobs and queueing: such a fit
could buy a unit's percentiles with a per-sequence cost here and a front-end cost
there, and nothing would show it. On the 2026-12-04 evening campaign ``tiny``'s
fitted per-sequence cost was 1.33 ms where its checks' own engine steps, timed one
by one, said 1.66-1.77 ms; whether the fit or the machine was off could not be told,
because the profile kept no token times (docs/calibration.md).

Profiling now keeps every token's arrival of its loaded units
(``calibrate.profiling.token_times_path``). ``calibrate.step_times`` turns them
into engine steps: the real duration of each busy step and, from vLLM's scheduler
replayed on the real timeline, what it held (new tokens ``T``, sequences ``S``,
prefill attention work, decode context). Thousands of steps of known composition
pin the step coefficients by ordinary (robust, bounded) least squares on their
relative errors, with no request latency in between. The fit then holds the
per-step, per-token and per-sequence costs (``STEP_HELD``), and the
prefill attention too where enough steps spend a real share of their time on it
(``held_coefficients``); it fits the rest: the overhead, the front end, and the
prefill attention from the idle requests where the steps do not pin it.

Why the steps' prefill attention wins over the idle requests' where both exist: under
load nearly every prompt chunk runs beside decodes, and those mixed steps are what the
simulator prices; the steps time them one by one, while an idle request's TTFT also
holds the front end and the overhead that the replay fits at the same time. On the
2026-12-05 campaign's `small` the two disagreed by 14% (0.58 against 0.68 us per
query-key pair): under the idle requests' value its loaded steps with a prompt chunk of
more than 256 tokens ran 2.5% slower than predicted while profiling, and 3-6% in
both checks (docs/calibration.md).

With the matmuls' floor at a knee ``k`` (``sim.latency``) a step's matmul term is
``max(k * (token_s + seq_s), token_s * T + seq_s * S)``: for each step, the side
that is larger at the current solution is taken, and the fit is repeated until
no step changes side. The knee is chosen by the same steps: the one of least
error, a larger one only if it lowers the mean absolute relative error by more
than ``KNEE_MARGIN``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from calibrate.decode_steps import smallest_within
from calibrate.step_times import replay_steps
from sim.latency import COEFFICIENTS, LatencyModel, LatencyProfile

#: Fewer matched busy steps than this cannot pin five coefficients: the fit falls back to the replay.
MIN_STEPS = 50
#: A larger knee must lower the steps' mean absolute relative error by more than this (absolute).
KNEE_MARGIN = 0.002
#: Scale of the robust loss on relative errors: steps off by much more than this (a host stall,
#: a step mismatched in time) weigh as in an absolute-value fit.
ROBUST_SCALE = 0.05
#: Rounds of re-deciding each step's side of the matmuls' floor.
SIDE_ROUNDS = 5
#: The steps pin the prefill attention when at least this many of them spend at least
#: ``ATTENTION_SHARE`` of their fitted time on it; fewer leave it to the idle requests.
MIN_ATTENTION_STEPS = 30
ATTENTION_SHARE = 0.10
#: Fixed by the steps whenever the fit uses them (``calibrate.fit.fit_with_knee``).
STEP_HELD = ("step_s", "token_s", "seq_s")
#: What the steps fit: the step coefficients and the one-token step's signed correction
#: (``sim.latency.LatencyModel.single_row_s``), which the replay then holds too.
FITTED = COEFFICIENTS + ("single_row_s",)
#: Fewest one-token steps, and fewest others, for ``single_row_s`` to be fitted (else it is 0).
MIN_SINGLE_ROW_STEPS = 30
#: Where the fitted model sits among the steps (``fit_steps``'s ``level``): "median", the typical
#: step, as the robust fit centres it; "mean", that model scaled so the steps' total is the model's.
STEP_LEVELS = ("median", "mean")


class StepFitError(ValueError):
    """Steps that cannot pin the step-time model."""


def profiled_steps(profile: LatencyProfile, rows: pd.DataFrame, times: dict[int, list[float]]) -> pd.DataFrame:
    """Every engine step of the loaded units whose tokens were kept (``calibrate.step_times``),
    each unit replayed as a load of its own."""
    kept = rows[rows["request_id"].isin(list(times))]
    return replay_steps(profile, kept.assign(load=kept["unit"].astype(str)), times)


def busy_steps(steps: pd.DataFrame) -> pd.DataFrame:
    """The matched steps with a measured duration (a step after an idle engine has none)."""
    d = steps[steps["matched"].astype(bool) & steps["duration_s"].notna()]
    return d[d["duration_s"] > 0].reset_index(drop=True)


def _design(steps: pd.DataFrame, knee: float, floor_side: np.ndarray) -> np.ndarray:
    """Columns in ``FITTED`` order; on the floor's side a step's matmuls are ``knee`` decodes'.
    The last column marks the one-token steps (``single_row_s``)."""
    tokens = steps["tokens"].to_numpy(float)
    T = np.where(floor_side, knee, tokens)
    S = np.where(floor_side, knee, steps["seqs"].to_numpy(float))
    return np.c_[np.ones(len(steps)), T, S, steps["prefill_work"].to_numpy(float),
                 steps["decode_context"].to_numpy(float), (tokens == 1).astype(float)]


def fit_steps(steps: pd.DataFrame, knee: float = 1.0, decode_attn_s: float | None = None,
              single_row: bool = True, level: str = "median") -> dict:
    """The step coefficients (``FITTED``) that best time ``steps`` (``busy_steps``'s rows), with the floor
    at ``knee``.

    ``decode_attn_s`` holds the decode attention (a direct measurement); None fits it.
    ``single_row``: fit the one-token step's correction where ``MIN_SINGLE_ROW_STEPS`` one-token steps
    and as many others pin it; otherwise (or False) it is 0.
    ``level`` (``STEP_LEVELS``): "mean" multiplies every coefficient, a held ``decode_attn_s`` included,
    by the robust fit's ``sum_ratio``, so that the model's total over the steps is theirs.
    Returns ``{"coefficients", "knee", "steps", "single_row_steps", "mean_abs_error", "median_ratio",
    "sum_ratio", "level", "scaled_by", "by_kind", "attention_steps"}``, all of the returned model;
    ``sum_ratio`` is ``level_ratios``'s, ``scaled_by`` what "mean" multiplied by (1 for "median"), and the
    last counts the steps that spend ``ATTENTION_SHARE`` or more of their fitted time on prefill attention.
    """
    if level not in STEP_LEVELS:
        raise StepFitError(f"unknown step level {level!r}; allowed: {', '.join(STEP_LEVELS)}")
    if knee < 1.0:
        raise StepFitError(f"the knee is a count of decodes >= 1, got {knee}")
    if len(steps) < MIN_STEPS:
        raise StepFitError(f"need at least {MIN_STEPS} timed busy steps to fit the step model, got {len(steps)}")
    if decode_attn_s is not None and not (math.isfinite(decode_attn_s) and decode_attn_s >= 0):
        raise StepFitError(f"a held decode_attn_s must be a finite number >= 0, got {decode_attn_s!r}")
    dur = steps["duration_s"].to_numpy(float)
    T = steps["tokens"].to_numpy(float)
    S = steps["seqs"].to_numpy(float)
    singles = int((T == 1).sum())
    free = np.ones(len(FITTED), bool)
    held = np.zeros(len(FITTED))
    if decode_attn_s is not None:
        free[FITTED.index("decode_attn_s")] = False
        held[FITTED.index("decode_attn_s")] = decode_attn_s
    single = FITTED.index("single_row_s")
    if not single_row or min(singles, len(steps) - singles) < MIN_SINGLE_ROW_STEPS:
        free[single] = False
    # Every coefficient is a cost >= 0 except the one-token step's correction, which may be either sign.
    lower = np.where(np.arange(len(FITTED)) == single, -np.inf, 0.0)[free]
    side = np.zeros(len(steps), bool)
    coeffs = None
    for _ in range(SIDE_ROUNDS if knee > 1.0 else 1):
        X = _design(steps, knee, side) / dur[:, None]
        # Columns scaled to a mean step's worth, so that the solver sees comparable parameters; a
        # column no step has (no prefill at all) stays at 0.
        mean = np.mean(np.abs(X), axis=0)
        scale = np.where(mean > 0, 1.0 / np.where(mean > 0, mean, 1.0), 0.0)
        A = X[:, free] * scale[free]
        rest = X[:, ~free] @ held[~free]
        start = np.where(lower < 0, 0.0, 0.1 / free.sum())
        sol = least_squares(lambda z: A @ z + rest - 1.0, start, bounds=(lower, np.inf), loss="soft_l1",
                            f_scale=ROBUST_SCALE, method="trf")
        coeffs = held.copy()
        coeffs[free] = sol.x * scale[free]
        a, b = coeffs[1], coeffs[2]
        new_side = (knee * (a + b) > a * T + b * S) if knee > 1.0 else side
        if np.array_equal(new_side, side):
            break
        side = new_side
    named = {c: float(v) for c, v in zip(FITTED, coeffs)}
    pred = predicted_durations(model_at_knee(named, knee), steps)
    scaled_by = 1.0
    if level == "mean":
        # A fitted step time is linear in its coefficients (the floor is knee x theirs), so scaling
        # every coefficient scales every step's time by the same factor.
        scaled_by = level_ratios(dur, pred)["sum_ratio"]
        named = {c: v * scaled_by for c, v in named.items()}
        pred = pred * scaled_by
    ratio = dur / pred
    attention_share = named["prefill_attn_s"] * steps["prefill_work"].to_numpy(float) / pred
    by_kind = {k: {"steps": int(m.sum()), "median_ratio": float(np.median(ratio[m]))}
               for k in ("decode", "prefill") if (m := (steps["kind"] == k).to_numpy()).any()}
    return {"coefficients": named, "knee": float(knee), "steps": int(len(steps)), "single_row_steps": singles,
            "mean_abs_error": float(np.mean(np.abs(ratio - 1.0))),
            **level_ratios(dur, pred), "level": level, "scaled_by": float(scaled_by), "by_kind": by_kind,
            "attention_steps": int((attention_share >= ATTENTION_SHARE).sum())}


def predicted_durations(model: LatencyModel, steps: pd.DataFrame) -> np.ndarray:
    """The model's duration of each step (``busy_steps``'s rows)."""
    return np.array([model.step_time(int(t), int(s), float(w), int(c)) for t, s, w, c in
                     zip(steps["tokens"], steps["seqs"], steps["prefill_work"], steps["decode_context"])])


def level_ratios(durations: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Where the model sits among the real steps: ``median_ratio``, the typical step's real over
    model time (what the robust fit centres at 1), and ``sum_ratio``, the steps' total real time
    over the model's total (what latency, a sum of steps, feels). Steps with a right tail (stalls,
    a slow stretch) have ``sum_ratio`` above ``median_ratio``: the simulator's steps average the
    model (its jitter has mean 1), so their total falls short by that much. docs/calibration.md
    (section 4, item 9) has 1.003-1.036 on 13 real profilings, and why the default stays the median."""
    ratio = np.asarray(durations, float) / np.asarray(predicted, float)
    return {"median_ratio": float(np.median(ratio)),
            "sum_ratio": float(np.sum(durations) / np.sum(predicted))}


def model_at_knee(coefficients: dict[str, float], knee: float) -> LatencyModel:
    """The step model of ``coefficients`` with the matmuls' floor at ``knee`` decodes (1: none)."""
    extra = {"matmul_floor_s": knee * (coefficients["token_s"] + coefficients["seq_s"])} if knee > 1.0 else {}
    return LatencyModel(**coefficients, **extra)


def choose_knee(steps: pd.DataFrame, knees, decode_attn_s: float | None = None,
                single_row: bool = True) -> tuple[dict, dict[float, float]]:
    """``fit_steps`` at each knee; the smallest knee within ``KNEE_MARGIN`` of the least error,
    and every knee's mean absolute relative error."""
    fits = {float(k): fit_steps(steps, float(k), decode_attn_s, single_row) for k in sorted(set(knees))}
    errors = {k: f["mean_abs_error"] for k, f in fits.items()}
    return fits[smallest_within(errors, KNEE_MARGIN)], errors


def held_coefficients(fit: dict) -> tuple[str, ...]:
    """The coefficients of ``fit`` (``fit_steps``'s result) that the replay fit should hold:
    ``STEP_HELD``, and ``prefill_attn_s`` when ``MIN_ATTENTION_STEPS`` steps pin it."""
    return STEP_HELD + (("prefill_attn_s",) if fit["attention_steps"] >= MIN_ATTENTION_STEPS else ())
