"""Is the host steady enough to measure on? Waited for before profiling and before each check.

Why: a calibration measured on a host whose speed wanders from second to second is a
measurement of the host. Each campaign probes the model's core before profiling and
before each check (``calibrate.host_probe.speed_trace``: a fixed matmul's rate in 30
one-second windows); the wander is the coefficient of variation of its slowdown
factors (``sim.speed.SpeedWander.cv``). Of the 106 kept checks with that probe
(``tests/data/checks-2026-12-04d`` to ``-06h``), those whose probe wandered less than
6% met the 10% target in 39 of 89; those at 6% or more, in 3 of 17
(docs/calibration.md, section 6). On 2026-12-07 an Intel Xeon VM wandered 14-37%
with the hypervisor stealing 15-26% of the CPU, and its first check missed by 50%.

So before profiling a shape and before each check, ``wait_for_steady`` probes; above
``max_cv`` it waits ``interval_s`` and probes again, for at most ``max_wait_s``. A host
that does not settle stops the campaign (``HostUnsteady``): what was finished is kept,
and ``--resume`` goes on later or elsewhere. ``max_cv = 0`` turns the gate off; the
probes are then only recorded. Like the speed gate (``calibrate.speed_gate``) it never
looks at a check's errors, so it cannot pick the checks that pass.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from calibrate.machine import utc_now

#: ``probe()`` -> (the report to keep, the wander's cv on the model's core; NaN where it could not be
#: probed, infinity where a window did no work at all).
Probe = Callable[[], "tuple[dict, float]"]


class HostUnsteady(RuntimeError):
    """The host's speed kept wandering more than the gate allows for the whole wait."""


@dataclass(frozen=True)
class SteadySettings:
    #: Largest cv of the model core's speed at which a measurement may start; 0 turns the gate off.
    max_cv: float = 0.06
    #: Longest wait for a steady host, in seconds; then the campaign stops.
    max_wait_s: float = 900.0
    #: Seconds between the end of one probe and the start of the next.
    interval_s: float = 60.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_cv) and 0 <= self.max_cv < 1):
            raise ValueError(f"the steadiness gate's max_cv must be in [0, 1) (0: no gate), got {self.max_cv}")
        if not (math.isfinite(self.max_wait_s) and self.max_wait_s >= 0):
            raise ValueError(f"the steadiness gate's max_wait_s must be >= 0, got {self.max_wait_s}")
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise ValueError(f"the steadiness gate's interval_s must be > 0, got {self.interval_s}")

    @property
    def on(self) -> bool:
        return self.max_cv > 0


def wait_for_steady(probe: Probe, settings: SteadySettings, *, what: str = "the host",
                    say: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
                    clock: Callable[[], float] = time.monotonic) -> tuple[dict | None, dict]:
    """Probe until the wander is at most ``settings.max_cv``; return (the last probe's report, the record).

    The record holds ``max_cv``, every try's cv and time, the seconds waited and
    ``steady`` (True, or None when the gate is off or the probe could not run: then
    one probe is taken and kept). Raises ``HostUnsteady`` when the wait ends with the
    host still wandering; the message says how to go on.
    """
    record: dict = {"max_cv": settings.max_cv, "max_wait_s": settings.max_wait_s, "tries": [],
                    "waited_s": 0.0, "steady": None}
    t0 = clock()
    while True:
        report, cv = probe()
        record["tries"].append({"cv": cv if math.isfinite(cv) else None, "utc": utc_now(),
                                **({"stalled": True} if math.isinf(cv) else {})})
        record["waited_s"] = clock() - t0
        if not settings.on or math.isnan(cv):
            record["skipped"] = "gate off" if not settings.on else "no speed probe"
            return report, record
        record["steady"] = cv <= settings.max_cv
        if record["steady"]:
            return report, record
        if record["waited_s"] + settings.interval_s > settings.max_wait_s:
            raise HostUnsteady(
                f"{what}: the speed of the model's core still wanders by {_wander(cv)} (cv over the probe's windows) "
                f"after {record['waited_s'] / 60:.1f} min of waiting, above the {percent(settings.max_cv)} the "
                "steadiness gate allows: timings measured now would be the host's, not vLLM's. Finished steps "
                "are kept; rerun with --resume later or on a steadier machine, or pass --max-wander 0 to "
                "measure anyway (docs/calibration.md, section 6)")
        say(f"{what}: the model's core wanders by {_wander(cv)}, above {percent(settings.max_cv)}; probing again in "
            f"{settings.interval_s:.0f} s (waited {record['waited_s'] / 60:.1f} of {settings.max_wait_s / 60:.0f} min)")
        sleep(settings.interval_s)


def percent(share: float) -> str:
    """A share as a percentage with no needless digits: 0.06 -> "6%", 0.065 -> "6.5%"."""
    return f"{share * 100:g}%"


def _wander(cv: float) -> str:
    return f"{cv:.1%}" if math.isfinite(cv) else "without bound (a window did no work)"


def describe(record: dict | None) -> str:
    """One cell: the last try's cv, the wait if there was one ("3.1%", "4.2% after 6.0 min"); "n/a" without."""
    last = (record or {}).get("tries") or [{}]
    if last[-1].get("stalled"):
        text = "stalled"
    elif last[-1].get("cv") is None:
        return "n/a"
    else:
        text = f"{last[-1]['cv']:.1%}"
    if len(record["tries"]) > 1:
        text += f" after {record['waited_s'] / 60:.1f} min"
    return text
