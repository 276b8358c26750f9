"""Profiling and checking end to end over loopback HTTP, against the project's emulator.

The emulator (``live.emulator``) is a STAND-IN for a real vLLM that serves the
simulator's engine model on the wall clock; the real-vLLM versions of these
tests are in ``test_calibrate_vllm.py`` (``pytest -m vllm``).
"""
import asyncio
import json
import urllib.request

import pandas as pd
import pytest

from calibrate.check import CheckSettings, run_check
from calibrate.fit import fit_profile
from calibrate.profiling import ProfileError, ProfileSettings, meta_path, profile_backend
from live.emulator import spawn
from predictors.features import FEATURES, TARGETS
from sim.latency import load_profile

SMALL = ProfileSettings(buckets=(32, 256), bucket_weights=(0.5, 0.5), idle_outputs=(4, 24), idle_reps=1,
                        prefix_lens=(128,), prefix_reps=1, prefix_group_size=3, mix_outputs=(8, 24),
                        concurrency=(2, 6), per_level_min=8, poisson_fractions=(0.5, 1.0), poisson_requests=10,
                        budget_s=60, scrape_interval_s=0.1, frontend_scale=0.25, decode_batches=(1, 2, 4, 8),
                        decode_output_len=24, decode_context_prompts=(512,), decode_context_batch=4)


@pytest.fixture(scope="module")
def emulator():
    with spawn(1, "cpu-tiny", args=["--block-size", "32"]) as urls:
        yield urls[0]


@pytest.fixture(scope="module")
def profiled(emulator, tmp_path_factory):
    out = tmp_path_factory.mktemp("prof") / "profiling_data.csv"
    asyncio.run(profile_backend(emulator, out, SMALL, progress=False))
    return out


@pytest.mark.slow
def test_rows_have_the_feature_schema_and_labels(profiled):
    data = pd.read_csv(profiled)
    for col in (*FEATURES, *TARGETS.values(), "output_len", "cached_tokens", "phase", "unit", "send_s"):
        assert col in data.columns, col
    assert data["ok"].all()
    assert set(data["phase"]) == {"idle", "prefix", "concurrency", "poisson", "frontend", "decode"}
    # Output lengths are controlled exactly (ignore_eos + max_tokens).
    assert (data["output_len"] == data["max_tokens"]).all()
    # The prefix hit known by construction is what the server reports.
    assert (data["prefix_hit_tokens"] == data["cached_tokens"]).all()
    probe = data[data["unit"] == "prefix/probe"].set_index("bucket")
    assert probe.loc["128:repeat", "prefix_hit_tokens"] == 96  # (128 - 1) // 32 full blocks
    assert probe.loc["128:half", "prefix_hit_tokens"] == 64
    # Idle requests see an idle engine; closed loops see their own concurrency.
    assert (data.loc[data["unit"] == "idle/idle", "inflight_requests"] == 0).all()
    c6 = data[data["unit"] == "concurrency/c6"]
    assert c6["inflight_requests"].max() <= 5 and c6["inflight_requests"].max() >= 3


def test_metadata_records_provenance_and_capacity(profiled):
    meta = json.loads(meta_path(profiled).read_text())
    # The emulator is a local process: its CPU per job was measured (steps from its /metrics).
    fe = meta["frontend_cpu"]
    assert fe["pid"] > 0 and set(fe["units"]) == {f"frontend/{k}" for k in
                                                  ("short", "long", "stream1", "stream8", "stream32")}
    assert fe["units"]["frontend/stream1"]["steps"] >= 128 and fe["units"]["frontend/stream32"]["cpu_s"] > 0
    # (At this small scale a unit may fall below the 10 ms CPU clock tick: then it says so.)
    assert fe["estimate"]["ok"] or fe["estimate"]["reason"]
    assert meta["backend"]["block_size"] == 32 and meta["backend"]["num_kv_blocks"] > 0
    assert meta["capacity_rps"] > 0
    assert len(meta["units_done"]) == len(meta["unit_log"]) and meta["unit_log"][0]["loadavg_before"]
    assert meta["machine"]["cpu_count"] >= 1


def test_the_decode_phase_times_the_emulators_decode_step_per_batch(profiled):
    from calibrate.decode_steps import predicted_step

    data = pd.read_csv(profiled)
    decode = data[data["phase"] == "decode"]
    # n requests of 32 prompt tokens per unit, sent at once; then 4 of 512 tokens (long context).
    assert decode.groupby("unit").size().to_dict() == {"decode/b1": 1, "decode/b2": 2, "decode/b4": 4, "decode/b8": 8,
                                                       "decode/n4-ctx32": 4, "decode/n4-ctx512": 4}
    short = decode[decode["unit"].str.startswith("decode/b")]
    assert (short["input_len"] == 32).all() and (short["output_len"] == 24).all()
    by_context = decode[decode["unit"].str.startswith("decode/n4")].groupby("unit")
    assert by_context["input_len"].max().to_dict() == {"decode/n4-ctx32": 32, "decode/n4-ctx512": 512}
    assert (decode[decode["unit"].str.startswith("decode/n4")]["output_len"] == 48).all()
    assert decode.groupby("unit")["send_s"].max().max() < 0.5
    steps = json.loads(meta_path(profiled).read_text())["decode_steps"]
    assert sorted(steps, key=int) == ["1", "2", "4", "8"]
    model = load_profile("cpu-tiny").model  # what the emulator serves, on the wall clock
    for n, rec in steps.items():
        assert rec["n"] == int(n) and rec["gaps"] >= int(n) and rec["context"] == 32 + 12
        want = predicted_step(model, int(n), 32 + 12)
        assert rec["step_s"] == pytest.approx(want, rel=0.35), n
    long_steps = json.loads(meta_path(profiled).read_text())["decode_context_steps"]
    assert sorted(long_steps, key=int) == ["32", "512"]
    for prompt, rec in long_steps.items():
        assert rec["n"] == 4 and rec["context"] == int(prompt) + 24
        assert rec["step_s"] == pytest.approx(predicted_step(model, 4, int(prompt) + 24), rel=0.35), prompt


def test_the_loaded_units_keep_their_token_times_and_the_fit_times_their_steps(profiled, emulator):
    from calibrate.profiling import read_unit_token_times, token_times_path

    state = json.loads(urllib.request.urlopen(f"{emulator}/_emulator/state", timeout=10).read())
    if state["mean_step_lateness_s"] > 2e-3:
        # Measured with six busy loops at nice -5 on two cores: 4.4 ms per step, and the
        # served 21-ms steps were not what the clock ran. The premise does not hold there.
        pytest.skip(f"the emulator ran {state['mean_step_lateness_s'] * 1e3:.1f} ms late per step: "
                    "the host was too busy for it to serve its model on the wall clock")

    data = pd.read_csv(profiled)
    lines = [json.loads(line) for line in token_times_path(profiled).read_text().splitlines()]
    assert [line["unit"] for line in lines] == ["concurrency/c2", "concurrency/c6", "poisson/r0.5", "poisson/r1"]
    times = read_unit_token_times(profiled)
    loaded = data[data["phase"].isin(["concurrency", "poisson"])].set_index("request_id")
    assert set(times) == set(loaded.index)
    for rid, ts in times.items():
        row = loaded.loc[rid]
        assert len(ts) == row["output_len"]
        assert ts[0] - (row["unit_start_s"] + row["send_s"]) == pytest.approx(row["ttft_s"], abs=2e-3)
    profile, _ = fit_profile(profiled, "emu", max_iter=8, polish_nfev=0)
    timed = profile.fit["timed_steps"]
    assert timed["used"] and timed["units"] == 4 and timed["matched_share"] > 0.9 and timed["busy_matched"] > 100
    assert "knee the timed steps chose" in profile.fit["method"] and "(calibrate.step_fit)" in profile.fit["method"]
    # The emulator serves cpu-tiny's step model on the wall clock: its steps give it back.
    # Held on the step durations of the shapes these units ran, not per coefficient: the
    # three linear terms trade against each other when the host delays some steps (a CI run
    # on a fresh 2-core machine fitted token_s 15% high; with six busy loops beside it here,
    # step_s came out at 0.52x and seq_s at 1.32x; with three, every step below within 3%).
    served = load_profile("cpu-tiny").model
    for tokens, seqs, prompt in [(1, 1, 0), (6, 6, 0), (32, 1, 32), (37, 6, 32), (256, 1, 256), (261, 6, 256)]:
        got, want = (m.step_time(tokens, seqs, m.prefill_work(prompt, 0), 0) for m in (profile.model, served))
        assert got == pytest.approx(want, rel=0.12), (tokens, seqs, prompt)
    replayed, _ = fit_profile(profiled, "emu", max_iter=8, polish_nfev=0, timed_steps=False)
    assert not replayed.fit["timed_steps"]["used"] and "steps" not in replayed.fit["stages"]


def test_token_times_that_do_not_belong_to_the_rows_are_refused_by_the_fit(profiled, tmp_path):
    import shutil

    from calibrate.fit import FitError
    from calibrate.profiling import token_times_path

    copy = tmp_path / "p.csv"
    shutil.copy(profiled, copy)
    shutil.copy(meta_path(profiled), meta_path(copy))
    lines = [json.loads(line) for line in token_times_path(profiled).read_text().splitlines()]
    first = lines[0]["requests"]
    rid = next(iter(first))
    # One time more than the request received tokens. (Fewer is a chunk that carried several
    # tokens: its unit is left out of the step timing, tests/calibrate/test_step_times.py.)
    first[rid] = first[rid] + first[rid][-1:]
    token_times_path(copy).write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(FitError, match=f"request {rid} received .* --no-timed-steps"):
        fit_profile(copy, "emu", max_iter=2, polish_nfev=0)


def test_resume_skips_finished_units_and_overwrite_is_explicit(profiled, emulator):
    before = len(pd.read_csv(profiled))
    asyncio.run(profile_backend(emulator, profiled, SMALL, resume=True, progress=False))
    assert len(pd.read_csv(profiled)) == before
    with pytest.raises(ProfileError, match="--resume .* or --overwrite"):
        asyncio.run(profile_backend(emulator, profiled, SMALL, progress=False))


def test_resume_continues_an_interrupted_run(emulator, tmp_path):
    out = tmp_path / "p.csv"
    asyncio.run(profile_backend(emulator, out, SMALL, progress=False, phases=("idle",)))
    first = pd.read_csv(out)
    asyncio.run(profile_backend(emulator, out, SMALL, resume=True, progress=False, phases=("idle", "prefix")))
    both = pd.read_csv(out)
    assert len(both) > len(first) and set(both["phase"]) == {"idle", "prefix"}
    assert both["request_id"].is_unique


@pytest.mark.slow
def test_fit_then_check_against_the_emulator(profiled, emulator, tmp_path):
    profile, _ = fit_profile(profiled, "emu", max_iter=8, polish_nfev=0)
    path = profile.save(tmp_path / "emu.json")
    settings = CheckSettings(max_input=400, max_output=24, prefix_len=64, requests_per_level=12, burst=6)
    report = asyncio.run(run_check(load_profile(path), emulator, tmp_path / "check", settings, progress=False))
    saved = json.loads((tmp_path / "check" / "check.json").read_text())
    assert set(saved["results"]) == {"poisson-50", "poisson-80", "burst", "all"}
    for entry in report["results"].values():
        for stat in ("ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90", "e2el_p50"):
            e = entry[stat]
            assert e["real_s"] > 0 and e["sim_s"] > 0
            assert e["err"] == pytest.approx((e["sim_s"] - e["real_s"]) / e["real_s"])
    levels = [e["max_abs_err"] for name, e in report["results"].items() if name != "all"]
    assert report["max_abs_err"] == max(levels)
    assert (tmp_path / "check" / "check_requests.csv").exists()
    # Reference probes ran around the loads; the emulator serves at the speed the profile was fitted on.
    ref = saved["reference"]
    assert list(ref["probes"]) == ["before-poisson-50", "before-poisson-80", "before-burst", "after"]
    assert all(p["requests"] == settings.reference_requests for p in ref["probes"].values())
    assert 0.5 < ref["e2el_ratio"] < 2.0
    assert set(ref["load_factors"]) == {"poisson-50", "poisson-80", "burst"}
    assert set(saved["results_speed_adjusted"]) == {"poisson-50", "poisson-80", "burst", "all"}
    # Every load's tokens were kept and its engine steps timed: the emulator runs the engine model,
    # so the replayed scheduler gives the emulator's own step compositions.
    steps = saved["steps"]["loads"]
    assert set(steps) == {"poisson-50", "poisson-80", "burst"}
    assert all(e["matched_share"] > 0.7 for e in steps.values()), {k: e["matched_share"] for k, e in steps.items()}
    assert 0.5 < steps["poisson-80"]["kinds"]["decode"]["median"] < 2.0
    assert (tmp_path / "check" / "steps.csv").is_file() and (tmp_path / "check" / "token_times.json").is_file()


# --- the rows are the router's decisions -------------------------------------------------

def _run_units(url, units, **runner_kw):
    from calibrate.probe import Runner
    from calibrate.modeldir import TOKENIZER_VOCAB_SIZE
    from live.transport.client import make_session

    async def go():
        async with make_session(concurrency=16) as session:
            async with Runner(session, url, "g", TOKENIZER_VOCAB_SIZE, 32, scrape_interval_s=0.1,
                              salt=7, **runner_kw) as runner:
                rows = []
                for u in units:
                    rows += await runner.run_unit(u)
                return rows, runner.decisions
    return asyncio.run(go())


def test_each_row_holds_the_routers_decision_for_its_request(emulator):
    from calibrate.probe import PlannedRequest, Unit, decision_features

    reqs = [PlannedRequest(i, 100 + 37 * i, 6, prefix_id=i % 2, shared_len=96) for i in range(6)]
    rows, decisions = _run_units(emulator, [Unit("t", "seq", "sequential", reqs[:3]),
                                            Unit("t", "closed", "closed", reqs[3:], concurrency=3)])
    assert len(rows) == 6 and set(decisions) == {r["request_id"] for r in rows}
    for row in rows:
        d = decisions[row["request_id"]]
        assert {k: row[k] for k in FEATURES} == decision_features(d, row["input_len"], "g")
    # Scrapes reach the router: an idle scrape before the first request, ages within a few intervals.
    first = min(rows, key=lambda r: r["request_id"])
    assert first["running"] == 0 and first["waiting"] == 0 and first["scrape_age_s"] < 1.0


def test_prefix_estimate_is_the_routers_bounded_lru_not_an_unbounded_set(emulator):
    """A prompt pushed out of the router's index by newer ones no longer counts as a hit."""
    from calibrate.probe import PlannedRequest, Unit

    a = PlannedRequest(0, 256, 4, prefix_id=0, shared_len=256)       # 8 blocks of prefix 0
    other = PlannedRequest(1, 256, 4, prefix_id=1, shared_len=256)   # 8 blocks of prefix 1
    again = PlannedRequest(2, 256, 4, prefix_id=0, shared_len=256)
    unit = Unit("t", "lru", "sequential", [a, other, again])
    big, _ = _run_units(emulator, [unit])
    # With room for both prompts, the repeat hits its 7 full blocks inside the first 255 tokens.
    assert [r["prefix_hit_tokens"] for r in big] == [0, 0, 224]
    small, _ = _run_units(emulator, [Unit("t", "lru", "sequential", [
        PlannedRequest(10, 256, 4, prefix_id=5, shared_len=256),
        PlannedRequest(11, 256, 4, prefix_id=6, shared_len=256),
        PlannedRequest(12, 256, 4, prefix_id=5, shared_len=256)])], num_kv_blocks=8)
    # An index of 8 blocks holds one prompt: prefix 5 was evicted by prefix 6.
    assert [r["prefix_hit_tokens"] for r in small] == [0, 0, 0]


def test_profiling_rows_equal_the_simulators_router_features_for_the_same_requests(profiled):
    """Replayed through ``sim.cluster``, the same requests get the same router features."""
    from calibrate.replay import prepare_units
    from sim.cluster import BackendConfig, ClusterConfig, simulate
    from sim.engine import EngineConfig
    import routing

    data = pd.read_csv(profiled)
    meta = json.loads(meta_path(profiled).read_text())
    blocks = meta["backend"]["num_kv_blocks"]
    profile = load_profile("cpu-tiny")
    compared = 0
    for unit in prepare_units(data, 32):
        if unit.key not in ("idle/idle", "prefix/probe", "prefix/group"):
            continue
        cfg = ClusterConfig([BackendConfig("b", "b", profile, EngineConfig(num_kv_blocks=blocks, block_size=32))])
        recs = simulate(unit.trace, routing.build("round_robin"), cfg).records
        rows = data.iloc[unit.rows]
        assert [r.router_prefix_hit_tokens for r in recs] == rows["prefix_hit_tokens"].tolist()
        assert [r.router_inflight_requests for r in recs] == rows["inflight_requests"].tolist()
        assert [r.router_inflight_tokens for r in recs] == rows["inflight_tokens"].tolist()
        compared += len(recs)
    assert compared == len(data[data["phase"].isin(["idle", "prefix"])])
    assert data.loc[data["unit"] == "prefix/group", "inflight_requests"].tolist() == list(range(3))
