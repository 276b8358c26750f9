"""The prompt blocks a router has in flight on every backend, as one radix tree.

``kv_cost`` prices a backend by the KV blocks its running prompts hold and by
the blocks a new prompt would add there (``routing.active``). The prompts in
flight are few (tens per backend) but long (512 blocks for 8k tokens), and they
share prefixes, so they form a small tree of long chain segments: a system
prompt, then a branch per conversation. Keeping them as that tree, rather than
as one dict entry per block, makes each dispatch and finish touch a few nodes
instead of 512 hashes, and a lookup compares a few list items instead of
probing a dict of a million blocks. In the steady state of
``benchmarks/decision_latency.py --suite cache`` this took ``kv_cost``'s commit
to 0.58x and its process's memory to 0.77x (docs/performance.md, "The work in
flight as a tree"); the decision itself took as long as before.

The block hashes of a prompt are chained (each covers the blocks before it), so
two chains that agree at position j agree at every position before it: one
comparison tells whether a whole segment matches, and a bisection finds where
two chains part.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from routing import decision_core
from routing.prefix_index import assign_depth


@dataclass(slots=True, eq=False)
class _Segment:
    """Blocks ``chain[start:end]`` of the prompts that pass through here, per backend.

    ``counts[b]``: prompts in flight on backend b that hold every block of the
    segment; ``mask``: the backends with a count (bit b). ``children`` are keyed
    by their first block's hash. Compared by identity (``eq=False``).
    """

    chain: Sequence[int]
    start: int
    end: int
    children: dict
    counts: dict[int, int]
    mask: int


def _parting(seg_chain: Sequence[int], chain: Sequence[int], pos: int, end: int) -> int:
    """The first position in ``[pos, end)`` where the chains differ (``end`` if none);
    they agree at ``pos``."""
    if seg_chain is chain or seg_chain[end - 1] == chain[end - 1]:
        return end
    lo, hi = pos + 1, end - 1  # they agree at lo - 1 and differ at hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if seg_chain[mid] == chain[mid]:
            lo = mid + 1
        else:
            hi = mid
    return lo


class InflightTree:
    """The leading blocks of every prompt in flight, shared by the backends of one router.

    ``add(b, chain, k)`` counts ``chain[:k]`` in flight on backend ``b``;
    ``remove`` undoes one ``add``; ``blocks[b]`` is the number of distinct blocks
    backend b's prompts hold; ``depths`` gives every backend's longest prefix of a
    chain in flight there, in one walk down the tree.

    With ``flat`` (the default where ``routing.decision_core`` is compiled and the
    fleet has at most 64 backends) the tree also keeps each block's segment mask
    in a flat ``OwnerTable``, written when a segment's mask changes, and
    ``depths`` bisects that table in compiled code instead of walking the
    segments: the same answer, because a chained hash names its whole prefix, so
    a block lies in one segment and the backends holding it can only shrink along
    a chain. In pure Python that table would be the dict per block this tree
    replaced, so it is not kept there.
    """

    __slots__ = ("_root", "_bits", "blocks", "_table")

    def __init__(self, size: int, flat: bool | None = None) -> None:
        self._root = _Segment((), 0, 0, {}, {}, 0)
        self._bits = [1 << b for b in range(size)]
        self.blocks = [0] * size
        if flat is None:
            flat = decision_core.FLAT
        table = decision_core.owner_map(self._bits) if flat else None
        if flat and not table.flat:
            raise ValueError("a flat in-flight table needs the compiled routing.decision_core "
                             f"and at most 64 backends (this tree has {size})")
        self._table = table

    def add(self, b: int, chain: Sequence[int], k: int) -> None:
        if k <= 0:
            return
        path = []
        children = self._root.children
        pos = 0
        while True:
            seg = children.get(chain[pos])
            if seg is None:
                seg = _Segment(chain, pos, k, {}, {}, 0)
                children[chain[pos]] = seg
                path.append(seg)
                break
            end = seg.end if seg.end < k else k
            at = _parting(seg.chain, chain, pos, end)
            if at < seg.end:
                _split(seg, at)
            path.append(seg)
            if at == k:
                break
            pos = at
            children = seg.children  # parted inside: chain[at] is not a child, so a new one
        bit, blocks, table = self._bits[b], self.blocks, self._table
        for seg in path:
            c = seg.counts.get(b, 0)
            seg.counts[b] = c + 1
            if not c:
                seg.mask |= bit
                blocks[b] += seg.end - seg.start
                if table is not None:
                    table.set_range(seg.chain, seg.start, seg.end, bit)

    def remove(self, b: int, chain: Sequence[int], k: int) -> None:
        """Undo ``add(b, chain, k)`` (which must have happened)."""
        if k <= 0:
            return
        path = []
        parent, pos = self._root, 0
        while pos < k:  # ``add`` split the tree at k, and merges never erase a prompt's end
            seg = parent.children[chain[pos]]
            path.append((parent, seg))
            parent, pos = seg, seg.end
        bit, blocks, table = self._bits[b], self.blocks, self._table
        for parent, seg in path:
            c = seg.counts[b] - 1
            if c:
                seg.counts[b] = c
                continue
            del seg.counts[b]
            seg.mask &= ~bit
            blocks[b] -= seg.end - seg.start
            if table is not None:
                table.clear_range(seg.chain, seg.start, seg.end, bit)
            if not seg.counts:  # nothing passes here, nor below
                parent.children.pop(seg.chain[seg.start], None)
        for parent, seg in path:
            _merge_down(seg)

    def depths(self, chain: Sequence[int], limit: int, out: list[int]) -> None:
        """Write into ``out[b]`` the leading blocks of ``chain[:limit]`` in flight on backend b.

        ``out`` must be zeros on entry.
        """
        if self._table is not None:
            self._table.depths(chain, limit, out)
            return
        children = self._root.children
        pos = 0
        while pos < limit:
            seg = children.get(chain[pos])
            if seg is None:
                return
            end = seg.end if seg.end < limit else limit
            at = _parting(seg.chain, chain, pos, end)
            # Deeper segments' backends are a subset of these: they overwrite below.
            assign_depth(seg.mask, at, out)
            if at < seg.end:
                return
            pos = at
            children = seg.children

    def depth(self, b: int, chain: Sequence[int], limit: int) -> int:
        """``depths`` for backend ``b`` alone (the router reads ``depths``; this is for
        ``ActiveWork.new_blocks``)."""
        out = [0] * len(self.blocks)
        self.depths(chain, limit, out)
        return out[b]

    def __len__(self) -> int:
        """Segments in the tree (its size: a few per distinct prompt in flight)."""
        todo, n = list(self._root.children.values()), 0
        while todo:
            seg = todo.pop()
            n += 1
            todo.extend(seg.children.values())
        return n


def _split(seg: _Segment, at: int) -> None:
    """Cut ``seg`` at ``at``: it keeps the head, a new child takes the rest and its children."""
    tail = _Segment(seg.chain, at, seg.end, seg.children, dict(seg.counts), seg.mask)
    seg.end = at
    seg.children = {seg.chain[at]: tail}


def _merge_down(seg: _Segment) -> None:
    """Join ``seg`` with its only child while the same prompts pass through both (no
    prompt ends between them), so finished prompts leave no extra segments behind."""
    while len(seg.children) == 1:
        (child,) = seg.children.values()
        if child.counts != seg.counts:
            return
        seg.chain = child.chain  # equal to seg.chain over seg's blocks, and it goes on
        seg.end = child.end
        seg.children = child.children
