"""How much a check's errors depend on which requests its loads happened to draw.

A load of 120 requests gives each percentile a sampling error of its own. Where
the latencies split into groups (short prompts served at once, long or queued
ones seconds later), the median can fall in the sparse gap between them, and one
or two requests crossing it move the median by 10% or more: two identical checks
then disagree by that much, and so does the model against either. Resampling the
load's requests with replacement, each request kept paired with its own
simulation, and recomputing every statistic's error shows how far the verdict
could move with another draw of the same traffic. A diagnostic: the verdict is
the error on the requests that were sent.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import pandas as pd

#: Resamples per check, and the central share of them each interval holds.
RESAMPLES = 400
LEVEL = 0.90


def finite_percentile(v: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of the finite values (NaN where there are none)."""
    v = v[np.isfinite(v)]
    return float(np.percentile(v, q)) if len(v) else math.nan


def relative_error(real: float, sim: float) -> float:
    """(sim - real) / real; NaN where either is missing or real is 0."""
    return (sim - real) / real if real and math.isfinite(real) and math.isfinite(sim) else math.nan


def _interval(values: list[float], level: float) -> tuple[float, float]:
    v = np.asarray([x for x in values if math.isfinite(x)])
    if not len(v):
        return math.nan, math.nan
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def sampling_intervals(frame: pd.DataFrame, stats: Iterable[tuple[str, int]], resamples: int = RESAMPLES,
                       level: float = LEVEL, seed: int = 0) -> dict:
    """Per load and statistic, the central ``level`` interval of its error over ``resamples``
    draws of the load's requests (``err_lo``, ``err_hi``); per load, that of its largest
    error; and that of the check's verdict (the largest over the loads, each load resampled
    in the same draw). ``frame`` holds a check's rows with ``load``, ``<metric>_s`` and
    ``sim_<metric>_s`` (reference probes left out by the caller). Seeded: the same rows give
    the same intervals.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    stats = tuple(stats)
    rng = np.random.default_rng(seed)
    loads = [(str(name), g) for name, g in frame.groupby("load", sort=False)]
    columns = {name: {m: (g[f"{m}_s"].to_numpy(float), g[f"sim_{m}_s"].to_numpy(float)) for m, _ in stats}
               for name, g in loads}
    errs: dict[str, dict[str, list[float]]] = {name: {f"{m}_p{q}": [] for m, q in stats} for name, _ in loads}
    largest: dict[str, list[float]] = {name: [] for name, _ in loads}
    verdict: list[float] = []
    for _ in range(resamples):
        worst_overall = math.nan
        for name, g in loads:
            idx = rng.integers(0, len(g), len(g))
            worst = math.nan
            for m, q in stats:
                real, sim = columns[name][m]
                e = relative_error(finite_percentile(real[idx], q), finite_percentile(sim[idx], q))
                errs[name][f"{m}_p{q}"].append(e)
                if math.isfinite(e):
                    worst = abs(e) if not math.isfinite(worst) else max(worst, abs(e))
            largest[name].append(worst)
            if math.isfinite(worst):
                worst_overall = worst if not math.isfinite(worst_overall) else max(worst_overall, worst)
        verdict.append(worst_overall)
    results = {}
    for name, _ in loads:
        entry: dict = {}
        for key, values in errs[name].items():
            lo, hi = _interval(values, level)
            entry[key] = {"err_lo": lo, "err_hi": hi}
        entry["max_abs_err_lo"], entry["max_abs_err_hi"] = _interval(largest[name], level)
        results[name] = entry
    lo, hi = _interval(verdict, level)
    return {"resamples": resamples, "level": level, "seed": seed, "results": results,
            "max_abs_err_lo": lo, "max_abs_err_hi": hi}


def format_sampling(sampling: dict) -> str:
    """One line: the interval of the check's largest error, and of each load's."""
    per_load = ", ".join(f"{name} {e['max_abs_err_lo'] * 100:.1f}-{e['max_abs_err_hi'] * 100:.1f}%"
                         for name, e in sampling["results"].items())
    return (f"largest error over {sampling['resamples']} redraws of each load's requests (diagnostic, "
            f"{sampling['level'] * 100:.0f}% interval): {sampling['max_abs_err_lo'] * 100:.1f}-"
            f"{sampling['max_abs_err_hi'] * 100:.1f}% ({per_load})")
