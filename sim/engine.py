"""One vLLM replica as the V1 scheduler runs it, with no clock and no routing.

``Engine`` is a plain object. A driver (the SimPy cluster, or the emulator on the
wall clock) calls ``plan(now)`` to schedule the next step, waits for the step's
duration, then calls ``complete(plan, steps, start)`` and reads what it produced.
Both drivers step the same object (rule "one engine model, two clocks"
in docs/architecture.md).

Scheduling mirrors ``vllm/v1/core/sched/scheduler.py`` with FCFS:

1. Running requests first, in order: each gets ``num_tokens - num_computed``
   tokens (a decode: 1; an unfinished prefill: a chunk, capped by what is left of
   ``max_num_batched_tokens``: chunked prefill). If its KV blocks do not fit, the
   newest running request is preempted (recompute: blocks freed, progress lost,
   back to the front of the waiting queue) until they fit or it preempts itself.
2. Then, only if nothing was preempted, waiting requests in FCFS order while the
   budget lasts and fewer than ``max_num_seqs`` run: a request's prefix-cache hit
   is looked up, and it is admitted only when blocks for its whole sequence fit
   (vLLM's ``full_sequence_must_fit``); the first that does not fit stops the loop.

Fast mode. When the batch is decode-only and nothing can change it (no waiting
request can be admitted, every running request is scheduled, no block shortage),
its next k steps are identical but for a context that grows by one token per
request per step, so ``plan(max_steps=k)`` returns a *decode run* whose step times
form an arithmetic progression. The driver waits for the whole run in one event,
or cuts it at a step boundary when something arrives. ``complete`` then applies k
steps at once with the same effect as k single steps.

Decode group. Requests decoding steadily advance in lockstep with the engine's
tick, so they are kept as one group with aggregate counters (``sim.decode_group``):
a step then costs O(1) per prefilling request and per event instead of O(batch).
Whenever the step is not regular (the token budget binds, or KV blocks run short
and vLLM would preempt), the group is dissolved and the step is scheduled request
by request, exactly as above. ``Engine(decode_group=False)`` always schedules
request by request: the reference the tests compare against.
"""
from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from itertools import repeat

from sim.decode_group import DecodeGroup
from sim.kv_cache import KVCache
from sim.latency import LatencyModel
from sim.request import EngineRequest, Status
from sim.timeline import Timeline


@dataclass(frozen=True, slots=True)
class EngineConfig:
    num_kv_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        for name in ("num_kv_blocks", "block_size", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"engine {name} must be >= 1, got {getattr(self, name)}")


@dataclass(slots=True)
class EngineMetrics:
    """What vLLM exports on ``/metrics`` (names in comments), as of one instant."""

    running: int  # vllm:num_requests_running
    waiting: int  # vllm:num_requests_waiting
    kv_used_blocks: int  # vllm:kv_cache_usage_perc = kv_used_blocks / num_kv_blocks
    num_kv_blocks: int
    prefix_queries: int  # vllm:prefix_cache_queries (tokens)
    prefix_hits: int  # vllm:prefix_cache_hits (tokens)
    preemptions: int  # vllm:num_preemptions

    @property
    def kv_usage(self) -> float:
        return self.kv_used_blocks / self.num_kv_blocks


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

    def __init__(self, end_time: float, emitted, finished, first_tokens, engine=None) -> None:
        self.end_time = end_time
        self.finished: list[EngineRequest] = finished
        self.first_tokens: list[EngineRequest] = first_tokens
        self._emitted = emitted
        self._engine = engine

    @property
    def emitted(self) -> list[EngineRequest]:
        eng = self._engine
        if eng is None or eng.group is None:
            return self._emitted
        members = list(eng.group.members)
        for req in members:
            eng._sync(req)
        return members + self.finished


class RequestTooLong(ValueError):
    """The request's prompt plus output can never fit in this engine's KV cache."""


class Engine:
    """The scheduler, KV cache and latency model of one replica."""

    def __init__(self, config: EngineConfig, latency: LatencyModel, *, jitter_cv: float = 0.0,
                 seed: int = 0, decode_group: bool = True) -> None:
        self.config = config
        self.latency = latency
        self.kv = KVCache(config.num_kv_blocks, config.block_size, config.enable_prefix_caching)
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []
        self.requests: dict[int, EngineRequest] = {}
        self.timeline = Timeline()
        self._trim_at = 1 << 16
        #: Steady decoders (None: schedule request by request, the reference path).
        self.group = DecodeGroup(config.block_size) if decode_group else None
        #: Running requests outside the group, in running order (with a group only).
        self.nonmembers: list[EngineRequest] = []
        #: Completed steps; the tick up to which members' KV blocks are allocated;
        #: when the last completed step ended.
        self.ticks = 0
        self.alloc_tick = 0
        self.last_end = 0.0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.preemptions = 0
        self.jitter_cv = jitter_cv
        self._rng = random.Random(seed)
        if jitter_cv > 0:
            # Lognormal with mean 1 and the given coefficient of variation.
            self._jitter_sigma = math.sqrt(math.log1p(jitter_cv * jitter_cv))
        self._max_tokens_total = config.num_kv_blocks * config.block_size
        #: Published metrics, as of the last completed step (vLLM updates them after
        #: each step); kept as a tuple and turned into ``EngineMetrics`` on demand.
        self._published_state = self._state()
        self._published: EngineMetrics | None = None

    # --- requests -----------------------------------------------------------------
    def add_request(self, request: EngineRequest) -> None:
        """Queue a request (it joins the next step). Raises ``RequestTooLong``."""
        if request.prompt_len + request.max_tokens > self._max_tokens_total:
            raise RequestTooLong(
                f"request {request.id} needs {request.prompt_len + request.max_tokens} tokens of KV "
                f"but the engine holds {self._max_tokens_total}"
            )
        if request.id in self.requests:
            raise ValueError(f"request {request.id} is already in the engine")
        request.status = Status.WAITING
        self.requests[request.id] = request
        self.waiting.append(request)

    def abort(self, request_id: int) -> EngineRequest | None:
        """Remove a request (client gone, timeout) and free its blocks."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        if req.status == Status.RUNNING:
            if req.in_group:
                self._sync(req)
                self.group.leave(req)
            elif self.group is not None:
                self.nonmembers.remove(req)
            self.running.remove(req)
            self.kv.free(req, keep_for_recompute=False)
        else:
            self.waiting.remove(req)
        req.status = Status.ABORTED
        self.close_itl(req)
        return req

    def sync_all(self) -> None:
        """Bring every group member's own fields up to date (for observers and tests)."""
        if self.group is not None:
            for req in self.group.members:
                self._sync(req)

    def _sync(self, req: EngineRequest) -> None:
        """Bring a group member's own counters up to date (see ``sim.decode_group``)."""
        self.group.sync(req, self.ticks, self.alloc_tick, self.last_end)

    def close_itl(self, req: EngineRequest) -> None:
        """Copy the gaps of the request's current token streak into its ITL runs."""
        if req.in_group:
            self._sync(req)
        if req.last_tick > req.streak_start:
            self.timeline.copy_gaps(req.streak_start, req.last_tick, req.itl)
        req.streak_start = req.last_tick

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def can_admit_next(self) -> bool:
        """Whether the next step could admit the head of the waiting queue.

        Used by drivers to decide if an arrival must cut a decode run short: if the
        head is blocked (no room, no seat), a new arrival behind it cannot start.
        """
        if not self.waiting or len(self.running) >= self.config.max_num_seqs:
            return False
        return self._fits(self.waiting[0])

    # --- scheduling -----------------------------------------------------------------
    def plan(self, max_steps: int = 1) -> Plan | None:
        """Schedule the next step (mutating queues and KV as vLLM's ``schedule`` does).

        With ``max_steps > 1``, return a decode run of up to that many steps when
        the batch cannot change before then. Returns None when there is no work.
        """
        if not self.running and not self.waiting:
            return None
        if self.group is not None:
            if max_steps > 1 and not self.nonmembers:
                run = self._plan_group_run(max_steps)
                if run is not None:
                    return run
            plan = self._plan_group_step()
            if plan is not None:
                return plan
            self._dissolve()
            plan = self._plan_step()
            self.nonmembers = list(self.running)
            return plan
        if max_steps > 1:
            run = self._plan_decode_run(max_steps)
            if run is not None:
                return run
        return self._plan_step()

    def _dissolve(self) -> None:
        """Turn every group member back into an ordinary running request."""
        group = self.group
        for req in list(group.members):
            self._sync(req)
            group.leave(req)
        self.nonmembers = list(self.running)

    def _plan_group_step(self) -> Plan | None:
        """One step scheduling every running request fully, or None if that is not possible.

        Possible when the token budget covers every running request's demand and
        the KV blocks they need are free (no preemption): then vLLM's in-order loop
        schedules everyone, and order does not matter.
        """
        cfg, kv, group = self.config, self.kv, self.group
        bs = cfg.block_size
        budget = cfg.max_num_batched_tokens
        demand = len(group)
        if demand > budget:
            return None
        member_blocks = group.allocations(self.alloc_tick, self.ticks + 1)
        need = member_blocks
        chunks = []
        for req in self.nonmembers:
            computed = req.num_computed
            n = req.prompt_len + req.num_output - computed
            demand += n
            if demand > budget:
                return None
            need += -(-(computed + n) // bs) - len(req.shared_blocks) - req.num_private
            chunks.append((req, n))
        if need > kv.num_free:
            return None
        if member_blocks:
            kv.take_blocks(member_blocks)
        self.alloc_tick = self.ticks + 1
        caching = kv.enable_caching
        for req, n in chunks:
            total = req.num_computed + n
            kv.grow(req, total)
            if caching and req.num_registered < len(req.shared_blocks):
                kv.register(req, total)
        scheduled = chunks
        budget -= demand
        before = len(scheduled)
        budget = self._admit_waiting(budget, scheduled)
        self.nonmembers.extend(req for req, _ in scheduled[before:])
        members = len(group)
        return self._step_plan(scheduled, members, group.ctx_const + members * (self.ticks + 1))

    def _step_plan(self, scheduled, members: int, member_ctx: int) -> Plan:
        """A one-step plan with its duration from the latency model."""
        num_tokens = members
        prefill_work = 0.0
        decode_ctx = member_ctx
        for req, n in scheduled:
            num_tokens += n
            c = req.num_computed
            if n == 1 and req.num_output > 0 and c == req.prompt_len + req.num_output - 1:
                decode_ctx += c + 1
            else:
                prefill_work += n * (c + (n + 1) / 2.0)
        duration = self.latency.step_time(num_tokens, members + len(scheduled), prefill_work, decode_ctx)
        if self.jitter_cv > 0:
            duration *= self._jitter()
        return Plan(scheduled, 1, duration, 0.0, False, self.kv.num_used, members, num_tokens,
                    self.ticks, self.alloc_tick)

    def _plan_group_run(self, max_steps: int) -> Plan | None:
        """A decode run of the whole group (every running request is a member)."""
        cfg, group = self.config, self.group
        b = len(group)
        if b == 0 or b > cfg.max_num_batched_tokens:
            return None
        if b < cfg.max_num_batched_tokens and self.can_admit_next():
            return None
        first_finish = group.first_finish()
        steps = min(max_steps, first_finish - self.ticks)
        steps = self._group_steps_kv_allows(steps)
        if steps < 2:
            return None
        first, delta, _ = self.latency.decode_run(b, group.ctx_const + b * (self.ticks + 1), steps)
        if self.jitter_cv > 0:
            factor = self._jitter()
            first *= factor
            delta *= factor
        return Plan([], steps, first, delta, True, self.kv.num_used, b, b, self.ticks, self.alloc_tick)

    def _group_steps_kv_allows(self, steps: int) -> int:
        """Largest m <= steps whose block allocations fit in the free blocks."""
        group, free, a = self.group, self.kv.num_free, self.alloc_tick
        t = self.ticks
        if len(group) * (-(-steps // self.config.block_size) + 1) <= free:
            return steps
        lo, hi = 0, steps
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if group.allocations(a, t + mid) <= free:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _admit_waiting(self, budget: int, scheduled: list) -> int:
        """vLLM's waiting loop: FCFS admissions while budget, seats and KV last."""
        cfg, kv = self.config, self.kv
        bs = cfg.block_size
        caching = kv.enable_caching
        running = self.running
        waiting = self.waiting
        while waiting and budget > 0 and len(running) < cfg.max_num_seqs:
            req = waiting[0]
            hits, private_hits = kv.lookup(req)
            hit_blocks = len(hits) + private_hits
            total_need = kv.blocks_for(req.num_tokens) - hit_blocks
            if total_need > kv.num_free - kv.free_among(hits, private_hits):
                break
            waiting.popleft()
            cached = hit_blocks * bs
            self.prefix_queries += req.num_tokens
            self.prefix_hits += cached
            if req.num_cached < 0:
                req.num_cached = cached
            kv.admit(req, hits, private_hits)
            req.num_computed = cached
            n = min(req.num_tokens - cached, budget)
            kv.grow(req, cached + n)
            if caching:
                kv.register(req, cached + n)
            req.status = Status.RUNNING
            running.append(req)
            scheduled.append((req, n))
            budget -= n
        return budget

    def _plan_step(self) -> Plan:
        """One step scheduled request by request (the reference path, and the fallback)."""
        cfg, kv = self.config, self.kv
        budget = cfg.max_num_batched_tokens
        scheduled: list[tuple[EngineRequest, int]] = []
        preempted = False
        running = self.running
        bs = cfg.block_size
        caching = kv.enable_caching
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            computed = req.num_computed
            n = req.prompt_len + req.num_output - computed
            if n > budget:
                n = budget
            if n <= 0:
                i += 1
                continue
            need = -(-(computed + n) // bs) - len(req.shared_blocks) - req.num_private
            if need > 0:
                while need > kv.num_free:
                    victim = running.pop()
                    self._preempt(victim)
                    preempted = True
                    if victim is req:
                        break
                if req.status != Status.RUNNING:
                    break
                kv.grow(req, computed + n)
            if caching and req.num_registered < len(req.shared_blocks):
                kv.register(req, computed + n)
            scheduled.append((req, n))
            budget -= n
            i += 1
        if not preempted:
            budget = self._admit_waiting(budget, scheduled)
        self.alloc_tick = self.ticks + 1
        return self._step_plan(scheduled, 0, 0)

    def _plan_decode_run(self, max_steps: int) -> Plan | None:
        """A run of identical decode steps, or None if the next step is not one."""
        cfg, kv = self.config, self.kv
        running = self.running
        b = len(running)
        if b == 0 or b > cfg.max_num_batched_tokens:
            return None
        if b < cfg.max_num_batched_tokens and self.can_admit_next():
            return None
        ctx = 0
        remaining = max_steps
        for req in running:
            if req.num_output == 0 or req.num_computed != req.num_tokens - 1:
                return None  # a prefill (or a recompute) is in the batch
            ctx += req.num_tokens
            left = req.max_tokens - req.num_output
            if left < remaining:
                remaining = left
        steps = self._steps_kv_allows(remaining)
        if steps < 2:
            return None
        first, delta, _ = self.latency.decode_run(b, ctx, steps)
        if self.jitter_cv > 0:
            factor = self._jitter()
            first *= factor
            delta *= factor
        return Plan(list(zip(running, repeat(1))), steps, first, delta, True, kv.num_used, 0, b,
                    self.ticks, self.alloc_tick)

    def _steps_kv_allows(self, steps: int) -> int:
        """Largest m <= steps such that m decode steps need at most the free blocks."""
        free = self.kv.num_free
        bs = self.config.block_size
        b = len(self.running)
        # Each request needs at most ceil(m / bs) new blocks in m steps.
        if b * (-(-steps // bs)) <= free:
            return steps
        lo, hi = 0, steps
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._blocks_needed(mid) <= free:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _blocks_needed(self, m: int) -> int:
        bs = self.config.block_size
        total = 0
        for req in self.running:
            total += -(-(req.num_computed + m) // bs) - len(req.shared_blocks) - req.num_private
        return total

    def _preempt(self, req: EngineRequest) -> None:
        self.kv.free(req, keep_for_recompute=True)
        req.num_computed = 0
        req.num_preemptions += 1
        req.status = Status.WAITING
        self.waiting.appendleft(req)
        self.preemptions += 1

    def _fits(self, req: EngineRequest) -> bool:
        kv = self.kv
        hits, private_hits = kv.lookup(req)
        need = kv.blocks_for(req.num_tokens) - len(hits) - private_hits
        return need <= kv.num_free - kv.free_among(hits, private_hits)

    def _jitter(self) -> float:
        s = self._jitter_sigma
        return math.exp(self._rng.gauss(-0.5 * s * s, s))

    # --- completing -----------------------------------------------------------------
    def complete(self, plan: Plan, steps: int, start: float) -> StepOutput:
        """Apply ``steps`` steps of ``plan`` that started at ``start`` (a run may be cut)."""
        if not 1 <= steps <= plan.steps:
            raise ValueError(f"cannot complete {steps} steps of a {plan.steps}-step plan")
        if plan.is_run:
            out = self._complete_run(plan, steps, start)
        else:
            out = self._complete_step(plan, start)
        if self.group is not None:
            self.nonmembers = [r for r in self.nonmembers
                               if r.status == Status.RUNNING and not r.in_group]
        if len(self.timeline) > self._trim_at:
            self._trim_timeline()
        self._published_state = self._state()
        self._published = None
        return out

    def tail(self, plan: Plan, done: int) -> Plan:
        """The step of a cut run in progress after ``done`` completed steps, as a plan.

        vLLM allocated that step's KV blocks when it scheduled it, which is before
        whatever cut the run (an abort frees blocks only after), so they are
        allocated now: the free queue sees events in the same order as stepping
        one step at a time.
        """
        if plan.is_run:
            if self.group is not None:
                blocks = self.group.allocations(self.alloc_tick, self.ticks + 1)
                if blocks:
                    self.kv.take_blocks(blocks)
                self.alloc_tick = self.ticks + 1
            else:
                for req, _ in plan.scheduled:
                    if req.status == Status.RUNNING:
                        self.kv.grow(req, req.num_computed + 1)
        return Plan(plan.scheduled, 1, plan.first + done * plan.delta, 0.0, plan.is_run,
                    self.kv.num_used, plan.group_size, plan.num_tokens, self.ticks, self.alloc_tick)

    def _complete_step(self, plan: Plan, start: float) -> StepOutput:
        end = start + plan.first
        tick = self.timeline.append(plan.first, 0.0, 1)
        self.ticks = tick
        self.last_end = end
        group = self.group
        emitted: list[EngineRequest] = []
        finished: list[EngineRequest] = []
        first_tokens: list[EngineRequest] = []
        running_status = Status.RUNNING
        for req, n in plan.scheduled:
            if req.status != running_status:
                continue  # aborted while the step ran
            computed = req.num_computed + n
            req.num_computed = computed
            if computed < req.prompt_len + req.num_output:
                continue  # a prefill chunk: no token yet
            out = req.num_output + 1
            req.num_output = out
            if out == 1:
                req.first_token_time = end
                req.streak_start = tick
                first_tokens.append(req)
            elif req.last_tick != tick - 1:
                # The streak broke (preempted or not scheduled): close it, add the jump.
                self.close_itl(req)
                req.itl.add(end - req.last_token_time)
                req.streak_start = tick
            req.last_tick = tick
            req.last_token_time = end
            emitted.append(req)
            if out >= req.max_tokens:
                finished.append(req)
            elif group is not None:
                group.join(req, tick)
        if group is not None and plan.group_size:
            for req in group.pop_finished(tick):
                self._sync(req)
                group.leave(req)
                finished.append(req)
        for req in finished:
            self._finish(req)
        return StepOutput(end, emitted, finished, first_tokens, self)

    def _complete_run(self, plan: Plan, steps: int, start: float) -> StepOutput:
        end = start + plan.time_of(steps)
        group = self.group
        if group is not None:
            blocks = group.allocations(self.alloc_tick, self.ticks + steps)
            if blocks:
                self.kv.take_blocks(blocks)
            self.ticks = self.timeline.append(plan.first, plan.delta, steps)
            self.alloc_tick = self.ticks
            self.last_end = end
            finished = []
            for req in group.pop_finished(self.ticks):
                self._sync(req)
                group.leave(req)
                finished.append(req)
            for req in finished:
                self._finish(req)
            return StepOutput(end, [], finished, [], self)
        # Request by request (the reference path).
        kv = self.kv
        bs = self.config.block_size
        first = plan.first
        last = self.timeline.append(first, plan.delta, steps)
        self.ticks = self.alloc_tick = last
        self.last_end = end
        before = last - steps  # the tick just before this run
        running_status = Status.RUNNING
        emitted: list[EngineRequest] = []
        finished = []
        for req, _ in plan.scheduled:
            if req.status != running_status:
                continue
            computed = req.num_computed + steps
            if computed > (len(req.shared_blocks) + req.num_private) * bs:
                kv.grow(req, computed)  # decode blocks are private: nothing to register
            req.num_computed = computed
            if req.last_tick != before:
                self.close_itl(req)
                req.itl.add(start + first - req.last_token_time)
                req.streak_start = before + 1
            req.last_tick = last
            req.num_output += steps
            req.last_token_time = end
            emitted.append(req)
            if req.num_output >= req.max_tokens:
                finished.append(req)
        for req in finished:
            self._finish(req)
        return StepOutput(end, emitted, finished, [])

    def _trim_timeline(self) -> None:
        """Drop timeline entries older than every open token streak (bounded memory)."""
        oldest = self.ticks
        for req in self.requests.values():
            if 0 <= req.streak_start < oldest:
                oldest = req.streak_start
        self.timeline.trim(oldest)
        self._trim_at = max(1 << 16, 2 * len(self.timeline))

    def _finish(self, req: EngineRequest) -> None:
        self.running.remove(req)
        self.kv.free(req, keep_for_recompute=False)
        req.status = Status.FINISHED
        del self.requests[req.id]
        self.close_itl(req)

    # --- metrics --------------------------------------------------------------------
    def _state(self) -> tuple:
        return (len(self.running), len(self.waiting), self.kv.num_used, self.prefix_queries,
                self.prefix_hits, self.preemptions)

    @property
    def published(self) -> EngineMetrics:
        """What ``/metrics`` shows now: the state after the last completed step."""
        m = self._published
        if m is None:
            r, w, used, pq, ph, pre = self._published_state
            m = self._published = EngineMetrics(r, w, used, self.config.num_kv_blocks, pq, ph, pre)
        return m

    def metrics_during(self, plan: Plan, elapsed: float) -> EngineMetrics:
        """Published metrics ``elapsed`` seconds into an uncompleted ``plan``.

        vLLM publishes after each step, so within a run the queue lengths are those
        of the run and KV usage grows by the blocks the completed steps allocated.
        """
        if not plan.is_run:
            return self.published
        done = plan.steps_done_by(elapsed)
        if done == 0:
            return self.published
        m = self.published
        if self.group is not None:
            extra = self.group.allocations(plan.alloc0, plan.tick0 + done)
        else:
            bs = self.config.block_size
            extra = 0
            for req, _ in plan.scheduled:
                extra += -(-(req.num_computed + done) // bs) - len(req.shared_blocks) - req.num_private
        return EngineMetrics(m.running, m.waiting, plan.used_blocks_at_plan + extra,
                             m.num_kv_blocks, m.prefix_queries, m.prefix_hits, m.preemptions)
