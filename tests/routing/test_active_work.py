"""The router's count of prefill work and KV blocks in flight (what kv_cost prices)."""
from __future__ import annotations

import routing
from routing import BackendSpec, Outcome, RequestInfo, Router
from routing.active import ActiveWork


def test_shared_prefix_blocks_count_once_and_private_tails_count_fully():
    a = ActiveWork()
    a.add(1, [10, 11, 12, 13], shareable=-1, uncached_tokens=64)
    a.add(2, [10, 11, 20, 21, 22], shareable=3, uncached_tokens=40)
    # distinct: 10, 11, 12, 13, 20 (shared head of #2) + 2 private blocks = 7
    assert a.blocks == 7 and a.prefill_tokens == 104
    assert a.new_blocks([10, 11, 12, 99], shareable=-1) == 1
    assert a.new_blocks([10, 11, 12, 13], shareable=2) == 2  # blocks past the shareable head are new
    a.first_token(1)
    assert a.prefill_tokens == 40
    a.first_token(1)  # twice is harmless
    assert a.prefill_tokens == 40
    a.remove(1)
    assert a.blocks == 5 and a.prefill_tokens == 40  # 10, 11, 20 + 2 private
    a.remove(2)
    assert a.blocks == 0 and a.prefill_tokens == 0 and len(a._tree) == 0


def _work(cands, i):
    """(prefill tokens in flight, active blocks, new blocks, approximate hit tokens) of backend
    ``i``: kv_cost reads them as the router's columns (no snapshot is written for it)."""
    return (cands.prefill_tokens[i], cands.active_blocks[i], cands.new_blocks[i], cands.hit_blocks[i] * 16)


def test_router_fills_active_work_and_releases_prefill_at_the_first_token():
    r = Router(routing.build("kv_cost", index="approximate"), [BackendSpec("b0"), BackendSpec("b1")], block_size=16)
    chain = [1, 2, 3, 4]
    d0 = r.dispatch(RequestInfo(0, 70, 0.0, chain), 0.0)
    # 70 tokens, nothing cached: 70 uncached tokens of prefill, 4 blocks on the chosen backend
    cands, _ = r.prepare(RequestInfo(1, 70, 0.1, chain), 0.1)
    assert _work(cands, d0.backend) == (70, 4, 0, 64)
    assert _work(cands, 1 - d0.backend)[:3] == (0, 0, 4)
    # the chosen backend's snapshot gets the same values when the request is committed
    d1 = r.commit(RequestInfo(1, 70, 0.1, chain), cands[d0.backend], chain, 0.1)
    c = r.snapshots[d1.backend]
    assert (c.inflight_prefill_tokens, c.active_blocks, c.new_blocks, c.prefix_hit_tokens) == (70, 4, 0, 64)
    r.finish(Outcome(1, d1.backend, True, 70, 5, 0.1, 0.3))
    r.first_token(0)
    cands, _ = r.prepare(RequestInfo(2, 70, 0.2, chain), 0.2)
    assert _work(cands, d0.backend)[:2] == (0, 4)
    r.finish(Outcome(0, d0.backend, True, 70, 5, 0.1, 0.3))
    cands, _ = r.prepare(RequestInfo(2, 70, 0.4, chain), 0.4)
    assert _work(cands, d0.backend)[1:3] == (0, 4)
