"""A backend's step timeline, from which requests' inter-token gaps are read.

Every running request that is scheduled in a step gets its token at the step's
end, and a busy engine starts each step when the previous one ends. So while a
request receives a token at every step (its usual life), its inter-token gaps are
exactly the durations of the engine's steps. The engine records each completed
step (or decode run, an arithmetic progression of step durations) once, here; a
request only remembers the first and last tick of its current streak and copies
that slice of the timeline into its ITL runs when the streak ends. This replaces
per-token bookkeeping in every request with one entry per step per backend.
"""
from __future__ import annotations

from array import array
from bisect import bisect_right


class Timeline:
    """Step durations as runs: entry e covers ticks ``tick0[e] + 1 .. tick0[e] + count[e]``.

    Tick k is the end of the k-th completed step (tick 0 is the start); the gap
    before tick k is the duration of step k.
    """

    __slots__ = ("tick0", "start", "step", "count", "ticks")

    def __init__(self) -> None:
        self.tick0 = array("q")
        self.start = array("d")
        self.step = array("d")
        self.count = array("q")
        self.ticks = 0

    def append(self, first: float, delta: float, count: int) -> int:
        """Record ``count`` steps lasting ``first, first+delta, ...``; return the last tick."""
        self.tick0.append(self.ticks)
        self.start.append(first)
        self.step.append(delta if count > 1 else 0.0)
        self.count.append(count)
        self.ticks += count
        return self.ticks

    def __len__(self) -> int:
        return len(self.count)

    def trim(self, before_tick: int) -> None:
        """Forget entries no range starting at or after ``before_tick`` can need.

        ``copy_gaps(after, ...)`` starts at the last entry with ``tick0 <= after``;
        for every ``after >= before_tick`` that is at or beyond the last entry with
        ``tick0 <= before_tick``, so everything before that entry can go.
        """
        k = bisect_right(self.tick0, before_tick) - 1
        if k <= 0:
            return
        self.tick0 = self.tick0[k:]
        self.start = self.start[k:]
        self.step = self.step[k:]
        self.count = self.count[k:]

    def copy_gaps(self, after: int, upto: int, itl) -> None:
        """Append the gaps of ticks ``after+1 .. upto`` to ``itl`` (an ``ItlEncoder``).

        Whole timeline entries are copied with C-level slices; only the partial
        entries at either end go through ``ItlEncoder.add_run``.
        """
        if upto <= after:
            return
        tick0, start, step, count = self.tick0, self.start, self.step, self.count
        e = bisect_right(tick0, after) - 1
        # Leading entry: from tick after+1 to the end of entry e (or to upto).
        skip = after - tick0[e]
        take = min(count[e] - skip, upto - after)
        st = step[e]
        itl.add_run(start[e] + skip * st, st, take)
        after += take
        e += 1
        if after >= upto:
            return
        # Whole entries e .. last-1, then a possibly partial last entry.
        last = bisect_right(tick0, upto - 1) - 1
        if last > e:
            itl.start.extend(start[e:last])
            itl.step.extend(step[e:last])
            itl.count.extend(count[e:last])
            after = tick0[last]
            e = last
        skip = after - tick0[e]
        take = upto - after
        st = step[e]
        itl.add_run(start[e] + skip * st, st, take)
