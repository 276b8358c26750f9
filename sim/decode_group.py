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
  pop out as their tick comes. Each membership has its own entry number
  (``g_entry``), so a request that leaves and rejoins leaves a stale entry behind.
- ``tracked``: the members whose blocks must be seen one by one, by phase class.
  A member's allocations are counted in aggregate, but the block it fills at
  tick ``t`` (when ``(x + t) mod bs == 0``) must be cached under its hash at
  that tick if another request can hit it (a reply that a later turn's prompt
  contains), and every block it takes or fills is an event when KV events are
  on. ``sim.fast_path`` visits exactly those members at those ticks.

``sync`` materialises a member's real counters (and re-bases it, which leaves the
aggregates unchanged) when anything needs to look at it.
"""
from __future__ import annotations

import heapq

from sim.kv_cache import KVCache
from sim.request import EngineRequest


class DecodeGroup:
    __slots__ = ("bs", "lag", "members", "phase", "ctx_const", "heap", "tracked", "num_tracked",
                 "_entries")

    def __init__(self, block_size: int, lag: int = 0) -> None:
        self.bs = block_size
        #: Asynchronous scheduling caches a block one tick after the step that fills
        #: it is scheduled (the token is in flight until then): 1, else 0.
        self.lag = lag
        self.members: set[EngineRequest] = set()
        self.phase = [0] * block_size
        self.ctx_const = 0
        self.heap: list[tuple[int, int, EngineRequest]] = []
        #: Tracked members by phase class.
        self.tracked: list[set[EngineRequest]] = [set() for _ in range(block_size)]
        self.num_tracked = 0
        self._entries = 0

    def __len__(self) -> int:
        return len(self.members)

    def join(self, req: EngineRequest, tick: int, tracked: bool = False) -> None:
        """Add ``req`` whose counters are current as of ``tick`` (it emitted at ``tick``)."""
        req.in_group = True
        req.g_tick0 = tick
        req.g_out0 = req.num_output
        req.g_comp0 = req.num_computed
        x = req.num_computed - tick
        c = x % self.bs
        self.phase[c] += 1
        self.ctx_const += x
        finish = tick + req.max_tokens - req.num_output
        self._entries += 1
        req.g_entry = self._entries
        heapq.heappush(self.heap, (finish, self._entries, req))
        self.members.add(req)
        if tracked:
            req.tracked = True
            self.tracked[c].add(req)
            self.num_tracked += 1

    def leave(self, req: EngineRequest) -> None:
        """Remove a member (its heap entry goes stale and is skipped)."""
        x = req.g_comp0 - req.g_tick0
        c = x % self.bs
        self.phase[c] -= 1
        self.ctx_const -= x
        self.members.discard(req)
        req.in_group = False
        if req.tracked:
            self.untrack(req)

    def untrack(self, req: EngineRequest) -> None:
        self.tracked[(req.g_comp0 - req.g_tick0) % self.bs].discard(req)
        self.num_tracked -= 1
        req.tracked = False

    def sync(self, req: EngineRequest, tick: int, alloc_tick: int, last_end: float, kv: KVCache) -> None:
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
        scheduled = req.num_computed + alloc_tick - tick
        kv.adopt(req, kv.blocks_for(scheduled), scheduled - self.lag)

    def first_finish(self) -> int | None:
        """The earliest tick at which a member emits its last token."""
        heap = self.heap
        while heap:
            finish, entry, req = heap[0]
            if req.in_group and req.g_entry == entry:
                return finish
            heapq.heappop(heap)
        return None

    def pop_finished(self, tick: int) -> list[EngineRequest]:
        """Members whose last token is at ``tick`` (or earlier), removed from the heap."""
        out = []
        heap = self.heap
        while heap and heap[0][0] <= tick:
            _, entry, req = heapq.heappop(heap)
            if req.in_group and req.g_entry == entry:
                out.append(req)
        return out

    def allocations(self, a: int, b: int) -> int:
        """Blocks members need when their allocation moves from tick ``a`` to ``b``."""
        if b <= a or not self.members:
            return 0
        bs = self.bs
        if b == a + 1:  # one step: the members whose next token starts a block
            return self.phase[(-a) % bs]
        total = 0
        for c, count in enumerate(self.phase):
            if count:
                # ceil((c + b) / bs) - ceil((c + a) / bs), written with floor division
                total += count * ((-(c + a)) // bs - (-(c + b)) // bs)
        return total

    def boundaries(self, a: int, b: int, allocs: bool) -> list[tuple[int, int, int, EngineRequest]]:
        """Block events of tracked members as allocation moves from tick ``a`` to ``b``.

        ``(tick, seq, kind, member)`` in the order vLLM meets them: by tick, then
        by running order (admission ``seq``), a block taken (kind 0, only with
        ``allocs``) before one filled (kind 1). At tick ``t`` a member with
        ``x = g_comp0 - g_tick0`` fills a block when ``(x + t - lag) mod bs == 0``
        and takes one when ``(x + t - 1) mod bs == 0``: one phase class per tick.
        """
        out = []
        if b <= a or not self.num_tracked:
            return out
        bs, lag, tracked = self.bs, self.lag, self.tracked
        if b - a < bs:  # each tick meets one class for fills (and one for takes)
            for t in range(a + 1, b + 1):
                if allocs:
                    for req in tracked[(1 - t) % bs]:
                        out.append((t, req.seq, 0, req))
                for req in tracked[(lag - t) % bs]:
                    out.append((t, req.seq, 1, req))
        else:
            for c, members in enumerate(tracked):
                if not members:
                    continue
                kinds = ((1, (lag - c) % bs), (0, (1 - c) % bs)) if allocs else ((1, (lag - c) % bs),)
                for kind, r in kinds:
                    t = a + 1 + (r - (a + 1)) % bs
                    while t <= b:
                        for req in members:
                            out.append((t, req.seq, kind, req))
                        t += bs
        if len(out) > 1:
            out.sort()  # (tick, seq, kind) never ties: the member is never compared
        return out
