"""KV-cache events reaching the router: delay, trust, fallback, and the router's mirror."""
from __future__ import annotations

import pytest

import routing
from routing import BackendSpec, RequestInfo, Router
from routing.event_feed import EventFeed
from routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
from workload.hashing import block_hash_chain

BS = 16


def stored(chain, parent=None) -> BlockStored:
    return BlockStored(tuple(chain), parent, BS)


def test_events_become_visible_after_the_delay_in_order():
    feed = EventFeed(delay_s=0.5)
    feed.record([stored([1, 2, 3])], emitted_at=1.0, seq=0)
    feed.record([BlockRemoved((3,))], emitted_at=1.2, seq=1)
    feed.deliver(1.49)
    assert not feed.trusted and feed.index.hit_blocks([1, 2, 3]) == 0  # nothing has arrived
    feed.deliver(1.5)
    assert feed.trusted and feed.index.hit_blocks([1, 2, 3]) == 3
    feed.deliver(1.7)
    assert feed.index.hit_blocks([1, 2, 3]) == 2


def test_a_sequence_gap_distrusts_the_mirror_until_a_reset():
    feed = EventFeed()
    feed.record([stored([1])], 0.0, seq=0)
    feed.record([stored([2], 1)], 0.0, seq=2)  # seq 1 was lost
    feed.deliver(0.0)
    assert not feed.trusted and feed.stats.gaps == 1
    feed.record([AllBlocksCleared(), stored([5])], 0.1, seq=3)
    feed.deliver(0.1)
    assert feed.trusted and feed.index.hit_blocks([5]) == 1 and feed.index.hit_blocks([1]) == 0


def test_a_stale_batch_is_dropped_and_counted():
    feed = EventFeed()
    feed.record([stored([1])], 0.0, seq=5)
    feed.record([BlockRemoved((1,))], 0.0, seq=4)
    feed.deliver(0.0)
    assert feed.stats.out_of_order == 1 and not feed.trusted
    assert feed.index.hit_blocks([1]) == 1  # the stale removal was not applied


def test_bad_delay_and_bad_event_are_errors():
    with pytest.raises(ValueError, match="delay"):
        EventFeed(-1.0)
    feed = EventFeed()
    feed.record(["not an event"], 0.0)
    with pytest.raises(TypeError, match="not a KV-cache event"):
        feed.deliver(0.0)


def tokens(n, base=0):
    return list(range(base, base + n))


def request(rid, toks, t=0.0) -> RequestInfo:
    return RequestInfo(rid, len(toks), t, block_hash_chain(toks, BS))


def test_router_routes_on_the_mirror_and_falls_back_where_there_are_no_events():
    s = routing.build("precise_prefix", kv_event_delay_s=0.2)
    r = Router(s, [BackendSpec(f"b{i}") for i in range(3)], block_size=BS)
    prompt = tokens(100)
    chain = block_hash_chain(prompt, BS).tolist()
    # Backend 2 reports the prompt cached; backend 1 reports an empty cache; 0 sends nothing.
    r.record_kv_events(2, [stored(chain)], emitted_at=0.0, seq=0)
    r.record_kv_events(1, [AllBlocksCleared()], emitted_at=0.0, seq=0)
    cands, _ = r.prepare(request(0, prompt + [1], t=0.1), 0.1)  # before the delay: nothing known
    # (precise_prefix reads the router's columns: each mirror's hit in blocks, and which
    # backends fell back to the approximate index)
    assert cands.precise_blocks == [0, 0, 0]
    assert cands.untrusted == [0, 1, 2]
    d = r.dispatch(request(1, prompt + [1], t=0.3), 0.3)
    assert d.backend == 2 and d.prefix_hit_tokens == 96
    assert r.precise_lookups == 6 and r.precise_fallbacks == 4  # 3 then 1 (backend 0)
    # The approximate index now says backend 2 too; make the mirror disagree with it.
    r.record_kv_events(2, [BlockRemoved(tuple(chain[2:]))], emitted_at=0.3, seq=1)
    r.finish(routing.Outcome(1, 2, True, 101, 1, 0.1, 0.2))
    cands, _ = r.prepare(request(2, prompt + [1], t=0.6), 0.6)
    # The mirror wins, while the approximate index still says the whole prompt; committed
    # there, the request expects the mirror's hit.
    assert cands.precise_blocks[2] * BS == 32 and cands.untrusted == [0]
    assert r.prefix_index(2).hit_blocks(chain) * BS == 96
    d = r.commit(request(2, prompt + [1], t=0.6), cands[2], block_hash_chain(prompt + [1], BS).tolist(), 0.6)
    assert d.prefix_hit_tokens == 32
    assert (r.snapshots[2].precise_hit_tokens, r.snapshots[2].prefix_hit_tokens) == (32, 32)
    assert r.snapshots[2].precise_fallback is False
    assert r.event_stats(2).gaps == 0


def test_routers_of_strategies_without_precise_hits_ignore_events():
    r = Router(routing.build("least_load"), [BackendSpec("b0")], block_size=BS)
    assert not r.wants_kv_events
    r.record_kv_events(0, [stored([1])], 0.0)
    assert r.exact_index(0) is None and r.event_stats(0) is None


def test_a_recorded_reset_empties_the_mirror_in_order_and_forgets_the_sequence():
    feed = EventFeed(delay_s=0.5)
    feed.record([stored([1, 2])], 0.0, seq=4)
    feed.record_reset(0.1)  # the server restarted with an empty cache
    feed.record([stored([7])], 0.2, seq=0)  # its new stream starts at 0: not "out of order"
    feed.deliver(0.55)
    assert feed.trusted and feed.index.hit_blocks([1, 2]) == 2  # the reset is not due yet
    feed.deliver(0.7)
    assert feed.trusted and feed.index.hit_blocks([1, 2]) == 0 and feed.index.hit_blocks([7]) == 1
    assert feed.stats.out_of_order == 0 and feed.stats.gaps == 0


def test_an_untrusted_reset_waits_for_all_blocks_cleared():
    feed = EventFeed()
    feed.record([stored([1])], 0.0, seq=0)
    feed.record_reset(0.0, trusted=False)  # e.g. the stream cannot be followed
    feed.record([stored([2])], 0.0, seq=1)
    feed.deliver(0.0)
    assert not feed.trusted and feed.index.hit_blocks([1]) == 0 and feed.index.hit_blocks([2]) == 1
    feed.record([AllBlocksCleared()], 0.0, seq=2)
    feed.deliver(0.0)
    assert feed.trusted


def test_router_counts_fallbacks_per_backend_and_reports_trust():
    router = Router(routing.build("precise_prefix"), [BackendSpec("a"), BackendSpec("b")],
                    block_size=BS)
    chain = block_hash_chain(list(range(48)), BS)
    router.record_kv_events(0, [stored(chain.tolist())], 0.0, seq=0)
    assert router.kv_events_trusted(0) is False  # recorded, not yet delivered
    router.dispatch(RequestInfo(1, 48, 0.0, chain), 0.0)
    assert router.kv_events_trusted(0) and not router.kv_events_trusted(1)
    assert router.precise_fallbacks_by_backend == [0, 1] and router.precise_fallbacks == 1
    router.reset_kv_events(1, 0.0)
    router.deliver_events(0.0)
    assert router.kv_events_trusted(1)
