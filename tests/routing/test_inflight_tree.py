"""The tree of prompts in flight (``routing.inflight_tree``) against a plain model of it:
per backend, the multiset of prompt heads in flight, read block by block."""
from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing import decision_core
from routing.inflight_tree import InflightTree
from routing_helpers import tree_chain


def held_depth(heads: list[list[int]], chain: list[int], limit: int) -> int:
    """Leading blocks of ``chain[:limit]`` that some head holds, walked block by block."""
    held = {h for head in heads for h in head}
    d = 0
    while d < limit and chain[d] in held:
        d += 1
    return d


def distinct_blocks(heads: list[list[int]]) -> int:
    return len({h for head in heads for h in head})


def test_hand_worked_shared_system_prompt():
    t = InflightTree(3)
    sys_prompt = [1, 2, 3, 4]
    a, b = sys_prompt + [10, 11], sys_prompt + [20, 21, 22]
    t.add(0, a, 6)
    t.add(1, b, 7)
    t.add(1, a, 5)  # a's head up to 10 also runs on backend 1
    assert t.blocks == [6, 8, 0]  # backend 1: 1-4, 20-22 and 10
    out = [0, 0, 0]
    t.depths(sys_prompt + [10, 99], 6, out)
    assert out == [5, 5, 0]
    out = [0, 0, 0]
    t.depths(b, 7, out)
    assert out == [4, 7, 0]
    assert t.depth(0, b, 7) == 4 and t.depth(2, b, 7) == 0 and t.depth(1, b, 3) == 3
    t.remove(1, a, 5)
    assert t.blocks == [6, 7, 0] and t.depth(1, a, 6) == 4
    t.remove(0, a, 6)
    t.remove(1, b, 7)
    assert t.blocks == [0, 0, 0] and len(t) == 0


def test_finished_prompts_leave_no_extra_segments():
    t = InflightTree(1)
    c = tree_chain([0] * 10)
    t.add(0, c, 4)  # cuts the chain at 4 ...
    t.add(0, c, 10)
    assert len(t) == 2
    t.remove(0, c, 4)  # ... and the cut goes with the prompt that made it
    assert len(t) == 1 and t.blocks == [10]


ops = st.lists(
    st.tuples(st.sampled_from(["add", "add", "remove"]), st.integers(0, 3),
              st.lists(st.integers(0, 2), min_size=1, max_size=10), st.integers(0, 12)),
    max_size=40)


@pytest.mark.parametrize("flat", [
    False,
    pytest.param(True, marks=pytest.mark.skipif(
        not decision_core.FLAT, reason="the compiled routing.decision_core is not loaded")),
], ids=["tree-walk", "flat-table"])
@settings(max_examples=300, deadline=None)
@given(ops, st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=10), min_size=1, max_size=4))
def test_tree_equals_the_heads_in_flight(flat, operations, queries):
    size = 4
    t = InflightTree(size, flat=flat)
    heads: list[Counter] = [Counter() for _ in range(size)]
    live: list[tuple[int, tuple[int, ...]]] = []
    for op, b, path, k in operations:
        if op == "add":
            chain = tree_chain(path)
            k = min(k, len(chain))
            t.add(b, chain, k)
            heads[b][tuple(chain[:k])] += 1
            live.append((b, tuple(path[:k])))
        elif live:
            b, path = live.pop(k % len(live))
            chain = tree_chain(list(path))
            t.remove(b, chain, len(chain))
            heads[b][tuple(chain)] -= 1
        in_flight = [[list(h) for h, n in hb.items() for _ in range(n)] for hb in heads]
        assert t.blocks == [distinct_blocks(h) for h in in_flight]
        for q in queries:
            chain = tree_chain(q)
            for limit in (len(chain), len(chain) // 2):
                out = [0] * size
                t.depths(chain, limit, out)
                expected = [held_depth(h, chain, limit) for h in in_flight]
                assert out == expected
                assert [t.depth(i, chain, limit) for i in range(size)] == expected
    for b, path in live:
        chain = tree_chain(list(path))
        t.remove(b, chain, len(chain))
    assert len(t) == 0 and t.blocks == [0] * size
