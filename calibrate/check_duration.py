"""How long a check will take: its plan (probes, warm-ups, loads) simulated on the profile it checks.

A campaign says up front how long it will run, so that a user can plan the quiet machine
it needs. Its first estimate multiplied minutes measured per shape on one host; on
another host (campaign 2026-12-06c, AMD EPYC VM) it said 64 minutes where the campaign
took 103, and its checks ran 1.5-1.7x what it allowed for them. A check's Poisson loads
last their requests over a rate that is a share of the profile's capacity, and the
capacity is the host's: simulating the plan on the profile that sets those rates gives
their length on that host directly, with the drain of each load's queue and the
reference probes' idle requests. What it cannot know is the engine's speed on the day:
a load paced by its warm-up (``calibrate.check.paced``) lasts that speed times longer.
"""
from __future__ import annotations

import numpy as np

from calibrate.check import CheckSettings, check_units, plan_check, planned_frame
from calibrate.probe import Unit
from calibrate.replay import prepare_units, simulate_units
from sim.latency import LatencyProfile


def unit_seconds(profile: LatencyProfile, unit: Unit, vocab_size: int) -> float:
    """Seconds from ``unit``'s first send to its last token, simulated on ``profile``.

    Open: the requests at their ``at_s`` (a burst all at 0) and the queue drained.
    Sequential: each request alone on the idle engine, one after the other.
    """
    if unit.mode == "closed":
        raise ValueError(f"unit {unit.name}: a closed unit's length depends on its pace; a check plans none")
    if unit.mode == "sequential":  # each request its own single-request unit: the engine idle before it
        frame = planned_frame([f"{unit.name}#{k}" for k in range(len(unit.requests))], unit.requests)
    else:
        frame = planned_frame(unit.name, unit.requests)
    units = prepare_units(frame, profile.engine.block_size, vocab_size)
    _, _, e2el = simulate_units(units, len(frame), profile.model, profile.engine, profile.request_overhead_s,
                                profile.front_end)
    if np.isnan(e2el).any():
        raise ValueError(f"unit {unit.name}: {int(np.isnan(e2el).sum())} request(s) cannot be served by "
                         f"profile {profile.name}")
    if unit.mode == "sequential":
        return float(e2el.sum())
    return float(np.max(frame["send_s"].to_numpy(float) + e2el))


def check_seconds(profile: LatencyProfile, s: CheckSettings) -> dict[str, float]:
    """Seconds per unit (by ``Unit.key``) of the check ``s`` plans for ``profile``, in the order it
    runs them (before each load its reference probe and its warm-up), simulated on ``profile``."""
    loads, _ = plan_check(profile, s)
    return {unit.key: unit_seconds(profile, unit, s.vocab_size) for unit in check_units(loads, s)}
