"""Saturation: does a unit's queue grow without bound over the run?

A unit past its capacity has no steady state: requests pile up faster than they
are served, so its latencies grow with the length of the run and averaging them
with a stable unit's (another seed, another rate) mixes two different things.
Such a unit is labelled **overloaded** (``results.metrics``' ``overloaded``); the
summary does not average it with stable seeds of the same configuration and the
report marks it.

The test is GuideLLM's over-saturation detector (``OverSaturationConstraint`` and
``SlopeChecker`` in ``src/guidellm/scheduler/constraints/saturation.py``), run
once over a finished unit instead of online, with GuideLLM's defaults: over the
latest 75% of the sends (``maximum_window_ratio``), both the number of requests in
flight at each send and the TTFT of each request that got a first token must
grow with a statistically significant positive slope (least squares; margin of
error at 95% confidence below twice the slope, ``moe_threshold = 2``; the sample
size counted as at most one per second of the window, GuideLLM's allowance for
correlated neighbours), at least half of those TTFTs must exceed
``minimum_ttft`` (2.5 s), and the window must span ``minimum_duration`` (30 s).
Differences from GuideLLM: the whole window is judged at once (it re-judges a
sliding window while a benchmark runs, and stops it), and requests that never
got a first token count as in flight until the end of the run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: GuideLLM's defaults (``OverSaturationConstraintArgs``).
WINDOW_RATIO = 0.75
MOE_THRESHOLD = 2.0
MINIMUM_TTFT_S = 2.5
MINIMUM_DURATION_S = 30.0
MINIMUM_WINDOW = 5
CONFIDENCE = 0.95


@dataclass(frozen=True, slots=True)
class Saturation:
    overloaded: bool
    inflight_slope: float  # requests in flight gained per second over the window
    ttft_slope: float  # seconds of TTFT gained per second over the window


def _significant_growth(x: np.ndarray, y: np.ndarray, effective_n: float) -> tuple[bool, float]:
    """GuideLLM's slope check: positive slope whose 95% margin of error is < 2x the slope."""
    n = len(x)
    if effective_n < 3 or n < 3:
        return False, math.nan
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    if sxx <= 0:
        return False, math.nan
    slope = float(((x - xm) * (y - ym)).sum() / sxx)
    rss = max(float(((y - ym) ** 2).sum()) - slope * slope * sxx, 0.0)
    dof = effective_n - 2
    se = math.sqrt(rss / dof / sxx)
    t_crit = float(stats.t.ppf(1 - (1 - CONFIDENCE) / 2, dof))
    moe = t_crit * se / max(slope, 1e-12)
    return slope > 0 and moe < MOE_THRESHOLD, slope


def assess_saturation(arrival: np.ndarray, finish: np.ndarray, first_token: np.ndarray,
                      ok_first: np.ndarray) -> Saturation:
    """Whether a unit is overloaded, from its records' send, finish and first-token times.

    ``ok_first`` flags the requests whose first token arrived (their TTFT counts).
    Requests never sent (NaN ``arrival``) are ignored; sent ones that never
    finished are in flight until the end.
    """
    arrival = np.asarray(arrival, dtype=np.float64)
    sent = np.isfinite(arrival)
    if sent.sum() < MINIMUM_WINDOW:
        return Saturation(False, math.nan, math.nan)
    a = arrival[sent]
    f = np.asarray(finish, dtype=np.float64)[sent]
    f = np.where(np.isfinite(f), f, np.inf)
    order = np.argsort(a, kind="stable")
    a, f = a[order], f[order]
    start = int(math.floor(len(a) * (1 - WINDOW_RATIO)))
    wa = a[start:]
    duration = float(wa[-1] - wa[0])
    # In flight at each send: sent by then, not finished by then (itself included).
    ends = np.sort(f)
    inflight = (np.arange(len(a)) + 1 - np.searchsorted(ends, a, side="right"))[start:]
    grows, inflight_slope = _significant_growth(wa, inflight.astype(np.float64),
                                                min(duration, len(wa)))
    first = np.asarray(first_token, dtype=np.float64)[sent][order][start:]
    has = np.asarray(ok_first, dtype=bool)[sent][order][start:] & np.isfinite(first)
    ttft = first[has] - wa[has]
    tx = wa[has]
    if len(tx) >= MINIMUM_WINDOW:
        ttft_grows, ttft_slope = _significant_growth(
            tx, ttft, min(float(tx[-1] - tx[0]), len(tx)))
    else:
        ttft_grows, ttft_slope = True, math.nan  # GuideLLM: too few TTFTs, in-flight decides
    violations = int((ttft > MINIMUM_TTFT_S).sum())
    overloaded = (duration >= MINIMUM_DURATION_S and grows and ttft_grows
                  and len(ttft) <= 2 * violations)
    return Saturation(bool(overloaded), inflight_slope, ttft_slope)
