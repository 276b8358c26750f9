"""Engine steps timed from token arrivals (calibrate.step_times): by hand, and on the simulator's own
token streams, where every step's real duration and composition are known."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

import routing
from calibrate.replay import engine_config, prepare_units
from calibrate.step_times import (MIN_FIT_STEPS, STEPS_FILE, TOKEN_TIMES_FILE, StepTimesError, cluster_steps,
                                  decode_fit, engine_arrivals, read_token_times, replay_steps, steps_to_replay,
                                  summarise, write_token_times)
from results.records import expand_itl
from sim.cluster import BackendConfig, ClusterConfig, simulate
from sim.frontend import FrontEndModel
from sim.latency import LatencyProfile, load_profile


def test_tokens_close_together_are_one_step():
    times = {7: [0.0, 0.100, 0.200], 9: [0.002, 0.1015, 0.2012], 4: [0.300]}
    steps = cluster_steps(times, gap_s=0.01)
    assert [round(t, 4) for t, _ in steps] == [0.0, 0.1, 0.2, 0.3]
    assert [sorted(toks) for _, toks in steps] == [[(7, 0), (9, 0)], [(7, 1), (9, 1)], [(7, 2), (9, 2)], [(4, 0)]]


def test_the_rest_of_a_step_delivered_after_a_pause_joins_it():
    # Request 9's third token comes 15 ms after 7's, apart by more than the gap, but 9 had a token
    # in the step before and none since: it is the same step's, delivered late.
    times = {7: [0.0, 0.100, 0.200], 9: [0.002, 0.1015, 0.215]}
    steps = cluster_steps(times, gap_s=0.01)
    assert [sorted(toks) for _, toks in steps] == [[(7, 0), (9, 0)], [(7, 1), (9, 1)], [(7, 2), (9, 2)]]
    # A cluster of first tokens only, after the others ended, is a step of its own.
    steps = cluster_steps({7: [0.0, 0.1], 9: [0.115]}, gap_s=0.01)
    assert [sorted(toks) for _, toks in steps] == [[(7, 0)], [(7, 1)], [(9, 0)]]


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.integers(0, 50), st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=30),
                       min_size=1, max_size=8),
       st.floats(1e-4, 1.0))
def test_every_token_lands_in_exactly_one_step_and_steps_lie_a_gap_apart(raw, gap):
    times = {r: sorted(ts) for r, ts in raw.items()}
    steps = cluster_steps(times, gap)
    seen = [tok for _, toks in steps for tok in toks]
    assert sorted(seen) == sorted((r, k) for r, ts in times.items() for k in range(len(ts)))
    arrivals = [[times[r][k] for r, k in toks] for _, toks in steps]
    assert all(min(a) == t for (t, _), a in zip(steps, arrivals))
    assert all(min(b) - max(a) > gap for a, b in zip(arrivals, arrivals[1:]))


def test_a_gap_must_be_positive():
    with pytest.raises(StepTimesError, match="must be > 0"):
        cluster_steps({1: [0.0]}, gap_s=0.0)


def test_token_times_round_trip_and_bad_files_name_the_file(tmp_path):
    path = tmp_path / TOKEN_TIMES_FILE
    write_token_times(path, {3: [0.1, 0.2000004], 1: [1.0]})
    assert read_token_times(path) == {1: [1.0], 3: [0.1, 0.2]}
    with pytest.raises(StepTimesError, match="missing.json.* do not exist"):
        read_token_times(tmp_path / "missing.json")
    (tmp_path / "cut.json").write_text('{"requests": {"1": [0.1,')
    with pytest.raises(StepTimesError, match="cut.json are not a token_times.json"):
        read_token_times(tmp_path / "cut.json")
    (tmp_path / "back.json").write_text(json.dumps({"requests": {"4": [0.3, 0.2]}}))
    with pytest.raises(StepTimesError, match="request 4's times are not finite and non-decreasing"):
        read_token_times(tmp_path / "back.json")


def test_engine_arrivals_queue_behind_the_front_end():
    profile = replace(load_profile("cpu-tiny"), request_overhead_s=0.002,
                      front_end=FrontEndModel(input_s=0.010, input_token_s=0.001))
    # Sent at 0 and 0.001: the second waits for the first's input job (0.001 + 0.010 + 0.1 s).
    reach = engine_arrivals(profile, np.array([0.001, 0.0, 5.0]), np.array([20, 100, 0]))
    assert reach[1] == pytest.approx(0.001 + 0.010 + 0.100)
    assert reach[0] == pytest.approx(reach[1] + 0.010 + 0.020)
    assert reach[2] == pytest.approx(5.001 + 0.010)


def test_decode_fit_recovers_known_costs_and_needs_enough_steps():
    rng = np.random.default_rng(3)
    seqs = rng.integers(1, 30, size=60)
    ctx = seqs * rng.integers(50, 900, size=60)
    frame = pd.DataFrame({"seqs": seqs, "decode_context": ctx, "duration_s": 0.03 + 0.004 * seqs + 2e-6 * ctx})
    fit = decode_fit(frame)
    assert fit["fixed_s"] == pytest.approx(0.03) and fit["per_seq_s"] == pytest.approx(0.004)
    assert fit["per_context_token_s"] == pytest.approx(2e-6) and fit["steps"] == 60
    assert decode_fit(frame.head(MIN_FIT_STEPS - 1)) is None
    assert decode_fit(frame.assign(seqs=4)) is None  # one batch size cannot separate the terms
    assert decode_fit(frame.assign(decode_context=frame["seqs"] * 300)) is None  # context moves with batch


# --- the simulator's own token streams: every step known ------------------------------

def _quiet(profile: LatencyProfile) -> LatencyProfile:
    """No jitter and no front-end cost: each token reaches the client a fixed time after its step."""
    return replace(profile, jitter_cv=0.0, front_end=FrontEndModel())


def _workload(n: int = 120, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "request_id": np.arange(500, 500 + n), "input_len": rng.integers(40, 400, size=n),
        "output_len": rng.integers(4, 40, size=n), "prefix_id": -1, "shared_len": 0,
        "send_s": np.cumsum(rng.exponential(0.25, size=n)), "unit_start_s": 0.0, "load": "poisson-80",
        "phase": "check", "ok": True, "mode": "open"})


def _simulated_token_times(truth: LatencyProfile, frame: pd.DataFrame) -> dict[int, list[float]]:
    """Run ``frame`` through the simulator on ``truth``; each request's token arrivals."""
    (unit,) = prepare_units(frame.assign(unit="u"), truth.engine.block_size)
    cluster = ClusterConfig([BackendConfig("b", "b", truth, engine_config(truth.engine))],
                            drain_s=3600.0)  # the profile adds half its overhead each way
    result = simulate(unit.trace, routing.build("round_robin"), cluster)
    start = frame["send_s"].min()
    times = {}
    for rec in result.records:
        gaps = expand_itl(rec.itl_start, rec.itl_step, rec.itl_count)
        times[int(rec.request_id)] = list(start + rec.first_token_s + np.concatenate([[0.0], np.cumsum(gaps)]))
    return times


def test_on_the_simulators_own_tokens_every_step_matches_at_ratio_one():
    profile = _quiet(load_profile("cpu-tiny"))
    frame = _workload()
    steps = replay_steps(profile, frame, _simulated_token_times(profile, frame))
    busy = steps[steps["duration_s"].notna()]
    assert len(busy) > 150 and set(busy["kind"]) == {"decode", "prefill"}
    assert busy["matched"].all()
    assert np.allclose(busy["ratio"], 1.0, rtol=1e-6)
    summary = summarise(steps, profile)["loads"]["poisson-80"]
    assert summary["matched_share"] == 1.0 and summary["kinds"]["decode"]["median"] == pytest.approx(1.0)


def test_tokens_the_client_got_late_and_together_stay_matched_without_a_duration():
    """A stalled front end or client delivers several steps' tokens at once: one cluster with
    several tokens per request. Those steps are replayed, without durations, and the rest match."""
    profile = _quiet(load_profile("cpu-tiny"))
    frame = _workload()
    times = _simulated_token_times(profile, frame)
    ends = sorted({t for ts in times.values() for t in ts})
    lo, hi = ends[300], ends[303]  # the tokens of three steps arrive with the fourth's
    stalled = {r: [hi if lo <= t < hi else t for t in ts] for r, ts in times.items()}
    steps = replay_steps(profile, frame, stalled)
    depth = max(sum(lo <= t <= hi for t in ts) for ts in times.values())  # steps a request ran in them
    merged = steps[steps["end_s"] == hi]
    assert depth >= 2 and len(merged) == depth
    assert merged["duration_s"].isna().all() and merged["matched"].all()
    busy = steps[steps["duration_s"].notna()]
    assert busy["matched"].all() and np.allclose(busy["ratio"], 1.0, rtol=1e-6)


def test_a_load_with_a_chunk_of_two_tokens_is_left_out_and_named_and_the_others_still_time():
    """vLLM's API server merges a request's outputs when it reads them late, and streams them as
    one chunk: the client has one time for two tokens (2026-12-05c, tiny's c64 burst). Which
    of that request's steps the chunk closed cannot be known, so its load is left out; another
    load is timed as before."""
    profile = _quiet(load_profile("cpu-tiny"))
    first = _workload(n=40, seed=5)
    second = _workload(n=40, seed=6).assign(load="poisson-50", request_id=lambda f: f["request_id"] + 1000)
    times = {**_simulated_token_times(profile, first), **_simulated_token_times(profile, second)}
    victim = int(first["request_id"].iloc[3])
    assert len(times[victim]) >= 3
    times[victim] = times[victim][:1] + times[victim][2:]   # tokens 2 and 3 came in one chunk
    steps = replay_steps(profile, pd.concat([first, second], ignore_index=True), times)
    assert set(steps["load"]) == {"poisson-50"}
    why = steps.attrs["skipped_loads"]["poisson-80"]
    assert f"request {victim}" in why and "chunks of several tokens" in why
    busy = steps[steps["duration_s"].notna()]
    assert len(busy) > 50 and busy["matched"].all() and np.allclose(busy["ratio"], 1.0, rtol=1e-6)
    summary = summarise(steps, profile)
    assert set(summary["loads"]) == {"poisson-50"} and "poisson-80" in summary["skipped_loads"]
    # More token times than tokens are not these requests' at all.
    times[victim] = times[victim] + [times[victim][-1]] * 3
    with pytest.raises(StepTimesError, match=f"request {victim} received"):
        replay_steps(profile, first, times)


def test_a_cluster_stands_for_the_steps_most_of_its_requests_ask_for():
    # In step with the replay: each request's next token, one step.
    assert steps_to_replay({(1, 5), (2, 5), (3, 0)}, {1: 5, 2: 5}) == 1
    # A stall delivered two steps at once: two tokens each.
    assert steps_to_replay({(1, 5), (1, 6), (2, 5), (2, 6)}, {1: 5, 2: 5}) == 2
    # The client read request 2's and 3's second token only later: one request's two tokens do
    # not outvote the others (the late tokens then ask for the step they missed).
    assert steps_to_replay({(1, 5), (1, 6), (2, 5), (3, 5)}, {1: 5, 2: 5, 3: 5}) == 1
    assert steps_to_replay({(2, 6), (3, 6), (1, 7), (2, 7), (3, 7)}, {1: 6, 2: 6, 3: 6}) == 2
    # Two requests, two answers: the larger (a request's two tokens prove two steps).
    assert steps_to_replay({(1, 5), (1, 6), (2, 5)}, {1: 5, 2: 5}) == 2
    # A request the replay leads on (prefilled a step early) is outvoted, and one it lags on too.
    assert steps_to_replay({(1, 5), (2, 5), (3, 2)}, {1: 5, 2: 5, 3: 3}) == 1
    assert steps_to_replay({(1, 5), (2, 5), (3, 2)}, {1: 5, 2: 5, 3: 1}) == 1
    # Nothing the replay has not given already: no step.
    assert steps_to_replay({(1, 5), (2, 5)}, {1: 6, 2: 6}) == 0


def _busy_workload() -> pd.DataFrame:
    """Requests close enough together that the engine never idles: one replay error would last."""
    frame = _workload(seed=11)
    return frame.assign(send_s=frame["send_s"] * 0.3)


def test_one_stream_read_late_costs_its_own_steps_not_the_rest_of_the_load():
    """The client read one request's token of a step only with the next step's tokens (its
    stream was read late). The replay must not run a step ahead of every request from then on."""
    profile = _quiet(load_profile("cpu-tiny"))
    frame = _busy_workload()
    times = _simulated_token_times(profile, frame)
    clean = cluster_steps(times, 1e-4)
    k = next(k for k in range(len(clean) // 3, len(clean))
             if len({r for r, _ in clean[k][1]} & {r for r, _ in clean[k + 1][1]}) >= 3)
    r, j = next((r, j) for r, j in clean[k][1] if r in {q for q, _ in clean[k + 1][1]})
    late = dict(times)
    late[r] = [clean[k + 1][0] if i == j else t for i, t in enumerate(times[r])]
    steps = replay_steps(profile, frame, late)
    per_step = steps.groupby("end_s")["matched"].all()
    assert steps["duration_s"].notna().sum() > 40
    # The cluster it was read late in, and the one it left, are off; every other step matches.
    assert (~per_step).sum() <= 2
    assert per_step[per_step.index > clean[k + 1][0] + 1e-9].all()


def test_a_request_first_served_in_the_second_of_two_merged_steps_is_replayed_there():
    """Two steps delivered at once, the second of them a new request's first token: the replay
    must prefill it in the second, not the first (or it stays a token ahead ever after)."""
    profile = _quiet(load_profile("cpu-tiny"))
    frame = _busy_workload()
    times = _simulated_token_times(profile, frame)
    clean = cluster_steps(times, 1e-4)
    k = next(k for k in range(1, len(clean) - 1)
             if any(j == 0 for _, j in clean[k + 1][1]) and not any(j == 0 for _, j in clean[k][1])
             and len({r for r, _ in clean[k][1]} & {r for r, _ in clean[k + 1][1]}) >= 2)
    at = clean[k + 1][0]
    merged = {r: [at if clean[k][0] - 1e-9 <= t <= at else t for t in ts] for r, ts in times.items()}
    steps = replay_steps(profile, frame, merged)
    together = steps[steps["end_s"] == at]
    assert len(together) == 2 and together["matched"].all() and together["duration_s"].isna().all()
    assert together["kind"].tolist()[-1] == "prefill"
    assert steps["matched"].all()


def test_a_machine_half_again_slower_shows_a_ratio_of_one_and_a_half():
    profile = _quiet(load_profile("cpu-tiny"))
    frame = _workload(seed=8)
    truth = profile.slowed(1.5)
    steps = replay_steps(profile, frame, _simulated_token_times(truth, frame))
    busy = steps[steps["duration_s"].notna()]
    good = busy[busy["matched"]]
    assert len(good) >= 0.9 * len(busy)
    assert np.median(good["ratio"]) == pytest.approx(1.5, rel=1e-6)
    assert (np.abs(good["ratio"] - 1.5) < 1e-6).mean() >= 0.95


def _measured(frame: pd.DataFrame, times: dict[int, list[float]]) -> pd.DataFrame:
    """``frame`` with the latencies a client would have measured from ``times``."""
    ttft = np.array([times[r][0] - s for r, s in zip(frame["request_id"], frame["send_s"])])
    e2el = np.array([times[r][-1] - s for r, s in zip(frame["request_id"], frame["send_s"])])
    n = frame["output_len"].to_numpy(float)
    return frame.assign(unit="check/" + frame["load"], ttft_s=ttft, e2el_s=e2el,
                        tpot_s=np.where(n > 1, (e2el - ttft) / np.maximum(n - 1, 1), np.nan))


def test_replayed_at_the_speed_its_own_steps_ran_a_slower_machine_leaves_no_error(tmp_path):
    from calibrate.check import write_report

    profile = _quiet(load_profile("cpu-tiny"))
    frame = _workload(seed=8)
    times = _simulated_token_times(profile.slowed(1.5), frame)
    report = write_report(profile, _measured(frame, times), tmp_path, {}, token_times=times)
    assert report["max_abs_err"] > 0.25  # the profile is a third too fast for this machine
    step_speed = report["step_speed"]
    assert step_speed["factors"]["poisson-80"] == pytest.approx(1.5, rel=1e-3)
    assert step_speed["max_abs_err"] < 0.01  # at that speed the profile is the machine
    assert json.loads((tmp_path / "check.json").read_text())["step_speed"]["max_abs_err"] < 0.01


def test_a_wrong_decode_attention_shows_as_a_ratio_growing_with_context():
    base = _quiet(load_profile("cpu-tiny"))
    profile = replace(base, model=replace(base.model, matmul_floor_s=0.0))  # step time linear in the terms
    truth = replace(profile, model=replace(profile.model, decode_attn_s=profile.model.decode_attn_s * 6 + 2e-6))
    # Long and short prompts in turns, arriving about a second apart: batch size and context
    # vary apart, so the decode fit can tell the per-sequence cost from the per-token one.
    frame = _workload(seed=11)
    frame = frame.assign(output_len=60, input_len=np.where((np.arange(len(frame)) // 3) % 2 == 0, 900, 30),
                         send_s=np.cumsum(np.random.default_rng(1).exponential(1.0, size=len(frame))))
    steps = replay_steps(profile, frame, _simulated_token_times(truth, frame))
    summary = summarise(steps, profile)["loads"]["poisson-80"]
    by_ctx = [v["median"] for v in summary["decode_by_context"].values()]
    assert len(by_ctx) >= 2 and by_ctx[-1] > by_ctx[0] > 1.0
    fit = summary["decode_fit"]
    assert fit["per_context_token_s"] == pytest.approx(truth.model.decode_attn_s, rel=1e-6)
    assert fit["fixed_s"] == pytest.approx(truth.model.step_s, rel=1e-6)


def test_a_check_folder_replayed_with_its_token_times_writes_the_step_table(tmp_path, capsys):
    from calibrate.cli import main

    profile = _quiet(load_profile("cpu-tiny"))
    path = profile.save(tmp_path / "quiet.json")
    frame = _workload(n=40)
    times = _simulated_token_times(profile, frame)
    ttft = [times[r][0] - s for r, s in zip(frame["request_id"], frame["send_s"])]
    frame = frame.assign(unit="check/poisson-80", ttft_s=ttft, tpot_s=0.05, e2el_s=1.0,
                         prompt_tokens=frame["input_len"], max_tokens=frame["output_len"])
    src = tmp_path / "measured"
    src.mkdir()
    frame.to_csv(src / "check_requests.csv", index=False)
    write_token_times(src / TOKEN_TIMES_FILE, times)
    out = tmp_path / "again"
    assert main(["check", "--profile", str(path), "--replay", str(src / "check_requests.csv"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "engine steps" in printed and "100.0% of" in printed
    saved = json.loads((out / "check.json").read_text())
    assert saved["steps"]["loads"]["poisson-80"]["matched_share"] == 1.0
    assert (out / STEPS_FILE).is_file() and read_token_times(out / TOKEN_TIMES_FILE) == read_token_times(
        src / TOKEN_TIMES_FILE)


def test_token_times_without_replay_or_unreadable_are_clear_errors(tmp_path, capsys):
    from calibrate.cli import main

    assert main(["check", "--profile", "cpu-tiny", "--backend", "http://127.0.0.1:9",
                 "--token-times", str(tmp_path / "t.json")]) != 0
    assert "--token-times goes with --replay" in capsys.readouterr().err
    frame = _workload(n=5).assign(unit="check/poisson-80", ttft_s=0.1, tpot_s=0.01, e2el_s=0.3)
    frame.to_csv(tmp_path / "check_requests.csv", index=False)
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["check", "--profile", "cpu-tiny", "--replay", str(tmp_path / "check_requests.csv"),
                 "--token-times", str(tmp_path / "bad.json"), "--out", str(tmp_path / "o")]) != 0
    assert "bad.json are not a token_times.json" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # Another check's token times (request ids are the same from check to check) are refused.
    real = REAL / "tiny-check-1" / "check_requests.csv"
    other = REAL / "small-check-1" / TOKEN_TIMES_FILE
    assert main(["check", "--profile", "cpu-tiny", "--replay", str(real), "--token-times", str(other),
                 "--out", str(tmp_path / "o2")]) != 0
    assert "the token times do not belong to these requests" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


# --- real vLLM-CPU checks (2026-12-04, evening) ------------------------------------------

REAL = Path(__file__).resolve().parents[1] / "data" / "checks-2026-12-04e"


@pytest.mark.parametrize("shape, check", [("tiny", 1), ("small", 1), ("mid", 1), ("mid", 2)])
def test_the_replayed_scheduler_matches_most_real_vllm_steps(shape, check, tmp_path):
    """A real check's token arrivals: vLLM's own steps, clustered; the replayed scheduler gives the
    same requests a token in nearly all of them, and the report is what ``check --replay`` writes.
    (In mid's second check a long prefill step and the step after reached the client together,
    a new request's first token in the second of them: 90.7% of Poisson 80%'s steps matched before
    the replay admitted such a request just before that step.)"""
    folder = REAL / f"{shape}-check-{check}"
    measured = pd.read_csv(folder / "check_requests.csv")
    profile = load_profile(REAL.parent / "checks-2026-12-04d" / f"cpu-{shape}.json")
    steps = replay_steps(profile, measured, read_token_times(folder / TOKEN_TIMES_FILE))
    summary = summarise(steps, profile)
    assert set(summary["loads"]) == {"poisson-50", "poisson-80", "burst"}
    for load, entry in summary["loads"].items():
        assert entry["matched_share"] >= 0.98, (load, entry["matched_share"])
        assert entry["busy"] >= 100 and 0.5 < entry["kinds"]["decode"]["median"] < 2.0
    # The check kept every streamed token of its loads, and none of the reference probes'.
    times = read_token_times(folder / TOKEN_TIMES_FILE)
    loads = measured[(measured["phase"] != "reference") & measured["ok"]]
    assert set(times) == set(loads["request_id"])
    assert all(len(times[r]) == n for r, n in zip(loads["request_id"], loads["output_len"]))
    recorded = json.loads((folder / "check.json").read_text())["steps"]
    assert recorded["loads"]["poisson-80"]["matched_share"] == pytest.approx(
        summary["loads"]["poisson-80"]["matched_share"])


def test_real_profiling_with_a_merged_chunk_fits_without_that_unit():
    """2026-12-05c's profiling of tiny: in the 64-request burst, request 208 got 16 tokens in 15
    chunks. The fit stopped there before; now that unit is left out and named, and the other
    units' steps are timed."""
    from calibrate.fit import engine_defaults, load_data, measured_front_end, timed_profile_steps

    path = Path(__file__).resolve().parents[1] / "data" / "cpu-tiny-2026-12-05c-profiling.csv"
    data, meta = load_data(path)
    busy, record = timed_profile_steps(path, data, engine_defaults(meta), measured_front_end(meta))
    assert record["used"] and set(record["skipped_units"]) == {"concurrency/c64"}
    assert "request 208: 15 chunks for 16 tokens" in record["skipped_units"]["concurrency/c64"]
    assert "concurrency/c64" not in set(busy["load"]) and record["busy_matched"] > 3000
