"""The router's prefix indexes: what an engine would hit, found by bisection.

Every expected hit here is the engine's rule computed independently: walk the
chain from its first block and count until the first block the cache lacks.
"""
from __future__ import annotations

import gc
import random
from collections import Counter

from hypothesis import example, given, settings
from hypothesis import strategies as st

from routing.prefix_index import ApproxPrefixIndex, BlockOwners, ExactPrefixIndex, longest_prefix_in
from routing_helpers import tree_chain


def linear_hit(members, chain, limit=None) -> int:
    """The engine's walk: leading blocks present, stopping at the first miss."""
    n = 0
    for h in chain[: len(chain) if limit is None else limit]:
        if h not in members:
            break
        n += 1
    return n


paths = st.lists(st.integers(0, 2), min_size=1, max_size=12)


def test_longest_prefix_hand_worked():
    members = {10, 11, 12}
    assert longest_prefix_in(members, [10, 11, 12, 13], 4) == 3
    assert longest_prefix_in(members, [10, 11, 12, 13], 2) == 2  # capped
    assert longest_prefix_in(members, [9, 10], 2) == 0
    assert longest_prefix_in(members, [10, 11, 12], 3) == 3
    assert longest_prefix_in(members, [], 0) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(paths, min_size=1, max_size=30), st.integers(1, 40), paths)
def test_approximate_index_stays_prefix_closed_so_bisection_equals_the_walk(sent, capacity, query):
    idx = ApproxPrefixIndex(capacity)
    for p in sent:
        idx.add(tree_chain(p))
        assert len(idx) <= capacity
    members = {h for h in idx._blocks if h >= 0}
    for p in sent + [query]:
        chain = tree_chain(p)
        # prefix-closed: a held block's parent is held
        for i in range(1, len(chain)):
            if chain[i] in members:
                assert chain[i - 1] in members
        assert idx.hit_blocks(chain) == linear_hit(members, chain)


def test_approximate_index_evicts_a_prompts_tail_before_its_head():
    idx = ApproxPrefixIndex(4)
    a = tree_chain([0, 0, 0])
    b = tree_chain([1, 1])
    idx.add(a)
    idx.add(b)  # 5 blocks into 4: a's last block goes, its first two stay
    assert idx.hit_blocks(a) == 2 and idx.hit_blocks(b) == 2
    # LRU order now (oldest first): a1, a0, b1, b0. Touching a's head leaves a1 the oldest.
    idx.add(a[:1])
    idx.add(tree_chain([2]))
    assert idx.hit_blocks(a) == 1 and idx.hit_blocks(b) == 2


def test_private_tails_count_against_capacity_but_never_match():
    idx = ApproxPrefixIndex(10)
    chain = tree_chain([0, 1, 2, 0, 1])
    idx.add(chain, shareable=2)
    assert len(idx) == 5
    assert idx.hit_blocks(chain) == 2


class Engine:
    """A hand-made cache with vLLM's event discipline (for the exact mirror's tests).

    A prompt's blocks from its first miss on are computed into new blocks and cached,
    those whose hash is still cached further along included (the tail left behind when
    an earlier block was evicted): the cache then holds two copies of that hash, and
    reports each copy's store and, one at a time, each copy's eviction.
    """

    def __init__(self):
        self.copies: Counter[int] = Counter()
        self.events: list[tuple[str, tuple, int | None]] = []

    @property
    def cached(self) -> set[int]:
        return set(self.copies)

    def store(self, chain: list[int]) -> None:
        start = linear_hit(self.copies, chain)
        if start < len(chain):
            parent = chain[start - 1] if start else None
            self.copies.update(chain[start:])
            self.events.append(("store", tuple(chain[start:]), parent))

    def evict(self, h: int) -> None:
        """One copy of ``h`` goes (if there is one)."""
        if h in self.copies:
            self.copies[h] -= 1
            if not self.copies[h]:
                del self.copies[h]
            self.events.append(("remove", (h,), None))

    def clear(self) -> None:
        self.copies.clear()
        self.events.append(("clear", (), None))


def replay(events, idx: ExactPrefixIndex) -> None:
    for kind, hashes, parent in events:
        if kind == "store":
            idx.store(hashes, parent)
        elif kind == "remove":
            idx.remove(hashes)
        else:
            idx.clear()


ops = st.lists(
    st.one_of(
        st.tuples(st.just("store"), paths),
        st.tuples(st.just("evict"), paths, st.integers(0, 11)),
        st.tuples(st.just("clear")),
    ),
    max_size=40,
)


@settings(max_examples=250, deadline=None)
@given(ops, st.lists(paths, min_size=1, max_size=6))
# Found by this test: a prompt stored again after its head was evicted makes a second
# copy of its still-cached tail, and evicting one copy must leave the other.
@example([("store", [1, 0]), ("evict", [1], 0), ("store", [1, 0]), ("evict", [1, 0], 1)], [[0]])
def test_exact_mirror_gives_the_engines_hit_for_any_event_stream(operations, queries):
    engine = Engine()
    touched = []
    for op in operations:
        if op[0] == "store":
            engine.store(tree_chain(op[1]))
            touched.append(op[1])
        elif op[0] == "evict":  # any block, mid-chain included: its children stay cached
            chain = tree_chain(op[1])
            engine.evict(chain[op[2] % len(chain)])
        else:
            engine.clear()
    idx = ExactPrefixIndex()
    replay(engine.events, idx)
    assert set(idx.stored) == engine.cached
    for p in touched + queries:
        chain = tree_chain(p)
        assert idx.hit_blocks(chain) == linear_hit(engine.cached, chain)


def test_exact_mirror_holds_no_container_the_garbage_collector_tracks():
    # A tracked container per block (a set of children per parent) made full
    # collections of a 16-backend mirror take 0.2-0.4 s mid-decision.
    idx = ExactPrefixIndex()
    gc.collect()
    before = len(gc.get_objects())
    for conv in range(2000):
        idx.store([1, 2, 3], None)  # a shared system prompt: one parent, many children
        idx.store([10_000 + 10 * conv + k for k in range(5)], 3)
    idx.remove([10_001, 10_002])
    assert len(idx._children[3]) == 2000 and len(idx.stored) == 3 + 5 * 2000 - 2
    assert not any(gc.is_tracked(kids) for kids in idx._children.values())
    assert not gc.is_tracked(idx.rooted) and not gc.is_tracked(idx.stored)
    # What the collector tracks does not grow with the blocks held (10,000 here).
    assert len(gc.get_objects()) - before < 50


def test_exact_mirror_keeps_a_single_child_as_a_bare_hash():
    # A dict per parent was a third of a 16-backend mirror's memory; a chain's blocks
    # each have one child, so only a shared prefix's last block needs a dict.
    idx = ExactPrefixIndex()
    idx.store([1, 2, 3], None)
    idx.store([4, 5], 3)
    idx.store([6], 3)
    assert idx._children[1] == 2 and type(idx._children[3]) is dict
    assert set(idx.children(3)) == {4, 6} and idx.children(5) == () and idx.children(4) == (5,)
    idx.remove([6])  # back to one child: a bare hash again
    assert idx._children[3] == 4 and idx.children(3) == (4,)
    idx.remove([5, 4])
    assert 3 not in idx._children and 4 not in idx._children
    idx.remove([2])  # 3 stays stored but unreachable; storing 2 again re-roots it
    assert idx.hit_blocks([1, 2, 3]) == 1
    idx.store([2], 1)
    assert idx.hit_blocks([1, 2, 3]) == 3


def test_exact_mirror_hand_worked_unroot_and_reroot():
    a, b, c = 1, 2, 3
    idx = ExactPrefixIndex()
    assert idx.store([a, b, c], None) == 0
    assert idx.hit_blocks([a, b, c]) == 3
    assert idx.remove([b]) == 0  # the middle block goes: c is stored but unreachable
    assert idx.hit_blocks([a, b, c]) == 1 and c in idx.stored and c not in idx.rooted
    assert idx.store([b], a) == 0  # stored again: c is reachable again
    assert idx.hit_blocks([a, b, c]) == 3
    assert idx.remove([99]) == 1  # a removal of an unknown block is counted
    assert idx.store([7], 42) == 1  # an orphan: its parent was never stored


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(paths, max_size=8), min_size=1, max_size=5), st.integers(1, 30), paths)
def test_owner_masks_give_every_backends_hit_in_one_pass(per_backend, capacity, query):
    owners = BlockOwners()
    indexes = [ApproxPrefixIndex(capacity, owners, 1 << i) for i in range(len(per_backend))]
    for idx, sent in zip(indexes, per_backend):
        for p in sent:
            idx.add(tree_chain(p))
    for p in [query] + [p for sent in per_backend for p in sent]:
        chain = tree_chain(p)
        for limit in (len(chain), max(len(chain) - 1, 0)):
            out = [0] * len(indexes)
            owners.depths(chain, limit, out)
            assert out == [idx.hit_blocks(chain, limit) for idx in indexes]


def test_owner_masks_follow_evictions():
    owners = BlockOwners()
    idx = ApproxPrefixIndex(2, owners, 1)
    chain = tree_chain([0, 0, 0])
    idx.add(chain)  # 3 blocks into 2: the last is evicted
    assert set(owners.masks) == set(chain[:2])
    rng = random.Random(0)
    for _ in range(50):
        idx.add(tree_chain([rng.randrange(3) for _ in range(rng.randrange(1, 5))]))
    assert set(owners.masks) == {h for h in idx._blocks if h >= 0}


def test_exact_mirror_counts_copies_of_a_block():
    """vLLM may cache one hash in two blocks and reports each copy's store and eviction."""
    idx = ExactPrefixIndex()
    idx.store([1, 2], None)
    idx.store([1, 2], None)  # a second copy of both
    assert idx.stored == {1: 2, 2: 2}
    assert idx.remove([2]) == 0 and idx.hit_blocks([1, 2]) == 2  # one copy of 2 is left
    assert idx.remove([2]) == 0 and idx.hit_blocks([1, 2]) == 1
    assert idx.remove([2]) == 1  # no copy left: an unknown removal


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.integers(0, 70), min_size=1, max_size=16), min_size=1, max_size=4),
       st.lists(st.integers(0, 64), min_size=1, max_size=4))
def test_owner_masks_find_every_distinct_depth(rounds, limits):
    """Up to 16 backends each holding its own prefix of one 64-block chain (many distinct
    depths, adjacent ones included): each depth is that prefix's length, capped at the limit.
    One owner map answers several rounds in turn, so the change points a call leaves as
    hints for the next are right, wrong or out of range."""
    chain = list(range(1000, 1064))
    owners = BlockOwners()
    for r, held in enumerate(rounds):
        for i in range(16):  # this round's holdings replace the last round's
            for h in chain:
                owners.clear(h, 1 << i)
        for i, k in enumerate(held):
            for h in chain[:k]:
                owners.set(h, 1 << i)
        for limit in limits:
            out = [0] * len(held)
            owners.depths(chain, limit, out)
            assert out == [min(k, limit, len(chain)) for k in held]


def test_owner_masks_of_single_owner_blocks_are_the_backends_own_bit():
    """A block one backend holds shares that backend's bit object (no per-block big int);
    a second owner makes a new mask, and clearing back to one owner stores that owner's
    own bit object again."""
    bits = [1 << i for i in range(202)]  # big ints, as on a 256-backend fleet
    owners = BlockOwners(bits)
    bit_a, bit_b = bits[200], bits[201]
    for h in range(100):
        owners.set(h, bit_a)
    assert all(m is bit_a for m in owners.masks.values())
    owners.set(7, bit_b)
    assert owners.masks[7] == bit_a | bit_b
    owners.clear(7, bit_a)
    assert owners.masks[7] == bit_b and owners.masks[7] is bit_b
    owners.clear(7, bit_b)
    owners.clear(7, bit_b)  # clearing an absent block is a no-op
    assert 7 not in owners.masks and len(owners.masks) == 99
