"""Paged KV cache with prefix caching, after vLLM V1's ``BlockPool``/``KVCacheManager``.

Semantics (as vLLM):

- Blocks hold ``block_size`` tokens; a request owns a chain of blocks.
- Free blocks wait in one LRU queue. A request's blocks are freed tail first to
  the back of the queue; allocation takes from the front, evicting the prefix-cache
  entry of the block it takes.
- A full block is registered under its hash when it is scheduled; a later request
  whose prompt starts with the same hash chain reuses it ("touch": its reference
  count goes up and it leaves the free queue). At most ``num_tokens - 1`` tokens
  can hit: the last token is always recomputed.
- ``vllm:kv_cache_usage_perc`` is ``1 - free / total``, where cached blocks with
  no user count as free (they are evictable).

Representation (exact, and what makes the simulator fast): a hash chain has the
property that once one block's hash is unique to a request, every later block of
that request is unique too. So each request's chain splits into a *shareable*
head (blocks whose hash other requests also have; tracked one by one, with ids,
reference counts and the hash map) and a *private* tail (its unique prompt blocks
and all generated blocks; only the request itself can ever hit them again, after
a preemption). The private tail is held as a count and, once freed, sits in the
free queue as one *extent*; evicting from it removes blocks from its end, exactly
the order in which vLLM would evict the tail's blocks. The simulator tells each
request how long its shareable head is (computed over the whole trace); a caller
that cannot know treats every full prompt block as shareable, with identical
results at a higher cost.
"""
from __future__ import annotations

from collections import deque

from sim.request import EngineRequest


class Extent:
    """A run of free blocks in the queue: a freed private tail, or never-used blocks."""

    __slots__ = ("count", "owner", "full")

    def __init__(self, count: int, owner: EngineRequest | None = None, full: int = 0) -> None:
        self.count = count
        #: The preempted request whose private chain these blocks hold (None: anonymous).
        self.owner = owner
        #: How many of the owner's private blocks were full (hittable) when freed.
        self.full = full


class KVCache:
    __slots__ = (
        "num_blocks", "block_size", "enable_caching", "num_free", "_queue", "_stale",
        "_ref", "_hash", "_cached", "_dups", "_next_id",
    )

    def __init__(self, num_blocks: int, block_size: int = 16, enable_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.num_free = num_blocks
        #: The free queue: shareable block ids (ints) and extents (runs of blocks).
        self._queue: deque[int | Extent] = deque([Extent(num_blocks)])
        #: Queue entries of a block id that were touched while free (skipped on pop).
        self._stale: dict[int, int] = {}
        self._ref: dict[int, int] = {}
        self._hash: dict[int, int] = {}
        self._cached: dict[int, int] = {}
        self._dups: dict[int, list[int]] = {}
        self._next_id = 0

    # --- queries ------------------------------------------------------------------
    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_blocks

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def lookup(self, req: EngineRequest) -> tuple[list[int], int]:
        """Prefix-cache hit for ``req``: shareable block ids, and private blocks of its own."""
        if not self.enable_caching:
            return [], 0
        limit = (req.prompt_len + req.num_output - 1) // self.block_size
        hashes = req.prompt_hashes
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
        return hits, min(ext.count, ext.full, limit - k)

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
            freed += private_hits
        if ext is not None:
            ext.owner = None  # what is left of it is anonymous free space
            req.freed_extent = None
        self.num_free -= freed
        req.shared_blocks = hits
        req.num_private = private_hits
        req.num_registered = len(hits)

    def grow(self, req: EngineRequest, num_tokens: int) -> None:
        """Allocate blocks so ``req`` holds ``num_tokens`` tokens (caller checked room)."""
        have = len(req.shared_blocks) + req.num_private
        n = -(-num_tokens // self.block_size) - have
        if n <= 0:
            return
        self._take(n)
        if self.enable_caching:
            k = req.num_shareable
            if have < k:
                new_ids = min(n, k - have)
                ids = range(self._next_id, self._next_id + new_ids)
                self._next_id += new_ids
                ref = self._ref
                for b in ids:
                    ref[b] = 1
                req.shared_blocks.extend(ids)
                n -= new_ids
        req.num_private += n

    def register(self, req: EngineRequest, num_tokens: int) -> None:
        """Register the shareable blocks that ``num_tokens`` computed tokens fill."""
        full = min(num_tokens // self.block_size, len(req.shared_blocks))
        i = req.num_registered
        if i >= full or not self.enable_caching:
            return
        cached, bhash, blocks, hashes = self._cached, self._hash, req.shared_blocks, req.prompt_hashes
        while i < full:
            b = blocks[i]
            if b not in bhash:
                h = hashes[i]
                bhash[b] = h
                if h in cached:
                    self._dups.setdefault(h, []).append(b)
                else:
                    cached[h] = b
            i += 1
        req.num_registered = full

    def free(self, req: EngineRequest, *, keep_for_recompute: bool) -> None:
        """Release ``req``'s blocks, tail first, to the back of the free queue."""
        queue = self._queue
        n_private = req.num_private
        freed = 0
        if n_private:
            if keep_for_recompute:
                full_private = max(0, req.num_computed // self.block_size - len(req.shared_blocks))
                ext = Extent(n_private, req, min(full_private, n_private))
                req.freed_extent = ext
                queue.append(ext)
            else:
                last = queue[-1] if queue else None
                if type(last) is Extent and last.owner is None:
                    last.count += n_private
                else:
                    queue.append(Extent(n_private))
            freed += n_private
        ref = self._ref
        for b in reversed(req.shared_blocks):
            r = ref[b] - 1
            ref[b] = r
            if r == 0:
                queue.append(b)
                freed += 1
        self.num_free += freed
        req.shared_blocks = []
        req.num_private = 0
        req.num_registered = 0

    def take_blocks(self, n: int) -> None:
        """Allocate ``n`` private blocks held by the decode group (counted, not named)."""
        self._take(n)

    def _take(self, n: int) -> None:
        """Pop ``n`` free blocks from the front of the queue, evicting cache entries."""
        queue, stale, ref = self._queue, self._stale, self._ref
        self.num_free -= n
        while n > 0:
            item = queue[0]
            if type(item) is Extent:
                c = item.count
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
            # A free shareable block is reused: it stops existing as that block.
            del ref[item]
            h = self._hash.pop(item, None)
            if h is not None:
                self._evict_hash(h, item)
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
                assert self._ref.get(b) == 0, f"free block {b} has references"
                queued += 1
        assert queued == self.num_free, (queued, self.num_free)
        for h, b in self._cached.items():
            assert self._hash.get(b) == h
        used = sum(1 for r in self._ref.values() if r > 0)
        used += sum(r.num_private for r in requests)
        if requests:
            assert used == self.num_used, (used, self.num_used)
