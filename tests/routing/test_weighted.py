"""``weighted``: llm-d scorers and pickers by hand, and EndpointPickerConfig loading."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

import routing
from routing import BackendSnapshot, RequestInfo
from routing.strategies import llmd_plugins as lp

DATA = Path(__file__).parent / "data"


def snap(i, waiting=0.0, kv=0.0, running=0.0, inflight=0, hit=0, precise=None, prefill=0):
    s = BackendSnapshot(index=i, name=f"b{i}")
    s.waiting, s.kv_usage, s.running = waiting, kv, running
    s.inflight_requests = inflight
    s.prefix_hit_tokens = hit
    s.precise_hit_tokens = hit if precise is None else precise
    s.inflight_prefill_tokens = prefill
    return s


def req(blocks=10, session="", t=0.0, rid=0):
    return RequestInfo(rid, blocks * 16 + 1, t, list(range(1, blocks + 1)), session_id=session)


def make(cls, params=None):
    plugin = cls(cls.TYPE, params or {}, {})
    if hasattr(plugin, "block_size"):
        plugin.block_size = 16
    return plugin


def test_queue_and_running_scorers_are_min_max_normalised():
    q = make(lp.QueueScorer)
    assert q.score(req(), [snap(0, waiting=2), snap(1, waiting=10), snap(2, waiting=6)]) == [1.0, 0.0, 0.5]
    assert q.score(req(), [snap(0, waiting=3), snap(1, waiting=3)]) == [1.0, 1.0]
    assert q.score(req(), [snap(0, waiting=math.nan), snap(1, waiting=4)]) == [1.0, 0.0]  # unscraped = 0
    r = make(lp.RunningRequestsScorer)
    assert r.score(req(), [snap(0, running=8), snap(1, running=4)]) == [0.0, 1.0]


def test_kv_utilisation_load_aware_and_active_request_scorers():
    assert make(lp.KvCacheUtilizationScorer).score(req(), [snap(0, kv=0.25), snap(1, kv=0.9)]) == [0.75, pytest.approx(0.1)]
    la = make(lp.LoadAwareScorer, {"threshold": 10})
    assert la.score(req(), [snap(0, waiting=0), snap(1, waiting=4), snap(2, waiting=12)]) == [0.5, pytest.approx(0.3), 0.0]
    a = make(lp.ActiveRequestScorer)
    assert a.score(req(), [snap(0, inflight=0), snap(1, inflight=4), snap(2, inflight=1)]) == [1.0, 0.0, 0.75]
    guarded = make(lp.ActiveRequestScorer, {"idleThreshold": 1, "maxBusyScore": 0.5})
    assert guarded.score(req(), [snap(0, inflight=1), snap(1, inflight=4), snap(2, inflight=2)]) == [1.0, 0.0, 0.25]


def test_token_load_scorer_counts_in_flight_and_this_requests_uncached_tokens():
    t = make(lp.TokenLoadScorer, {"queueThresholdTokens": 1000})
    # request: 161 tokens; b0 has 96 cached -> 65 uncached + 335 in flight = 400 -> 0.6
    scores = t.score(req(10), [snap(0, hit=96, prefill=335), snap(1, hit=0, prefill=2000)])
    assert scores == [pytest.approx(0.6), 0.0]


def test_prefix_scorer_ratio_and_length_term():
    p = make(lp.PrefixCacheScorer)
    assert p.score(req(10), [snap(0, hit=80), snap(1, hit=0)]) == [0.5, 0.0]  # 5 of 10 blocks
    length = make(lp.PrefixCacheScorer, {"matchLengthWeight": 0.5, "matchLengthScaleTokens": 160})
    # ratio 0.5; length min(1, 80/160)^2 = 0.25; 0.5*0.25 + 0.5*0.5 = 0.375
    assert length.score(req(10), [snap(0, hit=80)]) == [pytest.approx(0.375)]
    assert p.score(req(0), [snap(0)]) == [0.0]  # no full block: score 0
    precise = lp.PrefixCacheScorer("p", {"prefixMatchInfoProducerName": "precise-prefix-cache-producer"}, {})
    precise.block_size = 16
    assert precise.score(req(10), [snap(0, hit=160, precise=16)]) == [0.1]


def test_no_hit_lru_ranks_cold_requests_by_least_recent_cold_use():
    s = make(lp.NoHitLRUScorer)
    b = [snap(0), snap(1), snap(2)]
    # nothing used yet: candidate order, 1, 0.5, 0
    assert s.score(req(), b) == [1.0, 0.5, 0.0]
    s.after_pick(req(), b, 0)  # cold pick: b0 becomes the most recent
    # never used (b1, b2) first: 1.0, 0.5; b0 ranked after them: 1 - 2/2 = 0
    assert s.score(req(), b) == [0.0, 1.0, 0.5]
    s.after_pick(req(), b, 1)
    s.after_pick(req(), b, 2)  # LRU order now b0 (oldest), b1, b2
    assert s.score(req(), b) == [1.0, 0.5, 0.0]
    warm = [snap(0, hit=16), snap(1), snap(2)]
    assert s.score(req(), warm) == [0.5, 0.5, 0.5]
    s.after_pick(req(), warm, 0)  # a warm pick does not touch the LRU
    assert s.score(req(), b) == [1.0, 0.5, 0.0]


def test_session_affinity_scorer_follows_the_session():
    s = make(lp.SessionAffinityScorer, {"strategy": "session_id", "sessionIdConfig": {"evictionTtlSeconds": 10}})
    b = [snap(0), snap(1)]
    assert s.score(req(session="x"), b) == [0.0, 0.0]
    s.after_pick(req(session="x", t=1.0), b, 1)
    assert s.score(req(session="x", t=5.0), b) == [0.0, 1.0]
    assert s.score(req(session="x", t=11.5), b) == [0.0, 0.0]  # idle past the TTL
    assert s.score(req(session="y", t=5.0), b) == [0.0, 0.0]


def test_pickers():
    rng = random.Random(0)
    m = make(lp.MaxScorePicker)
    assert m.pick([0.2, 0.9, 0.4], rng) == 1
    assert {m.pick([0.9, 0.2, 0.9], rng) for _ in range(100)} == {0, 2}
    w = make(lp.WeightedRandomPicker)
    draws = [w.pick([1.0, 3.0, 0.0], rng) for _ in range(20000)]
    assert draws.count(2) == 0
    assert abs(draws.count(1) / len(draws) - 0.75) < 0.015
    assert {w.pick([0.0, 0.0], rng) for _ in range(100)} == {0, 1}  # all zero: uniform


def test_default_profile_is_llm_ds_3_2_2_with_max_score():
    s = routing.build("weighted")
    assert [(p.TYPE, w) for p, w in s.profile.scorers] == [
        ("queue-scorer", 2.0), ("kv-cache-utilization-scorer", 2.0), ("prefix-cache-scorer", 3.0)]
    assert s.profile.picker.TYPE == "max-score-picker"
    assert s.needs_scrape and s.needs_prefix_estimate and not s.needs_precise_prefix
    s.bind(16)
    b = [snap(0, waiting=0, kv=0.5, hit=0), snap(1, waiting=4, kv=0.1, hit=160), snap(2, waiting=2, kv=0.3, hit=80)]
    # queue 1, 0, .5; kv .5, .9, .7; prefix 0, 1, .5 -> 2+1+0=3, 0+1.8+3=4.8, 1+1.4+1.5=3.9
    assert s.scores(req(10), b) == [pytest.approx(3.0), pytest.approx(4.8), pytest.approx(3.9)]
    assert s.choose(req(10), b) == 1


def test_inline_weights_filters_and_plugin_parameters():
    s = routing.build("weighted", weights={"active-request-scorer": 1, "prefix-cache-scorer": 1},
                      filters=["prefix-cache-affinity-filter"],
                      plugin_parameters={"prefix-cache-affinity-filter": {"affinityThreshold": 0.5}})
    s.bind(16)
    assert s.needs_active_work and not s.needs_scrape
    # b0 and b2 are sticky (>= 0.5); b1 is idle but cold: the filter keeps 0 and 2
    b = [snap(0, inflight=3, hit=96), snap(1, inflight=0), snap(2, inflight=1, hit=80)]
    assert s.choose(req(10), b) == 2  # (1-1/3)+0.5 = 1.17 beats 0 + 0.6


def test_prefix_affinity_filter_ttft_gate_breaks_stickiness():
    f = make(lp.PrefixCacheAffinityFilter, {"maxTTFTPenaltyMs": 1000.0, "peakPrefillThroughput": 1000.0})
    rng = random.Random(0)
    b = [snap(0, hit=160, prefill=5000), snap(1, hit=0, prefill=1000)]
    assert f.keep(req(10), b, rng) == [0, 1]  # sticky TTFT 5 s, other 1 s: 4 s > 1 s penalty
    b[0].inflight_prefill_tokens = 1500
    assert f.keep(req(10), b, rng) == [0]


def test_config_file_loads_the_supported_plugins():
    s = routing.build("weighted", config=str(DATA / "llmd-default-like.yaml"))
    assert [(p.TYPE, w) for p, w in s.profile.scorers] == [
        ("prefix-cache-scorer", 2.0), ("kv-cache-utilization-scorer", 1.0), ("queue-scorer", 1.0)]
    assert s.needs_precise_prefix and [f.TYPE for f in s.profile.filters] == ["decode-filter"]


def test_a_config_with_several_profiles_needs_one_chosen():
    path = str(DATA / "llmd-two-profiles.yaml")
    with pytest.raises(ValueError, match=r"2 scheduling profiles \(cache, load\).*profile = "):
        routing.validate("weighted", {"config": path})
    cache = routing.build("weighted", config=path, profile="cache")
    assert [(p.name, w) for p, w in cache.profile.scorers] == [("prefix-cache-scorer", 2.0), ("lru", 1.0)]
    assert cache.profile.picker.TYPE == "weighted-random-picker"  # the configured picker is reused
    load = routing.build("weighted", config=path, profile="load")
    assert load.profile.scorers[0][0].idle == 2
    with pytest.raises(ValueError, match="no scheduling profile 'other'; the config has cache, load"):
        routing.validate("weighted", {"config": path, "profile": "other"})


def test_an_unsupported_plugin_is_named_with_the_supported_ones():
    with pytest.raises(ValueError) as info:
        routing.validate("weighted", {"config": str(DATA / "llmd-unsupported.yaml")})
    message = str(info.value)
    assert "'lora-affinity-scorer'" in message and "not implemented in the lab" in message
    for t in ("prefix-cache-scorer", "queue-scorer", "max-score-picker", "no-hit-lru-scorer"):
        assert t in message


@pytest.mark.parametrize("doc, words", [
    ("kind: Deployment\nplugins: []\n", "kind must be 'EndpointPickerConfig'"),
    ("plugins:\n- type: queue-scorer\nflowControl: {}\n", "section 'flowControl'"),
    ("plugins:\n- type: queue-scorer\n  parameters: {bogus: 1}\n", "no parameter 'bogus'"),
    ("plugins:\n- type: queue-scorer\nschedulingProfiles:\n- name: d\n  plugins:\n  - pluginRef: nope\n",
     "refers to plugin 'nope'"),
    ("plugins:\n- type: max-score-picker\n", "has no scorer"),
    ("- just a list\n", "expected a mapping"),
    ("plugins: [unclosed\n", "not valid YAML"),
    ("!!python/object/apply:os.system ['echo hi']\n", "not valid YAML"),
])
def test_bad_configs_get_clear_errors(tmp_path, doc, words):
    p = tmp_path / "epp.yaml"
    p.write_text(doc)
    with pytest.raises(ValueError, match=words):
        routing.validate("weighted", {"config": str(p)})


def test_config_and_inline_weights_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        routing.validate("weighted", {"config": str(DATA / "llmd-default-like.yaml"),
                                      "weights": {"queue-scorer": 1}})
    with pytest.raises(ValueError, match="scorer 'lora-affinity-scorer' is not implemented"):
        routing.validate("weighted", {"weights": {"lora-affinity-scorer": 1}})
    with pytest.raises(ValueError, match="weight of 'queue-scorer' must be a number >= 0"):
        routing.validate("weighted", {"weights": {"queue-scorer": -1}})


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

backend_values = st.tuples(
    st.floats(0, 300) | st.just(math.nan), st.floats(0, 1) | st.just(math.nan), st.integers(0, 64),
    st.integers(0, 4000), st.integers(0, 20000))


@settings(max_examples=150, deadline=None)
@given(st.lists(backend_values, min_size=1, max_size=8), st.integers(0, 250), st.text(max_size=3))
def test_every_scorer_scores_within_zero_and_one(values, blocks, session):
    """``weighted`` sums scores without llm-d's clamp because every scorer stays in [0, 1]."""
    backends = []
    for i, (waiting, kv, inflight, hit, prefill) in enumerate(values):
        backends.append(snap(i, waiting=waiting, kv=kv, running=waiting, inflight=inflight,
                             hit=min(hit, max(blocks * 16 - 16, 0)), prefill=prefill))
    r = req(blocks, session=session)
    for t in lp.supported("scorer"):
        scorer = make(lp.PLUGINS[t])
        for score in scorer.score(r, backends):
            assert 0.0 <= score <= 1.0, (t, score)
        scorer.after_pick(r, backends, 0)


def test_the_shipped_example_config_loads():
    path = Path(__file__).resolve().parents[2] / "scenarios" / "llmd-epp-example.yaml"
    s = routing.build("weighted", config=str(path))
    assert [(p.TYPE, w) for p, w in s.profile.scorers] == [
        ("prefix-cache-scorer", 3.0), ("no-hit-lru-scorer", 1.0), ("queue-scorer", 2.0),
        ("kv-cache-utilization-scorer", 2.0)]
    assert s.needs_precise_prefix and s.needs_scrape
