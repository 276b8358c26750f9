"""One vLLM replica, with no clock and no routing: scheduler, KV cache, latency model.

``Engine`` is a plain object. A driver (the SimPy cluster, or the emulator on the
wall clock) calls ``plan()`` to schedule the next step, waits for the step's
duration, then calls ``complete(plan, steps, start)`` and reads what it produced.
Both drivers step the same object (rule "one engine model, two clocks"
in docs/architecture.md).

Where things live:

- ``sim.scheduler``: vLLM's ``schedule()``, request by request (read it beside
  vLLM's ``vllm/v1/core/sched/scheduler.py``). It is the reference.
- ``sim.kv_cache``: the block pool and prefix cache (``block_pool.py``).
- ``sim.fast_path`` and ``sim.decode_group``: exact shortcuts around the
  reference (``Engine(decode_group=False)`` turns them off; the tests compare).
- this module: applying a step's output (vLLM's ``update_from_output``: tokens,
  finishes), timing steps with the latency model, and what ``/metrics`` shows.

Asynchronous scheduling (``EngineConfig.async_scheduling``, vLLM's default on
GPU): a request's last token frees its seat and blocks only after the next step
has been scheduled (see ``sim.scheduler``); its token times are unchanged.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from routing.kv_events import KVEvent
from sim.fast_path import FastPath
from sim.kv_cache import KVCache
from sim.latency import LatencyModel
from sim.plan import Plan, StepOutput
from sim.request import EngineRequest, Status
from sim.scheduler import Scheduler
from sim.timeline import Timeline

__all__ = ["Engine", "EngineConfig", "EngineMetrics", "Plan", "RequestTooLong", "StepOutput"]


@dataclass(frozen=True, slots=True)
class EngineConfig:
    #: vLLM's ``num_gpu_blocks``: what the server reports, including the null
    #: block, so ``num_kv_blocks - 1`` blocks hold tokens.
    num_kv_blocks: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    enable_prefix_caching: bool = True
    #: Schedule the next step before applying the last one's output (vLLM on GPU).
    async_scheduling: bool = False

    def __post_init__(self) -> None:
        for name in ("block_size", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"engine {name} must be >= 1, got {getattr(self, name)}")
        if self.num_kv_blocks < 2:
            raise ValueError(f"engine num_kv_blocks must be >= 2 (vLLM keeps one as its null "
                             f"block), got {self.num_kv_blocks}")


@dataclass(slots=True)
class EngineMetrics:
    """What vLLM exports on ``/metrics`` (names in comments), as of one instant."""

    running: int  # vllm:num_requests_running
    waiting: int  # vllm:num_requests_waiting
    kv_used_blocks: int  # vllm:kv_cache_usage_perc = kv_used_blocks / usable_kv_blocks
    usable_kv_blocks: int  # num_gpu_blocks - 1 (the null block holds no tokens)
    prefix_queries: int  # vllm:prefix_cache_queries (tokens, first admissions only)
    prefix_hits: int  # vllm:prefix_cache_hits (tokens, first admissions only)
    preemptions: int  # vllm:num_preemptions

    @property
    def kv_usage(self) -> float:
        return self.kv_used_blocks / self.usable_kv_blocks


def _seq(req: EngineRequest) -> int:
    return req.seq


class RequestTooLong(ValueError):
    """The request's prompt plus output can never fit in this engine's KV cache."""


class Engine:
    """The scheduler, KV cache and latency model of one replica.

    ``kv_events(event, tick)``, if given, receives the KV-cache events vLLM's block
    pool would publish (``routing.kv_events``), in order, each with the engine tick
    of the step whose scheduling produced it: vLLM publishes them with that step's
    output (synchronous scheduling: at its end) or, with asynchronous scheduling,
    with the previous step's output (at its start). The events of a decode run are
    sent when the run is applied (``complete``, ``tail``). The fast paths send the
    very stream the reference sends.
    """

    def __init__(self, config: EngineConfig, latency: LatencyModel, *, jitter_cv: float = 0.0,
                 seed: int = 0, decode_group: bool = True,
                 kv_events: Callable[[KVEvent, int], None] | None = None) -> None:
        self.config = config
        self.latency = latency
        #: The tick reported with KV events (the step being scheduled).
        self.event_tick = 0
        self._kv_events = kv_events
        self.kv = KVCache(config.num_kv_blocks, config.block_size, config.enable_prefix_caching,
                          self._event if kv_events is not None else None)
        self.scheduler = Scheduler(config, self.kv)
        #: The scheduler's queues and requests (the same objects, for drivers).
        self.running = self.scheduler.running
        self.waiting = self.scheduler.waiting
        self.requests = self.scheduler.requests
        self.timeline = Timeline()
        self._trim_at = 1 << 16
        #: Completed steps, and when the last one started and ended.
        self.ticks = 0
        self.last_start = math.inf
        self.last_end = 0.0
        self.async_scheduling = config.async_scheduling
        self.jitter_cv = jitter_cv
        self._rng = random.Random(seed)
        if jitter_cv > 0:
            # Lognormal with mean 1 and the given coefficient of variation.
            self._jitter_sigma = math.sqrt(math.log1p(jitter_cv * jitter_cv))
        #: The largest prompt plus output that can ever fit (usable blocks only).
        self.max_tokens_total = self.kv.num_blocks * config.block_size
        #: Steady decoders as one group (None: the reference path only).
        self.fast = FastPath(self) if decode_group else None
        #: Published metrics, as of the last completed step (vLLM updates them after
        #: each step); kept as a tuple and turned into ``EngineMetrics`` on demand.
        self._published_state = self._state()
        self._published: EngineMetrics | None = None

    def _event(self, event: KVEvent) -> None:
        self._kv_events(event, self.event_tick)

    def set_kv_event_sink(self, kv_events: Callable[[KVEvent, int], None] | None) -> None:
        """Send KV events to ``kv_events(event, tick)`` from now on (None: no events).

        Only before the first request: the decode group tracks blocks one by one
        only with a sink.
        """
        if self.scheduler.requests or self.ticks:
            raise RuntimeError("set the KV event sink before the engine has work")
        self._kv_events = kv_events
        self.kv.events = self._event if kv_events is not None else None
        if self.fast is not None:
            self.fast = FastPath(self)

    # --- the scheduler's counters, for drivers and observers -----------------------------------
    @property
    def prefix_queries(self) -> int:
        return self.scheduler.prefix_queries

    @property
    def prefix_hits(self) -> int:
        return self.scheduler.prefix_hits

    @property
    def preemptions(self) -> int:
        return self.scheduler.preemptions

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    # --- requests -----------------------------------------------------------------
    def add_request(self, request: EngineRequest, now: float | None = None) -> None:
        """Queue a request (it joins the next step). Raises ``RequestTooLong``.

        ``now`` (the driver's clock) matters with asynchronous scheduling only: a
        request that arrives while a step runs missed the schedule of the next one.
        """
        if request.prompt_len + request.max_tokens > self.max_tokens_total:
            raise RequestTooLong(
                f"request {request.id} needs {request.prompt_len + request.max_tokens} tokens of KV "
                f"but the engine holds {self.max_tokens_total} ({self.kv.num_blocks} usable blocks "
                f"of {self.config.block_size})"
            )
        if request.id in self.scheduler.requests:
            raise ValueError(f"request {request.id} is already in the engine")
        if now is not None and self.has_work:
            request.received = now  # an idle engine schedules it at once
        self.scheduler.add(request)

    def abort(self, request_id: int) -> EngineRequest | None:
        """Remove a request (client gone, timeout) and free its blocks."""
        req = self.scheduler.requests.get(request_id)
        if req is None:
            return None
        fast = self.fast
        if req.in_group:
            fast.sync(req)
            fast.leave(req)
        elif fast is not None and req.status == Status.RUNNING:
            fast.nonmembers.remove(req)
        self.scheduler.abort(req)
        self.close_itl(req)
        return req

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block, as vLLM's ``/reset_prefix_cache`` (only when idle)."""
        self.event_tick = self.ticks
        return self.kv.reset_prefix_cache()

    def sync_all(self) -> None:
        """Bring every group member's own fields up to date (for observers and tests)."""
        if self.fast is not None:
            for req in self.fast.group.members:
                self.fast.sync(req)

    def close_itl(self, req: EngineRequest) -> None:
        """Copy the gaps of the request's current token streak into its ITL runs."""
        if req.in_group:
            self.fast.sync(req)
        if req.last_tick > req.streak_start:
            self.timeline.copy_gaps(req.streak_start, req.last_tick, req.itl)
        req.streak_start = req.last_tick

    def can_admit_next(self) -> bool:
        """Whether the next step could admit the head of the waiting queue.

        Used by drivers to decide if an arrival must cut a decode run short: if the
        head is blocked (no room, no seat), a new arrival behind it cannot start.
        Also true when the head's prefix hit would grow by a block a decode-group
        member caches during the run (``sim.fast_path``).
        """
        s = self.scheduler
        if not s.waiting or len(s.running) >= self.config.max_num_seqs:
            return False
        head = s.waiting[0]
        if s.can_admit(head):
            return True
        pending = self.kv.pending
        if not pending:
            return False
        hits, _ = self.kv.lookup(head)
        i = len(hits)
        return i < head.num_shareable and head.block_hashes[i] in pending

    # --- scheduling -----------------------------------------------------------------
    def plan(self, max_steps: int = 1) -> Plan | None:
        """Schedule the next step (mutating queues and KV as vLLM's ``schedule`` does).

        With ``max_steps > 1``, return a decode run of up to that many steps when
        the batch cannot change before then. Returns None when there is no work.
        """
        s = self.scheduler
        if not s.running and not s.waiting:
            return None
        self.event_tick = self.ticks + 1
        if not self.async_scheduling:
            fast = self.fast
            if fast is not None:
                plan = fast.plan(max_steps)
                if plan is not None:
                    return plan
            return self._schedule(max_steps)
        # Asynchronous scheduling: vLLM scheduled this step when the last one
        # started, with its tokens still in flight; that output is applied now.
        s.in_flight_tick = self.ticks
        s.scheduled_at = self.last_start
        plan = self._schedule(max_steps)
        s.in_flight_tick = -2
        s.scheduled_at = math.inf
        s.apply_previous_output(self._unscheduled(plan))
        if plan.num_tokens == 0 and s.waiting:
            plan = self._schedule(max_steps)  # vLLM's next iteration, at once
        self._publish()
        return plan

    def _unscheduled(self, plan: Plan) -> list[EngineRequest]:
        """Running requests that got a token at the last step but are not in ``plan``."""
        if plan.group_size or plan.is_run:
            return []  # a group step schedules every running request
        tick = self.ticks
        running = Status.RUNNING
        late = [r for r in self.scheduler.running if r.last_tick == tick and r.status == running]
        if late:
            scheduled = {id(r) for r, _ in plan.scheduled}
            late = [r for r in late if id(r) not in scheduled]
        return late

    def _schedule(self, max_steps: int) -> Plan:
        fast = self.fast
        if fast is not None:
            plan = fast.plan(max_steps)
            if plan is not None:
                return plan
            fast.dissolve()
            plan = self.step_plan(self.scheduler.schedule(), 0, 0)
            fast.after_reference_step()
            return plan
        return self.step_plan(self.scheduler.schedule(), 0, 0)

    def step_plan(self, scheduled, members: int, member_ctx: int) -> Plan:
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
            duration *= self.jitter()
        fast = self.fast
        return Plan(scheduled, 1, duration, 0.0, False, self.kv.num_used, members, num_tokens,
                    self.ticks, fast.alloc_tick if fast is not None else self.ticks + 1)

    def jitter(self) -> float:
        """A lognormal factor with mean 1 (the profile's ``jitter_cv``) for one step or run."""
        s = self._jitter_sigma
        return math.exp(self._rng.gauss(-0.5 * s * s, s))

    # --- completing -----------------------------------------------------------------
    def complete(self, plan: Plan, steps: int, start: float) -> StepOutput:
        """Apply ``steps`` steps of ``plan`` that started at ``start`` (a run may be cut)."""
        if not 1 <= steps <= plan.steps:
            raise ValueError(f"cannot complete {steps} steps of a {plan.steps}-step plan")
        if plan.is_run:
            out = self.fast.complete_run(plan, steps, start)
        else:
            out = self._complete_step(plan, start)
        fast = self.fast
        if fast is not None and fast.nonmembers:
            fast.tidy()
        if len(self.timeline) > self._trim_at:
            self._trim_timeline()
        if self.async_scheduling:
            self.last_start = start + plan.time_of(steps - 1)
            s = self.scheduler
            if not (len(s.running) > len(s.finishing) or s.waiting):
                if s.finishing:
                    self.event_tick = self.ticks + 1
                    s.apply_previous_output()  # no next step to schedule first
                self.last_start = math.inf  # idle: the next arrival is scheduled at once
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
            self.fast.tail()
            if self.async_scheduling and done:
                self._publish()  # as after scheduling that step
        return Plan(plan.scheduled, 1, plan.first + done * plan.delta, 0.0, plan.is_run,
                    self.kv.num_used, plan.group_size, plan.num_tokens, self.ticks,
                    self.fast.alloc_tick if self.fast is not None else self.ticks + 1)

    def _complete_step(self, plan: Plan, start: float) -> StepOutput:
        """Apply one step's output (vLLM's ``update_from_output``)."""
        end = start + plan.first
        tick = self.timeline.append(plan.first, 0.0, 1)
        self.ticks = tick
        self.last_end = end
        fast = self.fast
        emitted: list[EngineRequest] = []
        finished: list[EngineRequest] = []
        first_tokens: list[EngineRequest] = []
        running_status = Status.RUNNING
        for req, n in plan.scheduled:
            if req.status != running_status:
                continue  # aborted (or preempted as finished) while the step ran
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
            elif fast is not None:
                fast.join(req, tick)
        if fast is not None and plan.group_size:
            done = fast.group.pop_finished(tick)
            if done:
                for req in done:
                    fast.sync(req)
                    fast.leave(req)
                finished += done
                finished.sort(key=_seq)  # vLLM frees them in running order
        for req in finished:
            self.finish(req)
        return StepOutput(end, emitted, finished, first_tokens, self)

    def finish(self, req: EngineRequest) -> None:
        """``req`` emitted its last token."""
        if self.async_scheduling:
            self.scheduler.hold(req)
        else:
            self.scheduler.finish(req)
        self.close_itl(req)

    def _trim_timeline(self) -> None:
        """Drop timeline entries older than every open token streak (bounded memory)."""
        oldest = self.ticks
        for req in self.scheduler.requests.values():
            if 0 <= req.streak_start < oldest:
                oldest = req.streak_start
        self.timeline.trim(oldest)
        self._trim_at = max(1 << 16, 2 * len(self.timeline))

    # --- metrics --------------------------------------------------------------------
    def _state(self) -> tuple:
        s = self.scheduler
        running = len(s.running) - len(s.finishing) if s.finishing else len(s.running)
        return (running, len(s.waiting), self.kv.num_used, s.prefix_queries, s.prefix_hits,
                s.preemptions)

    def _publish(self) -> None:
        self._published_state = self._state()
        self._published = None

    def current_metrics(self) -> EngineMetrics:
        """The metrics of the engine's state right now (not what ``/metrics`` shows yet)."""
        return EngineMetrics(*self._state()[:3], self.kv.num_blocks, *self._state()[3:])

    @property
    def published(self) -> EngineMetrics:
        """What ``/metrics`` shows now: the state after the last completed step."""
        m = self._published
        if m is None:
            r, w, used, pq, ph, pre = self._published_state
            m = self._published = EngineMetrics(r, w, used, self.kv.num_blocks, pq, ph, pre)
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
        # Asynchronous scheduling publishes after scheduling the next step: its
        # blocks are in use already.
        extra = self.fast.blocks_allocated(plan, done + 1 if self.async_scheduling else done)
        return EngineMetrics(m.running, m.waiting, plan.used_blocks_at_plan + extra,
                             m.usable_kv_blocks, m.prefix_queries, m.prefix_hits, m.preemptions)
