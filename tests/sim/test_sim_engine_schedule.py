"""The engine model against schedules worked out by hand from vLLM V1's rules.

Every expected number below is derived in the comments from the scheduling rules
and the latency formula, not taken from the code under test.
"""
from __future__ import annotations

import math
import sys

import pytest

from sim.engine import Engine, EngineConfig, RequestTooLong
from sim.latency import LatencyModel
from sim.request import EngineRequest, Status

# Round numbers make the hand arithmetic easy: a step costs 10 ms + 0.1 ms per token
# + 1 ms per sequence + 1e-7 s per prefill attention pair + 1e-5 s per decode context token.
LAT = LatencyModel(step_s=0.01, token_s=1e-4, seq_s=1e-3, prefill_attn_s=1e-7, decode_attn_s=1e-5)


@pytest.fixture(params=[True, False], ids=["decode-group", "per-request"], autouse=True)
def group(request, monkeypatch):
    """Every schedule holds with and without the decode group."""
    monkeypatch.setattr(sys.modules[__name__], "GROUP", request.param)
    return request.param


GROUP = True


def engine(blocks=1000, seqs=256, budget=2048, caching=True) -> Engine:
    return Engine(EngineConfig(num_kv_blocks=blocks, block_size=16, max_num_seqs=seqs,
                               max_num_batched_tokens=budget, enable_prefix_caching=caching), LAT,
                  decode_group=GROUP)


class Step:
    """A planned and completed step, with every scheduled request in running order."""

    def __init__(self, eng: Engine, now: float) -> None:
        self.plan = eng.plan()
        eng.sync_all()
        chunk = {id(r): n for r, n in self.plan.scheduled}
        self.scheduled = [(r, chunk.get(id(r), 1)) for r in eng.running
                          if id(r) in chunk or r.in_group]
        self.out = eng.complete(self.plan, 1, now)
        eng.sync_all()

    @property
    def ids(self):
        return [(r.id, n) for r, n in self.scheduled]


def step(eng: Engine, now: float):
    s = Step(eng, now)
    return s, s.out


def chain(*ids):
    return list(ids)


def test_chunked_prefill_splits_a_long_prompt_by_the_token_budget():
    eng = engine(budget=2048)
    eng.add_request(EngineRequest(1, prompt_len=5000, max_tokens=3))
    # 5000 = 2048 + 2048 + 904: three prefill steps; the first token comes with the third.
    p1, o1 = step(eng, 0.0)
    assert p1.ids == [(1, 2048)]
    assert o1.emitted == []
    # step = 0.01 + 2048*1e-4 + 1e-3 + 1e-7 * 2048*(0 + 2049/2)
    assert p1.plan.first == pytest.approx(0.01 + 0.2048 + 0.001 + 1e-7 * 2048 * 1024.5)
    p2, _ = step(eng, 1.0)
    assert [n for _, n in p2.ids] == [2048]
    # the second chunk attends to the 2048 tokens already computed
    assert p2.plan.first == pytest.approx(0.01 + 0.2048 + 0.001 + 1e-7 * 2048 * (2048 + 2049 / 2))
    p3, o3 = step(eng, 2.0)
    assert [n for _, n in p3.ids] == [904]
    req = o3.first_tokens[0]
    assert req.id == 1 and req.num_output == 1
    assert req.first_token_time == pytest.approx(2.0 + p3.plan.first)
    # then decodes: one token per step over a context of 5001 tokens
    p4, o4 = step(eng, 3.0)
    assert [n for _, n in p4.ids] == [1]
    assert p4.plan.first == pytest.approx(0.01 + 1e-4 + 1e-3 + 1e-5 * 5001)
    assert o4.finished == [] and req.num_output == 2
    _, o5 = step(eng, 4.0)
    assert o5.finished == [req] and req.status == Status.FINISHED
    assert eng.kv.num_used == 0  # every block back (still cached, but free)


def test_running_requests_are_scheduled_before_waiting_ones_and_share_the_budget():
    eng = engine(budget=100)
    eng.add_request(EngineRequest(1, prompt_len=60, max_tokens=5))
    step(eng, 0.0)  # request 1 prefills its 60 tokens and emits its first token
    eng.add_request(EngineRequest(2, prompt_len=300, max_tokens=5))
    plan, _ = step(eng, 1.0)
    # request 1 decodes (1 token) first; request 2 gets the remaining 99 of the budget
    assert plan.ids == [(1, 1), (2, 99)]


def test_admission_needs_room_for_the_whole_sequence_and_is_fcfs():
    # 10 usable blocks of 16 tokens (a server reporting 11: one is vLLM's null block).
    # Request 1 holds ceil(100/16) = 7 blocks after its prefill.
    eng = engine(blocks=11, budget=4096)
    eng.add_request(EngineRequest(1, prompt_len=100, max_tokens=2))
    step(eng, 0.0)
    assert eng.kv.num_used == 7
    # Request 2 needs ceil(60/16) = 4 blocks but only 3 are free: it waits, even though
    # its first chunk alone would fit; request 3 (1 block) queues behind it (FCFS).
    eng.add_request(EngineRequest(2, prompt_len=60, max_tokens=2))
    eng.add_request(EngineRequest(3, prompt_len=10, max_tokens=2))
    plan, out = step(eng, 1.0)
    assert [i for i, _ in plan.ids] == [1]
    assert out.finished[0].id == 1  # request 1 is done: its 7 blocks are free again
    plan, _ = step(eng, 2.0)
    assert [i for i, _ in plan.ids] == [2, 3]


def test_max_num_seqs_caps_the_running_set():
    eng = engine(seqs=2)
    for i in range(3):
        eng.add_request(EngineRequest(i, prompt_len=20, max_tokens=4))
    plan, _ = step(eng, 0.0)
    assert [i for i, _ in plan.ids] == [0, 1]
    assert len(eng.running) == 2 and [r.id for r in eng.waiting] == [2]


def test_prefix_hit_skips_cached_blocks_but_recomputes_the_last_token():
    eng = engine()
    hashes = chain(11, 12, 13, 14)  # a 64-token prompt is exactly 4 full blocks
    eng.add_request(EngineRequest(1, prompt_len=64, max_tokens=1, prompt_hashes=hashes))
    step(eng, 0.0)
    # The same prompt again: at most num_tokens - 1 = 63 tokens may hit, i.e. 3 full
    # blocks (48 tokens); the 4th block is recomputed (16 tokens).
    eng.add_request(EngineRequest(2, prompt_len=64, max_tokens=1, prompt_hashes=hashes))
    plan, _ = step(eng, 1.0)
    req, n = plan.scheduled[0]
    assert (req.id, n, req.num_cached) == (2, 16, 48)
    assert plan.plan.first == pytest.approx(0.01 + 16e-4 + 1e-3 + 1e-7 * 16 * (48 + 17 / 2))
    # A prompt sharing the first two blocks then diverging hits exactly 2 blocks.
    eng.add_request(EngineRequest(3, prompt_len=80, max_tokens=1, prompt_hashes=chain(11, 12, 99, 98, 97)))
    plan, _ = step(eng, 2.0)
    assert plan.scheduled[0][0].num_cached == 32 and plan.scheduled[0][1] == 48
    m = eng.published
    assert m.prefix_queries == 64 + 64 + 80 and m.prefix_hits == 0 + 48 + 32


def test_prefix_caching_off_never_hits():
    eng = engine(caching=False)
    for rid in (1, 2):
        eng.add_request(EngineRequest(rid, prompt_len=64, max_tokens=1, prompt_hashes=chain(1, 2, 3, 4)))
        plan, _ = step(eng, float(rid))
        assert plan.scheduled[0][1] == 64


def test_lru_eviction_takes_the_oldest_freed_blocks_tail_first():
    # 6 usable blocks. A (blocks a1,a2) finishes, then B (b1,b2) finishes: the free
    # queue is [2 never-used, a2, a1, b2, b1]; tails are freed first.
    eng = engine(blocks=7)
    eng.add_request(EngineRequest(1, prompt_len=32, max_tokens=1, prompt_hashes=chain(101, 102)))
    step(eng, 0.0)
    eng.add_request(EngineRequest(2, prompt_len=32, max_tokens=1, prompt_hashes=chain(201, 202)))
    step(eng, 1.0)
    # C needs 4 blocks: it takes the 2 never-used blocks, then a2 and a1 (A's tail first).
    eng.add_request(EngineRequest(3, prompt_len=64, max_tokens=1, prompt_hashes=chain(301, 302, 303, 304)))
    step(eng, 2.0)
    # B's blocks survived: a request with B's prompt hits 1 block (the cap is 31 tokens);
    # A's blocks were evicted: A's prompt hits nothing.
    eng.add_request(EngineRequest(4, prompt_len=32, max_tokens=1, prompt_hashes=chain(201, 202)))
    plan, _ = step(eng, 3.0)
    assert plan.scheduled[0][0].num_cached == 16
    eng.add_request(EngineRequest(5, prompt_len=32, max_tokens=1, prompt_hashes=chain(101, 102)))
    plan, _ = step(eng, 4.0)
    assert plan.scheduled[0][0].num_cached == 0


def test_preemption_evicts_the_newest_running_request_and_recomputes_it():
    # 5 usable blocks of 16. A (prompt 16, 20 tokens out) and B (prompt 16, 60 out) prefill
    # together (1 block each), then decode in lockstep. Decode step k schedules token
    # 16+k, needing blocks_for(16+k): at k=1 both take a 2nd block (4 used); at k=17
    # both need a 3rd: A takes the last free block, B finds none and, being the newest
    # running request, preempts itself. B then has 17 outputs and 32 computed tokens.
    eng = engine(blocks=6)
    eng.add_request(EngineRequest(1, prompt_len=16, max_tokens=20))
    eng.add_request(EngineRequest(2, prompt_len=16, max_tokens=60))
    step(eng, 0.0)
    for k in range(1, 17):
        step(eng, float(k))
    assert eng.preemptions == 0 and eng.kv.num_used == 4
    plan, _ = step(eng, 17.0)
    assert eng.preemptions == 1
    assert plan.ids == [(1, 1)]
    b = eng.requests[2]
    assert b.status == Status.WAITING and eng.waiting[0] is b
    assert (b.num_computed, b.num_output, b.num_preemptions) == (0, 17, 1)
    assert eng.kv.num_used == 3  # A's 3 blocks; B's 2 are free (and still cached)
    # A had 1 token after the prefill and 1 per decode step: its 20th comes at step 19.
    # B is not admitted meanwhile: it needs blocks_for(33) = 3 blocks, 2 of them its
    # own cached ones; 2 blocks are free but touching the cached ones uses both.
    for k in (18, 19):
        plan, out = step(eng, float(k))
        assert [i for i, _ in plan.ids] == [1]
    assert out.finished and out.finished[0].id == 1
    # Now B resumes: 2 full private blocks (32 tokens) hit, 1 token is recomputed.
    plan, out = step(eng, 20.0)
    req, n = plan.scheduled[0]
    assert (req.id, n) == (2, 1)
    # vLLM's prefix-cache counters count first admissions only (a re-admission after
    # a preemption goes to PrefixCacheStats.preempted_*): 16 + 16 queried, no hit.
    m = eng.published
    assert (m.prefix_queries, m.prefix_hits) == (32, 0)
    assert out.emitted == [req] and req.num_output == 18


def test_request_larger_than_the_kv_cache_is_refused():
    eng = engine(blocks=5)  # 4 usable blocks: 64 tokens
    with pytest.raises(RequestTooLong):
        eng.add_request(EngineRequest(1, prompt_len=60, max_tokens=10))


def test_the_null_block_holds_no_tokens():
    # vLLM's block pool keeps block 0 as its null block: a server reporting
    # num_gpu_blocks = 5 has 4 blocks (64 tokens) for requests, and its KV usage
    # is out of 4.
    eng = engine(blocks=5)
    assert eng.kv.num_blocks == 4 and eng.max_tokens_total == 64
    with pytest.raises(RequestTooLong):
        eng.add_request(EngineRequest(1, prompt_len=60, max_tokens=5))  # 65 tokens
    eng.add_request(EngineRequest(2, prompt_len=40, max_tokens=5))
    step(eng, 0.0)
    # The prefill computed 40 tokens: ceil(40/16) = 3 blocks in use, 3 of 4 usable.
    assert eng.kv.num_used == 3
    assert eng.published.kv_usage == pytest.approx(3 / 4)


def test_abort_frees_blocks_and_removes_the_request():
    eng = engine()
    eng.add_request(EngineRequest(1, prompt_len=100, max_tokens=50))
    step(eng, 0.0)
    assert eng.kv.num_used == 7
    eng.abort(1)
    assert eng.kv.num_used == 0 and not eng.has_work


def test_decode_run_matches_single_steps():
    # Two engines: the reference steps 30 decode steps one by one, request by request;
    # the decode group plans them as one run.
    def setup(group):
        e = Engine(EngineConfig(num_kv_blocks=1000, block_size=16), LAT, decode_group=group)
        for i in range(3):
            e.add_request(EngineRequest(i, prompt_len=40 + i, max_tokens=200))
        step(e, 0.0)
        return e

    a, b = setup(False), setup(True)
    t = 1.0
    for _ in range(30):
        plan = a.plan()
        a.complete(plan, 1, t)
        t += plan.first
    run = b.plan(max_steps=30)
    assert run.is_run and run.steps == 30
    b.complete(run, 30, 1.0)
    a.sync_all()
    b.sync_all()
    assert b.running[0].last_token_time == pytest.approx(t)
    for ra, rb in zip(a.running, b.running):
        assert (ra.num_output, ra.num_computed, ra.num_blocks) == (rb.num_output, rb.num_computed, rb.num_blocks)
        assert list(ra.itl.gaps()) == pytest.approx(list(rb.itl.gaps()))
    assert a.kv.num_used == b.kv.num_used


def test_steps_done_by_inverts_time_of():
    eng = Engine(EngineConfig(num_kv_blocks=1000, block_size=16), LAT)  # decode runs need the group
    for i in range(4):
        eng.add_request(EngineRequest(i, prompt_len=20, max_tokens=500))
    step(eng, 0.0)
    run = eng.plan(max_steps=400)
    for m in (0, 1, 2, 57, 399):
        t = run.time_of(m)
        assert run.steps_done_by(t) == m
        assert run.steps_done_by(t + 1e-12 + (run.time_of(m + 1) - t) / 2) == m
    assert math.isclose(run.duration, run.time_of(run.steps))
