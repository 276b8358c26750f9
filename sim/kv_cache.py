"""Paged KV cache with prefix caching, after vLLM V1's ``BlockPool``/``KVCacheManager``.

Semantics (vLLM 0.32, ``vllm/v1/core/block_pool.py``, ``kv_cache_manager.py``,
``single_type_kv_cache_manager.py``):

- A server reporting ``num_gpu_blocks = N`` has ``N - 1`` usable blocks: block 0
  is the *null block*, a placeholder that is never allocated. Usage
  (``vllm:kv_cache_usage_perc``) is ``1 - free / (N - 1)``, where cached blocks
  with no user count as free (they are evictable).
- Blocks hold ``block_size`` tokens; a request owns a chain of blocks. Allocation
  takes from the front of one free queue, evicting the prefix-cache entry of the
  block it takes.
- Every full block a request computes, prompt or generated, is hashed and cached
  when the step that fills it is scheduled (``cache_blocks`` in
  ``allocate_slots``); a later request whose chain starts with the same hashes
  reuses it ("touch": its reference count goes up and it leaves the free queue).
  At most ``num_tokens - 1`` tokens can hit: the last token is always recomputed.
- A request's blocks are freed tail first. Freed blocks that carry a hash go to
  the *back* of the queue (LRU eviction of cached blocks); freed blocks without
  one (a partial last block, a block not filled yet, every block when caching is
  off) go to the *front*, to be reused first (``BlockPool.free_blocks``).

Representation (exact, and what makes the simulator fast): a hash chain has the
property that once one block's hash is unique to a request, every later block of
that request is unique too. So each request's chain splits into a *shareable*
head (blocks whose hash other requests also have; tracked one by one, with ids,
reference counts and the hash map) and a *private* tail (blocks only the request
itself can ever hit again, after a preemption). The private tail is held as a
count and, once freed, sits in the free queue as one *extent*; evicting from it
removes blocks from its end, exactly the order in which vLLM would evict the
tail's blocks. The simulator tells each request how long its shareable head is
(computed over the whole trace); a caller that cannot know treats every known
block as shareable, with identical results at a higher cost.

Shareable blocks have ids, as vLLM's physical blocks do, and an id is reused once
its block is reused for something else: at most ``num_blocks`` ids exist, so the
per-block state (reference count, hash) lives in two lists indexed by id, 16 bytes
a block, instead of dicts keyed by ever-growing ids (about 150 bytes a block with
their int keys; big fleets hold millions of cached blocks).

KV events. With an event sink, the cache reports what vLLM's block pool
publishes (``routing.kv_events``): ``BlockStored`` when blocks become cached
(one event per request and step, the blocks in chain order), ``BlockRemoved``
when a cached block is evicted (one per block), ``AllBlocksCleared`` on a reset.
Without one, nothing is built: the hot path pays one ``is None`` test per event
site.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable

from routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent
from sim.request import EngineRequest


class Extent:
    """A run of free blocks in the queue.

    Blocks ``lo .. lo + count - 1`` of request ``src``'s chain, in the queue
    highest index first (they were freed tail first). ``owner`` is the
    preempted request that may hit them again (None: nobody can); ``src`` names
    the blocks in events (None: anonymous, such as never-used or unhashed blocks,
    or any block when there is no event sink).
    """

    __slots__ = ("count", "lo", "owner", "src")

    def __init__(self, count: int, lo: int = 0, owner: EngineRequest | None = None,
                 src: EngineRequest | None = None) -> None:
        self.count = count
        self.lo = lo
        self.owner = owner
        self.src = src


class KVCache:
    __slots__ = (
        "num_gpu_blocks", "num_blocks", "block_size", "enable_caching", "num_free", "events",
        "pending", "_queue", "_stale", "_ref", "_hash", "_cached", "_dups", "_next_id", "_free_ids",
    )

    def __init__(self, num_gpu_blocks: int, block_size: int = 16, enable_caching: bool = True,
                 events: Callable[[KVEvent], None] | None = None) -> None:
        if num_gpu_blocks < 2:
            raise ValueError(f"num_kv_blocks must be >= 2 (one is vLLM's null block), got {num_gpu_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        #: What the server reports (``num_gpu_blocks``), the null block included.
        self.num_gpu_blocks = num_gpu_blocks
        #: Usable blocks: all but the null block.
        self.num_blocks = num_gpu_blocks - 1
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.num_free = self.num_blocks
        #: The event sink (None: no events).
        self.events = events
        #: Hashes of the next shareable block of decode-group members, not cached
        #: yet, with how many members will cache them (see ``sim.fast_path``).
        self.pending: dict[int, int] = {}
        #: The free queue: shareable block ids (ints) and extents (runs of blocks).
        self._queue: deque[int | Extent] = deque([Extent(self.num_blocks)])
        #: Queue entries of a block id that were touched while free (skipped on pop).
        self._stale: dict[int, int] = {}
        self._cached: dict[int, int] = {}
        self._dups: dict[int, list[int]] = {}
        self._forget_ids()

    def _forget_ids(self) -> None:
        """No block has an id: every id is unused (its count 0, no hash)."""
        #: Users of each shareable block, by id (0: free, or id unused).
        self._ref: list[int] = [0] * self.num_blocks
        #: Each block's hash once cached, by id (None: not cached, or id unused).
        self._hash: list[int | None] = [None] * self.num_blocks
        #: Ids below ``_next_id`` have been used; ``_free_ids`` are the unused ones among them.
        self._next_id = 0
        self._free_ids: list[int] = []

    # --- queries ------------------------------------------------------------------
    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks that hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    def blocks_needed(self, req: EngineRequest, num_tokens: int) -> int:
        """More blocks ``req`` needs to hold ``num_tokens`` tokens (<= 0: none)."""
        return -(-num_tokens // self.block_size) - len(req.shared_blocks) - req.num_private

    def lookup(self, req: EngineRequest) -> tuple[list[int], int]:
        """Prefix-cache hit for ``req``: shareable block ids, and private blocks of its own."""
        if not self.enable_caching:
            return [], 0
        limit = (req.prompt_len + req.num_output - 1) // self.block_size
        hashes = req.block_hashes
        k = req.num_shareable
        cached = self._cached
        hits: list[int] = []
        for i in range(min(limit, k)):
            b = cached.get(hashes[i])
            if b is None:
                return hits, 0
            hits.append(b)
        ext = req.freed_extent
        if ext is None or ext.owner is not req or limit <= k or len(hits) < k:
            return hits, 0
        return hits, min(ext.count, limit - k)

    def free_among(self, hits: list[int], private_hits: int) -> int:
        """How many hit blocks sit in the free queue (touching them uses free space)."""
        ref = self._ref
        return sum(1 for b in hits if ref[b] == 0) + private_hits

    # --- admission, growth, release ---------------------------------------------------
    def admit(self, req: EngineRequest, hits: list[int], private_hits: int) -> None:
        """Give a waiting request its prefix-cache hits (caller checked the room)."""
        ref, stale = self._ref, self._stale
        freed = 0
        for b in hits:
            r = ref[b]
            if r == 0:
                stale[b] = stale.get(b, 0) + 1
                freed += 1
            ref[b] = r + 1
        ext = req.freed_extent
        if private_hits:
            ext.count -= private_hits
            ext.lo += private_hits
            freed += private_hits
        if ext is not None:
            ext.owner = None  # what is left of it is nobody's to hit
            req.freed_extent = None
        self.num_free -= freed
        req.shared_blocks = hits
        req.num_private = private_hits
        req.num_registered = len(hits) + private_hits

    def grow(self, req: EngineRequest, num_tokens: int) -> None:
        """Allocate blocks so ``req`` holds ``num_tokens`` tokens (caller checked room)."""
        have = len(req.shared_blocks) + req.num_private
        n = -(-num_tokens // self.block_size) - have  # blocks_needed, inlined: the hot path
        if n <= 0:
            return
        self._take(n)
        if self.enable_caching:
            k = req.num_shareable
            if have < k:
                new_ids = min(n, k - have)
                self.name_blocks(req, new_ids)
                n -= new_ids
        req.num_private += n

    def name_blocks(self, req: EngineRequest, n: int) -> None:
        """Give ``req`` ``n`` new shareable block ids (blocks it already holds or just took)."""
        ref, free_ids, blocks = self._ref, self._free_ids, req.shared_blocks
        while n and free_ids:
            b = free_ids.pop()
            ref[b] = 1
            blocks.append(b)
            n -= 1
        if n:
            first = self._next_id
            self._next_id = first + n
            for b in range(first, first + n):
                ref[b] = 1
            blocks.extend(range(first, first + n))

    def cache_next_block(self, req: EngineRequest) -> None:
        """Name and cache ``req``'s next shareable block (held, now full): ``register`` for
        one block of a decode-group member, the common case kept short (no event sink)."""
        i = req.num_registered
        blocks = req.shared_blocks
        if len(blocks) == i:
            if self._free_ids:
                b = self._free_ids.pop()
            else:
                b = self._next_id
                self._next_id = b + 1
            self._ref[b] = 1
            blocks.append(b)
        else:
            b = blocks[i]
        if self._hash[b] is None:
            h = req.block_hashes[i]
            self._hash[b] = h
            if h in self._cached:
                self._dups.setdefault(h, []).append(b)
            else:
                self._cached[h] = b
        req.num_registered = i + 1

    def adopt(self, req: EngineRequest, held: int, num_tokens: int) -> None:
        """Settle a decode-group member that holds ``held`` blocks, ``num_tokens`` of them cached.

        The group allocates its members' blocks as a count; a member leaving it
        names the shareable ones it holds and caches what it filled.
        """
        named = len(req.shared_blocks)
        if self.enable_caching:
            target = min(held, req.num_shareable)
            if target > named:
                self.name_blocks(req, target - named)
                named = target
            if req.num_registered < num_tokens // self.block_size:
                self.register(req, num_tokens)
        req.num_private = held - named

    def register(self, req: EngineRequest, num_tokens: int) -> None:
        """Cache the full blocks that ``num_tokens`` computed tokens fill (``cache_blocks``)."""
        full = num_tokens // self.block_size
        i = req.num_registered
        if i >= full or not self.enable_caching:
            return
        blocks = req.shared_blocks
        end = len(blocks)
        if end > full:
            end = full
        if i < end:
            cached, bhash, hashes = self._cached, self._hash, req.block_hashes
            while i < end:
                b = blocks[i]
                if bhash[b] is None:
                    h = hashes[i]
                    bhash[b] = h
                    if h in cached:
                        self._dups.setdefault(h, []).append(b)
                    else:
                        cached[h] = b
                i += 1
        if self.events is not None:
            self._stored(req, req.num_registered, full)
        req.num_registered = full

    def _stored(self, req: EngineRequest, lo: int, hi: int) -> None:
        hash_of = req.hash_of
        self.events(BlockStored(tuple(hash_of(i) for i in range(lo, hi)),
                                hash_of(lo - 1) if lo else None, self.block_size))

    def free(self, req: EngineRequest, *, keep_for_recompute: bool) -> None:
        """Release ``req``'s blocks, tail first: cached ones to the back, the rest to the front."""
        queue = self._queue
        named = req.shared_blocks
        k = len(named)
        n_private = req.num_private
        registered = req.num_registered if self.enable_caching else 0
        front = 0
        if n_private:
            hashed = registered - k  # private blocks [k, registered) carry a hash
            if hashed < 0:
                hashed = 0
            elif hashed > n_private:
                hashed = n_private
            front = n_private - hashed
            if hashed:
                if keep_for_recompute:
                    ext = Extent(hashed, k, req, req)
                    req.freed_extent = ext
                    queue.append(ext)
                elif self.events is not None:
                    queue.append(Extent(hashed, k, None, req))
                else:
                    last = queue[-1] if queue else None
                    if type(last) is Extent and last.owner is None and last.src is None:
                        last.count += hashed
                    else:
                        queue.append(Extent(hashed))
        freed = n_private
        ref, free_ids = self._ref, self._free_ids
        for i in range(k - 1, -1, -1):
            b = named[i]
            r = ref[b] - 1
            if r:
                ref[b] = r
                continue
            freed += 1
            if i < registered:
                ref[b] = 0
                queue.append(b)
            else:  # never cached: nothing can hit it, it is reused first
                ref[b] = 0
                free_ids.append(b)
                front += 1
        if front:
            first = queue[0] if queue else None
            if type(first) is Extent and first.owner is None and first.src is None:
                first.count += front
            else:
                queue.appendleft(Extent(front))
        self.num_free += freed
        req.shared_blocks = []
        req.num_private = 0
        req.num_registered = 0

    def take_blocks(self, n: int) -> None:
        """Allocate ``n`` private blocks held by the decode group (counted, not named)."""
        self._take(n)

    def _take(self, n: int) -> None:
        """Pop ``n`` free blocks from the front of the queue, evicting cache entries."""
        queue, stale, bhash = self._queue, self._stale, self._hash
        events = self.events
        self.num_free -= n
        while n > 0:
            item = queue[0]
            if type(item) is Extent:
                c = item.count
                take = c if c <= n else n
                if events is not None and item.src is not None:
                    hash_of = item.src.hash_of
                    top = item.lo + c
                    for i in range(top - 1, top - 1 - take, -1):
                        events(BlockRemoved((hash_of(i),)))
                if c > n:
                    item.count = c - n
                    return
                n -= c
                item.count = 0
                queue.popleft()
                continue
            queue.popleft()
            s = stale.get(item)
            if s:
                if s == 1:
                    del stale[item]
                else:
                    stale[item] = s - 1
                continue
            # A free shareable block is reused: it stops existing as that block (its
            # count is 0 already; its id is free to name another block).
            self._free_ids.append(item)
            h = bhash[item]
            if h is not None:
                bhash[item] = None
                self._evict_hash(h, item)
                if events is not None:
                    events(BlockRemoved((h,)))
            n -= 1

    def _evict_hash(self, h: int, block: int) -> None:
        cached = self._cached
        if cached.get(h) == block:
            dups = self._dups.get(h)
            if dups:
                cached[h] = dups.pop(0)
                if not dups:
                    del self._dups[h]
            else:
                del cached[h]
        else:
            dups = self._dups.get(h)
            if dups and block in dups:
                dups.remove(block)
                if not dups:
                    del self._dups[h]

    def reset_prefix_cache(self) -> bool:
        """Forget every cached block (vLLM's ``reset_prefix_cache``): only when none is in use."""
        if self.num_free != self.num_blocks:
            return False
        for item in self._queue:
            if type(item) is Extent and item.owner is not None:
                item.owner.freed_extent = None
        self._queue = deque([Extent(self.num_blocks)])
        self._stale.clear()
        self._forget_ids()
        self._cached.clear()
        self._dups.clear()
        if self.events is not None:
            self.events(AllBlocksCleared())
        return True

    # --- inspection (tests) ---------------------------------------------------------------
    def cached_hashes(self, requests: list[EngineRequest] = ()) -> dict[int, int]:
        """Every block that carries a hash, counted per hash: what the events rebuild.

        Named blocks are read from the hash table; private ones from ``requests``
        (the engine's requests, decode-group members settled) and from the free
        queue's extents, which keep their names only with an event sink.
        """
        out: dict[int, int] = {}
        for h in self._hash:
            if h is not None:
                out[h] = out.get(h, 0) + 1
        for r in requests:
            for i in range(len(r.shared_blocks), min(r.num_registered, r.num_blocks)):
                h = r.hash_of(i)
                out[h] = out.get(h, 0) + 1
        for item in self._queue:
            if type(item) is Extent and item.src is not None:
                for i in range(item.lo, item.lo + item.count):
                    h = item.src.hash_of(i)
                    out[h] = out.get(h, 0) + 1
        return out

    def check_invariants(self, requests: list[EngineRequest] = ()) -> None:
        """Consistency of the pool (used by property tests)."""
        assert 0 <= self.num_free <= self.num_blocks
        queued = 0
        seen_stale: dict[int, int] = {}
        for item in self._queue:
            if type(item) is Extent:
                assert item.count >= 0
                queued += item.count
            else:
                seen_stale[item] = seen_stale.get(item, 0) + 1
        for b, occurrences in seen_stale.items():
            live = occurrences - self._stale.get(b, 0)
            assert live in (0, 1), f"block {b} is free {live} times"
            if live:
                assert self._ref[b] == 0, f"free block {b} has references"
                assert self._hash[b] is not None, f"free block {b} has no hash (it belongs at the front)"
                queued += 1
        assert queued == self.num_free, (queued, self.num_free)
        for h, b in self._cached.items():
            assert self._hash[b] == h
        assert self._next_id <= self.num_blocks, "more block ids than blocks"
        for b in self._free_ids:
            assert b < self._next_id and self._ref[b] == 0 and self._hash[b] is None, f"unused id {b} is in use"
        assert len(set(self._free_ids)) == len(self._free_ids), "an id is free twice"
        used = sum(1 for r in self._ref if r > 0)
        used += sum(r.num_private for r in requests)
        if requests:
            assert used == self.num_used, (used, self.num_used)
