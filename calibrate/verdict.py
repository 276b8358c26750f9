"""Why a check missed its target: the engine's speed during the load, or something the speed does not explain.

A check's largest error mixes two things: how well the profile models vLLM
(scheduling, batching, the balance of its step terms, the front end) and whether the
machine ran at the speed it was profiled at. At 80% of capacity the second dominates:
a step model 1% off moves a p90 by several points. The probes taken *before* a load
cannot tell which it was. On 2026-12-06 the matmul probe and the idle engine's
reference requests both found the host 6-7% faster than while profiled, while the
loads' own engine steps ran 5-11% slower than the model (docs/calibration.md, "A noisy
host"). The load's own steps can: ``calibrate.check.step_speed_check`` times every
engine step of the load from its tokens, divides by the model's time for the same
steps, and replays the load at that speed. This module reads that diagnostic and
names each missed load's cause:

- ``within``: the load met the target.
- ``speed``: it missed, but replayed at the speed its own steps ran it is within the
  target: the profile models this load; the machine ran at another speed.
- ``not_speed``: it misses at its steps' speed too: the error is not the machine's speed
  (the model, or the draw of the requests: ``sampling`` gives that interval).
- ``unknown``: no timed steps to tell (a check without token times).

The verdict itself stays the raw largest error; this only says what a miss is made of.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

CAUSES = ("within", "speed", "not_speed", "unknown")


@dataclass(frozen=True)
class LoadVerdict:
    load: str
    error: float
    #: The load's matched busy steps' real time over the model's (NaN without timed steps).
    steps_speed: float
    #: The largest error with the load replayed at ``steps_speed`` (NaN without timed steps).
    error_at_steps_speed: float
    cause: str


def load_verdicts(report: dict, target: float) -> list[LoadVerdict]:
    """One verdict per load of a check report (``calibrate.check`` check.json), in its order."""
    step_speed = report.get("step_speed") or {}
    factors = step_speed.get("factors") or {}
    at_speed = step_speed.get("results") or {}
    out = []
    for load, result in (report.get("results") or {}).items():
        if load == "all" or not isinstance(result, dict):
            continue
        error = float(result["max_abs_err"])
        factor = float(factors.get(load, math.nan))
        again = float((at_speed.get(load) or {}).get("max_abs_err", math.nan))
        if error <= target:
            cause = "within"
        elif not math.isfinite(again):
            cause = "unknown"
        else:
            cause = "speed" if again <= target else "not_speed"
        out.append(LoadVerdict(load, error, factor, again, cause))
    return out


def miss_clauses(report: dict, target: float) -> list[str]:
    """Each missed load and its cause, one clause each (none when every load met the target)."""
    parts = []
    for v in load_verdicts(report, target):
        if v.cause == "within":
            continue
        head = f"{v.load} {v.error * 100:.1f}%"
        if v.cause == "unknown":
            parts.append(f"{head} (no timed steps to tell the machine's speed from the model)")
        else:
            where = (f"its engine steps ran {v.steps_speed:.2f}x the model; at that speed "
                     f"{v.error_at_steps_speed * 100:.1f}%")
            why = "the machine's speed, not the model" if v.cause == "speed" else "not the machine's speed"
            parts.append(f"{head}: {why} ({where})")
    return parts


def describe_misses(report: dict, target: float) -> str:
    """A clause for the check's log line: each missed load and its cause ("" when every load met it)."""
    parts = miss_clauses(report, target)
    return "; missed at " + "; ".join(parts) if parts else ""


def count_causes(causes: Iterable[str]) -> dict[str, int]:
    """How many of ``causes`` (``LoadVerdict.cause``) are each cause (``CAUSES``, every key present)."""
    counts = dict.fromkeys(CAUSES, 0)
    for cause in causes:
        counts[cause] += 1
    return counts
