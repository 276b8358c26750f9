"""Paced loads of ``calibrate check``, end to end over loopback HTTP: an engine slower than its profile
is read by each warm-up, and the Poisson load after it is sent that much slower.

The emulator (``live.emulator``) is a STAND-IN for a real vLLM: it serves the cpu-tiny step model
with every step ``--slowdown`` times longer, so the speed a warm-up should read is known.
"""
import asyncio
import json
import math

import pandas as pd
import pytest

from calibrate.check import CheckSettings, plan_check, run_check
from live.emulator import spawn
from sim.latency import load_profile

SLOWDOWN = 1.4
SETTINGS = CheckSettings(requests_per_level=10, burst=6, max_input=300, max_output=24, prefix_len=64,
                         capacity_rps=2.0, reference_requests=1, reference_input=64, reference_output=4,
                         warmup_s=4)


@pytest.fixture(scope="module")
def slow_engine():
    with spawn(1, "cpu-tiny", args=["--block-size", "32", "--slowdown", str(SLOWDOWN)]) as urls:
        yield urls[0]


@pytest.mark.slow
def test_each_poisson_load_is_sent_at_the_speed_its_warm_up_read(slow_engine, tmp_path):
    report = asyncio.run(run_check(load_profile("cpu-tiny"), slow_engine, tmp_path, SETTINGS, progress=False))
    units = report["units"]
    assert report["pace_to_warmup"] is True
    for name, rate in (("poisson-50", 1.0), ("poisson-80", 1.6)):
        u = units[name]
        assert u["planned_rate_rps"] == pytest.approx(rate)
        # Every step took SLOWDOWN times the model's; a busy CI machine only makes the emulator later.
        assert SLOWDOWN * 0.92 <= u["paced_by"] <= SLOWDOWN * 1.3, u
        assert u["rate_rps"] == pytest.approx(rate / u["paced_by"])
    assert units["burst"]["paced_by"] is None
    # What was sent is the stretched plan: the loads' last requests left about paced_by times later.
    sent = pd.read_csv(tmp_path / "check_requests.csv")
    plain, _ = plan_check(load_profile("cpu-tiny"), SETTINGS)
    for load in plain[:2]:
        last = sent.loc[sent["load"] == load.name, "send_s"].max()
        assert last == pytest.approx(load.requests[-1].at_s * units[load.name]["paced_by"], rel=0.05, abs=0.2)
    # The warm-ups' speed, read again afterwards from every step, is the one that paced each load.
    factors = report["warmup_speed"]["factors"]
    for name in ("poisson-50", "poisson-80"):
        assert factors[name] == pytest.approx(units[name]["paced_by"], rel=1e-6)
    assert math.isfinite(factors["burst"])
    saved = json.loads((tmp_path / "check.json").read_text())["units"]
    assert {k: saved[k] for k in ("poisson-50", "poisson-80")} == {k: units[k] for k in ("poisson-50", "poisson-80")}
    assert saved["burst"]["paced_by"] is None and saved["burst"]["rate_rps"] is None  # no rate: null, not NaN


@pytest.mark.slow
def test_fixed_rates_send_the_profiles_plan(slow_engine, tmp_path):
    settings = CheckSettings(**{**vars(SETTINGS), "pace_to_warmup": False, "load_fractions": (0.5,),
                                "requests_per_level": 6})
    report = asyncio.run(run_check(load_profile("cpu-tiny"), slow_engine, tmp_path, settings, progress=False))
    u = report["units"]["poisson-50"]
    assert report["pace_to_warmup"] is False
    assert u["paced_by"] is None and u["rate_rps"] == u["planned_rate_rps"] == pytest.approx(1.0)
    # The warm-up still ran and read the slower engine: reported, but not used to pace.
    assert report["warmup_speed"]["factors"]["poisson-50"] > 1.2
