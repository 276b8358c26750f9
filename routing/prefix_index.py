"""What a router knows of each backend's prefix cache: approximate and exact indexes.

Both answer one question fast: how many leading blocks of a prompt's hash chain
would hit in a backend's cache. Block hashes are chained (each covers its
parent's hash), so both indexes keep their contents *prefix-closed*: a block is
counted only if every block before it in its chain is too. The hit is then the
length of the longest prefix of the chain inside the set, and a binary search
finds it in O(log n) lookups instead of walking up to 512 blocks of an 8k-token
prompt (the linear walk is what a real engine does; on a prefix-closed set the
two agree, and the tests check it).

``ApproxPrefixIndex`` is the router's own guess, built from where it sent
prompts (the approximate producers of llm-d, SGLang and vLLM's router).
``ExactPrefixIndex`` mirrors a backend's cache from its KV-cache events (see
``routing.kv_events``).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


def as_list(hashes: np.ndarray | list[int]) -> list[int]:
    """Python ints: they hash and compare much faster than numpy scalars."""
    return hashes.tolist() if isinstance(hashes, np.ndarray) else hashes


def longest_prefix_in(members, chain: list[int], limit: int) -> int:
    """Largest k <= limit with ``chain[:k]`` all in ``members``, for a prefix-closed set.

    Prefix-closed means: if a block is in the set, its parent is too, so
    "``chain[i]`` is in the set" is true for i < k and false after.
    """
    if limit <= 0 or chain[0] not in members:  # (callers may have checked chain[0] already)
        return 0
    if chain[limit - 1] in members:
        return limit
    lo, hi = 1, limit - 1  # chain[lo-1] is in, chain[hi] is out
    while lo < hi:
        mid = (lo + hi) >> 1
        if chain[mid] in members:
            lo = mid + 1
        else:
            hi = mid
    return lo


class BlockOwners:
    """Which backends hold each block, as a bitmask per hash (bit i: backend i).

    Kept beside per-backend prefix-closed sets, it answers "how deep does the
    chain go at every backend" in one pass: along a chain, the set of backends
    holding block i can only shrink as i grows, so the depths are the points
    where the mask changes, found by bisection with O(log n) lookups per
    distinct depth instead of one search per backend.
    """

    __slots__ = ("masks", "_hints", "_bits")

    #: Not a flat table (``routing.decision_core.OwnerTable`` is one).
    flat = False

    def __init__(self, bits: Sequence[int] = ()) -> None:
        self.masks: dict[int, int] = {}
        #: The change points the previous ``depths`` found, tried first by the next one.
        self._hints: list[int] = []
        #: The backends' own bit objects (``1 << i`` at position i), which a block with one
        #: owner stores instead of a copy of its own (see ``set``).
        self._bits = list(bits)

    def set(self, h: int, bit: int) -> None:
        masks = self.masks
        m = masks.get(h)
        # A block one backend holds (most blocks) keeps that backend's own bit object
        # rather than a fresh int: with hundreds of backends a bit is a big int, and a
        # million copies of it were most of a fleet's owner-map memory.
        masks[h] = bit if m is None else m | bit

    def clear(self, h: int, bit: int) -> None:
        masks = self.masks
        m = masks.get(h)
        if m is None:
            return
        m &= ~bit
        if not m:
            del masks[h]
            return
        if not m & (m - 1):  # one owner left: store its own bit object, as ``set`` does
            k = m.bit_length() - 1
            if k < len(self._bits):
                m = self._bits[k]
        masks[h] = m

    def mask(self, h: int) -> int:
        """The mask of the backends holding ``h`` (0: none)."""
        return self.masks.get(h, 0)

    def __len__(self) -> int:
        """Blocks some backend holds."""
        return len(self.masks)

    def depths(self, chain: list[int], n: int, out: list[int]) -> None:
        """Write into ``out[i]`` the leading blocks of ``chain[:n]`` backend i holds.

        ``out`` must be zeros on entry (backends holding nothing stay 0).
        """
        if n <= 0:
            return
        get = self.masks.get
        m_lo = get(chain[0], 0)
        if not m_lo:
            return
        last = n - 1
        m_last = get(chain[last], 0) if last else m_lo
        assign_depth(m_last, n, out)
        lo = 0
        # Walk the change points left to right, each found by bisection between the
        # last one and the chain's end (plain locals, no stack of intervals: a decision
        # usually meets one or two changes, and this loop is its hottest Python). The
        # previous call's change points are probed first: prompts that share a system
        # prompt change depth at its end, so a hint that holds saves most of the probes
        # (each a likely cache miss in a map of a million blocks), and one that does not
        # still narrows the interval like any bisection step.
        hints, found = self._hints, []
        while m_lo != m_last:
            hi, m_hi = last, m_last  # mask at lo is m_lo, at hi it differs
            for h in hints:
                for at in (h, h - 1):
                    if lo < at < hi:
                        m = get(chain[at], 0)
                        if m == m_lo:
                            lo = at
                        else:
                            hi, m_hi = at, m
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                m = get(chain[mid], 0)
                if m == m_lo:
                    lo = mid
                else:
                    hi, m_hi = mid, m
            assign_depth(m_lo & ~m_hi, hi, out)  # held through lo = hi - 1, not at hi
            found.append(hi)
            lo, m_lo = hi, m_hi
        if found:
            self._hints = found[:4]


def assign_depth(mask: int, depth: int, out: list[int]) -> None:
    """``out[i] = depth`` for every bit i set in ``mask``."""
    while mask:
        low = mask & -mask
        out[low.bit_length() - 1] = depth
        mask ^= low


class ApproxPrefixIndex:
    """An LRU set of block hashes the router has sent to one backend.

    It guesses the backend's prefix cache from the router's side (the real cache
    also evicts under memory pressure, which the router cannot see), bounded to
    ``capacity`` blocks like llm-d's approximate prefix-cache producer (one LRU
    per endpoint, sized from the endpoint's KV-cache capacity when known,
    31,250 blocks otherwise:
    ``pkg/epp/framework/plugins/requestcontrol/dataproducer/approximateprefix``).

    A prompt's blocks are touched last-to-first, so its first block is the most
    recently used and its tail is evicted first, as vLLM's free queue does. That
    keeps the set prefix-closed (a block is always at least as recent as its
    children), so ``hit_blocks`` can binary-search. Blocks beyond ``shareable``
    (hashes no other request has, see ``RequestInfo.num_shareable_blocks``) can
    never match anyone, so they are kept as one counted entry: same evictions,
    less work.
    """

    __slots__ = ("capacity", "_blocks", "_size", "_next_extent", "_owners", "_bit")

    def __init__(self, capacity: int, owners: BlockOwners | None = None, bit: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"prefix index capacity must be >= 1 block, got {capacity}")
        self.capacity = capacity
        #: Shared by the indexes of one router: this backend's ``bit`` in each block's mask.
        self._owners = owners
        self._bit = bit
        #: hash -> 1, or a negative extent key -> its block count; oldest first.
        self._blocks: OrderedDict[int, int] = OrderedDict()
        self._size = 0
        self._next_extent = -1

    def hit_blocks(self, hashes: np.ndarray | list[int], limit: int = -1) -> int:
        """Leading blocks of the chain in the index (at most ``limit`` if >= 0)."""
        chain = as_list(hashes)
        n = len(chain) if limit < 0 else min(limit, len(chain))
        return longest_prefix_in(self._blocks, chain, n)

    def add(self, hashes: np.ndarray | list[int], shareable: int = -1) -> None:
        hashes = as_list(hashes)
        n = len(hashes)
        k = n if shareable < 0 else min(shareable, n)
        blocks = self._blocks
        rest = n - k
        if rest:
            # The private tail is older than the shared head: it goes first.
            blocks[self._next_extent] = rest
            self._next_extent -= 1
            self._size += rest
        move = blocks.move_to_end
        owners, bit = self._owners, self._bit
        added = 0
        for i in range(k - 1, -1, -1):
            h = hashes[i]
            if h in blocks:
                move(h)
            else:
                blocks[h] = 1
                added += 1
                if owners is not None:
                    owners.set(h, bit)
        self._size += added
        while self._size > self.capacity:
            key, count = blocks.popitem(last=False)
            over = self._size - self.capacity
            if count > over:
                blocks[key] = count - over
                blocks.move_to_end(key, last=False)
                self._size -= over
            else:
                self._size -= count
                if owners is not None and key >= 0:
                    owners.clear(key, bit)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._blocks

    def __len__(self) -> int:
        """Blocks held (the index's "tree size")."""
        return self._size


#: Kept for code that imported the old name from ``routing.router``.
PrefixIndex = ApproxPrefixIndex


#: ``dict.get`` default meaning "no child": a hash may be any value, None included.
_NO_CHILD = object()


class ExactPrefixIndex:
    """A backend's cached blocks as its KV-cache events describe them.

    ``stored`` counts, per hash, the cached blocks the backend reported stored
    and not yet removed (vLLM can cache the same hash twice, and reports each
    copy's store and eviction); ``rooted`` is the set of hashes whose whole chain
    back to the prompt start is stored too: exactly the blocks a prefix lookup
    can reach, since the engine walks the chain from its first block and stops
    at the first miss. Removing a hash's last copy unroots its stored
    descendants; storing it again re-roots them. Children are tracked per parent
    for that, so each event costs time proportional to the blocks it names (plus
    the rare cascade).

    Every container holds only ints (a "set" is a dict of hash -> None): CPython's
    collector does not track such dicts, whereas a set per parent meant a million
    tracked objects in a 16-backend mirror and full collections of 0.2-0.4 s in the
    middle of routing decisions (``benchmarks/decision_latency.py --suite cache``).
    A parent with one child (most blocks of a chain) maps straight to that child's
    hash; only a parent with several (the end of a shared system prompt) gets a
    dict of them. A dict per parent was about a third of a 16-backend mirror's
    memory (``children`` reads either form).
    """

    __slots__ = ("stored", "rooted", "_parent", "_children", "_owners", "_bit")

    def __init__(self, owners: BlockOwners | None = None, bit: int = 0) -> None:
        self._owners = owners
        self._bit = bit
        self.stored: dict[int, int] = {}
        #: Hashes reachable from a chain start (dict used as a set: see above).
        self.rooted: dict[int, None] = {}
        self._parent: dict[int, int | None] = {}
        #: parent -> its one stored child's hash, or a dict of several (see above).
        self._children: dict[int | None, int | dict[int, None]] = {}

    def store(self, block_hashes, parent: int | None) -> int:
        """Record stored blocks (a chain starting after ``parent``); returns orphans.

        An orphan is a block stored under a parent the index does not hold: the
        store that named the parent was missed (or is still in flight).
        """
        orphans = 0
        stored, rooted, parents, children = self.stored, self.rooted, self._parent, self._children
        owners, bit = self._owners, self._bit
        p = parent
        for h in block_hashes:
            copies = stored.get(h, 0)
            stored[h] = copies + 1
            if copies:  # another copy of a known block: its place in the chain is known
                p = h
                continue
            parents[h] = p
            kids = children.get(p, _NO_CHILD)
            if kids is _NO_CHILD:
                children[p] = h
            elif type(kids) is dict:
                kids[h] = None
            else:  # a second child (h is new, so not the first)
                children[p] = {kids: None, h: None}
            if p is None or p in rooted:
                if h in children:  # stored children that waited for it: root them too
                    self._root(h)
                else:  # the usual case: ``_root`` without its loop (a block per event)
                    rooted[h] = None
                    if owners is not None:
                        owners.set(h, bit)
            elif p not in stored:
                orphans += 1
            p = h
        return orphans

    def remove(self, block_hashes) -> int:
        """Forget evicted blocks; returns how many were not stored (missed stores)."""
        unknown = 0
        stored, rooted, parents, children = self.stored, self.rooted, self._parent, self._children
        owners, bit = self._owners, self._bit
        for h in block_hashes:
            copies = stored.get(h, 0)
            if copies == 0:
                unknown += 1
                continue
            if copies > 1:
                stored[h] = copies - 1
                continue
            del stored[h]
            if h in rooted:
                if h in children:
                    self._unroot(h)
                else:  # a leaf, the usual case (vLLM evicts a chain's tail first)
                    del rooted[h]
                    if owners is not None:
                        owners.clear(h, bit)
            p = parents.pop(h)
            kids = children.get(p, _NO_CHILD)
            if type(kids) is dict:
                kids.pop(h, None)
                if len(kids) == 1:
                    children[p] = next(iter(kids))
                elif not kids:
                    del children[p]
            elif kids is not _NO_CHILD:  # h was p's only child
                del children[p]
        return unknown

    def children(self, h) -> tuple:
        """The stored blocks whose parent is ``h``."""
        kids = self._children.get(h, _NO_CHILD)
        if kids is _NO_CHILD:
            return ()
        return tuple(kids) if type(kids) is dict else (kids,)

    def clear(self) -> None:
        if self._owners is not None:
            for h in self.rooted:
                self._owners.clear(h, self._bit)
        self.stored.clear()
        self.rooted.clear()
        self._parent.clear()
        self._children.clear()

    def hit_blocks(self, hashes: np.ndarray | list[int], limit: int = -1) -> int:
        chain = as_list(hashes)
        n = len(chain) if limit < 0 else min(limit, len(chain))
        return longest_prefix_in(self.rooted, chain, n)

    def _root(self, h: int) -> None:
        rooted, stored = self.rooted, self.stored
        owners, bit = self._owners, self._bit
        todo = [h]
        while todo:
            b = todo.pop()
            rooted[b] = None
            if owners is not None:
                owners.set(b, bit)
            for c in self.children(b):
                if c in stored and c not in rooted:
                    todo.append(c)

    def _unroot(self, h: int) -> None:
        rooted = self.rooted
        owners, bit = self._owners, self._bit
        todo = [h]
        while todo:
            b = todo.pop()
            rooted.pop(b, None)
            if owners is not None:
                owners.clear(b, bit)
            for c in self.children(b):
                if c in rooted:
                    todo.append(c)

    def __len__(self) -> int:
        return len(self.stored)


