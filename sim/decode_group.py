"""Steady decoders as one group, so a step costs O(1) per event instead of O(batch).

A running request that got a token at the last completed step and is not
prefilling will, at every following step, be scheduled for one token and emit one,
until it finishes, is preempted, aborted, or skipped by the token budget. Its
counters therefore advance in lockstep with the engine's tick. A member stores
its counters as of the tick it joined (``g_tick0``, ``g_out0``, ``g_comp0``) and
the group keeps aggregates over members:

- ``phase``: members counted by ``(g_comp0 - g_tick0) mod block_size``. A member
  holding KV for ``x + a`` tokens (``x = g_comp0 - g_tick0``, ``a`` the tick up to
  which blocks are allocated) needs ``ceil((x + a') / bs) - ceil((x + a) / bs)``
  more blocks when allocation moves to ``a'``, which depends only on the phase
  class; so block needs for any number of steps cost O(block_size), not O(batch).
- ``ctx_const``: the sum of ``x`` over members, which gives the decode-attention
  context of the next step in O(1).
- a heap of finish ticks: the first finish bounds a decode run; finished members
  pop out as their tick comes.

``sync`` materialises a member's real counters (and re-bases it, which leaves the
aggregates unchanged) when anything needs to look at it.
"""
from __future__ import annotations

import heapq

from sim.request import EngineRequest


class DecodeGroup:
    __slots__ = ("bs", "members", "phase", "ctx_const", "heap", "_seq")

    def __init__(self, block_size: int) -> None:
        self.bs = block_size
        self.members: set[EngineRequest] = set()
        self.phase = [0] * block_size
        self.ctx_const = 0
        self.heap: list[tuple[int, int, EngineRequest]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self.members)

    def join(self, req: EngineRequest, tick: int) -> None:
        """Add ``req`` whose counters are current as of ``tick`` (it emitted at ``tick``)."""
        req.in_group = True
        req.g_tick0 = tick
        req.g_out0 = req.num_output
        req.g_comp0 = req.num_computed
        x = req.num_computed - tick
        self.phase[x % self.bs] += 1
        self.ctx_const += x
        finish = tick + req.max_tokens - req.num_output
        self._seq += 1
        req.g_finish = self._seq  # identifies this membership's heap entry
        heapq.heappush(self.heap, (finish, self._seq, req))
        self.members.add(req)

    def leave(self, req: EngineRequest) -> None:
        """Remove a member (its heap entry goes stale and is skipped: a later
        membership of the same request gets a new sequence number)."""
        x = req.g_comp0 - req.g_tick0
        self.phase[x % self.bs] -= 1
        self.ctx_const -= x
        self.members.discard(req)
        req.in_group = False

    def sync(self, req: EngineRequest, tick: int, alloc_tick: int, last_end: float) -> None:
        """Materialise a member's counters at ``tick`` (blocks as of ``alloc_tick``)."""
        e = tick - req.g_tick0
        if e:
            req.num_output = req.g_out0 + e
            req.num_computed = req.g_comp0 + e
            req.last_tick = tick
            req.last_token_time = last_end
            req.g_tick0 = tick
            req.g_out0 = req.num_output
            req.g_comp0 = req.num_computed
        held = -(-(req.num_computed + alloc_tick - tick) // self.bs)
        req.num_private = held - len(req.shared_blocks)

    def first_finish(self) -> int | None:
        """The earliest tick at which a member emits its last token."""
        heap = self.heap
        while heap:
            finish, seq, req = heap[0]
            if req.in_group and req.g_finish == seq:
                return finish
            heapq.heappop(heap)
        return None

    def pop_finished(self, tick: int) -> list[EngineRequest]:
        """Members whose last token is at ``tick`` (or earlier), removed from the heap."""
        out = []
        heap = self.heap
        while heap and heap[0][0] <= tick:
            _, seq, req = heapq.heappop(heap)
            if req.in_group and req.g_finish == seq:
                out.append(req)
        return out

    def allocations(self, a: int, b: int) -> int:
        """Blocks members need when their allocation moves from tick ``a`` to ``b``."""
        if b <= a or not self.members:
            return 0
        bs = self.bs
        total = 0
        for c, count in enumerate(self.phase):
            if count:
                # ceil((c + b) / bs) - ceil((c + a) / bs), written with floor division
                total += count * ((-(c + a)) // bs - (-(c + b)) // bs)
        return total
