"""Inter-token gaps as exact arithmetic runs, built as tokens come.

A request's gaps ``g_0, g_1, ...`` are cut into maximal runs where consecutive
gaps differ by a constant step; each run is ``(start, step, count)``. A steady
decode lengthens each step by a fixed amount, so the simulator's gaps compress
into a few runs; a live request's noisy gaps degrade to runs of two. The record
store keeps the runs as they are (``results.records``: ``itl_start``,
``itl_step``, ``itl_count``) and reads them back with ``results.records.expand_itl``.

This encoder lives with the engine model, which builds one per request on its hot
path, so that the model does not import the record store (and pyarrow with it).
"""
from __future__ import annotations

import numpy as np


class ItlEncoder:
    """Builds a request's ITL arithmetic runs incrementally.

    ``add(gap)`` appends one gap; ``add_run(start, step, count)`` appends a whole
    progression. Either extends the last run when the new gaps continue its
    progression (within a relative tolerance that absorbs float rounding), so a
    steady decode stays one run. The encoding is exact but not unique: the same
    gaps delivered in different pieces may be cut into runs differently, so
    compare runs through ``gaps()``.
    """

    __slots__ = ("start", "step", "count")
    RTOL = 1e-9

    def __init__(self) -> None:
        self.start: list[float] = []
        self.step: list[float] = []
        self.count: list[int] = []

    def add(self, gap: float) -> None:
        self.add_run(gap, 0.0, 1)

    def add_run(self, start: float, step: float, count: int) -> None:
        """Append ``start, start+step, ...`` (``count`` gaps)."""
        if count <= 0:
            return
        counts = self.count
        if counts:
            c = counts[-1]
            s0 = self.start[-1]
            tol = self.RTOL * (abs(start) + abs(s0) + 1e-12)
            if c == 1:
                new_step = start - s0
                if count == 1 or abs(step - new_step) <= tol:
                    self.step[-1] = new_step
                    counts[-1] = c + count
                    return
            else:
                st = self.step[-1]
                if abs(start - (s0 + c * st)) <= tol and (count == 1 or abs(step - st) <= tol):
                    counts[-1] = c + count
                    return
        self.start.append(start)
        self.step.append(step if count > 1 else 0.0)
        counts.append(count)

    def gaps(self) -> np.ndarray:
        """Every gap, in order."""
        parts = [s + st * np.arange(c, dtype=np.float64)
                 for s, st, c in zip(self.start, self.step, self.count)]
        return np.concatenate(parts) if parts else np.zeros(0)
