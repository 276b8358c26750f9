"""The router's columns (``routing.types.Candidates``) change no decision.

``least_load``, ``cache_aware``, ``prefix_affinity``, ``lmetric`` and ``weighted``
(llm-d's default profile: prefix, queue and KV-utilisation scorers) read
per-backend columns when the router hands them ``Candidates`` (and the three that
read prefix hits then let the router skip filling every snapshot). The reference
is the same strategy reading the snapshots one by one: the same choices and the
same random draws, decision after decision.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import routing
from routing import BackendSpec, RequestInfo, Router
from routing.types import BackendSnapshot, Candidates


class SnapshotsOnly(routing.Strategy):
    """Wraps a strategy and hides the columns: it reads the snapshots (the reference)."""

    def __init__(self, inner: routing.Strategy) -> None:
        super().__init__(seed=inner.seed)
        self.inner = inner
        self.name = inner.name
        self.needs_prefix_estimate = inner.needs_prefix_estimate
        self.needs_precise_prefix = inner.needs_precise_prefix
        self.needs_active_work = inner.needs_active_work
        self.needs_scrape = inner.needs_scrape
        self.index_blocks = inner.index_blocks
        self.kv_event_delay_s = inner.kv_event_delay_s

    def bind(self, block_size):
        if hasattr(self.inner, "bind"):
            self.inner.bind(block_size)

    def choose(self, request, backends):
        return self.inner.choose(request, list(backends))


COLUMN_READERS = ["least_load", "cache_aware", "prefix_affinity", "lmetric", "weighted"]
#: Read the exact mirrors and the work in flight as columns too (the router test has no
#: KV events, so every mirror falls back to the approximate index there).
ROUTER_COLUMN_READERS = COLUMN_READERS + ["kv_cost", "precise_prefix"]


def snapshots(loads, hits, bs, waiting=None, kv=None):
    n = len(loads)
    waiting, kv = waiting or [float("nan")] * n, kv or [float("nan")] * n
    return [BackendSnapshot(index=i, name=f"b{i}", inflight_requests=l, prefix_hit_tokens=h * bs,
                            waiting=w, kv_usage=u)
            for i, (l, h, w, u) in enumerate(zip(loads, hits, waiting, kv))]


@settings(max_examples=200, deadline=None)
@given(st.data(), st.sampled_from(COLUMN_READERS), st.integers(1, 40))
def test_columns_choose_as_the_snapshots_do(data, name, n):
    bs = 16
    with_cols, without = routing.build(name, seed=3), routing.build(name, seed=3)
    for _ in range(5):  # several decisions: the generators must stay in step
        # Few distinct values, so ties (and the draws that break them) are common.
        loads = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
        hits = data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
        input_len = data.draw(st.integers(0, 6 * bs))
        waiting = data.draw(st.lists(st.sampled_from([0.0, 1.0, 5.0]), min_size=n, max_size=n))
        kv = data.draw(st.lists(st.sampled_from([0.0, 0.5, 0.9]), min_size=n, max_size=n))
        req = RequestInfo(1, input_len, 0.0, list(range(1, input_len // bs + 1)))
        snaps = snapshots(loads, hits, bs, waiting, kv)
        cands = Candidates(snaps, list(loads), bs)
        cands.hit_blocks = list(hits)
        assert with_cols.choose(req, cands) == without.choose(req, list(snaps))
    assert with_cols.rng.random() == without.rng.random()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from(ROUTER_COLUMN_READERS), st.integers(2, 12))
def test_router_decisions_equal_with_and_without_columns(seed, name, n):
    """Whole decisions (backend, features) through ``Router.dispatch`` and ``finish``."""
    import random

    from routing.types import Outcome

    rng = random.Random(seed)
    specs = [BackendSpec(f"b{i}", prefix_index_blocks=64) for i in range(n)]
    fast = Router(routing.build(name, seed=seed % 7), specs)
    ref = Router(SnapshotsOnly(routing.build(name, seed=seed % 7)), specs)
    assert fast.strategy.reads_columns == (name != "least_load")
    assert not ref.strategy.reads_columns
    prompts = [[rng.getrandbits(62) for _ in range(8)] for _ in range(4)]
    inflight = []
    for rid in range(60):
        if inflight and rng.random() < 0.4:
            done = inflight.pop(rng.randrange(len(inflight)))
            for r in (fast, ref):
                r.finish(Outcome(done[0], done[1], True, 10, 5, 0.1, 0.5))
            continue
        p = prompts[rng.randrange(len(prompts))]
        k = rng.randint(1, len(p))
        req = RequestInfo(rid, 16 * k + rng.randint(0, 15), 0.0, p[:k])
        a, b = fast.dispatch(req, 0.0), ref.dispatch(req, 0.0)
        assert a == b
        inflight.append((rid, a.backend))
    assert [s.inflight_requests for s in fast.snapshots] == fast._loads


def test_unhealthy_backends_fall_back_to_snapshots():
    """With a backend down the candidates are a plain list: the strategy reads snapshots."""
    r = Router(routing.build("cache_aware", seed=0), [BackendSpec(f"b{i}") for i in range(3)])
    r.set_healthy(0, False)
    cands, _ = r.prepare(RequestInfo(1, 64, 0.0, [1, 2, 3, 4]), 0.0)
    assert not isinstance(cands, Candidates) and [c.index for c in cands] == [1, 2]
    assert r.dispatch(RequestInfo(2, 64, 0.0, [1, 2, 3, 4]), 0.0).backend in (1, 2)



@settings(max_examples=200, deadline=None)
@given(st.data(), st.sampled_from([{}, {"temperature": 0.5}, {"index": "approximate"},
                                   {"overlap_score_credit": 1, "prefill_load_scale": 1,
                                    "decode_active_request_weight": 0},
                                   {"decode_active_request_weight": 2.0, "overlap_score_credit": 0.5}]),
       st.integers(1, 24))
def test_kv_cost_and_precise_prefix_on_columns_choose_as_on_snapshots(data, params, n):
    """Dynamo's cost and the exact-mirror affinity from the columns: same choices, same draws."""
    bs = 16
    pairs = [(routing.build("kv_cost", seed=5, **params), routing.build("kv_cost", seed=5, **params)),
             (routing.build("precise_prefix", seed=5), routing.build("precise_prefix", seed=5))]
    for _ in range(4):
        ints = lambda hi: data.draw(st.lists(st.integers(0, hi), min_size=n, max_size=n))  # noqa: E731
        loads, hits, precise, pf, active, new = ints(3), ints(6), ints(6), ints(300), ints(40), ints(8)
        req = RequestInfo(1, data.draw(st.integers(1, 8 * bs)), 0.0)
        snaps = [BackendSnapshot(index=i, name=f"b{i}", inflight_requests=loads[i], prefix_hit_tokens=hits[i] * bs,
                                 precise_hit_tokens=precise[i] * bs, inflight_prefill_tokens=pf[i],
                                 active_blocks=active[i], new_blocks=new[i]) for i in range(n)]
        cands = Candidates(snaps, list(loads), bs)
        cands.hit_blocks, cands.precise_blocks = list(hits), list(precise)
        cands.prefill_tokens, cands.active_blocks, cands.new_blocks = list(pf), list(active), list(new)
        for with_cols, without in pairs:
            if with_cols.name == "kv_cost":
                assert with_cols.costs(req, cands) == without.costs(req, list(snaps))
            assert with_cols.choose(req, cands) == without.choose(req, list(snaps))
    for with_cols, without in pairs:
        assert with_cols.rng.random() == without.rng.random()


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([{}, {"kv_event_delay_s": 0.5}, {"index": "approximate"}]),
       st.integers(2, 6))
def test_router_kept_columns_equal_the_feeds_and_work_in_flight(seed, params, n):
    """The router keeps trust, pending feeds and the work in flight as columns in step
    with its objects: after any mix of events (gaps, resets, delays), dispatches, first
    tokens and finishes, each decision's columns equal what the feeds and ``ActiveWork``
    objects say when read one by one."""
    import random

    from routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
    from routing.types import Outcome

    rng = random.Random(seed)
    r = Router(routing.build("kv_cost", seed=1, **params), [BackendSpec(f"b{i}") for i in range(n)])
    prompts = [[rng.getrandbits(62) for _ in range(6)] for _ in range(3)]
    seqs, inflight, now = [0] * n, [], 0.0
    for rid in range(50):
        now += rng.choice([0.0, 0.2, 0.7])
        b = rng.randrange(n)
        what = rng.random()
        if what < 0.3:
            p = prompts[rng.randrange(3)]
            k = rng.randint(1, len(p))
            events = [BlockStored(tuple(p[:k]), None, 16)]
            if rng.random() < 0.3:
                events.append(BlockRemoved((p[k - 1],)))
            seqs[b] += rng.choice([1, 1, 1, 2, 0])  # mostly in order; some gaps and repeats
            r.record_kv_events(b, events, now, seqs[b])
        elif what < 0.4:
            r.reset_kv_events(b, now, trusted=rng.random() < 0.7)
        elif what < 0.45:
            r.record_kv_events(b, [AllBlocksCleared()], now, None)
        elif what < 0.55:
            r.deliver_events(now)
        elif what < 0.65 and inflight:
            r.first_token(inflight[rng.randrange(len(inflight))][0])
        elif what < 0.75 and inflight:
            done = inflight.pop(rng.randrange(len(inflight)))
            r.finish(Outcome(done[0], done[1], True, 10, 5, 0.1, 0.5))
        else:
            p = prompts[rng.randrange(3)]
            shareable = rng.choice([-1, -1, 0, 2, len(p) - 1, len(p)])  # the in-flight band's own limit
            req = RequestInfo(rid, 16 * len(p) + rng.choice([0, 5]), now, p, num_shareable_blocks=shareable)
            cands, chain = r.prepare(req, now)
            feeds, active = r._feeds, r._active
            limit = (req.input_len - 1) // 16
            if feeds is None:  # approximate: the router's own index, every backend
                assert cands.hit_blocks == [r.prefix_index(i).hit_blocks(chain, limit) for i in range(n)]
            else:
                assert all(not f._pending or f._pending[0][0] > now for f in feeds)
                assert cands.untrusted == [i for i in range(n) if not feeds[i].trusted]
                assert cands.precise_blocks == [feeds[i].index.hit_blocks(chain, limit)
                                                if feeds[i].trusted else r.prefix_index(i).hit_blocks(chain, limit)
                                                for i in range(n)]
            assert cands.active_blocks == [a.blocks for a in active]
            assert cands.prefill_tokens == [a.prefill_tokens for a in active]
            assert cands.new_blocks == [a.new_blocks(chain, shareable) for a in active]
            pos = r.strategy.choose(req, cands)
            d = r.commit(req, cands[pos], chain, now)
            inflight.append((rid, d.backend))
    assert r._pending_feeds == {i for i, f in enumerate(r._feeds or []) if f._pending}
