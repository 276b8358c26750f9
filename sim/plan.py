"""What ``Engine.plan`` hands a driver and what ``Engine.complete`` hands back."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sim.request import EngineRequest

if TYPE_CHECKING:  # pragma: no cover
    from sim.engine import Engine


class Plan:
    """The scheduled work until the next ``complete``: one step, or a decode run.

    Step ``m`` (1-based) of a run ends ``time_of(m)`` after the plan starts. A
    single step is a run of length 1 with ``delta = 0``. ``scheduled`` lists the
    scheduled requests outside the decode group; ``group_size`` members of the
    group are scheduled for one token each besides.
    """

    __slots__ = ("scheduled", "steps", "first", "delta", "is_run", "used_blocks_at_plan",
                 "group_size", "num_tokens", "tick0", "alloc0")

    def __init__(self, scheduled, steps: int, first: float, delta: float, is_run: bool,
                 used_blocks_at_plan: int, group_size: int = 0, num_tokens: int = 0,
                 tick0: int = 0, alloc0: int = 0) -> None:
        #: (request, new tokens) pairs of the (first) step, in scheduling order.
        self.scheduled: list[tuple[EngineRequest, int]] = scheduled
        self.steps = steps
        self.first = first
        self.delta = delta
        self.is_run = is_run
        self.used_blocks_at_plan = used_blocks_at_plan
        self.group_size = group_size
        #: Tokens scheduled per step (group members included).
        self.num_tokens = num_tokens
        #: The engine's tick and the group's allocation tick when the plan was made.
        self.tick0 = tick0
        self.alloc0 = alloc0

    def time_of(self, m: int) -> float:
        """Time from the plan's start to the end of step ``m``."""
        return m * self.first + self.delta * m * (m - 1) / 2.0

    @property
    def duration(self) -> float:
        return self.time_of(self.steps)

    def steps_done_by(self, elapsed: float) -> int:
        """How many steps have ended ``elapsed`` seconds after the start."""
        if elapsed <= 0:
            return 0
        if self.delta == 0:
            m = int(elapsed // self.first)
        else:
            # Solve delta/2 m^2 + (first - delta/2) m - elapsed = 0 for m.
            a, b = self.delta / 2.0, self.first - self.delta / 2.0
            m = int((-b + math.sqrt(b * b + 4 * a * elapsed)) / (2 * a))
        m = max(0, min(m, self.steps))
        while m < self.steps and self.time_of(m + 1) <= elapsed:
            m += 1
        while m > 0 and self.time_of(m) > elapsed:
            m -= 1
        return m


class StepOutput:
    """What ``complete`` produced: the end time, first tokens and finished requests.

    ``emitted`` (every request that got a token) is built on demand, because with
    the decode group that costs O(batch); read it before the next ``plan``.
    """

    __slots__ = ("end_time", "finished", "first_tokens", "_emitted", "_engine")

    def __init__(self, end_time: float, emitted, finished, first_tokens,
                 engine: Engine | None = None) -> None:
        self.end_time = end_time
        self.finished: list[EngineRequest] = finished
        self.first_tokens: list[EngineRequest] = first_tokens
        self._emitted = emitted
        self._engine = engine

    @property
    def emitted(self) -> list[EngineRequest]:
        eng = self._engine
        if eng is None or eng.fast is None:
            return self._emitted
        # Every member got a token; a request outside the group that got one
        # either joined the group with it or finished.
        members = list(eng.fast.group.members)
        for req in members:
            eng.fast.sync(req)
        return members + self.finished
