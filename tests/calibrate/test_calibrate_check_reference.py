"""Reference probes of ``calibrate check``: the machine's speed against the profile, told apart
from the model's error. The 'measured' times here are the simulator's own under a profile
slowed by a known factor, so every expected value is set by construction."""
import json
import math

import numpy as np
import pandas as pd
import pytest

from calibrate.check import (REFERENCE_PHASE, SPEED_REALISATIONS, CheckSettings, error_beyond, load_speed_factors,
                             plan_check, reference_speed, replay_check, with_reference_probes, write_report)
from sim.latency import ProfileError, load_profile
from sim.speed import SpeedWander

SETTINGS = CheckSettings(requests_per_level=12, burst=6, max_input=300, max_output=12, prefix_len=64,
                         capacity_rps=2.0, reference_requests=2, reference_input=128, reference_output=8)


def _planned_frame(settings: CheckSettings) -> pd.DataFrame:
    loads, _ = plan_check(load_profile("cpu-tiny"), settings)
    units = with_reference_probes(loads, settings)
    return pd.DataFrame([{"unit": f"{u.phase}/{u.name}", "phase": u.phase, "load": u.name, "mode": u.mode,
                          "request_id": r.request_id, "input_len": r.input_len, "output_len": r.output_len,
                          "max_tokens": r.output_len, "prefix_id": r.prefix_id, "shared_len": r.shared_len,
                          "send_s": r.at_s if u.mode != "sequential" else float(k), "ok": True}
                         for u in units for k, r in enumerate(u.requests)])


def _measured_on(profile, frame: pd.DataFrame) -> pd.DataFrame:
    sim = replay_check(profile, frame.assign(ttft_s=1.0, tpot_s=1.0, e2el_s=1.0))
    return frame.assign(ttft_s=sim["sim_ttft_s"], tpot_s=sim["sim_tpot_s"], e2el_s=sim["sim_e2el_s"])


def test_probes_run_before_each_load_and_after_the_last():
    loads, _ = plan_check(load_profile("cpu-tiny"), SETTINGS)
    units = with_reference_probes(loads, SETTINGS)
    assert [u.name for u in units] == ["before-poisson-50", "poisson-50", "before-poisson-80", "poisson-80",
                                       "before-burst", "burst", "after"]
    probes = [u for u in units if u.phase == REFERENCE_PHASE]
    assert all(u.mode == "sequential" and len(u.requests) == 2 for u in probes)
    assert all(r.input_len == 128 and r.output_len == 8 and r.prefix_id == -1 for u in probes for r in u.requests)
    ids = [r.request_id for u in units for r in u.requests]
    assert len(ids) == len(set(ids))  # unique prompts: a probe never hits the cache of another
    assert with_reference_probes(loads, CheckSettings(reference_requests=0)) == loads


def test_bad_reference_settings_are_refused():
    with pytest.raises(ValueError, match="reference_requests must be >= 0"):
        CheckSettings(reference_requests=-1)
    with pytest.raises(ValueError, match="reference_output >= 2"):
        CheckSettings(reference_output=1)


def test_a_uniformly_slower_machine_is_measured_and_the_adjusted_replay_explains_it(tmp_path):
    profile = load_profile("cpu-tiny")
    measured = _measured_on(profile.slowed(1.25), _planned_frame(SETTINGS))
    report = write_report(profile, measured, tmp_path, {})
    ref = report["reference"]
    assert list(ref["probes"]) == ["before-poisson-50", "before-poisson-80", "before-burst", "after"]
    for probe in ref["probes"].values():
        # A request alone: every duration 1.25x, so its E2EL, TTFT and TPOT are 1.25x.
        assert probe["e2el_ratio"] == pytest.approx(1.25)
        assert probe["ttft_ratio"] == pytest.approx(1.25) and probe["tpot_ratio"] == pytest.approx(1.25)
    assert ref["drift"] == pytest.approx(0.0, abs=1e-9)
    assert ref["load_factors"] == pytest.approx({"poisson-50": 1.25, "poisson-80": 1.25, "burst": 1.25})
    # The unadjusted verdict sees the model 'too fast' (at least the 20% a 1.25x machine gives)...
    assert report["max_abs_err"] >= 0.2 - 1e-9
    # ...and the loads replayed at the probes' speed reproduce the measurement exactly.
    assert report["max_abs_err_speed_adjusted"] == pytest.approx(0.0, abs=1e-9)
    # The reference rows are not part of any load's statistics.
    assert set(report["results"]) == {"poisson-50", "poisson-80", "burst", "all"}
    n_loads = int((measured["phase"] != REFERENCE_PHASE).sum())
    assert report["results"]["all"]["requests"] == n_loads


def test_drift_and_each_loads_factor_come_from_the_probes_around_it():
    frame = _planned_frame(SETTINGS)
    ratios = {"before-poisson-50": 1.0, "before-poisson-80": 1.2, "before-burst": 1.1, "after": 0.9}
    ref = frame["phase"] == REFERENCE_PHASE
    sim = replay_check(load_profile("cpu-tiny"), frame.assign(ttft_s=1.0, tpot_s=1.0, e2el_s=1.0))
    factor = frame["load"].map(ratios).where(ref, 1.0).to_numpy()
    measured = sim.assign(e2el_s=sim["sim_e2el_s"] * factor, ttft_s=sim["sim_ttft_s"] * factor,
                          tpot_s=sim["sim_tpot_s"] * factor)
    out = reference_speed(measured)
    assert [p["e2el_ratio"] for p in out["probes"].values()] == pytest.approx([1.0, 1.2, 1.1, 0.9])
    assert out["drift"] == pytest.approx(1.2 / 0.9 - 1)
    assert out["e2el_ratio"] == pytest.approx(1.05)  # the median of the four
    factors = load_speed_factors(out, ["poisson-50", "poisson-80", "burst"])
    assert factors == pytest.approx({"poisson-50": 1.1, "poisson-80": 1.15, "burst": 1.0})


def test_an_old_check_without_probes_reports_none(tmp_path):
    settings = CheckSettings(**{**vars(SETTINGS), "reference_requests": 0})
    profile = load_profile("cpu-tiny")
    report = write_report(profile, _measured_on(profile, _planned_frame(settings)), tmp_path, {})
    assert report["reference"] is None and report["results_speed_adjusted"] is None
    assert math.isnan(report["max_abs_err_speed_adjusted"])
    assert report["max_abs_err"] < 1e-9


def test_slowed_scales_every_duration_and_keeps_limits_and_counts():
    p = load_profile("cpu-tiny")
    q = p.slowed(1.5)
    for args in ((1, 1, 0.0, 100), (512, 3, 5e4, 900), (2048, 40, 2e6, 20000)):
        assert q.model.step_time(*args) == pytest.approx(1.5 * p.model.step_time(*args))
    assert q.request_overhead_s == pytest.approx(1.5 * p.request_overhead_s)
    assert q.front_end.input_cost(300) == pytest.approx(1.5 * p.front_end.input_cost(300))
    assert q.front_end.output_cost(7) == pytest.approx(1.5 * p.front_end.output_cost(7))
    assert q.engine == p.engine and q.name == p.name
    derived = load_profile({"model": "mixtral-8x7b", "gpu": "H100", "tp": 2})
    d2 = derived.slowed(2.0)
    assert (d2.model.experts, d2.model.spill_tokens) == (derived.model.experts, derived.model.spill_tokens)
    assert d2.model.step_time(64, 64, 0.0, 64 * 1000) == pytest.approx(2 * derived.model.step_time(64, 64, 0.0, 64000))
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ProfileError, match="speed factor"):
            p.slowed(bad)


@pytest.mark.parametrize("real, lo, hi, expected", [(1.0, 0.9, 1.1, 0.0), (1.0, 1.0, 1.0, 0.0),
                                                    (1.0, 1.2, 1.3, 0.2), (2.0, 1.0, 1.5, -0.25),
                                                    (1.0, math.nan, 1.1, math.nan), (0.0, 0.1, 0.2, math.nan)])
def test_the_error_beyond_a_band_is_its_nearer_edges(real, lo, hi, expected):
    got = error_beyond(real, lo, hi)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_a_check_measured_on_a_wandering_machine_lies_inside_the_band_of_that_wander(tmp_path):
    profile = load_profile("cpu-tiny")
    # The 'machine': every step slowed by the wander read from offset 0, which is one of the band's replays.
    wander = SpeedWander(0.5, (0.7, 1.0, 1.6, 1.3, 0.8, 0.6))
    frame = _planned_frame(SETTINGS)
    sim = replay_check(profile, frame.assign(ttft_s=1.0, tpot_s=1.0, e2el_s=1.0), speed=wander)
    measured = frame.assign(ttft_s=sim["sim_ttft_s"], tpot_s=sim["sim_tpot_s"], e2el_s=sim["sim_e2el_s"])
    report = write_report(profile, measured, tmp_path, {}, speed=wander)
    band = report["speed_band"]
    assert band["realisations"] == SPEED_REALISATIONS and band["period_s"] == pytest.approx(3.0)
    assert set(band["results"]) == {"poisson-50", "poisson-80", "burst"}
    for entry in band["results"].values():
        for key, cell in entry.items():
            if key.endswith("_p50") or key.endswith("_p90"):
                assert cell["sim_lo_s"] <= cell["real_s"] <= cell["sim_hi_s"], key
        assert entry["max_abs_err_beyond"] == 0.0
    # The wander moves the simulated statistics: the band has width somewhere.
    assert any(c["sim_hi_s"] > c["sim_lo_s"] for e in band["results"].values()
               for k, c in e.items() if k != "max_abs_err_beyond")
    assert json.loads((tmp_path / "check.json").read_text())["speed_band"]["max_abs_err_beyond"] == 0.0


def test_a_machine_slower_than_its_wander_lies_beyond_the_band(tmp_path):
    profile = load_profile("cpu-tiny")
    measured = _measured_on(profile.slowed(1.5), _planned_frame(SETTINGS))
    report = write_report(profile, measured, tmp_path, {}, speed=SpeedWander(1.0, (0.95, 1.05)))
    # A 1.5x machine is at least a third slower than any replay a +-5% wander gives.
    assert report["speed_band"]["max_abs_err_beyond"] > 0.25
    assert write_report(profile, measured, tmp_path, {})["speed_band"] is None


def test_a_poisson_level_sends_its_whole_plan_however_long():
    # 480 requests at 0.5/s span about 960 s, beyond the 300-s cap of a burst or probe:
    # the cap must not cut the level, or the check would replay fewer requests than asked.
    settings = CheckSettings(requests_per_level=480, capacity_rps=1.0, load_fractions=(0.5,))
    loads, _ = plan_check(load_profile("cpu-tiny"), settings)
    poisson, burst = loads
    assert max(r.at_s for r in poisson.requests) > 600
    assert poisson.time_cap_s > max(r.at_s for r in poisson.requests)
    assert burst.time_cap_s == settings.time_cap_s == 300.0


def test_each_poisson_load_sends_its_own_count_and_a_count_per_load_must_match_the_loads():
    settings = CheckSettings(requests_per_level=(20, 50), capacity_rps=1.0, load_fractions=(0.5, 0.8), burst=4)
    half, high, burst = plan_check(load_profile("cpu-tiny"), settings)[0]
    assert (half.name, len(half.requests), high.name, len(high.requests), len(burst.requests)) == \
        ("poisson-50", 20, "poisson-80", 50, 4)
    # The half load is the same draw whether the 80% load sends 20 or 50: only what follows it moves.
    same = plan_check(load_profile("cpu-tiny"), CheckSettings(requests_per_level=20, capacity_rps=1.0,
                                                              load_fractions=(0.5, 0.8), burst=4))[0]
    assert [(r.input_len, r.output_len, r.at_s) for r in same[0].requests] == \
        [(r.input_len, r.output_len, r.at_s) for r in half.requests]
    assert settings.level_requests() == (20, 50) and CheckSettings(requests_per_level=7).level_requests() == (7, 7)
    assert CheckSettings(requests_per_level=np.int64(7)).level_requests() == (7, 7)  # a count from numpy
    with pytest.raises(ValueError, match=r"3 counts \(1, 2, 3\) for 2 loads"):
        CheckSettings(requests_per_level=(1, 2, 3))
    with pytest.raises(ValueError, match="requests_per_level and burst must be >= 1"):
        CheckSettings(requests_per_level=(480, 0))
