"""Warm-ups of ``calibrate check``: the loaded engine's speed, timed just before each load, and
each load replayed at it. The 'measured' times are the simulator's own under a profile slowed
by a known factor, so the expected errors are set by construction."""
import math

import pandas as pd
import pytest

from calibrate.check import (REFERENCE_PHASE, WARMUP_FIRST_ID, WARMUP_PHASE, CheckSettings, check_units, compare,
                             format_pacing, format_warmup_speed, paced, plan_check, replay_check, step_speed_check,
                             warmup_speed_check, warmup_units)
from sim.latency import load_profile

SETTINGS = CheckSettings(requests_per_level=12, burst=6, max_input=300, max_output=12, prefix_len=64,
                         capacity_rps=2.0, reference_requests=2, reference_input=128, reference_output=8,
                         warmup_s=5)
LOADS = ("poisson-50", "poisson-80", "burst")


def _units(settings: CheckSettings = SETTINGS):
    loads, _ = plan_check(load_profile("cpu-tiny"), settings)
    return loads, check_units(loads, settings)


def _measured_on(profile, units) -> pd.DataFrame:
    """Every request of ``units`` with the times ``profile`` gives it: a machine running exactly so."""
    frame = pd.DataFrame([{"unit": f"{u.phase}/{u.name}", "phase": u.phase, "load": u.name, "mode": u.mode,
                           "request_id": r.request_id, "input_len": r.input_len, "output_len": r.output_len,
                           "max_tokens": r.output_len, "prefix_id": r.prefix_id, "shared_len": r.shared_len,
                           "send_s": r.at_s if u.mode != "sequential" else float(k), "ok": True}
                          for u in units for k, r in enumerate(u.requests)])
    sim = replay_check(profile, frame.assign(ttft_s=1.0, tpot_s=1.0, e2el_s=1.0))
    return frame.assign(ttft_s=sim["sim_ttft_s"], tpot_s=sim["sim_tpot_s"], e2el_s=sim["sim_e2el_s"])


def _steps(ratios: dict[str, float]) -> dict:
    """A ``calibrate.step_times.summarise`` result with only what the speed checks read."""
    return {"loads": {name: {"real_busy_s": 10.0 * r, "predicted_busy_s": 10.0} for name, r in ratios.items()}}


def test_each_load_gets_a_warm_up_at_its_rate_right_before_it():
    loads, units = _units()
    assert [u.name for u in units] == ["before-poisson-50", "warmup-poisson-50", "poisson-50",
                                       "before-poisson-80", "warmup-poisson-80", "poisson-80",
                                       "before-burst", "warmup-burst", "burst", "after"]
    warm = {u.name: u for u in units if u.phase == WARMUP_PHASE}
    assert warm["warmup-poisson-50"].rate == pytest.approx(1.0) and warm["warmup-poisson-80"].rate == pytest.approx(1.6)
    for w in warm.values():
        assert w.mode == "open" and w.keep_token_times
    for name in ("warmup-poisson-50", "warmup-poisson-80"):
        w = warm[name]
        assert len(w.requests) == round(w.rate * SETTINGS.warmup_s)
        assert 0 < w.requests[-1].at_s < 3 * SETTINGS.warmup_s  # about warmup_s of arrivals at that rate
    # The burst's warm-up is a burst of as many other requests: the same batch sizes.
    burst = warm["warmup-burst"]
    assert not math.isfinite(burst.rate) and len(burst.requests) == SETTINGS.burst == burst.concurrency
    assert all(r.at_s == 0 for r in burst.requests)
    # Drawn apart from the loads: no request id or shared prefix of a load is warmed by a warm-up.
    load_ids = {r.request_id for u in loads for r in u.requests}
    warm_reqs = [r for w in warm.values() for r in w.requests]
    assert all(r.request_id >= WARMUP_FIRST_ID and r.request_id not in load_ids for r in warm_reqs)
    assert len({r.request_id for r in warm_reqs}) == len(warm_reqs)
    load_prefixes = {r.prefix_id for u in loads for r in u.requests if r.prefix_id >= 0}
    assert not load_prefixes & {r.prefix_id for r in warm_reqs if r.prefix_id >= 0}
    # The loads themselves are the plan without warm-ups, request for request.
    plain, _ = plan_check(load_profile("cpu-tiny"), CheckSettings(**{**vars(SETTINGS), "warmup_s": 0}))
    assert [[r.request_id for r in u.requests] for u in plain] == [[r.request_id for r in u.requests] for u in loads]


def test_no_warm_up_by_default_and_bad_durations_are_refused():
    loads, units = _units(CheckSettings(**{**vars(SETTINGS), "warmup_s": 0}))
    assert warmup_units(loads, CheckSettings()) == [] and all(u.phase != WARMUP_PHASE for u in units)
    for bad in (-1, 0.5, 7200):
        with pytest.raises(ValueError, match="warmup_s must be 0"):
            CheckSettings(warmup_s=bad)
    burst_only = [u for u in loads if not math.isfinite(u.rate)]
    assert [len(w.requests) for w in warmup_units(burst_only, SETTINGS)] == [SETTINGS.burst]


def test_warm_ups_are_not_loads_in_the_comparison():
    profile = load_profile("cpu-tiny")
    _, units = _units()
    measured = _measured_on(profile.slowed(1.3), units)
    # A warm-up the model misses by far changes no load's error.
    warm = measured["phase"] == WARMUP_PHASE
    result = compare(replay_check(profile, measured.assign(e2el_s=measured["e2el_s"].where(~warm, 100.0))))
    assert set(result) == {*LOADS, "all"}
    assert result == compare(replay_check(profile, measured[~warm]))
    # The step-speed replay, too, replays the loads only, whatever units had timed steps.
    e = step_speed_check(profile, replay_check(profile, measured), _steps({**dict.fromkeys(LOADS, 1.3),
                                                                           "warmup-poisson-50": 1.3}))
    assert set(e["factors"]) == set(LOADS)


def test_a_load_replayed_at_its_warm_ups_speed_recovers_a_slower_machine():
    profile = load_profile("cpu-tiny")
    _, units = _units()
    measured = _measured_on(profile.slowed(1.1), units)
    frame = replay_check(profile, measured)
    raw = compare(frame)
    assert all(raw[load]["max_abs_err"] > 0.05 for load in LOADS), raw
    # The warm-ups ran 1.1x the model, as the loads did: at that speed the model is exact.
    e = warmup_speed_check(profile, frame, _steps({f"warmup-{load}": 1.1 for load in LOADS}))
    assert e["factors"] == pytest.approx(dict.fromkeys(LOADS, 1.1))
    assert e["max_abs_err"] < 1e-9
    assert "0.0%, within the 10% target" in format_warmup_speed({"warmup_speed": e, "target": 0.10})
    # Warm-ups that ran at the profile's speed predict nothing of the slowdown that followed; the
    # loads' own steps would, but they are known only afterwards.
    ratios = {**{f"warmup-{load}": 1.0 for load in LOADS}, **dict.fromkeys(LOADS, 1.1)}
    e = warmup_speed_check(profile, frame, _steps(ratios))
    assert e["max_abs_err"] == pytest.approx(max(raw[load]["max_abs_err"] for load in LOADS))
    assert "beyond the 10% target" in format_warmup_speed({"warmup_speed": e, "target": 0.10})
    assert step_speed_check(profile, frame, _steps(ratios))["max_abs_err"] < 1e-9
    # A load whose warm-up had no timed steps is left out; none at all: no result.
    e = warmup_speed_check(profile, frame, _steps({"warmup-poisson-80": 1.1, "poisson-50": 1.1}))
    assert set(e["factors"]) == {"poisson-80"}
    assert warmup_speed_check(profile, frame, _steps(dict.fromkeys(LOADS, 1.1))) is None
    assert format_warmup_speed({}) == ""


def test_probes_stay_first_and_keep_their_labels():
    _, units = _units()
    probes = [u.name for u in units if u.phase == REFERENCE_PHASE]
    assert probes == ["before-poisson-50", "before-poisson-80", "before-burst", "after"]


def test_a_paced_load_sends_the_same_requests_stretched_by_its_warm_ups_speed():
    loads, _ = _units()
    poisson, burst = loads[1], loads[2]
    slow = paced(poisson, 1.25)
    assert slow.rate == pytest.approx(poisson.rate / 1.25)
    assert [r.request_id for r in slow.requests] == [r.request_id for r in poisson.requests]
    assert [r.at_s for r in slow.requests] == pytest.approx([1.25 * r.at_s for r in poisson.requests])
    assert [(r.input_len, r.output_len, r.prefix_id) for r in slow.requests] == \
        [(r.input_len, r.output_len, r.prefix_id) for r in poisson.requests]
    assert poisson.requests[-1].at_s > 0 and slow.requests[-1].at_s > poisson.requests[-1].at_s  # plan untouched
    assert paced(burst, 1.25) is burst  # a burst is sent at once at any speed
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="positive finite speed"):
            paced(poisson, bad)


def test_the_pacing_line_names_each_paced_loads_planned_and_sent_rate():
    units = {"poisson-50": {"planned_rate_rps": 3.0, "rate_rps": 2.4, "paced_by": 1.25, "planned": 480},
             "burst": {"planned_rate_rps": None, "rate_rps": None, "paced_by": None, "planned": 32}}
    assert format_pacing({"units": units}) == \
        "loads paced by their warm-up's speed: poisson-50 3 -> 2.4 req/s (1.250x)"
    assert format_pacing({"units": {"burst": units["burst"]}}) == "" and format_pacing({}) == ""
