"""KV-cache events from the engine model: what vLLM's block pool would publish.

A hand-worked stream, then properties: replaying the events rebuilds the
engine's cached blocks exactly, and the fast paths (decode group, decode runs,
block extents) emit the very stream the reference emits.
"""
from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored
from sim.engine import Engine, EngineConfig, RequestTooLong
from sim.latency import LatencyModel
from sim.request import EngineRequest

LAT = LatencyModel(step_s=0.01, token_s=1e-4, seq_s=1e-3, prefill_attn_s=1e-8, decode_attn_s=1e-6)


def run_to_idle(eng: Engine, t: float = 0.0) -> float:
    while eng.has_work:
        plan = eng.plan()
        t = eng.complete(plan, 1, t).end_time
    return t


def test_a_hand_worked_stream():
    # 5 usable blocks of 16. A: 40-token prompt (blocks 1, 2 full) and a 20-token
    # reply whose first 8 tokens complete block 3 (tokens 32..47, at the decode step
    # computing position 47); A computes 59 tokens, so block 4 never fills.
    events: list = []
    eng = Engine(EngineConfig(num_kv_blocks=6, block_size=16), LAT,
                 kv_events=lambda e, t: events.append(e))
    eng.add_request(EngineRequest(1, 40, 20, prompt_hashes=[1, 2], output_hashes=[3]))
    t = run_to_idle(eng)
    assert events == [BlockStored((1, 2), None, 16), BlockStored((3,), 2, 16)]
    # Free queue now: [A's partial block + the never-used one (no hash: front), 3, 2, 1].
    # B needs 3 blocks: the 2 at the front, then block 3, which is evicted.
    events.clear()
    eng.add_request(EngineRequest(2, 48, 1, prompt_hashes=[7, 8, 9]))
    run_to_idle(eng, t)
    assert events == [BlockRemoved((3,)), BlockStored((7, 8, 9), None, 16)]
    events.clear()
    assert eng.reset_prefix_cache()
    assert events == [AllBlocksCleared()]
    assert eng.kv.cached_hashes() == {}


def test_no_sink_builds_no_event():
    eng = Engine(EngineConfig(num_kv_blocks=6, block_size=16), LAT)
    assert eng.kv.events is None
    eng.add_request(EngineRequest(1, 40, 20, prompt_hashes=[1, 2], output_hashes=[3]))
    run_to_idle(eng)


def replay(events, counts: Counter) -> None:
    """A consumer's view: per hash, how many cached blocks carry it."""
    for e in events:
        if isinstance(e, BlockStored):
            counts.update(e.block_hashes)
        elif isinstance(e, BlockRemoved):
            for h in e.block_hashes:
                counts[h] -= 1
                assert counts[h] >= 0, f"block {h} removed more often than stored"
        else:
            counts.clear()
    events.clear()


# Conversations: turn t's prompt holds turn t-1's prompt and reply, so reply blocks are
# hit; a few system prompts are shared; some prompts end inside a block.
SYSTEMS = [[900_000 + 100 * s + i for i in range(4)] for s in range(3)]

request_st = st.tuples(
    st.integers(0, 5),  # conversation
    st.integers(1, 70),  # new prompt tokens
    st.integers(1, 50),  # output length
    st.integers(-1, 2),  # system prompt (-1: none)
)


def make_requests(specs):
    """Engine requests with prompt and reply hashes as a trace gives them (block size 16)."""
    convs: dict[int, tuple[list[int], int]] = {}  # conversation -> (chain so far, tokens so far)
    out = []
    for rid, (conv, new, m, system) in enumerate(specs):
        chain, length = convs.get(conv, (list(SYSTEMS[system]) if system >= 0 else [], 64 if system >= 0 else 0))
        p = length + new
        # The chain of this prompt: the known chain, then new blocks unique to this request.
        full = chain[: p // 16] + [rid * 1000 + i for i in range(len(chain), p // 16)]
        reply = [rid * 1000 + 500 + i for i in range(p // 16, (p + m - 1) // 16)]
        out.append(EngineRequest(rid, p, m, prompt_hashes=full, output_hashes=reply))
        convs[conv] = (full + reply, p + m)
    return out


op_st = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 10_000)),
    st.tuples(st.just("step"), st.integers(1, 30)),
    st.tuples(st.just("cut"), st.integers(2, 30)),
    st.tuples(st.just("abort"), st.integers(0, 100)),
    st.tuples(st.just("reset"), st.just(0)),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(request_st, min_size=1, max_size=40), ops=st.lists(op_st, max_size=90),
       blocks=st.integers(8, 60), seqs=st.integers(1, 6), budget=st.integers(16, 200),
       caching=st.booleans(), group=st.booleans(), async_scheduling=st.booleans())
def test_replaying_the_events_rebuilds_the_cached_blocks(specs, ops, blocks, seqs, budget, caching,
                                                         group, async_scheduling):
    events: list = []
    eng = Engine(EngineConfig(num_kv_blocks=blocks, block_size=16, max_num_seqs=seqs,
                              max_num_batched_tokens=budget, enable_prefix_caching=caching,
                              async_scheduling=async_scheduling), LAT,
                 decode_group=group, kv_events=lambda e, t: events.append(e))
    pending = make_requests(specs)
    counts: Counter = Counter()
    t = 0.0

    def check():
        replay(events, counts)
        eng.sync_all()
        holders = list(eng.requests.values()) + list(eng.scheduler.finishing)
        assert +counts == Counter(eng.kv.cached_hashes(holders))

    for op, arg in ops:
        if op == "add" and pending:
            try:
                eng.add_request(pending.pop(0), now=t)
            except RequestTooLong:
                pass
        elif op == "abort" and eng.requests:
            eng.abort(sorted(eng.requests)[arg % len(eng.requests)])
        elif op == "reset":
            eng.reset_prefix_cache()
        elif op in ("step", "cut"):
            plan = eng.plan(max_steps=arg)
            if plan is None:
                continue
            steps = plan.steps if op == "step" else max(1, plan.steps // 2)
            out = eng.complete(plan, steps, t)
            t = out.end_time
        check()
    while eng.has_work:
        plan = eng.plan(max_steps=20)
        t = eng.complete(plan, plan.steps, t).end_time
        check()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(request_st, min_size=1, max_size=40),
       arrivals=st.lists(st.integers(0, 6), min_size=40, max_size=40),
       blocks=st.integers(10, 80), seqs=st.integers(1, 8), budget=st.integers(16, 300),
       caching=st.booleans(), async_scheduling=st.booleans())
def test_the_fast_paths_emit_the_reference_stream(specs, arrivals, blocks, seqs, budget, caching,
                                                  async_scheduling):
    """The reference steps one step at a time; the fast engine runs decode runs up to
    the next arrival (as the cluster does) with its decode group and block extents.
    Events and the ticks they come with are equal."""
    gaps = arrivals[: len(specs)]

    def run(fast: bool):
        events: list = []
        eng = Engine(EngineConfig(num_kv_blocks=blocks, block_size=16, max_num_seqs=seqs,
                                  max_num_batched_tokens=budget, enable_prefix_caching=caching,
                                  async_scheduling=async_scheduling), LAT,
                     decode_group=fast, kv_events=lambda e, t: events.append((e, t)))
        reqs = make_requests(specs)
        if fast:  # leading blocks another request shares; the rest are counted, not named
            owners: dict[int, set[int]] = {}
            for r in reqs:
                for h in r.block_hashes:
                    owners.setdefault(h, set()).add(r.id)
            for r in reqs:
                k = 0
                while k < len(r.block_hashes) and len(owners[r.block_hashes[k]]) > 1:
                    k += 1
                r.num_shareable = k
        due, step, t = 0, 0, 0.0  # request i arrives before step sum(gaps[:i+1])
        schedule = []
        for i, g in enumerate(gaps):
            due += g
            schedule.append(due)
        i = 0
        outcome = {}
        while i < len(reqs) or eng.has_work:
            while i < len(reqs) and schedule[i] <= step:
                try:
                    eng.add_request(reqs[i], now=t)
                except RequestTooLong:
                    pass
                i += 1
            if not eng.has_work:
                if i == len(reqs):
                    break  # the last ones were too long for the cache
                step = schedule[i]
                continue
            horizon = (schedule[i] - step) if i < len(reqs) else 1 << 20
            plan = eng.plan(max_steps=max(1, horizon) if fast else 1)
            out = eng.complete(plan, plan.steps, t)
            t = out.end_time
            step += plan.steps
            for r in out.finished:
                outcome[r.id] = (r.num_output, r.num_cached, r.num_preemptions)
        return events, outcome

    ref_events, ref = run(False)
    fast_events, fast = run(True)
    assert fast == ref
    assert fast_events == ref_events
