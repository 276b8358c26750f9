"""Invariants of every cache- and session-aware strategy, driven through the Router."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import routing
from routing import BackendSpec, NoHealthyBackend, Outcome, RequestInfo, Router
from routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
from test_prefix_indexes import Engine, linear_hit, tree_chain

BS = 16
#: Every strategy this work added, with a parameter set that exercises its options.
NEW = [
    ("prefix_affinity", {}), ("precise_prefix", {"kv_event_delay_s": 0.05}),
    ("cache_aware", {}), ("cache_aware", {"preset": "rust_default", "miss_policy": "smallest_index"}),
    ("lmetric", {}), ("kv_cost", {}), ("kv_cost", {"index": "approximate", "temperature": 0.7}),
    ("session_affinity", {}), ("consistent_hash", {}), ("consistent_hash", {"load_factor": 1.25}),
    ("sticky_least_loaded", {}), ("weighted", {}),
    ("weighted", {"weights": {"no-hit-lru-scorer": 1, "session-affinity-scorer": 2, "token-load-scorer": 1,
                              "active-request-scorer": 1, "precise-prefix-cache-scorer": 2},
                  "filters": ["prefix-cache-affinity-filter"], "picker": "weighted-random-picker"}),
]
IDS = [f"{n}{'-' + '-'.join(p) if p else ''}" for n, p in NEW]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("dispatch"), st.lists(st.integers(0, 2), min_size=1, max_size=10), st.integers(0, 5)),
        st.tuples(st.just("first"), st.integers(0, 10**6)),
        st.tuples(st.just("finish"), st.integers(0, 10**6)),
        st.tuples(st.just("health"), st.integers(0, 4), st.booleans()),
        st.tuples(st.just("store"), st.integers(0, 4), st.lists(st.integers(0, 2), min_size=1, max_size=10)),
        st.tuples(st.just("evict"), st.integers(0, 4), st.lists(st.integers(0, 2), min_size=1, max_size=10)),
    ),
    max_size=50,
)


def run(name, params, n, operations, seed):
    """Drive a router; return its choices (None for a rejection)."""
    r = Router(routing.build(name, seed=seed, **params), [BackendSpec(f"b{i}") for i in range(n)], block_size=BS)
    healthy = [True] * n
    live: dict[int, int] = {}
    choices = []
    seq = [0] * n
    now = 0.0
    for op in operations:
        now += 0.02
        if op[0] == "dispatch":
            chain = tree_chain(op[1])
            info = RequestInfo(len(choices), len(chain) * BS + 3, now, chain, session_id=f"s{op[2]}")
            if not any(healthy):
                with pytest.raises(NoHealthyBackend):
                    r.dispatch(info, now)
                choices.append(None)
                continue
            d = r.dispatch(info, now)
            assert healthy[d.backend], "an unhealthy backend was chosen"
            live[info.request_id] = d.backend
            choices.append(d.backend)
        elif op[0] == "first" and live:
            r.first_token(sorted(live)[op[1] % len(live)])
        elif op[0] == "finish" and live:
            rid = sorted(live)[op[1] % len(live)]
            r.finish(Outcome(rid, live.pop(rid), True, 10, 2, 0.1, 0.2))
        elif op[0] == "health":
            healthy[op[1] % n] = op[2]
            r.set_healthy(op[1] % n, op[2])
        elif op[0] == "store":
            i = op[1] % n
            r.record_kv_events(i, [BlockStored(tuple(tree_chain(op[2])), None, BS)], now, seq[i])
            seq[i] += 1
        elif op[0] == "evict":
            i = op[1] % n
            r.record_kv_events(i, [BlockRemoved((tree_chain(op[2])[-1],))], now, seq[i])
            seq[i] += 1
    return choices


@pytest.mark.parametrize("name, params", NEW, ids=IDS)
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5), operations=ops, seed=st.integers(0, 100))
def test_never_an_unhealthy_backend_and_the_same_seed_gives_the_same_choices(name, params, n, operations, seed):
    first = run(name, params, n, operations, seed)
    assert run(name, params, n, operations, seed) == first


@pytest.mark.parametrize("name, params", NEW, ids=IDS)
def test_every_parameter_is_listed_and_a_wrong_one_is_named(name, params):
    listed = routing.parameters(name)
    assert set(params) <= set(listed)
    assert set(routing.effective_parameters(name, params)) == set(listed)
    with pytest.raises(ValueError, match=f"strategy '{name}' has no parameter 'bogus'; allowed: "):
        routing.validate(name, {**params, "bogus": 1})


engine_ops = st.lists(
    st.one_of(
        st.tuples(st.just("store"), st.lists(st.integers(0, 2), min_size=1, max_size=10)),
        st.tuples(st.just("evict"), st.lists(st.integers(0, 2), min_size=1, max_size=10), st.integers(0, 9)),
        st.tuples(st.just("clear")),
    ),
    max_size=30,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(engine_ops, min_size=1, max_size=3), st.floats(0.0, 0.5),
       st.lists(st.lists(st.integers(0, 2), min_size=1, max_size=10), min_size=1, max_size=5))
def test_the_routers_mirror_equals_each_engines_cache_once_the_delay_has_passed(streams, delay, queries):
    """Hand-made event streams (``Engine``); once delivered, precise hits are the engines' walks."""
    n = len(streams)
    r = Router(routing.build("precise_prefix", kv_event_delay_s=delay), [BackendSpec(f"b{i}") for i in range(n)],
               block_size=BS)
    engines = []
    for i, operations in enumerate(streams):
        e = Engine()
        e.clear()  # a fresh engine announces an empty cache
        for op in operations:
            if op[0] == "store":
                e.store(tree_chain(op[1]))
            elif op[0] == "evict":
                chain = tree_chain(op[1])
                e.evict(chain[op[2] % len(chain)])
            else:
                e.clear()
        for k, (kind, hashes, parent) in enumerate(e.events):
            ev = (BlockStored(hashes, parent, BS) if kind == "store" else
                  BlockRemoved(hashes) if kind == "remove" else AllBlocksCleared())
            r.record_kv_events(i, [ev], emitted_at=0.001 * k, seq=k)
        engines.append(e)
    t = 0.001 * max(len(e.events) for e in engines) + delay
    for q, path in enumerate(queries):
        chain = tree_chain(path)
        info = RequestInfo(q, len(chain) * BS + 1, t, chain)
        cands, _ = r.prepare(info, t)
        # (precise_prefix reads the router's columns: each mirror's hit, in blocks)
        assert [b * BS for b in cands.precise_blocks] == [linear_hit(e.cached, chain) * BS for e in engines]
        assert cands.untrusted == []
    assert r.precise_fallbacks == 0
