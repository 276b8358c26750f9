"""Rules of vLLM 0.32's scheduler and block pool that the engine model follows, by hand.

Each test is worked out in its comments from vLLM's code (``block_pool.py``,
``kv_cache_manager.py``, ``scheduler.py``, ``async_scheduler.py``,
``engine/core.py``) and would fail without the rule it names. The differential
test (``test_sim_engine_vs_vllm.py``) checks the same rules against vLLM itself.
"""
from __future__ import annotations

import pytest

from routing.kv_events import BlockStored
from sim.engine import Engine, EngineConfig
from sim.latency import LatencyModel
from sim.request import EngineRequest

# A step costs 10 ms + 0.1 ms per token + 1 ms per sequence (no attention terms).
LAT = LatencyModel(step_s=0.01, token_s=1e-4, seq_s=1e-3, prefill_attn_s=0.0, decode_attn_s=0.0)


def engine(blocks=1000, seqs=256, budget=2048, *, group=True, async_scheduling=False,
           events=None) -> Engine:
    cfg = EngineConfig(num_kv_blocks=blocks, block_size=16, max_num_seqs=seqs,
                       max_num_batched_tokens=budget, async_scheduling=async_scheduling)
    return Engine(cfg, LAT, decode_group=group, kv_events=events)


def run_to_idle(eng: Engine, t: float = 0.0) -> float:
    while eng.has_work:
        plan = eng.plan()
        out = eng.complete(plan, 1, t)
        t = out.end_time
    return t


def scheduled_ids(eng: Engine, plan) -> list[int]:
    eng.sync_all()
    ids = {r.id for r, _ in plan.scheduled}
    if eng.fast is not None:
        ids |= {r.id for r in eng.fast.group.members}
    return sorted(ids)


@pytest.fixture(params=[False, True], ids=["reference", "decode-group"])
def group(request):
    return request.param


def test_freed_blocks_without_a_hash_are_reused_first(group):
    # 5 usable blocks. B (32-token prompt: 2 full blocks) runs and finishes: the queue
    # is [3 never-used, b2, b1] (cached blocks go to the back, tail first). A (40
    # tokens: a1, a2 full and a3 holding 8 tokens) takes the 3 never-used blocks and
    # finishes: a3 has no hash, so it goes to the *front*: [a3, b2, b1, a2, a1].
    eng = engine(blocks=6, group=group)
    eng.add_request(EngineRequest(1, 32, 1, prompt_hashes=[201, 202]))
    t = run_to_idle(eng)
    eng.add_request(EngineRequest(2, 40, 1, prompt_hashes=[101, 102]))
    t = run_to_idle(eng, t)
    # C needs 2 blocks: a3 (nothing to evict) and b2. b1 survives.
    eng.add_request(EngineRequest(3, 32, 1, prompt_hashes=[301, 302]))
    t = run_to_idle(eng, t)
    # B's prompt again: at most 31 tokens may hit, i.e. block b1: 16 tokens. (Had a3
    # gone to the back, C would have evicted b2 and b1, and nothing would hit.)
    again = EngineRequest(4, 32, 1, prompt_hashes=[201, 202])
    eng.add_request(again)
    run_to_idle(eng, t)
    assert again.num_cached == 16


def test_blocks_a_reply_fills_are_cached_for_the_next_turn(group):
    # Turn 1: a 32-token prompt (blocks h1, h2) and a 20-token reply. vLLM hashes
    # and caches every full block, generated ones too: tokens 32..47 (16 reply
    # tokens) fill block h3; the last computed token is 32 + 20 - 1 = 51, so block
    # 3 (48..63) never fills. Turn 2's prompt is turn 1's prompt + reply + 12 new
    # tokens = 64 tokens: blocks h1, h2, h3, h4. At most 63 tokens may hit: 3 blocks.
    eng = engine(group=group)
    eng.add_request(EngineRequest(1, 32, 20, prompt_hashes=[1, 2], output_hashes=[3]))
    t = run_to_idle(eng)
    turn2 = EngineRequest(2, 64, 5, prompt_hashes=[1, 2, 3, 4])
    eng.add_request(turn2)
    run_to_idle(eng, t)
    assert turn2.num_cached == 48
    # Without the reply's hashes (no later prompt holds the reply), only the prompt hits.
    eng = engine(group=group)
    eng.add_request(EngineRequest(1, 32, 20, prompt_hashes=[1, 2]))
    t = run_to_idle(eng)
    turn2 = EngineRequest(2, 64, 5, prompt_hashes=[1, 2, 3, 4])
    eng.add_request(turn2)
    run_to_idle(eng, t)
    assert turn2.num_cached == 32


def test_a_running_turn_hits_the_reply_blocks_of_a_turn_still_decoding(group):
    # Turn 2 arrives while turn 1 is still decoding: it hits the reply blocks turn 1
    # has filled so far (cached when the step filling them was scheduled), touching
    # blocks turn 1 still holds. Turn 1 (prompt 32 = h1 h2) has its 17th token after
    # 17 steps: the step computing token 16 (position 47) filled h3 at step 17.
    eng = engine(group=group)
    eng.add_request(EngineRequest(1, 32, 40, prompt_hashes=[1, 2], output_hashes=[3, 4]))
    t = 0.0
    for _ in range(17):
        plan = eng.plan()
        t = eng.complete(plan, 1, t).end_time
    turn2 = EngineRequest(2, 80, 3, prompt_hashes=[1, 2, 3, 4, 5])
    eng.add_request(turn2)
    plan = eng.plan()
    eng.complete(plan, 1, t)
    assert turn2.num_cached == 48


def test_prefix_counters_skip_requests_that_do_not_look_the_cache_up():
    # With prefix caching off vLLM records no query (record_prefix_cache_stats returns
    # early when the lookup is disabled); KV usage still counts.
    eng = Engine(EngineConfig(num_kv_blocks=100, enable_prefix_caching=False), LAT)
    eng.add_request(EngineRequest(1, 64, 1, prompt_hashes=[1, 2, 3, 4]))
    run_to_idle(eng)
    m = eng.published
    assert (m.prefix_queries, m.prefix_hits) == (0, 0)


# --- asynchronous scheduling -----------------------------------------------------------------
def test_async_a_finished_request_keeps_its_seat_one_step_longer(group):
    # Two seats. C (10 tokens out) and A (2 out) prefill at step 1 and decode at step
    # 2, where A gets its last token. B waits for a seat.
    # Synchronous: step 3 is scheduled after step 2's output: A is gone, B runs.
    # Asynchronous: step 3 was scheduled while step 2 ran, with A still holding its
    # seat (vLLM skips it: its last token is in flight); A leaves when step 2's
    # output is applied, and B runs at step 4.
    def firsts(async_scheduling):
        eng = engine(seqs=2, group=group, async_scheduling=async_scheduling)
        for rid, out in ((3, 10), (1, 2), (2, 1)):
            eng.add_request(EngineRequest(rid, 16, out))
        steps, t = [], 0.0
        while eng.has_work and len(steps) < 6:
            plan = eng.plan()
            steps.append(scheduled_ids(eng, plan))
            t = eng.complete(plan, 1, t).end_time
        return steps

    assert firsts(False)[:4] == [[1, 3], [1, 3], [2, 3], [3]]
    assert firsts(True)[:4] == [[1, 3], [1, 3], [3], [2, 3]]


def test_async_a_request_arriving_during_a_step_joins_the_step_after_next(group):
    # vLLM schedules step k+1 when step k starts (two batches in flight), so a
    # request that reaches the engine while step k runs misses step k+1.
    def first_step_of_b(async_scheduling):
        eng = engine(group=group, async_scheduling=async_scheduling)
        eng.add_request(EngineRequest(1, 16, 50))
        t = 0.0
        for k in range(1, 8):
            plan = eng.plan()
            if 2 in scheduled_ids(eng, plan):
                return k
            if k == 3:  # B arrives in the middle of step 3
                eng.add_request(EngineRequest(2, 16, 5), now=t + plan.first / 2)
            t = eng.complete(plan, 1, t).end_time
        return None

    assert first_step_of_b(False) == 4
    assert first_step_of_b(True) == 5


def test_async_a_block_is_cached_when_the_token_completing_it_comes_out(group):
    # A 15-token prompt holds no full block. Step 1 computes it and samples token 16;
    # step 2 computes position 15, which fills block 0.
    # Synchronous: allocate_slots at step 2's schedule caches it (16 tokens known).
    # Asynchronous: at step 2's schedule token 16 is still in flight (a placeholder),
    # so only 15 tokens are known; the block is cached at step 3's schedule.
    def stored_at(async_scheduling):
        events: list = []
        eng = engine(group=group, async_scheduling=async_scheduling, events=lambda e, t: events.append(e))
        eng.add_request(EngineRequest(1, 15, 5, output_hashes=[77]))
        t = 0.0
        for k in range(1, 5):
            plan = eng.plan()
            if any(isinstance(e, BlockStored) for e in events):
                return k
            t = eng.complete(plan, 1, t).end_time
        return None

    assert stored_at(False) == 2
    assert stored_at(True) == 3
