"""What a check's miss is made of: the machine's speed during the load, or not (calibrate.verdict)."""
import json
import math
from pathlib import Path

import pytest

from calibrate.verdict import count_causes, describe_misses, load_verdicts

KEPT = Path(__file__).resolve().parents[1] / "data"


def report(loads: dict, step_speed: dict | None) -> dict:
    """A check report with only what the verdict reads: per load its largest error and, when
    the steps were timed, the steps' speed and the largest error replayed at it."""
    out = {"results": {name: {"max_abs_err": err} for name, (err, _, _) in loads.items()}}
    out["results"]["all"] = {"max_abs_err": max(err for err, _, _ in loads.values())}
    if step_speed is not None:
        out["step_speed"] = step_speed
    else:
        out["step_speed"] = {"factors": {n: f for n, (_, f, _) in loads.items()},
                             "results": {n: {"max_abs_err": a} for n, (_, _, a) in loads.items()}}
    return out


def test_each_load_is_within_a_miss_of_the_speed_or_a_miss_the_speed_does_not_explain():
    r = report({"poisson-50": (0.08, 1.02, 0.03),      # within: the raw error decides, not the adjusted one
                "poisson-80": (0.13, 1.04, 0.05),      # missed; at its steps' speed within: the machine
                "burst": (0.12, 0.99, 0.11)}, None)    # missed at its steps' speed too: not the machine
    verdicts = load_verdicts(r, 0.10)
    assert [(v.load, v.cause) for v in verdicts] == [("poisson-50", "within"), ("poisson-80", "speed"),
                                                     ("burst", "not_speed")]
    assert verdicts[1].steps_speed == 1.04 and verdicts[1].error_at_steps_speed == 0.05
    assert count_causes(v.cause for v in load_verdicts(r, 0.10) * 2) == {"within": 2, "speed": 2, "not_speed": 2,
                                                                       "unknown": 0}


def test_the_target_itself_is_within_and_the_adjusted_error_at_the_target_is_the_speed():
    r = report({"poisson-50": (0.10, 1.0, 0.2), "poisson-80": (0.11, 1.01, 0.10)}, None)
    assert [v.cause for v in load_verdicts(r, 0.10)] == ["within", "speed"]


def test_a_check_without_timed_steps_cannot_tell():
    r = report({"poisson-50": (0.15, math.nan, math.nan), "burst": (0.05, math.nan, math.nan)}, {})
    verdicts = load_verdicts(r, 0.10)
    assert [v.cause for v in verdicts] == ["unknown", "within"] and math.isnan(verdicts[0].steps_speed)
    assert "no timed steps" in describe_misses(r, 0.10)
    del r["step_speed"]
    assert [v.cause for v in load_verdicts(r, 0.10)] == ["unknown", "within"]


def test_the_log_clause_names_each_missed_load_its_speed_and_its_error_there():
    r = report({"poisson-50": (0.08, 1.02, 0.03), "poisson-80": (0.113, 1.036, 0.025),
                "burst": (0.148, 0.98, 0.106)}, None)
    text = describe_misses(r, 0.10)
    assert text.startswith("; missed at poisson-80 11.3%: the machine's speed, not the model")
    assert "ran 1.04x the model; at that speed 2.5%" in text
    assert "burst 14.8%: not the machine's speed (its engine steps ran 0.98x the model; at that speed 10.6%)" in text
    assert "poisson-50" not in text
    assert describe_misses(report({"burst": (0.02, 1.0, 0.01)}, None), 0.10) == ""


@pytest.mark.parametrize("campaign,check,load,cause,error,at_speed", [
    # Recorded real checks (vLLM-CPU, Intel Xeon VM): small's 80% load in 05l missed at 11.3%
    # with its steps 1.04x the model, 2.5% at that speed; mid's in 05h at 14.8%, 10.6% at its
    # steps' speed (0.98x): the one miss of the 480-request campaigns the speed does not explain.
    ("05l", "small-check-1", "poisson-80", "speed", 0.113, 0.025),
    ("05h", "mid-check-1", "poisson-80", "not_speed", 0.148, 0.106),
    ("05l", "mid-check-1", "poisson-80", "within", 0.066, 0.039),
    # 06a, a noisy host: tiny's 80% load missed by 31.1% with its steps 1.11x the model, 4.8% there.
    ("06a", "tiny-check-2", "poisson-80", "speed", 0.311, 0.048),
])
def test_recorded_checks_verdicts(campaign, check, load, cause, error, at_speed):
    r = json.loads((KEPT / f"checks-2026-12-{campaign}" / check / "check.json").read_text())
    v = {v.load: v for v in load_verdicts(r, 0.10)}[load]
    assert v.cause == cause
    assert v.error == pytest.approx(error, abs=5e-4) and v.error_at_steps_speed == pytest.approx(at_speed, abs=5e-4)
