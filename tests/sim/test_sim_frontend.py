"""The API-server front end (``sim.frontend``): FIFO arithmetic, closed-form runs, the cluster hook."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import routing
from sim.cluster import simulate
from sim.engine import Plan
from sim.frontend import FrontEnd, FrontEndError, FrontEndModel
from sim.latency import LatencyModel, LatencyProfile, ProfileError

from sim_helpers import conversation_trace, fleet, profile, record_differences, simple_trace


def _run(steps: int, first: float, delta: float, tokens: int) -> Plan:
    return Plan([], steps, first, delta, True, 0, 0, tokens)


def test_input_jobs_are_served_one_at_a_time_in_arrival_order():
    fe = FrontEnd(FrontEndModel(input_s=0.01, input_token_s=1e-5))
    assert fe.admit(0.0, 100) == pytest.approx(0.011)     # 10 ms + 100 tokens * 10 us
    assert fe.admit(0.005, 0) == pytest.approx(0.021)     # waits for the first job
    assert fe.admit(1.0, 0) == pytest.approx(1.01)        # an idle server starts at once


def test_outputs_of_steps_that_ended_are_served_before_a_later_arrival():
    # A 4-step decode run of 10 ms steps, each emitting 3 tokens: output job 2 + 3*1 = 5 ms.
    fe = FrontEnd(FrontEndModel(input_s=0.004, output_step_s=0.002, output_token_s=0.001))
    fe.track(0.0, _run(4, 0.010, 0.0, 3))
    # At 25 ms steps 1 and 2 have ended; their jobs ran 10-15 and 20-25 ms; the input then runs 25-29.
    assert fe.admit(0.025, 0) == pytest.approx(0.029)
    # Step 3's job waits for the input (30 ms is after 29: no wait), step 4's starts at 40 ms.
    assert fe.complete(4) == pytest.approx(0.045)
    assert fe.jobs == 5


def test_a_saturated_front_end_delivers_at_its_own_pace():
    # Output jobs of 15 ms behind 10 ms steps: the backlog grows by 5 ms a step.
    fe = FrontEnd(FrontEndModel(output_step_s=0.015))
    fe.track(0.0, _run(5, 0.010, 0.0, 1))
    assert fe.complete(5) == pytest.approx(0.010 + 5 * 0.015)


def _reference_fifo(model, start, plan, tokens, arrivals, cut):
    """Serve every job one by one in arrival order (outputs of a step before an input at the same time)."""
    jobs = [(start + plan.time_of(j), 0, model.output_cost(tokens)) for j in range(1, cut + 1)]
    jobs += [(t, 1, model.input_cost(n)) for t, n in arrivals]
    free, done = -math.inf, []
    for t, kind, cost in sorted(jobs):
        free = max(free, t) + cost
        done.append((kind, free))
    return [f for k, f in done if k == 1], free


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.integers(1, 40),
    first=st.floats(0.001, 0.05),
    delta=st.sampled_from([0.0, 1e-5, 3e-4]),
    tokens=st.integers(1, 64),
    out_step=st.floats(0.0, 0.02),
    out_tok=st.sampled_from([0.0, 1e-4, 1e-3]),
    in_s=st.floats(0.0, 0.03),
    arrivals=st.lists(st.tuples(st.floats(0.0, 2.0), st.integers(1, 2000)), max_size=6),
)
def test_closed_form_runs_equal_serving_every_job(steps, first, delta, tokens, out_step, out_tok, in_s,
                                                  arrivals):
    model = FrontEndModel(input_s=in_s, input_token_s=1e-6, output_step_s=out_step, output_token_s=out_tok)
    plan = _run(steps, first, delta, tokens)
    start = 0.1
    end = start + plan.duration
    inside = sorted((t, n) for t, n in arrivals if t < end)
    fe = FrontEnd(model)
    fe.track(start, plan)
    got = [fe.admit(t, n) for t, n in inside]
    last = fe.complete(steps)
    want, want_last = _reference_fifo(model, start, plan, tokens, inside, steps)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert last == pytest.approx(want_last, rel=1e-9, abs=1e-12)


def test_bad_coefficients_are_named():
    with pytest.raises(FrontEndError, match="output_token_s must be a finite number >= 0"):
        FrontEndModel(output_token_s=-1e-3)
    with pytest.raises(FrontEndError, match="unknown coefficient.*'detok_s'.*allowed: input_s"):
        FrontEndModel.from_dict({"detok_s": 0.1})


# --- in the cluster ---------------------------------------------------------------------

FE = FrontEndModel(input_s=0.004, input_token_s=2e-6, output_step_s=0.003, output_token_s=0.002)


def _fleet_with(fe_model: FrontEndModel, **kw):
    cfg = fleet(**kw)
    prof = dataclasses.replace(cfg.backends[0].profile, front_end=fe_model)
    return dataclasses.replace(cfg, backends=[dataclasses.replace(b, profile=prof) for b in cfg.backends])


def test_a_request_alone_pays_its_input_job_and_one_output_job_per_token():
    # One backend, requests 10 s apart: TTFT = input job + the prefill step + the first output job;
    # the front end keeps up with 20 ms steps, so TPOT is the engine's.
    a, b, c = 0.02, 2e-5, 1e-4
    model = LatencyModel(step_s=a, token_s=b, seq_s=c)
    inp, out = 300, 12
    trace = simple_trace([0.0, 10.0], inp, out)
    plain = simulate(trace, routing.build("round_robin"), fleet(n=1, model=model, budget=512)).records
    res = simulate(trace, routing.build("round_robin"), _fleet_with(FE, n=1, model=model, budget=512)).records
    prefill = a + b * inp + c
    for r, p in zip(res, plain):
        assert r.first_token_s - r.arrival_s == pytest.approx(0.004 + 2e-6 * inp + prefill + 0.003 + 0.002)
        assert (r.last_token_s - r.first_token_s) == pytest.approx(p.last_token_s - p.first_token_s)


def test_streams_slower_than_the_front_end_arrive_at_its_pace():
    # 8 requests decoding together: steps of ~21 ms; output jobs of 3 + 8 * 4 = 35 ms fall behind.
    slow = FrontEndModel(output_step_s=0.003, output_token_s=0.004)
    trace = simple_trace([0.0] * 8, 64, 40)
    res = simulate(trace, routing.build("round_robin"), _fleet_with(slow, n=1, budget=2048)).records
    for r in res:
        tpot = (r.last_token_s - r.first_token_s) / (r.output_len - 1)
        assert tpot == pytest.approx(0.035, rel=0.02)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), rate=st.sampled_from([10.0, 40.0]),
       out_tok=st.sampled_from([1e-4, 3e-3]), delay=st.sampled_from([0.0, 0.003]))
def test_fast_mode_equals_one_step_at_a_time_with_a_front_end(seed, rate, out_tok, delay):
    model = dataclasses.replace(FE, output_token_s=out_tok)
    trace = conversation_trace(30, seed=seed, rate=rate)
    ref = simulate(trace, routing.build("least_load"), _fleet_with(model, mode="exact", delay_s=delay),
                   seed=seed, share_analysis=False, decode_group=False)
    for mode, group in (("fast", False), ("fast", True)):
        got = simulate(trace, routing.build("least_load"), _fleet_with(model, mode=mode, delay_s=delay),
                       seed=seed, decode_group=group)
        assert record_differences(ref.records, got.records) == [], (mode, group)


def test_profiles_keep_the_front_end_and_stay_version_1_without_one(tmp_path):
    plain = profile()
    assert json.loads(plain.to_json())["schema_version"] == 1 and "front_end" not in plain.to_json()
    with_fe = dataclasses.replace(plain, front_end=FE)
    doc = json.loads(with_fe.to_json())
    assert doc["schema_version"] == 2 and doc["front_end"]["output_token_s"] == 0.002
    assert LatencyProfile.from_json(with_fe.to_json()).front_end == FE
    doc["front_end"]["input_s"] = -1
    with pytest.raises(ProfileError, match="front_end.*input_s must be a finite number >= 0"):
        LatencyProfile.from_json(json.dumps(doc), "p.json")
