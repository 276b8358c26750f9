"""vLLM's scheduling step, request by request: the reference the fast paths must equal.

This mirrors ``Scheduler.schedule`` in vLLM 0.32's
``vllm/v1/core/sched/scheduler.py`` with the FCFS policy, chunked prefill, prefix
caching and ``scheduler_reserve_full_isl`` (on by default), and without what the
lab does not model (speculative decoding, encoders, LoRA, KV connectors,
priorities, pipeline parallelism). Read the two side by side:

1. ``schedule_running`` is vLLM's loop over ``self.running``: each request gets
   ``num_tokens - num_computed`` tokens (a decode: 1; an unfinished prefill: a
   chunk), capped by what is left of the token budget. If its KV blocks do not fit
   (``allocate_slots`` returns None), the last request of the running queue is
   preempted (recompute: blocks freed, progress lost, back to the front of the
   waiting queue) until they fit or the request preempts itself, which ends the
   loop. A request with nothing to compute is passed over.
2. ``schedule_waiting`` runs only if nothing was preempted: waiting requests in
   FCFS order while the budget lasts and fewer than ``max_num_seqs`` run. A
   request's prefix-cache hit is looked up (``get_computed_blocks``) and it is
   admitted only when blocks for its whole current sequence fit
   (``full_sequence_must_fit``), counting hit blocks that sit in the free queue;
   the first that does not fit stops the loop.

Allocation caches the blocks the scheduled tokens fill (``cache_blocks`` inside
``allocate_slots``), so a request admitted later in the same step already hits
blocks an earlier one filled.

Asynchronous scheduling (vLLM's default on GPU, ``AsyncScheduler`` driven by
``EngineCore.step_with_batch_queue``). Two batches are in flight: step k+1 is
scheduled when step k starts executing, before step k-1's output is applied.
So a request whose last token step k-1 produces still holds its seat and blocks
while step k+1 is scheduled: vLLM passes it over (``num_output_placeholders``),
may preempt it, and frees it when that output is applied (``hold``,
``apply_previous_output``); a block a token completes is cached only then; and a
request that reaches the engine while step k runs joins step k+2, not k+1
(``scheduled_at``).

The prefix-cache counters (``vllm:prefix_cache_queries``/``hits``) count first
admissions only: vLLM records re-admissions after a preemption separately
(``PrefixCacheStats.preempted_*``), and does not export those as these counters.
"""
from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from sim.kv_cache import KVCache
from sim.request import EngineRequest, Status

if TYPE_CHECKING:  # pragma: no cover
    from sim.engine import EngineConfig

RUNNING = Status.RUNNING


def _seq(req: EngineRequest) -> int:
    return req.seq


class Scheduler:
    """The running and waiting queues of one replica, and the rules that fill a step."""

    def __init__(self, config: EngineConfig, kv: KVCache) -> None:
        self.config = config
        self.kv = kv
        self.waiting: deque[EngineRequest] = deque()
        self.running: list[EngineRequest] = []
        self.requests: dict[int, EngineRequest] = {}
        #: Finished requests still holding seat and blocks (asynchronous scheduling).
        self.finishing: list[EngineRequest] = []
        #: Asynchronous scheduling: the engine tick whose tokens are still in flight
        #: while this step is scheduled (-2: none), and when vLLM scheduled this
        #: step: requests the engine received later wait for the next one.
        self.in_flight_tick = -2
        self.scheduled_at = math.inf
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.preemptions = 0
        self._seq = 0

    # --- one step -----------------------------------------------------------------------
    def schedule(self) -> list[tuple[EngineRequest, int]]:
        """Schedule one step: (request, new tokens) in scheduling order."""
        scheduled: list[tuple[EngineRequest, int]] = []
        budget, preempted = self.schedule_running(self.config.max_num_batched_tokens, scheduled)
        if not preempted:
            self.schedule_waiting(budget, scheduled)
        return scheduled

    def schedule_running(self, budget: int, scheduled: list) -> tuple[int, bool]:
        """vLLM's loop over the running queue; returns the budget left and whether it preempted."""
        kv = self.kv
        running = self.running
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            computed = req.num_computed
            n = req.prompt_len + req.num_output - computed
            if n > budget:
                n = budget
            if n <= 0:  # nothing to compute (a finished request under async scheduling)
                i += 1
                continue
            need = kv.blocks_needed(req, computed + n)
            if need > 0:
                while need > kv.num_free:
                    victim = running.pop()
                    self.preempt(victim)
                    preempted = True
                    if victim is req:
                        break
                if req.status != RUNNING:
                    break
                kv.grow(req, computed + n)
            cached = computed + n
            if req.last_tick == self.in_flight_tick:
                cached -= 1  # its newest token is not out yet: that block is cached later
            if req.num_registered < cached // kv.block_size:
                kv.register(req, cached)
            scheduled.append((req, n))
            budget -= n
            i += 1
        return budget, preempted

    def schedule_waiting(self, budget: int, scheduled: list) -> int:
        """vLLM's waiting loop: FCFS admissions while budget, seats and KV last."""
        kv = self.kv
        bs = kv.block_size
        running = self.running
        waiting = self.waiting
        max_seqs = self.config.max_num_seqs
        scheduled_at = self.scheduled_at
        while waiting and budget > 0 and len(running) < max_seqs:
            req = waiting[0]
            if req.received > scheduled_at:
                break  # it came after vLLM scheduled this step (FCFS: so did those behind)
            hits, private_hits = kv.lookup(req)
            hit_blocks = len(hits) + private_hits
            num_tokens = req.prompt_len + req.num_output
            if kv.blocks_for(num_tokens) - hit_blocks > kv.num_free - kv.free_among(hits, private_hits):
                break
            waiting.popleft()
            cached = hit_blocks * bs
            if req.num_preemptions == 0:
                if kv.enable_caching:  # vLLM counts only requests that looked the cache up
                    self.prefix_queries += num_tokens
                    self.prefix_hits += cached
                req.num_cached = cached
            kv.admit(req, hits, private_hits)
            req.num_computed = cached
            n = num_tokens - cached
            if n > budget:
                n = budget
            kv.grow(req, cached + n)
            if req.num_registered < (cached + n) // bs:
                kv.register(req, cached + n)
            req.status = RUNNING
            req.seq = self._seq
            self._seq += 1
            running.append(req)
            scheduled.append((req, n))
            budget -= n
        return budget

    def can_admit(self, req: EngineRequest) -> bool:
        """Whether the waiting loop would admit ``req`` now, blocks-wise."""
        kv = self.kv
        hits, private_hits = kv.lookup(req)
        need = kv.blocks_for(req.prompt_len + req.num_output) - len(hits) - private_hits
        return need <= kv.num_free - kv.free_among(hits, private_hits)

    def preempt(self, req: EngineRequest) -> None:
        """Recompute preemption (``_preempt_request``); the caller popped it from running."""
        self.preemptions += 1
        req.num_preemptions += 1
        if req.status != RUNNING:
            # A finished request holding its blocks (async): freed now, it ends anyway.
            self.kv.free(req, keep_for_recompute=False)
            self.finishing.remove(req)
            return
        self.kv.free(req, keep_for_recompute=True)
        req.num_computed = 0
        req.status = Status.WAITING
        self.waiting.appendleft(req)

    # --- arrivals, finishes, aborts ------------------------------------------------------------
    def add(self, req: EngineRequest) -> None:
        req.status = Status.WAITING
        self.requests[req.id] = req
        self.waiting.append(req)

    def finish(self, req: EngineRequest) -> None:
        """A request emitted its last token: its seat and blocks are free at once."""
        self.running.remove(req)
        self.kv.free(req, keep_for_recompute=False)
        req.status = Status.FINISHED
        del self.requests[req.id]

    def hold(self, req: EngineRequest) -> None:
        """Asynchronous scheduling: finished, but seat and blocks stay until ``release``."""
        req.status = Status.FINISHED
        req.num_computed = req.prompt_len + req.num_output  # nothing left to schedule
        del self.requests[req.id]
        self.finishing.append(req)

    def apply_previous_output(self, unscheduled: list[EngineRequest] = ()) -> None:
        """Asynchronous scheduling: what applying the previous step's output does now.

        vLLM's ``AsyncScheduler`` caches, when a token comes out, the block it
        completes (``cache_blocks(num_computed - num_output_placeholders)``); a
        request scheduled again already did at its schedule. ``unscheduled``
        are the requests that got a token at the previous step and were not
        scheduled at this one. The held finished requests cache theirs and are
        freed. All in running order, as vLLM walks the previous step's output.
        """
        kv = self.kv
        items = self.finishing + list(unscheduled)
        if len(items) > 1:
            items.sort(key=_seq)
        for req in items:
            if req.status == RUNNING:
                kv.register(req, req.num_computed)
            else:
                kv.register(req, req.prompt_len + req.num_output - 1)
                self.running.remove(req)
                kv.free(req, keep_for_recompute=False)
        self.finishing.clear()

    def abort(self, req: EngineRequest) -> None:
        del self.requests[req.id]
        if req.status == RUNNING:
            self.running.remove(req)
            self.kv.free(req, keep_for_recompute=False)
        else:
            self.waiting.remove(req)
        req.status = Status.ABORTED
