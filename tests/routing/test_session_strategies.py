"""Session-keyed strategies: stickiness, expiry, consistent hashing's 1/N movement."""
from __future__ import annotations

import pytest

import routing
from routing import BackendSnapshot, RequestInfo


def snaps(n, loads=None, names=None):
    out = []
    for i in range(n):
        s = BackendSnapshot(index=i, name=(names[i] if names else f"b{i}"))
        s.inflight_requests = loads[i] if loads else 0
        out.append(s)
    return out


def req(session="", t=0.0, rid=0):
    return RequestInfo(rid, 100, t, session_id=session)


def test_session_affinity_pins_sessions_and_forgets_them_after_the_ttl():
    s = routing.build("session_affinity", session_ttl_s=10.0, fallback="least_load")
    b = snaps(3, loads=[5, 0, 5])
    assert s.choose(req("a", 0.0), b) == 1  # new: least loaded
    b[1].inflight_requests = 99
    assert s.choose(req("a", 9.0), b) == 1  # pinned despite the load
    assert s.choose(req("a", 18.9), b) == 1  # used at 9.0, so alive until 19.0
    assert s.choose(req("a", 29.0), b) in (0, 2)  # idle 10.1 s: expired, re-placed (0 and 2 tie at 5)
    assert s.sessions == 1


def test_session_affinity_moves_a_session_whose_backend_left():
    s = routing.build("session_affinity", fallback="least_load")
    three = snaps(3, loads=[1, 0, 1])
    assert s.choose(req("a"), three) == 1
    two = [three[0], three[2]]  # b1 is unhealthy: the router no longer offers it
    pos = s.choose(req("a", 1.0), two)
    assert two[pos].name in ("b0", "b2")
    assert s.choose(req("a", 2.0), three) == three.index(two[pos])  # re-pinned where it went


def test_session_affinity_random_fallback_is_seeded():
    a = routing.build("session_affinity", seed=3)
    b = routing.build("session_affinity", seed=3)
    backends = snaps(8)
    got = [a.choose(req(f"s{i}", i), backends) for i in range(40)]
    assert got == [b.choose(req(f"s{i}", i), backends) for i in range(40)]
    assert len(set(got)) > 3


def test_consistent_hash_is_sticky_and_sessionless_requests_hash_their_prompt():
    s = routing.build("consistent_hash")
    b = snaps(5)
    first = s.choose(req("user-7"), b)
    assert all(s.choose(req("user-7", t), b) == first for t in range(10))
    p = RequestInfo(1, 64, 0.0, [11, 22, 33, 44])
    assert s.choose(p, b) == s.choose(RequestInfo(2, 64, 1.0, [11, 22, 33, 44]), b)


def test_removing_a_backend_moves_only_its_own_sessions_about_one_in_n():
    s = routing.build("consistent_hash")
    n, sessions = 8, [f"conv-{i}" for i in range(4000)]
    full = snaps(n)
    before = {k: full[s.choose(req(k), full)].name for k in sessions}
    gone = "b3"
    rest = [b for b in full if b.name != gone]
    after = {k: rest[s.choose(req(k), rest)].name for k in sessions}
    moved = [k for k in sessions if before[k] != after[k]]
    assert all(before[k] == gone for k in moved)  # nothing else moves
    assert set(moved) == {k for k in sessions if before[k] == gone}
    assert abs(len(moved) / len(sessions) - 1 / n) < 0.05  # 160 virtual nodes: near 1/8
    loads = [list(before.values()).count(f"b{i}") for i in range(n)]
    assert max(loads) < 1.5 * len(sessions) / n


def test_bounded_load_spills_clockwise_when_the_preferred_backend_is_over_the_bound():
    s = routing.build("consistent_hash", load_factor=1.5)
    b = snaps(3, loads=[0, 0, 0])
    home = s.choose(req("k"), b)
    b[home].inflight_requests = 4
    # mean (4+1+1)/3 = 2, bound 3: home (4) is over it; the next clockwise (load 1) takes it
    for i in range(3):
        if i != home:
            b[i].inflight_requests = 1
    spilled = s.choose(req("k"), b)
    assert spilled != home
    assert s.choose(req("k"), b) == spilled  # deterministic: the same spill every time
    b[home].inflight_requests = 2  # mean 4/3, bound 1.5 * 4/3 = 2: exactly at it, allowed
    assert s.choose(req("k"), b) == home
    unbounded = routing.build("consistent_hash")
    b[home].inflight_requests = 100
    assert unbounded.choose(req("k"), b) == home


def test_consistent_hash_bad_values():
    with pytest.raises(ValueError, match="load_factor"):
        routing.validate("consistent_hash", {"load_factor": 0.5})
    with pytest.raises(ValueError, match="virtual_nodes"):
        routing.validate("consistent_hash", {"virtual_nodes": 0})


def test_sticky_least_loaded_balances_new_sessions_and_keeps_old_ones():
    s = routing.build("sticky_least_loaded", session_ttl_s=100.0)
    b = snaps(3)
    first = [s.choose(req(f"s{i}", float(i)), b) for i in range(3)]
    assert sorted(first) == [0, 1, 2]  # one new session per backend
    assert [s.sessions_on(f"b{i}") for i in range(3)] == [1, 1, 1]
    assert s.choose(req("s0", 5.0), b) == first[0]  # sticky, count unchanged
    assert s.sessions_on(b[first[0]].name) == 1
    s4 = s.choose(req("s3", 6.0), b)  # a fourth session: any (all hold one); now one holds two
    assert s.sessions_on(b[s4].name) == 2
    # after the TTL every session has expired: counts drop back to 0 before placing
    s.choose(req("s9", 500.0), b)
    assert sum(s.sessions_on(f"b{i}") for i in range(3)) == 1


def test_sticky_least_loaded_ties_are_deterministic_without_a_generator():
    a = routing.build("sticky_least_loaded", seed=1)
    b = routing.build("sticky_least_loaded", seed=99)  # the seed plays no part
    backends = snaps(4)
    assert [a.choose(req(f"x{i}", i), backends) for i in range(12)] == \
        [b.choose(req(f"x{i}", i), backends) for i in range(12)]
    sessionless = routing.build("sticky_least_loaded")
    sessionless.choose(req(""), backends)
    assert sum(sessionless.sessions_on(f"b{i}") for i in range(4)) == 0  # not recorded
