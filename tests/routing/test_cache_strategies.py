"""Hand-worked decisions of the cache-aware strategies (expected values computed by hand)."""
from __future__ import annotations

import math
import random

import pytest

import routing
from routing import BackendSnapshot, RequestInfo
from routing.strategies.picking import softmin_sample


def snap(i, inflight=0, hit=0, precise=None, index_blocks=0, prefill=0, active=0, new=0) -> BackendSnapshot:
    s = BackendSnapshot(index=i, name=f"b{i}")
    s.inflight_requests = inflight
    s.prefix_hit_tokens = hit
    s.precise_hit_tokens = hit if precise is None else precise
    s.index_blocks = index_blocks
    s.inflight_prefill_tokens = prefill
    s.active_blocks = active
    s.new_blocks = new
    return s


def req(n=1000, rid=0) -> RequestInfo:
    return RequestInfo(rid, n, 0.0)


# --- prefix_affinity / precise_prefix ----------------------------------------------------

def test_prefix_affinity_takes_the_longest_hit_then_the_least_loaded():
    s = routing.build("prefix_affinity")
    assert s.choose(req(), [snap(0, 0, 160), snap(1, 9, 480), snap(2, 0, 320)]) == 1
    assert s.choose(req(), [snap(0, 5, 480), snap(1, 2, 480), snap(2, 0, 320)]) == 1


def test_precise_prefix_reads_the_exact_hit_not_the_estimate():
    s = routing.build("precise_prefix")
    backends = [snap(0, hit=480, precise=16), snap(1, hit=0, precise=320)]
    assert s.choose(req(), backends) == 1


# --- cache_aware ----------------------------------------------------------------------------

def test_cache_aware_switches_to_the_shortest_queue_exactly_at_both_thresholds():
    # sglang preset: abs 64, rel 1.5; backend 0 holds the whole prompt cached.
    s = routing.build("cache_aware")
    def pick(loads):
        return s.choose(req(), [snap(0, loads[0], 992), snap(1, loads[1], 0)])
    assert pick([64, 0]) == 0  # max - min = 64, not > 64: balanced, affinity wins
    assert pick([65, 0]) == 1  # 65 > 64 and 65 > 0 * 1.5: imbalanced, shortest queue
    assert pick([195, 130]) == 0  # diff 65 > 64 but 195 is not > 130 * 1.5 = 195
    assert pick([196, 130]) == 1  # both thresholds crossed
    assert pick([194, 129]) == 1  # 194 > 193.5


def test_cache_aware_uses_affinity_only_above_the_cache_threshold():
    s = routing.build("cache_aware", cache_threshold=0.5, balance_abs_threshold=1000)
    # hit / prompt = 500 / 1000 = 0.5: not above: least loaded (backend 1)
    assert s.choose(req(1000), [snap(0, 3, 500), snap(1, 1, 0)]) == 1
    assert s.choose(req(1000), [snap(0, 3, 512), snap(1, 1, 0)]) == 0
    # miss_policy smallest_index: the backend whose index holds the fewest blocks
    t = routing.build("cache_aware", miss_policy="smallest_index")
    assert t.choose(req(1000), [snap(0, 0, 0, index_blocks=50), snap(1, 5, 0, index_blocks=10)]) == 1


def test_cache_aware_presets_match_the_peers_defaults_and_explicit_values_override():
    eff = routing.effective_parameters
    assert eff("cache_aware", {})["cache_threshold"] == 0.3
    assert eff("cache_aware", {"preset": "vllm_router"})["balance_abs_threshold"] == 64
    # Tree sizes in characters at 4 characters a token, 16 tokens a block: vllm-router
    # 0.1.17 keeps 2^25 per worker, sglang-router 0.3.2 2^26 (their router_args.py).
    assert eff("cache_aware", {"preset": "vllm_router"})["index_blocks"] == 2**25 // 64
    assert eff("cache_aware", {"preset": "sglang"})["index_blocks"] == 2**26 // 64
    rust = eff("cache_aware", {"preset": "rust_default"})
    assert (rust["cache_threshold"], rust["balance_abs_threshold"], rust["balance_rel_threshold"]) == (0.5, 32, 1.1)
    assert eff("cache_aware", {"preset": "rust_default", "cache_threshold": 0.9})["cache_threshold"] == 0.9
    s = routing.build("cache_aware", preset="rust_default")
    assert s.imbalanced([33, 0]) and not s.imbalanced([32, 0])


@pytest.mark.parametrize("params, word", [
    ({"preset": "nginx"}, "preset"), ({"cache_threshold": 1.5}, "cache_threshold"),
    ({"miss_policy": "random"}, "miss_policy"), ({"balance_rel_threshold": "x"}, "balance_rel_threshold"),
    ({"index_blocks": -1}, "index_blocks"),
])
def test_cache_aware_bad_values_are_named(params, word):
    with pytest.raises(ValueError, match=word):
        routing.validate("cache_aware", params)


# --- lmetric -------------------------------------------------------------------------------

def test_lmetric_multiplies_new_prefill_by_load_plus_one():
    s = routing.build("lmetric")
    # new tokens x (load + 1): (1000-900)*(3+1)=400, (1000-0)*(0+1)=1000, (1000-500)*(0+1)=500
    assert s.choose(req(1000), [snap(0, 3, 900), snap(1, 0, 0), snap(2, 0, 500)]) == 0
    # more load on the cached one: 100*(10+1)=1100 > 500
    assert s.choose(req(1000), [snap(0, 10, 900), snap(1, 0, 0), snap(2, 0, 500)]) == 2
    # equal products: the lower load wins (200*(1+1) = 400*(0+1))
    assert s.choose(req(1000), [snap(0, 1, 800), snap(1, 0, 600)]) == 1


# --- kv_cost --------------------------------------------------------------------------------

def test_kv_cost_at_temperature_zero_picks_the_hand_computed_argmin():
    s = routing.build("kv_cost", index="approximate")
    s.bind(16)
    backends = [
        # raw prefill (160 + 1600)/16 = 110, minus 1.0 * 1600/16 = 100 cached -> 10; decode 50 + 1 -> 61
        snap(0, inflight=4, hit=1600, prefill=160, active=50, new=1),
        # (0 + 1600)/16 = 100, no hit -> 100; decode 0 + 100 -> 200
        snap(1, inflight=0, hit=0, prefill=0, active=0, new=100),
        # (800 + 1600)/16 = 150 - 50 = 100; decode 10 + 51 -> 161
        snap(2, inflight=1, hit=800, prefill=800, active=10, new=51),
    ]
    assert s.costs(req(1600), backends) == [61.0, 200.0, 161.0]
    assert s.choose(req(1600), backends) == 0
    # prefill_load_scale 3 and an active-request weight of 20 change the answer:
    t = routing.build("kv_cost", index="approximate", prefill_load_scale=3.0, decode_active_request_weight=20.0)
    # 3*10 + 51 + 80 = 161; 3*100 + 100 + 0 = 400; 3*100 + 61 + 20 = 381
    assert t.costs(req(1600), backends) == [161.0, 400.0, 381.0]
    # credit 0 ignores the cache: 3*110+51+80=461, 400, 3*150+61+20=531 -> backend 1
    u = routing.build("kv_cost", index="approximate", prefill_load_scale=3.0,
                      decode_active_request_weight=20.0, overlap_score_credit=0.0)
    assert u.choose(req(1600), backends) == 1


def test_kv_cost_adjusted_prefill_never_goes_below_zero():
    s = routing.build("kv_cost", index="approximate", overlap_score_credit=3.0)
    s.bind(16)
    assert s.costs(req(160), [snap(0, hit=144, active=2, new=0)]) == [2.0]


def test_kv_cost_precise_reads_exact_hits():
    s = routing.build("kv_cost")
    assert s.needs_precise_prefix
    s.bind(16)
    backends = [snap(0, hit=1600, precise=0, new=100), snap(1, hit=0, precise=1600, new=100)]
    assert s.choose(req(1600), backends) == 1


def test_softmin_sampling_follows_the_normalised_exponential():
    rng = random.Random(3)
    costs = [10.0, 20.0, 30.0]
    t = 0.5
    draws = [softmin_sample(costs, t, rng) for _ in range(40000)]
    # normalised costs 0, 0.5, 1 -> weights 1, e^-1, e^-2
    w = [1.0, math.exp(-1.0), math.exp(-2.0)]
    for i in range(3):
        assert abs(draws.count(i) / len(draws) - w[i] / sum(w)) < 0.01
    assert {softmin_sample([5.0, 5.0], 1.0, rng) for _ in range(100)} == {0, 1}


def test_kv_cost_with_temperature_is_seeded():
    backends = [snap(i, hit=16 * i, new=10) for i in range(4)]
    a = routing.build("kv_cost", index="approximate", temperature=1.0, seed=5)
    b = routing.build("kv_cost", index="approximate", temperature=1.0, seed=5)
    assert [a.choose(req(), backends) for _ in range(50)] == [b.choose(req(), backends) for _ in range(50)]
    assert len({a.choose(req(), backends) for _ in range(200)}) > 1


@pytest.mark.parametrize("params, word", [
    ({"temperature": -1.0}, "temperature"), ({"index": "exact"}, "index"),
    ({"overlap_score_credit": -0.5}, "overlap_score_credit"), ({"kv_event_delay_s": -1}, "kv_event_delay_s"),
])
def test_kv_cost_bad_values_are_named(params, word):
    with pytest.raises(ValueError, match=word):
        routing.validate("kv_cost", params)
