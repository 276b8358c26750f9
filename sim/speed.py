"""A machine whose speed wanders: engine steps slowed by a measured factor that changes with time.

On a shared virtual machine one vCPU's compute speed is not constant: measured on the
2-core AMD EPYC VM (2026-12-04, docs/calibration.md section 1), a fixed matmul loop's
time per second varied by 10-12% (coefficient of variation), with slow spells of
1.4-1.7x lasting seconds, correlated only 0.2-0.5 between the two vCPUs. Independent per-step jitter (a profile's
``jitter_cv``) averages out over a few steps; a dip that lasts seconds does not: a
queue that builds in it stays built. ``calibrate check`` replays its loads under such
a trace (measured by ``calibrate.host_probe``) to show how far the machine's own
wander moves each statistic.

A ``SpeedWander`` holds slowdown factors per window of ``window_s`` seconds (mean 1:
the profile describes the machine's mean speed), read cyclically from ``offset_s``.
``sim.cluster`` multiplies each engine step's duration by the factor at the step's
start; a backend with a wander steps one step per event (no closed-form decode runs),
so each step gets its own factor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


class SpeedWanderError(ValueError):
    """A speed trace that cannot describe a machine (empty, non-positive or non-finite)."""


@dataclass(frozen=True)
class SpeedWander:
    """Slowdown factors per window (``factors[i]`` from ``i * window_s``), cyclic, from ``offset_s``."""

    window_s: float
    factors: tuple[float, ...]
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.window_s, (int, float)) and math.isfinite(self.window_s) and self.window_s > 0):
            raise SpeedWanderError(f"window_s must be a finite number > 0, got {self.window_s!r}")
        if not self.factors:
            raise SpeedWanderError("a speed trace needs at least one factor")
        bad = [f for f in self.factors if not (isinstance(f, (int, float)) and math.isfinite(f) and f > 0)]
        if bad:
            raise SpeedWanderError(f"speed factors must be finite numbers > 0, got {bad[0]!r}")
        if not math.isfinite(self.offset_s):
            raise SpeedWanderError(f"offset_s must be finite, got {self.offset_s!r}")
        object.__setattr__(self, "factors", tuple(float(f) for f in self.factors))

    @classmethod
    def from_rates(cls, rates: list[float], window_s: float) -> SpeedWander:
        """The wander of a fixed workload's rates per window: factor = mean slowdown-normalised 1/rate.

        A window that did the work at half the usual rate is a step twice as slow;
        the factors are scaled to mean 1, so the trace moves steps around the
        profile's speed without changing its mean.
        """
        if not rates:
            raise SpeedWanderError("a speed trace needs at least one rate")
        if any(not (math.isfinite(r) and r > 0) for r in rates):
            raise SpeedWanderError(f"rates must be finite numbers > 0, got {rates!r}")
        slow = [1.0 / r for r in rates]
        mean = sum(slow) / len(slow)
        return cls(window_s, tuple(s / mean for s in slow))

    @property
    def period_s(self) -> float:
        """Length of the trace; it repeats after that."""
        return self.window_s * len(self.factors)

    def shifted(self, offset_s: float) -> SpeedWander:
        """The same trace read from ``offset_s`` later (another realisation of the same machine)."""
        return SpeedWander(self.window_s, self.factors, self.offset_s + offset_s)

    def factor_at(self, t: float) -> float:
        """The slowdown factor of a step that starts at simulated time ``t``."""
        i = int(math.floor((t + self.offset_s) / self.window_s)) % len(self.factors)
        return self.factors[i]

    @property
    def cv(self) -> float:
        """Coefficient of variation of the factors (0: a steady machine)."""
        n = len(self.factors)
        mean = sum(self.factors) / n
        return math.sqrt(sum((f - mean) ** 2 for f in self.factors) / n) / mean
