"""Profiling and checking end to end over loopback HTTP, against the project's emulator.

The emulator (``live.emulator``) is a STAND-IN for a real vLLM that serves the
simulator's engine model on the wall clock; the real-vLLM versions of these
tests are in ``test_calibrate_vllm.py`` (``pytest -m vllm``).
"""
import asyncio
import json

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
                        budget_s=60, scrape_interval_s=0.1)


@pytest.fixture(scope="module")
def emulator():
    with spawn(1, "cpu-tiny", args=["--block-size", "32"]) as urls:
        yield urls[0]


@pytest.fixture(scope="module")
def profiled(emulator, tmp_path_factory):
    out = tmp_path_factory.mktemp("prof") / "profiling_data.csv"
    asyncio.run(profile_backend(emulator, out, SMALL, progress=False))
    return out


def test_rows_have_the_feature_schema_and_labels(profiled):
    data = pd.read_csv(profiled)
    for col in (*FEATURES, *TARGETS.values(), "output_len", "cached_tokens", "phase", "unit", "send_s"):
        assert col in data.columns, col
    assert data["ok"].all()
    assert set(data["phase"]) == {"idle", "prefix", "concurrency", "poisson"}
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
    assert meta["backend"]["block_size"] == 32 and meta["backend"]["num_kv_blocks"] > 0
    assert meta["capacity_rps"] > 0
    assert len(meta["units_done"]) == len(meta["unit_log"]) and meta["unit_log"][0]["loadavg_before"]
    assert meta["machine"]["cpu_count"] >= 1


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
