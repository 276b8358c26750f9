"""The decode group's two shortcuts around ``sim.scheduler``: group steps and decode runs.

Both are exact: they produce what ``Scheduler.schedule`` would, step for step
(the tests compare them on every record and KV event).

Group step. When the token budget covers every running request's demand and
the KV blocks they need are free, vLLM's running loop schedules everyone and
preempts no one, so order does not matter for who runs. Members of the decode
group (``sim.decode_group``) each take one token and their blocks are counted in
aggregate; only the requests outside the group are visited, and the waiting loop
runs as in the reference. Otherwise the group is dissolved and the step is
scheduled by ``Scheduler.schedule``.

Decode run. When every running request is a member and nothing can change the
batch before the first finish (no waiting request can be admitted, no block
shortage), the next ``k`` steps are identical but for a context that grows by one
token per request per step, so one plan covers them: step times form an
arithmetic progression and ``complete`` applies ``k`` steps at once.

What must still be seen block by block are the *tracked* members: a member
whose reply blocks a later prompt contains (another request may hit them, so
each is cached under its hash at the tick it fills), or every member when KV
events are on (each block taken or filled is an event). ``_advance`` visits them
at exactly those ticks, in vLLM's order: tick by tick, then running order. While
a run is planned but not applied, their newest blocks are not cached yet; a
waiting request that would hit one (``kv.pending``) therefore keeps runs from
being planned (``Engine.can_admit_next``) until it is.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from sim.decode_group import DecodeGroup
from sim.plan import Plan, StepOutput
from sim.request import EngineRequest, Status

if TYPE_CHECKING:  # pragma: no cover
    from sim.engine import Engine

RUNNING = Status.RUNNING


def _seq(req: EngineRequest) -> int:
    return req.seq


class FastPath:
    """The decode group of one engine and the plans built from it."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.kv = engine.kv
        self.sched = engine.scheduler
        self.group = DecodeGroup(engine.config.block_size, 1 if engine.async_scheduling else 0)
        #: Running requests outside the group, in running order.
        self.nonmembers: list[EngineRequest] = []
        #: The tick up to which members' KV blocks are allocated.
        self.alloc_tick = 0
        self._events = engine.kv.events is not None

    # --- membership ------------------------------------------------------------------------
    def join(self, req: EngineRequest, tick: int) -> None:
        """``req`` emitted at ``tick`` and is decoding steadily: it joins the group."""
        shareable_left = self.kv.enable_caching and req.num_registered < req.num_shareable
        self.group.join(req, tick, tracked=self._events or shareable_left)
        if shareable_left:
            self._pend(req)

    def sync(self, req: EngineRequest) -> None:
        """Bring a member's own counters and blocks up to date (see ``sim.decode_group``)."""
        eng = self.engine
        self.group.sync(req, eng.ticks, self.alloc_tick, eng.last_end, self.kv)

    def leave(self, req: EngineRequest) -> None:
        """Remove a member (synced first)."""
        if req.tracked:
            self._unpend(req)
        self.group.leave(req)

    def _shares_ahead(self, req: EngineRequest) -> bool:
        """Whether blocks ``req`` will fill are shareable (another request may hit them)."""
        return self.kv.enable_caching and req.num_registered < req.num_shareable

    def _pend(self, req: EngineRequest) -> None:
        pending = self.kv.pending
        h = req.block_hashes[req.num_registered]
        pending[h] = pending.get(h, 0) + 1

    def _unpend(self, req: EngineRequest) -> None:
        if req.tracked and self._shares_ahead(req):
            pending = self.kv.pending
            h = req.block_hashes[req.num_registered]
            c = pending[h] - 1
            if c:
                pending[h] = c
            else:
                del pending[h]

    def dissolve(self) -> None:
        """Turn every member back into an ordinary running request."""
        group = self.group
        for req in list(group.members):
            self.sync(req)
            self.leave(req)
        self.nonmembers = [r for r in self.sched.running if r.status == RUNNING]

    def after_reference_step(self) -> None:
        """``Scheduler.schedule`` planned the step: everyone running is outside the group."""
        self.nonmembers = [r for r in self.sched.running if r.status == RUNNING]
        self.alloc_tick = self.engine.ticks + 1

    # --- planning --------------------------------------------------------------------------
    def plan(self, max_steps: int) -> Plan | None:
        """A decode run, else a group step, else None (dissolve and use the reference)."""
        if max_steps > 1 and not self.nonmembers and not self.sched.finishing:
            run = self._plan_run(max_steps)
            if run is not None:
                return run
        return self._plan_step()

    def _plan_step(self) -> Plan | None:
        """One step scheduling every running request fully, or None if that is not possible."""
        eng, kv, group = self.engine, self.kv, self.group
        budget = eng.config.max_num_batched_tokens
        demand = len(group)
        if demand > budget:
            return None
        tick = eng.ticks + 1
        member_blocks = group.allocations(self.alloc_tick, tick)
        need = member_blocks
        chunks = []
        for req in self.nonmembers:
            n = req.prompt_len + req.num_output - req.num_computed
            demand += n
            if demand > budget:
                return None
            need += kv.blocks_needed(req, req.num_computed + n)
            chunks.append((req, n))
        if need > kv.num_free:
            return None
        if group.num_tracked or self._events:
            self._advance(tick, chunks, member_blocks)
        else:  # no member's block is seen one by one: the usual case, inlined
            if member_blocks:
                kv.take_blocks(member_blocks)
            self.alloc_tick = tick
            bs = kv.block_size
            for req, n in chunks:
                total = req.num_computed + n
                kv.grow(req, total)
                if req.num_registered < total // bs:
                    kv.register(req, total)
        before = len(chunks)
        self.sched.schedule_waiting(budget - demand, chunks)
        self.nonmembers.extend(req for req, _ in chunks[before:])
        members = len(group)
        return eng.step_plan(chunks, members, group.ctx_const + members * tick)

    def _plan_run(self, max_steps: int) -> Plan | None:
        """A decode run of the whole group (every running request is a member)."""
        eng, group = self.engine, self.group
        b = len(group)
        budget = eng.config.max_num_batched_tokens
        if b == 0 or b > budget:
            return None
        if b < budget and eng.can_admit_next():
            return None
        ticks = eng.ticks
        steps = min(max_steps, group.first_finish() - ticks)
        steps = self._steps_kv_allows(steps)
        if steps < 2:
            return None
        first, delta, _ = eng.latency.decode_run(b, group.ctx_const + b * (ticks + 1), steps)
        if eng.jitter_cv:
            factor = eng.jitter()
            first *= factor
            delta *= factor
        # The first step's blocks are allocated now, as vLLM schedules it now.
        if group.num_tracked or self._events:
            self._advance(ticks + 1)
        else:
            first_blocks = group.allocations(self.alloc_tick, ticks + 1)
            if first_blocks:
                self.kv.take_blocks(first_blocks)
            self.alloc_tick = ticks + 1
        return Plan([], steps, first, delta, True, self.kv.num_used, b, b, ticks, self.alloc_tick)

    def _steps_kv_allows(self, steps: int) -> int:
        """Largest m <= steps whose block allocations fit in the free blocks."""
        group, free, a = self.group, self.kv.num_free, self.alloc_tick
        t = self.engine.ticks
        # Each member needs at most ceil(m / bs) + 1 new blocks in m steps.
        if len(group) * (self.kv.blocks_for(steps) + 1) <= free:
            return steps
        lo, hi = 0, steps
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if group.allocations(a, t + mid) <= free:
                lo = mid
            else:
                hi = mid - 1
        return lo

    # --- allocation ------------------------------------------------------------------------
    def _advance(self, to_tick: int, chunks: list = (), member_blocks: int = -1) -> None:
        """Allocate and cache what moving the group's allocation to ``to_tick`` does.

        ``chunks`` are the requests outside the group scheduled in the same step
        (a group step): each takes and caches its blocks in running order among
        the tracked members' blocks.
        """
        kv, group = self.kv, self.group
        a = self.alloc_tick
        events = self._events
        if not events:
            if member_blocks < 0:
                member_blocks = group.allocations(a, to_tick)
            if member_blocks:
                kv.take_blocks(member_blocks)  # which member takes which block does not matter
        items = group.boundaries(a, to_tick, events) if group.num_tracked else ()
        self.alloc_tick = to_tick
        if not items:
            for req, n in chunks:
                total = req.num_computed + n
                kv.grow(req, total)
                kv.register(req, total)
            return
        j = 0
        eng = self.engine
        for tick, seq, kind, member in items:
            eng.event_tick = tick
            while j < len(chunks) and chunks[j][0].seq < seq:
                req, n = chunks[j]
                kv.grow(req, req.num_computed + n)
                kv.register(req, req.num_computed + n)
                j += 1
            if kind == 0:
                kv.take_blocks(1)
            elif member.tracked:
                self._fill(member, tick)
        for req, n in chunks[j:]:
            kv.grow(req, req.num_computed + n)
            kv.register(req, req.num_computed + n)

    def _fill(self, req: EngineRequest, tick: int) -> None:
        """A tracked member's block fills at ``tick``: cache it (and report it)."""
        kv = self.kv
        group = self.group
        full = (req.g_comp0 + tick - req.g_tick0 - group.lag) // kv.block_size  # blocks now cached
        i = req.num_registered
        if full <= i:
            return
        if not kv.enable_caching:
            return
        shareable = req.num_shareable
        pending = kv.pending
        if i < shareable:  # no longer pending under this block's hash
            h = req.block_hashes[i]
            c = pending[h] - 1
            if c:
                pending[h] = c
            else:
                del pending[h]
        if full == i + 1 and i < shareable and kv.events is None:
            kv.cache_next_block(req)  # the usual case: one shareable reply block
        else:
            named = len(req.shared_blocks)
            target = full if full < shareable else shareable
            if target > named:
                kv.name_blocks(req, target - named)
            kv.register(req, full * kv.block_size)
        i = req.num_registered
        if i < shareable:
            h = req.block_hashes[i]
            pending[h] = pending.get(h, 0) + 1
        elif not self._events:
            group.untrack(req)

    # --- completing ------------------------------------------------------------------------
    def complete_run(self, plan: Plan, steps: int, start: float) -> StepOutput:
        eng, group = self.engine, self.group
        end = start + plan.time_of(steps)
        to_tick = eng.ticks + steps
        if group.num_tracked or self._events:
            self._advance(to_tick)
        else:
            blocks = group.allocations(self.alloc_tick, to_tick)
            if blocks:
                self.kv.take_blocks(blocks)
            self.alloc_tick = to_tick
        eng.ticks = eng.timeline.append(plan.first, plan.delta, steps)
        eng.last_end = end
        finished = []
        for req in group.pop_finished(eng.ticks):
            self.sync(req)
            self.leave(req)
            finished.append(req)
        if len(finished) > 1:
            finished.sort(key=_seq)  # vLLM frees them in running order
        for req in finished:
            eng.finish(req)
        return StepOutput(end, [], finished, [], eng)

    def tail(self) -> None:
        """Allocate the step in progress of a cut run (vLLM scheduled it before the cut)."""
        self._advance(self.engine.ticks + 1)

    def blocks_allocated(self, plan: Plan, done: int) -> int:
        """Blocks members took for steps 2 .. ``done`` of ``plan`` (a run; step 1's at its plan)."""
        return self.group.allocations(plan.alloc0, plan.tick0 + min(done, plan.steps))

    def tidy(self) -> None:
        """After a completed step: drop requests that left the running queue or joined."""
        if self.nonmembers:
            self.nonmembers = [r for r in self.nonmembers if r.status == RUNNING and not r.in_group]
