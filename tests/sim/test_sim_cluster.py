"""The SimPy cluster: equivalences, determinism, completeness, scrapes, closed forms."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import routing
from sim.cluster import ClusterSim, simulate
from sim.latency import LatencyModel

from sim_helpers import chat_trace, conversation_trace, fleet, record_differences, simple_trace

STRATEGIES = ["round_robin", "least_load", "least_tokens", "power_of_two", "least_kv", "random"]


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    strategy=st.sampled_from(STRATEGIES),
    blocks=st.integers(120, 600),
    budget=st.sampled_from([256, 512, 2048]),
    timeout=st.sampled_from([0.0, 4.0]),
    delay=st.sampled_from([0.0, 0.003]),
    rate=st.sampled_from([10.0, 40.0]),
    chat=st.booleans(),
    async_scheduling=st.booleans(),
)
def test_fast_mode_and_block_extents_change_nothing(seed, strategy, blocks, budget, timeout, delay, rate,
                                                    chat, async_scheduling):
    """Closed-form decode runs, counted private blocks and the decode group are exact
    optimisations: the records and every backend's KV events equal those of stepping
    one step at a time, request by request, with every block tracked. ``chat``
    traces name the blocks replies fill (later turns hit them)."""
    trace = (chat_trace if chat else conversation_trace)(40, seed=seed, rate=rate)
    kw = dict(blocks=blocks, budget=budget, timeout_s=timeout, delay_s=delay,
              async_scheduling=async_scheduling)

    def run(mode, share, group):
        events: dict[int, list] = {}
        res = simulate(trace, routing.build(strategy, seed=seed), fleet(mode=mode, **kw), seed=seed,
                       share_analysis=share, decode_group=group,
                       kv_events=lambda b, e, t: events.setdefault(b, []).append((e, t)))
        return res, events

    ref, ref_events = run("exact", False, False)
    for mode, share, group in (("exact", True, True), ("fast", False, True), ("fast", True, True)):
        got, events = run(mode, share, group)
        assert record_differences(ref.records, got.records) == [], (mode, share, group)
        assert events.keys() == ref_events.keys()
        for b, stream in ref_events.items():
            assert [e for e, _ in events[b]] == [e for e, _ in stream], (mode, share, group, b)
            assert [t for _, t in events[b]] == pytest.approx([t for _, t in stream], rel=1e-9)


def test_a_later_turn_hits_the_blocks_its_previous_reply_filled():
    # One backend, turns far apart: each later turn hits everything the previous turn
    # cached, its reply included, up to (input_len - 1) // 16 blocks.
    trace = chat_trace(12, seed=4, rate=0.05, max_out=120)
    res = simulate(trace, routing.build("round_robin"), fleet(n=1, blocks=4000))
    rows, counts = trace.reply_blocks()
    checked = 0
    for i, r in enumerate(res.records):
        nxt = rows[i]
        if nxt < 0:
            continue
        # The later turn's prompt holds this prompt and reply: it hits the blocks this
        # turn cached, (input + output - 1) // 16 of them, within its own limit.
        later = res.records[nxt]
        if later.dispatch_s < r.finish_s:
            continue  # it came before the reply was complete
        expect = min((r.input_len + r.output_len - 1) // 16, (later.input_len - 1) // 16) * 16
        assert later.cached_tokens >= expect
        assert later.cached_tokens > (r.input_len // 16) * 16 or counts[i] == 0
        checked += 1
    assert checked > 5
    # The lab's live load generator does not send served replies back: no reply hits.
    plain = simulate(trace, routing.build("round_robin"), fleet(n=1, blocks=4000),
                     replies_in_prompts=False)
    assert sum(r.cached_tokens for r in plain.records) < sum(r.cached_tokens for r in res.records)


def test_the_scenario_exercises_preemption_prefix_hits_and_timeouts():
    # Guard for the property test above: its inputs must reach the hard paths.
    trace = conversation_trace(40, seed=3, rate=40.0)
    res = simulate(trace, routing.build("least_load"), fleet(blocks=150, timeout_s=4.0), seed=3)
    statuses = {r.status for r in res.records}
    assert sum(r.num_preemptions for r in res.records) > 0
    assert sum(r.cached_tokens for r in res.records) > 0
    assert {"ok", "timeout"} <= statuses


def test_same_seed_gives_identical_records_and_another_seed_differs():
    trace = conversation_trace(30, seed=1)
    cfg = fleet(jitter_cv=0.1)
    a = simulate(trace, routing.build("power_of_two", seed=5), cfg, seed=5)
    b = simulate(trace, routing.build("power_of_two", seed=5), cfg, seed=5)
    assert record_differences(a.records, b.records, rel=0.0) == []
    c = simulate(trace, routing.build("power_of_two", seed=6), cfg, seed=6)
    assert record_differences(a.records, c.records) != []


def test_every_request_ends_as_exactly_one_record():
    # A short drain leaves requests in flight; a prompt bigger than the KV cache is refused.
    lens = [100] * 30 + [100_000]
    trace = simple_trace(np.linspace(0, 1, 31), lens, 400)
    res = simulate(trace, routing.build("round_robin"), fleet(n=2, blocks=400, drain_s=2.0))
    ids = [r.request_id for r in res.records]
    assert sorted(ids) == list(range(31))
    statuses = [r.status for r in res.records]
    assert statuses[-1] == "rejected" and "KV" in res.records[-1].error
    assert "unfinished" in statuses
    for r in res.records:
        if r.status == "unfinished":
            assert r.finish_s == pytest.approx(res.end_time)
            assert r.output_len < r.requested_output_len
        if r.status == "ok":
            assert r.output_len == r.requested_output_len


def test_light_load_matches_the_closed_form_latency():
    # One backend; requests 10 s apart never overlap. TTFT is the prefill: chunks of at
    # most 512 tokens, each step  a + b*n + c + d*n*(p + (n+1)/2);  then every decode
    # step k (context L = input + k) takes  a + b + c + e*L.
    a, b, c, d, e = 0.02, 2e-5, 1e-4, 1e-8, 2e-7
    model = LatencyModel(step_s=a, token_s=b, seq_s=c, prefill_attn_s=d, decode_attn_s=e)
    inp, out = 1200, 50
    trace = simple_trace([0.0, 10.0, 20.0], inp, out)
    res = simulate(trace, routing.build("round_robin"), fleet(n=1, budget=512, model=model, blocks=1000))
    ttft = 0.0
    done = 0
    while done < inp:
        n = min(512, inp - done)
        ttft += a + b * n + c + d * n * (done + (n + 1) / 2)
        done += n
    decode = [a + b + c + e * (inp + k) for k in range(1, out)]
    tpot = sum(decode) / (out - 1)
    for r in res.records:
        assert r.status == "ok"
        assert r.first_token_s - r.arrival_s == pytest.approx(ttft, rel=1e-9)
        got_tpot = (r.last_token_s - r.first_token_s) / (r.output_len - 1)
        assert got_tpot == pytest.approx(tpot, rel=1e-9)


def test_profile_request_overhead_adds_to_ttft_and_e2el_only():
    import dataclasses

    from sim_helpers import profile

    trace = simple_trace([0.0, 5.0], 300, 20)
    base_cfg = fleet(n=1)
    slow = dataclasses.replace(profile(), request_overhead_s=0.012)
    slow_cfg = dataclasses.replace(base_cfg, backends=[dataclasses.replace(base_cfg.backends[0], profile=slow)])
    base = simulate(trace, routing.build("round_robin"), base_cfg).records
    over = simulate(trace, routing.build("round_robin"), slow_cfg).records
    for x, y in zip(base, over):
        assert (y.first_token_s - y.arrival_s) - (x.first_token_s - x.arrival_s) == pytest.approx(0.012)
        assert (y.last_token_s - y.arrival_s) - (x.last_token_s - x.arrival_s) == pytest.approx(0.012)
        assert y.last_token_s - y.first_token_s == pytest.approx(x.last_token_s - x.first_token_s)


def test_network_delay_shifts_client_times():
    trace = simple_trace([0.0, 5.0], 300, 20)
    base = simulate(trace, routing.build("round_robin"), fleet(n=1)).records
    delayed = simulate(trace, routing.build("round_robin"), fleet(n=1, delay_s=0.01)).records
    for x, y in zip(base, delayed):
        # one hop to the backend and one back: TTFT and E2EL grow by two delays
        assert (y.first_token_s - y.arrival_s) - (x.first_token_s - x.arrival_s) == pytest.approx(0.02)
        assert (y.last_token_s - y.arrival_s) - (x.last_token_s - x.arrival_s) == pytest.approx(0.02)


def test_lazy_scrapes_equal_eager_scraping():
    """What the router held at each decision equals the engine's published state
    sampled at every scrape tick by an eager process (exact mode)."""
    trace = conversation_trace(50, seed=7, rate=30.0)
    cfg = fleet(mode="exact", scrape_s=0.25)
    sim = ClusterSim(trace, routing.build("least_kv", seed=1), cfg, seed=1)
    samples: dict[int, list[tuple[float, tuple]]] = {i: [] for i in range(len(sim.drivers))}

    def sampler(d):
        env = sim.env
        yield env.timeout(d.phase)
        while True:
            m = d.engine.published
            samples[d.index].append((env.now, (m.running, m.waiting, m.kv_usage)))
            yield env.timeout(cfg.scrape_interval_s)

    for d in sim.drivers:
        # Lowest priority at equal times is not needed: ticks never coincide with steps.
        sim.env.process(sampler(d))
    res = sim.run()
    checked = 0
    for r in res.records:
        times = [t for t, _ in samples[r.backend]]
        k = np.searchsorted(times, r.dispatch_s, side="right") - 1
        if k < 0:
            assert math.isnan(r.router_running)
            continue
        t, (running, waiting, kv) = samples[r.backend][k]
        assert r.router_scrape_age_s == pytest.approx(r.dispatch_s - t, abs=1e-9)
        assert (r.router_running, r.router_waiting) == (running, waiting)
        assert r.router_kv_usage == pytest.approx(kv)
        checked += 1
    assert checked > 100


def test_prefix_estimate_and_real_hits_agree_on_repeated_prompts():
    # The same 5-block prompt sent twice to one backend: the router expects a hit of
    # (80 - 1) // 16 = 4 blocks, and the engine's prefix cache gives exactly that.
    trace = simple_trace([0.0, 10.0], 80, 5)
    trace.block_hashes[5:] = trace.block_hashes[:5]
    res = simulate(trace, routing.build("round_robin"), fleet(n=1))
    first, second = res.records
    assert first.router_prefix_hit_tokens == 0 and first.cached_tokens == 0
    assert second.router_prefix_hit_tokens == 64 and second.cached_tokens == 64


def test_bad_cluster_inputs_fail_clearly():
    trace = simple_trace([0.0], 100, 5)
    with pytest.raises(ValueError, match="block size"):
        ClusterSim(simple_trace([0.0], 100, 5, bs=32), routing.build("round_robin"), fleet())
    with pytest.raises(ValueError, match="mode"):
        fleet(mode="turbo")
    nan_trace = simple_trace([math.nan], 100, 5)
    with pytest.raises(ValueError, match="arrival"):
        simulate(nan_trace, routing.build("round_robin"), fleet())
    assert simulate(trace, routing.build("round_robin"), fleet()).records[0].status == "ok"
