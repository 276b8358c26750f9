"""Measuring the API server's CPU per job: finding the process, the estimate, and bounds in the fit."""
import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from calibrate.fit import fit_replay, measured_front_end
from calibrate.frontend_cpu import estimate
from calibrate.procstat import cpu_seconds, listening_pid
from sim.frontend import FrontEndModel

from calibrate_synth import ENGINE, synthetic_rows


def test_the_process_listening_on_a_loopback_port_is_found():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert listening_pid(f"http://127.0.0.1:{port}") == os.getpid()
    assert listening_pid(f"http://127.0.0.1:{port}") is None  # closed: nobody listens
    assert listening_pid("http://example.com:80") is None      # not this machine


def test_cpu_seconds_count_this_process_work():
    before = cpu_seconds(os.getpid())
    t = time.process_time() + 0.15
    while time.process_time() < t:
        pass
    assert cpu_seconds(os.getpid()) - before == pytest.approx(0.15, abs=0.05)


def test_the_estimate_solves_the_units_exactly():
    # Hand-made units from known costs: 2 ms per request, 1 us per prompt token, 0.5 ms per
    # step, 40 us per token; the baseline (0.01 CPU-s per second) is subtracted.
    cost = {"input_s": 2e-3, "input_token_s": 1e-6, "output_step_s": 5e-4, "output_token_s": 4e-5}
    units = {}
    for key, (req, prompt, steps, toks, secs) in {
        "short": (48, 48 * 32, 48, 48, 2.0), "long": (16, 16 * 1024, 16, 16, 5.0),
        "stream1": (1, 32, 512, 512, 8.0), "stream8": (8, 256, 260, 2048, 9.0),
        "stream32": (32, 1024, 270, 8192, 12.0)}.items():
        cpu = req * cost["input_s"] + prompt * cost["input_token_s"] + steps * cost["output_step_s"] \
            + toks * cost["output_token_s"] + 0.01 * secs
        units[key] = {"requests": req, "prompt_tokens": prompt, "steps": float(steps), "output_tokens": toks,
                      "cpu_s": cpu, "seconds": secs}
    got = estimate(units, 0.01)
    assert got["ok"]
    for k, v in cost.items():
        assert got[k] == pytest.approx(v, rel=1e-6)
    assert not estimate({"short": units["short"]}, 0.01)["ok"]


def test_a_long_unit_below_the_idle_baseline_still_separates_the_prompt_cost():
    # The shape of mid's 2026-12-05b measurement: 2.2 ms per request and nothing per prompt
    # token; the API server idles at 0.034 CPU-s per second, but the 3-s idle measurement
    # read 0.040. With that rate subtracted, the long unit's 16 requests (44 ms of work in
    # 11 s) come out below zero; dropping it left only 32-token prompts, and the per-request
    # cost went to the prompt tokens instead: 70 us per token, 72 ms on a 1024-token prompt.
    cost = np.array([2.2e-3, 0.0, 5.6e-4, 6e-5])
    idle_rate = 0.034
    units = {}
    for key, (req, prompt, steps, toks, secs) in {
        "short": (48, 48 * 32, 48, 48, 2.37), "long": (16, 16 * 1024, 16, 16, 11.16),
        "stream1": (1, 32, 512, 512, 13.6), "stream8": (8, 256, 257, 2048, 11.6),
        "stream32": (32, 1024, 257, 8192, 26.3)}.items():
        cpu = np.dot([req, prompt, steps, toks], cost) + idle_rate * secs
        units[key] = {"requests": req, "prompt_tokens": prompt, "steps": float(steps), "output_tokens": toks,
                      "cpu_s": round(cpu, 2), "seconds": secs}   # /proc's 10-ms ticks
    assert units["long"]["cpu_s"] < 0.040 * units["long"]["seconds"]
    got = estimate(units, 0.040)
    assert got["ok"]
    assert got["input_token_s"] * 1024 < 0.1 * got["input_s"]
    assert got["input_s"] == pytest.approx(cost[0], rel=0.25)
    assert got["idle_cpu_per_s"] == pytest.approx(idle_rate, rel=0.1)


def test_mid_2026_12_05b_measured_no_prompt_cost_once_the_idle_rate_is_fitted():
    # The real record the fix came from: its long unit read 0.37 CPU-s in 11.2 s against an
    # idle rate of 0.040/s. Subtracted, that unit was dropped and the prompts got 71 us per token.
    meta = json.loads((Path(__file__).resolve().parents[1] / "data"
                       / "cpu-mid-2026-12-05b-profiling.csv.meta.json").read_text())
    fe = meta["frontend_cpu"]
    assert fe["estimate"]["input_token_s"] > 5e-5   # what profiling wrote then
    got = estimate(fe["units"], fe["baseline_cpu_per_s"])
    assert got["ok"] and got["input_token_s"] < 1e-6
    assert 1e-3 < got["input_s"] < 4e-3   # mid on 2026-12-05a, whose long unit was usable: 2.2 ms


def test_units_with_one_prompt_length_do_not_pass_for_an_estimate():
    # Without prompts of two lengths the per-request and per-prompt-token costs are one
    # column: any split fits, so there is no estimate to bound the fit with.
    units = {key: {"requests": req, "prompt_tokens": 32 * req, "steps": float(steps), "output_tokens": toks,
                   "cpu_s": 0.1 + 0.01 * k, "seconds": 5.0}
             for k, (key, (req, steps, toks)) in enumerate({
                 "short": (48, 48, 48), "stream1": (1, 512, 512), "stream8": (8, 257, 2048),
                 "stream32": (32, 257, 8192)}.items())}
    got = estimate(units, 0.01)
    assert not got["ok"] and "prompts of two lengths" in got["reason"]


def test_profiling_metadata_gives_the_fit_its_front_end():
    meta = {"frontend_cpu": {"estimate": {"ok": True, "input_s": 0.002, "input_token_s": 1e-6,
                                          "output_step_s": 5e-4, "output_token_s": 4e-5}}}
    assert measured_front_end(meta) == FrontEndModel(0.002, 1e-6, 5e-4, 4e-5)
    assert measured_front_end({"frontend_cpu": {"ok": False, "reason": "remote"}}) is None
    assert measured_front_end({}) is None


def test_recorded_units_are_estimated_afresh_over_the_stored_estimate():
    # Data profiled before an estimator fix keeps its units; a refit uses them, not the old answer.
    units = {key: {"requests": req, "prompt_tokens": prompt, "steps": float(steps), "output_tokens": toks,
                   "cpu_s": req * 2e-3 + steps * 5e-4 + toks * 4e-5 + 0.01 * secs, "seconds": secs}
             for key, (req, prompt, steps, toks, secs) in {
                 "short": (48, 48 * 32, 48, 48, 2.0), "long": (16, 16 * 1024, 16, 16, 5.0),
                 "stream1": (1, 32, 512, 512, 8.0), "stream8": (8, 256, 260, 2048, 9.0),
                 "stream32": (32, 1024, 270, 8192, 12.0)}.items()}
    stale = {"ok": True, "input_s": 0.0, "input_token_s": 7e-5, "output_step_s": 5e-4, "output_token_s": 4e-5}
    got = measured_front_end({"frontend_cpu": {"units": units, "baseline_cpu_per_s": 0.01, "estimate": stale}})
    assert got.input_s == pytest.approx(2e-3, rel=1e-6)
    assert got.input_token_s == pytest.approx(0.0, abs=1e-12)


def test_a_measured_front_end_bounds_the_fit():
    fe = FrontEndModel(input_s=0.004, output_step_s=0.002, output_token_s=0.0015)
    data = synthetic_rows(front_end=fe, overhead=0.002, loaded_units=2)
    low = FrontEndModel(input_s=0.003, output_step_s=0.0015, output_token_s=0.001)
    high = FrontEndModel(input_s=0.006, output_step_s=0.0015, output_token_s=0.003)
    res = fit_replay(data, ENGINE, front_end_bounds=(low, high), polish_nfev=150)
    got = res.front_end
    assert low.input_s <= got.input_s <= high.input_s
    assert got.output_step_s == pytest.approx(0.0015)   # a point range holds the cost there
    assert got.input_token_s == 0.0                     # measured as none: held at none
    assert low.output_token_s <= got.output_token_s <= high.output_token_s
