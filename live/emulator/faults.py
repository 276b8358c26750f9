"""Fault injection for reliability tests: errors, hangs, crashes, slow-downs.

Each incoming generation request draws its fate from a seeded generator, so a
given seed and request order fail the same way every run. The settings can be
changed while the emulator runs (``POST /_emulator/faults``), which is how tests
make a backend fail and then recover.
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

OK, ERROR, HANG, CRASH = "ok", "error", "hang", "crash"


@dataclass
class Faults:
    """What goes wrong, and when. Zero or empty means "never".

    - ``error_rate``: probability that a request is answered at once with
      ``error_status`` (an OpenAI-style error body), before any token.
    - ``hang_rate`` / ``hang_after``: a request is accepted and never answered
      (until its client gives up); with ``hang_after = N``, every request after
      the N-th hangs.
    - ``crash_after``: the process exits abruptly when request N+1 arrives,
      cutting every open stream (a backend dying mid-run).
    - ``slowdown``: every engine step takes this many times longer.
    - ``health_status``: what ``GET /health`` answers.
    """

    error_rate: float = 0.0
    error_status: int = 500
    hang_rate: float = 0.0
    hang_after: int = 0
    crash_after: int = 0
    slowdown: float = 1.0
    health_status: int = 200
    seed: int = 0
    _rng: random.Random = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.validate()
        self._rng = random.Random(self.seed)

    def validate(self) -> None:
        for name in ("error_rate", "hang_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        for name in ("hang_after", "crash_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = never), got {getattr(self, name)}")
        for name in ("error_status", "health_status"):
            v = getattr(self, name)
            if not 100 <= v <= 599:
                raise ValueError(f"{name} must be an HTTP status (100-599), got {v}")
        if not self.slowdown > 0:
            raise ValueError(f"slowdown must be > 0, got {self.slowdown}")

    def decide(self, n: int) -> str:
        """The fate of the ``n``-th generation request (1-based)."""
        if self.crash_after and n > self.crash_after:
            return CRASH
        if self.hang_after and n > self.hang_after:
            return HANG
        # Draw both numbers always, so changing one rate does not shift the other's sequence.
        e, h = self._rng.random(), self._rng.random()
        if e < self.error_rate:
            return ERROR
        if h < self.hang_rate:
            return HANG
        return OK

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_rng")
        return d

    def update(self, changes: dict[str, Any]) -> None:
        """Apply ``changes`` (validated as a whole; nothing changes on error)."""
        allowed = {f.name: f.type for f in fields(self) if not f.name.startswith("_")}
        for key, value in changes.items():
            if key not in allowed:
                raise ValueError(f"unknown fault setting {key!r}; allowed: {', '.join(sorted(allowed))}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"fault setting {key!r} must be a number, got {value!r}")
        trial = Faults(**{**self.as_dict(), **changes})
        for key in changes:
            setattr(self, key, getattr(trial, key))
        if "seed" in changes:
            self._rng = random.Random(self.seed)
