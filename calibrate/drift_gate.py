"""Did the host keep its speed while a shape was profiled? Judged after profiling; a drifted one is redone.

Why: the steadiness gate (``calibrate.steady_gate``) looks at the host only before
profiling starts. A profiling run lasts minutes, and a host can change speed within
them: on 2026-12-07 (campaign 07b) the engine's reference requests took 724 ms
before profiling and 869 ms after it, 1.20x, and the one check of that fit missed by
24.5%. A fit of such rows averages two machines, and no check of it can meet the
target except by luck.

The campaign already times the engine's reference requests (``calibrate.speed_gate``:
the check's reference unit, sent alone) at the start and end of profiling, into
``profile-reference.json``. The drift is their E2EL ratio less one. Of the 41 kept
checks with both measurements (``tests/data/checks-2026-12-05g`` to ``-07b``), those
whose profiling drifted by at most 10% met the 10% target in 14 of 28; those beyond
10%, in 3 of 13 (docs/calibration.md, section 6). So a profiling that drifted beyond
``max_drift`` is set aside whole (moved, never deleted) and the shape is profiled
again, behind the steadiness gate, at most ``tries`` times; then the campaign stops
(``ProfilingDrifted``), and ``--resume`` profiles once more later.

Like the other gates it never looks at a check's errors, so it cannot pick the
checks that pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from calibrate.steady_gate import HostUnsteady, percent


class ProfilingDrifted(HostUnsteady):
    """Every allowed profiling of a shape drifted beyond the gate's bound."""


@dataclass(frozen=True)
class DriftSettings:
    #: Largest |after / before - 1| of the reference E2EL a profiling may keep; 0 turns the gate off.
    max_drift: float = 0.10
    #: Profilings of one shape in one run of the campaign, the first included.
    tries: int = 3

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_drift) and 0 <= self.max_drift < 1):
            raise ValueError(f"the profiling drift gate's max_drift must be in [0, 1) (0: no gate), "
                             f"got {self.max_drift}")
        if self.tries < 1:
            raise ValueError(f"the profiling drift gate's tries must be >= 1, got {self.tries}")

    @property
    def on(self) -> bool:
        return self.max_drift > 0


def profiling_drift(reference: dict | None) -> float:
    """The reference E2EL after profiling over before, less one (>0: the host slowed); NaN
    where either measurement is missing or not a positive number."""
    def e2el(when: str) -> float:
        value = ((reference or {}).get(when) or {}).get("e2el_s")
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) and value > 0 else math.nan

    return e2el("after") / e2el("before") - 1.0


def verdict(drift: float, settings: DriftSettings) -> str:
    """"kept" (within the bound), "drifted" (beyond it), or why it was not judged: "gate off",
    "no reference" (the speed gate's reference requests were not measured)."""
    if not settings.on:
        return "gate off"
    if math.isnan(drift):
        return "no reference"
    return "kept" if abs(drift) <= settings.max_drift else "drifted"


def describe(drift: float) -> str:
    """The drift as a signed percentage ("+20.0%"), or "n/a"."""
    return f"{drift * 100:+.1f}%" if math.isfinite(drift) else "n/a"


def give_up_message(shape: str, drifts: list[float], settings: DriftSettings) -> str:
    """What ``ProfilingDrifted`` says: each try's drift, where the rows went, and how to go on."""
    return (f"{shape}: every profiling drifted: the engine's reference requests changed by "
            f"{', '.join(describe(d) for d in drifts)} between the start and the end of profiling, beyond the "
            f"{percent(settings.max_drift)} the profiling drift gate allows: a fit of those rows would mix two "
            "host speeds. The drifted rows are kept in drifted-profiling-K/ beside the shape's other files; "
            "rerun with --resume later or on a steadier machine, or pass --max-profile-drift 0 to fit a "
            "drifted profiling anyway (docs/calibration.md, section 6)")
