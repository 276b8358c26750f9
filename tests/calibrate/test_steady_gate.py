"""The steadiness gate: probe the host's speed wander, wait for it to settle, stop when it does not."""
import json
import math

import pytest

from calibrate.steady_gate import HostUnsteady, SteadySettings, describe, wait_for_steady


class FakeTime:
    """A clock that only moves when the gate sleeps, and probes that take ``probe_s`` each."""

    def __init__(self, probe_s=30.0):
        self.now = 0.0
        self.probe_s = probe_s
        self.slept = []

    def clock(self):
        return self.now

    def sleep(self, s):
        self.slept.append(s)
        self.now += s

    def probes(self, cvs):
        it = iter(cvs)

        def probe():
            self.now += self.probe_s
            cv = next(it)
            return {"cv_seen": cv}, cv
        return probe


def gate(cvs, settings, probe_s=30.0):
    t = FakeTime(probe_s)
    said = []
    report, record = wait_for_steady(t.probes(cvs), settings, what="tiny: before profiling", say=said.append,
                                     sleep=t.sleep, clock=t.clock)
    return report, record, said, t


def test_a_steady_host_passes_at_the_first_probe_without_waiting():
    report, record, said, t = gate([0.031], SteadySettings(max_cv=0.06))
    assert report == {"cv_seen": 0.031} and record["steady"] is True
    assert [x["cv"] for x in record["tries"]] == [0.031] and t.slept == [] and said == []
    assert describe(record) == "3.1%"


def test_a_wandering_host_is_probed_again_until_it_settles_and_the_last_probe_is_kept():
    report, record, said, t = gate([0.12, 0.08, 0.045], SteadySettings(max_cv=0.06, max_wait_s=900, interval_s=60))
    assert report == {"cv_seen": 0.045} and record["steady"] is True
    assert [x["cv"] for x in record["tries"]] == [0.12, 0.08, 0.045]
    assert t.slept == [60, 60] and record["waited_s"] == pytest.approx(3 * 30 + 2 * 60)
    assert len(said) == 2 and "wanders by 12.0%, above 6%" in said[0] and said[0].startswith("tiny: before")
    assert describe(record) == "4.5% after 3.5 min"


def test_a_host_that_never_settles_stops_the_campaign_with_what_to_do():
    with pytest.raises(HostUnsteady) as e:
        gate([0.14] * 100, SteadySettings(max_cv=0.06, max_wait_s=300, interval_s=60))
    msg = str(e.value)
    assert "tiny: before profiling" in msg and "14.0%" in msg and "above the 6%" in msg
    assert "--resume" in msg and "--max-wander 0" in msg


def test_the_wait_is_bounded_by_max_wait_s():
    # Probes of 30 s and pauses of 60 s: tries end at 30, 120, 210 and 300 s; no pause starts that would
    # end past the 300-s wait (300 + 60 > 300), so there is no fifth.
    t = FakeTime(30.0)
    calls = []

    def probe():
        t.now += 30.0
        calls.append(t.now)
        return {}, 0.2

    with pytest.raises(HostUnsteady):
        wait_for_steady(probe, SteadySettings(max_cv=0.06, max_wait_s=300, interval_s=60), say=lambda m: None,
                        sleep=t.sleep, clock=t.clock)
    assert calls == [30.0, 120.0, 210.0, 300.0]


def test_with_the_gate_off_one_probe_is_taken_and_kept_whatever_its_wander():
    report, record, said, t = gate([0.5], SteadySettings(max_cv=0))
    assert report == {"cv_seen": 0.5} and record["steady"] is None and record["skipped"] == "gate off"
    assert t.slept == [] and describe(record) == "50.0%"


def test_a_probe_that_could_not_run_is_kept_and_not_waited_on():
    report, record, said, t = gate([math.nan], SteadySettings(max_cv=0.06))
    assert record["skipped"] == "no speed probe" and record["steady"] is None
    assert record["tries"][0]["cv"] is None and describe(record) == "n/a"
    json.dumps(record, allow_nan=False)  # the record is plain JSON


@pytest.mark.parametrize("kwargs, word", [({"max_cv": 1.0}, "max_cv"), ({"max_cv": -0.1}, "max_cv"),
                                          ({"max_cv": math.nan}, "max_cv"), ({"max_wait_s": -1}, "max_wait_s"),
                                          ({"interval_s": 0}, "interval_s")])
def test_bad_settings_are_refused_naming_the_setting(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SteadySettings(**kwargs)


def test_a_probe_window_that_did_no_work_is_unsteady_and_said_so():
    with pytest.raises(HostUnsteady, match=r"without bound \(a window did no work\)"):
        gate([math.inf] * 20, SteadySettings(max_cv=0.06, max_wait_s=100, interval_s=60))
    report, record, said, t = gate([math.inf, 0.02], SteadySettings(max_cv=0.06, max_wait_s=900, interval_s=60))
    assert record["tries"][0] == {"cv": None, "stalled": True, "utc": record["tries"][0]["utc"]}
    assert record["steady"] is True and "without bound" in said[0]
    json.dumps(record, allow_nan=False)
    assert describe({"tries": [{"cv": None, "stalled": True}], "waited_s": 0}) == "stalled"


def test_a_line_with_a_fraction_of_a_percent_is_said_as_given():
    with pytest.raises(HostUnsteady, match=r"above the 6\.5% the steadiness gate allows"):
        gate([0.07] * 20, SteadySettings(max_cv=0.065, max_wait_s=100, interval_s=60))


def test_describe_without_a_record_is_na():
    assert describe(None) == "n/a" and describe({"tries": []}) == "n/a"
