"""``routing.decision_core``: the pure-Python reference, and its compiled twin held to it.

The twin (``decision_core.pyx``, built by a plain install) must answer exactly as the
reference (``decision_core.py``) does: owner masks, depths along a chain, and
``kv_cost``'s costs to the last bit. The reference is loaded from its file here, so
both run in one process; where the twin is not built the comparisons skip and say
why, and ``test_a_plain_install_builds_the_twin`` fails instead wherever it could
have been built.
"""
from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import labcore
from build_helpers import why_cannot_build
from routing import decision_core
from routing.inflight_tree import InflightTree
from routing.prefix_index import BlockOwners
from routing_helpers import tree_chain

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "routing" / "decision_core.py"

_spec = importlib.util.spec_from_file_location("decision_core_reference", SOURCE)
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)

TWIN = decision_core.FLAT
needs_twin = pytest.mark.skipif(
    not TWIN, reason="the compiled routing.decision_core is not loaded here "
                     f"(build state: {labcore.module_state(SOURCE)}; pip install -e . builds it)")


def test_the_reference_costs_by_hand():
    # backend 0: (0 + 100) / 16 - 2 = 4.25, plus 5 + 4 blocks; backend 1: 132 / 16 - 10 < 0 -> 0, plus 1
    assert reference.default_kv_costs(100, 16, [0, 32], [2, 10], [5, 0], [4, 1]) == [13.25, 1.0]
    assert reference.owner_map([1, 2]).flat is False
    assert reference.FLAT is False


def test_a_plain_install_builds_the_twin():
    """Where Cython, a C compiler and Python's headers exist, the default build list compiles
    the twin, so a checkout installed as the README says runs it (here: the test venv)."""
    why_not = why_cannot_build()
    if why_not:
        pytest.skip(why_not)
    if os.environ.get(labcore.PURE_ENV, "").strip() not in ("", "0"):
        pytest.skip(f"{labcore.PURE_ENV} forces pure Python")
    assert "routing.decision_core" in labcore.COMPILED
    assert labcore.module_state(SOURCE) == "compiled", (
        "routing/decision_core is not built from its current source: rebuild with "
        "pip install -e . (or python setup.py build_ext --inplace)")
    assert TWIN


def assert_same_depths(got_from, want_from, queries: list[list[int]], size: int) -> None:
    """Both give the same depths for each query path's chain, whole and half of it."""
    for q in queries:
        chain = tree_chain(q)
        for n in (len(chain), len(chain) // 2):
            got, want = [0] * size, [0] * size
            got_from.depths(chain, n, got)
            want_from.depths(chain, n, want)
            assert got == want, (q, n)


# --- the owner table --------------------------------------------------------

KEYS = st.one_of(
    st.integers(0, 2**64 - 1),  # the table's own keys
    st.integers(0, 40),  # small ints: many share a home slot after mixing, long probe runs
    st.integers(-(2**70), -1) | st.integers(2**64, 2**70),  # outside the table: the side dict
    st.text(max_size=3),  # not ints at all (a live engine may send bytes or strings)
)


@needs_twin
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), KEYS, st.integers(0, 7)), max_size=200))
def test_the_table_holds_the_same_masks_as_the_dict(ops):
    bits = [1 << i for i in range(8)]
    table, model = decision_core.owner_map(bits), BlockOwners(bits)
    assert table.flat
    seen = set()
    for is_set, key, b in ops:
        seen.add(key)
        if is_set:
            table.set(key, bits[b])
            model.set(key, bits[b])
        else:
            table.clear(key, bits[b])
            model.clear(key, bits[b])
    assert len(table) == len(model)
    for key in seen:
        assert table.mask(key) == model.mask(key), key


@needs_twin
def test_growth_and_deletions_keep_every_key_reachable():
    """Thousands of keys (the table doubles several times), then half removed in random
    order: backward-shift deletion must leave no remaining key behind a false gap."""
    rng = random.Random(3)
    bits = [1 << i for i in range(64)]
    table, model = decision_core.owner_map(bits), BlockOwners(bits)
    keys = [rng.getrandbits(64) for _ in range(20_000)] + list(range(3000))  # and a dense run
    for k in keys:
        b = bits[rng.randrange(64)]
        table.set(k, b)
        model.set(k, b)
    rng.shuffle(keys)
    for k in keys[: len(keys) // 2]:
        for b in bits:
            if model.mask(k) & b:
                table.clear(k, b)
                model.clear(k, b)
    assert len(table) == len(model) == len(set(keys[len(keys) // 2:]))
    assert all(table.mask(k) == model.mask(k) for k in keys)


def test_a_table_refuses_more_than_64_backends():
    bits = [1 << i for i in range(65)]
    assert decision_core.owner_map(bits).flat is False  # the dict serves wide fleets
    if TWIN:
        with pytest.raises(ValueError, match="at most 64 backends; got 65"):
            decision_core.OwnerTable(bits)
    with pytest.raises(ValueError, match="at most 64 backends"):
        InflightTree(65, flat=True)


def prefix_closed_ops():
    """Backends taking and dropping heads of chains in a small prompt tree, as a router's
    indexes do: every backend's set stays prefix-closed."""
    return st.lists(st.tuples(st.sampled_from(["take", "take", "drop"]), st.integers(0, 5),
                              st.lists(st.integers(0, 2), min_size=1, max_size=12)),
                    max_size=40)


@needs_twin
@settings(max_examples=300, deadline=None)
@given(prefix_closed_ops(), st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=12),
                                     min_size=1, max_size=4))
def test_depths_match_the_dict_with_the_same_hints(operations, queries):
    bits = [1 << i for i in range(6)]
    table, model = decision_core.owner_map(bits), BlockOwners(bits)
    held: list[dict[tuple, int]] = [{} for _ in bits]  # per backend: path -> its block's hash
    for op, b, path in operations:
        chain = tree_chain(path)
        if op == "take":
            for i, h in enumerate(chain):
                if tuple(path[: i + 1]) not in held[b]:
                    held[b][tuple(path[: i + 1])] = h
                    table.set(h, bits[b])
                    model.set(h, bits[b])
        else:  # drop the path's last block and every block under it that b holds
            under = [p for p in held[b] if p[: len(path)] == tuple(path)]
            for p in under:
                h = held[b].pop(p)
                table.clear(h, bits[b])
                model.clear(h, bits[b])
        assert_same_depths(table, model, queries, 6)  # the hints carry over between queries


# --- kv_cost's costs ------------------------------------------------------------

ints = st.integers(0, 2**20)


@needs_twin
@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**20), st.integers(1, 64),
       st.lists(st.tuples(ints, ints, ints, ints), min_size=1, max_size=20))
def test_the_twin_computes_the_same_floats(n, bs, rows):
    cols = [list(c) for c in zip(*rows)]
    got = decision_core.default_kv_costs(n, bs, *cols)
    want = reference.default_kv_costs(n, bs, *cols)
    assert got == want
    assert [x.hex() for x in got] == [x.hex() for x in want]  # to the last bit


# --- the in-flight tree's flat table ----------------------------------------------

@needs_twin
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "add", "remove"]), st.integers(0, 3),
                          st.lists(st.integers(0, 2), min_size=1, max_size=10), st.integers(0, 12)),
                max_size=40),
       st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=10), min_size=1, max_size=4))
def test_the_flat_tree_answers_as_the_walk(operations, queries):
    flat, walk = InflightTree(4, flat=True), InflightTree(4, flat=False)
    live = []
    for op, b, path, k in operations:
        if op == "add":
            chain = tree_chain(path)
            k = min(k, len(chain))
            flat.add(b, chain, k)
            walk.add(b, chain, k)
            live.append((b, chain, k))
        elif live:
            b, chain, k = live.pop(k % len(live))
            flat.remove(b, chain, k)
            walk.remove(b, chain, k)
        assert_same_depths(flat, walk, queries, 4)
    for b, chain, k in live:
        flat.remove(b, chain, k)
    assert len(flat._table) == 0  # every block's mask cleared with the last prompt


# --- whole routers, compiled and pure ---------------------------------------------------

ROUTING = """
    import sys, labcore, routing
    from sim.cluster import simulate
    from sim_helpers import chat_trace, fleet
    out = []
    for strategy in ("kv_cost", "precise_prefix", "prefix_affinity", "cache_aware", "lmetric"):
        trace = chat_trace(60, seed=2, rate=14.0)
        res = simulate(trace, routing.build(strategy, seed=2), fleet(mode="fast", blocks=300), seed=2)
        out.append(repr(res.records))
    print(labcore.status()["routing.decision_core"]["running"], file=sys.stderr)
    print("\\n".join(out))
"""


@needs_twin
@pytest.mark.slow
def test_compiled_and_pure_routers_route_alike():
    env = {k: v for k, v in os.environ.items()
           if k not in (labcore.PURE_ENV, labcore.NOTICE_ENV, "PYTHONPATH")}
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{REPO / 'tests' / 'sim'}"
    runs = {}
    for pure in ("0", "1"):
        res = subprocess.run([sys.executable, "-c", textwrap.dedent(ROUTING)], cwd=REPO, text=True,
                             capture_output=True, timeout=600, env={**env, labcore.PURE_ENV: pure})
        assert res.returncode == 0, res.stderr[-3000:]
        runs[pure] = res
    assert runs["0"].stderr.strip().endswith("compiled")
    assert runs["1"].stderr.strip().endswith("pure Python")
    assert runs["0"].stdout.count("\n") >= 4 and len(runs["0"].stdout) > 2000
    assert runs["0"].stdout == runs["1"].stdout
