"""Invariants of the engine model that must hold after every step, for any input."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.engine import Engine, EngineConfig, RequestTooLong
from sim.latency import LatencyModel
from sim.request import EngineRequest, Status

LAT = LatencyModel(step_s=0.01, token_s=1e-4, seq_s=1e-3, prefill_attn_s=1e-8, decode_attn_s=1e-6)

# A few shared prefixes so that prompts hit each other's blocks.
PREFIXES = [[1000 * p + i for i in range(12)] for p in range(3)]

request_st = st.tuples(
    st.integers(1, 200),  # prompt length
    st.integers(1, 60),  # output length
    st.integers(-1, 2),  # which shared prefix (-1: none)
    st.integers(0, 12),  # how many of its blocks
)
op_st = st.one_of(
    st.tuples(st.just("add"), request_st),
    st.tuples(st.just("step"), st.integers(1, 40)),  # plan up to k steps
    st.tuples(st.just("cut"), st.integers(1, 40)),  # plan a run, complete part of it
    st.tuples(st.just("abort"), st.integers(0, 50)),
)


def _hashes(rid, prompt_len, prefix, nblocks):
    full = prompt_len // 16
    chain = PREFIXES[prefix][: min(nblocks, full)] if prefix >= 0 else []
    return chain + [rid * 100_000 + i for i in range(full - len(chain))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(op_st, min_size=1, max_size=80),
    blocks=st.integers(8, 60),
    seqs=st.integers(1, 8),
    budget=st.integers(16, 300),
    caching=st.booleans(),
    group=st.booleans(),
    async_scheduling=st.booleans(),
)
def test_invariants_hold_at_every_step(ops, blocks, seqs, budget, caching, group, async_scheduling):
    eng = Engine(EngineConfig(num_kv_blocks=blocks, block_size=16, max_num_seqs=seqs,
                              max_num_batched_tokens=budget, enable_prefix_caching=caching,
                              async_scheduling=async_scheduling), LAT,
                 decode_group=group)
    added: list[int] = []
    finished: set[int] = set()
    aborted: set[int] = set()
    first_admitted: list[int] = []
    t = 0.0
    next_id = 0

    def check(plan=None):
        eng.sync_all()  # decode-group members keep their counters as offsets
        live = set(eng.requests)
        # Asynchronous scheduling: finished requests keep their seats until the next schedule.
        held = {r.id for r in eng.scheduler.finishing}
        assert held <= finished
        running = [r.id for r in eng.running if r.id not in held]
        waiting = [r.id for r in eng.waiting]
        # every request is in exactly one place: no loss, no duplicate
        assert len(running) + len(waiting) == len(live)
        assert set(running) | set(waiting) == live
        assert live.isdisjoint(finished) and live.isdisjoint(aborted)
        assert live | finished | aborted == set(added)
        assert len(running) + len(held) <= seqs
        assert 0 <= eng.kv.num_used <= blocks
        # Finished requests hold their blocks through the next schedule (async).
        eng.kv.check_invariants(list(eng.requests.values()) + eng.scheduler.finishing)
        for r in eng.running:
            if r.id in held:
                continue
            assert r.status == Status.RUNNING
            assert r.num_blocks >= -(-r.num_computed // 16)
        if plan is not None:
            assert plan.num_tokens == sum(n for _, n in plan.scheduled) + plan.group_size
            assert plan.num_tokens <= budget
        for r in eng.running:
            if r.id not in first_admitted:
                first_admitted.append(r.id)
        # FCFS: first admissions happen in arrival order
        assert first_admitted == sorted(first_admitted)

    for op, arg in ops:
        if op == "add":
            plen, out, prefix, nb = arg
            rid = next_id
            next_id += 1
            req = EngineRequest(rid, plen, out, _hashes(rid, plen, prefix, nb))
            try:
                eng.add_request(req)
            except RequestTooLong:
                continue
            added.append(rid)
        elif op == "abort":
            if added:
                rid = added[arg % len(added)]
                if eng.abort(rid) is not None:
                    aborted.add(rid)
        else:
            plan = eng.plan(max_steps=arg)
            if plan is None:
                continue
            steps = plan.steps if op == "step" else max(1, plan.steps // 2)
            out = eng.complete(plan, steps, t)
            t += plan.time_of(steps)
            for r in out.finished:
                assert r.num_output == r.max_tokens
                finished.add(r.id)
            check(plan)
            continue
        check()
    # Drain: everything left finishes, nothing is stuck.
    for _ in range(10_000):
        plan = eng.plan(max_steps=50)
        if plan is None:
            break
        out = eng.complete(plan, plan.steps, t)
        t += plan.duration
        finished.update(r.id for r in out.finished)
        check(plan)
    assert not eng.has_work
    assert finished | aborted == set(added)
    assert eng.kv.num_used == 0
