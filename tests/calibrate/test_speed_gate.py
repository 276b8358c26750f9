"""The speed gate: a check starts only when the engine runs at the speed it was profiled at."""
import asyncio
import math

import pytest

from calibrate.backend import BackendError
from calibrate.check import CheckSettings
from calibrate.speed_gate import GateSettings, baseline_e2el, describe, reference_latency, wait_for_speed
from live.emulator import spawn

pytestmark = pytest.mark.timeout(300)


class FakeHost:
    """A host whose reference E2EL follows ``e2els``, one per try, with a clock that the gate's sleeps move."""

    def __init__(self, e2els):
        self.e2els, self.now, self.calls = list(e2els), 0.0, 0

    async def measure(self):
        self.calls += 1
        self.now += 2.0  # three reference requests take a while
        return {"e2el_s": self.e2els.pop(0), "ttft_s": 0.1, "tpot_s": 0.03, "requests": 3, "utc": "t"}

    async def sleep(self, s):
        self.now += s

    def clock(self):
        return self.now


def gate(host, baseline, settings, said=None):
    return asyncio.run(wait_for_speed(host.measure, baseline, settings, say=(said if said is not None else []).append,
                                      sleep=host.sleep, clock=host.clock))


def test_a_host_at_its_profiling_speed_passes_at_once():
    host = FakeHost([1.02])
    record = gate(host, 1.0, GateSettings(tolerance=0.03))
    assert record["within"] is True and len(record["tries"]) == 1 and host.calls == 1
    assert record["tries"][0]["ratio"] == pytest.approx(1.02)


def test_a_slow_host_is_waited_out_until_it_returns():
    said = []
    host = FakeHost([1.08, 1.05, 0.98, 1.30])
    record = gate(host, 1.0, GateSettings(tolerance=0.03, max_wait_s=300, interval_s=20), said)
    assert record["within"] is True
    assert [round(t["ratio"], 2) for t in record["tries"]] == [1.08, 1.05, 0.98]
    assert record["waited_s"] == pytest.approx(3 * 2.0 + 2 * 20)  # three tries, two waits between them
    assert len(said) == 2 and "1.080x its profiling speed" in said[0]


def test_a_host_that_never_returns_starts_the_check_anyway_and_says_so():
    said = []
    host = FakeHost([1.10] * 20)
    record = gate(host, 1.0, GateSettings(tolerance=0.03, max_wait_s=60, interval_s=20), said)
    assert record["within"] is False
    # tries at 2, 24, 46 s: another wait would pass the 60 s
    assert len(record["tries"]) == 3 and record["waited_s"] <= 60
    assert "starting anyway" in said[-1]
    assert describe(record) == f"1.10x after {record['waited_s'] / 60:.1f} min, outside 3%"


def test_a_fast_host_is_outside_the_tolerance_too():
    host = FakeHost([0.95, 0.99])
    record = gate(host, 1.0, GateSettings(tolerance=0.03, max_wait_s=300, interval_s=20))
    assert [t["ratio"] for t in record["tries"]] == [pytest.approx(0.95), pytest.approx(0.99)]


def test_no_gate_measures_nothing():
    host = FakeHost([1.5])
    off = gate(host, 1.0, GateSettings(tolerance=0))
    assert off["within"] is None and off["skipped"] == "gate off" and host.calls == 0
    none = gate(host, math.nan, GateSettings())
    assert none["skipped"] == "no reference measured at profiling" and host.calls == 0
    assert describe(none) == "n/a" and describe(None) == "n/a"


def test_the_baseline_is_the_mean_of_the_profilings_measurements():
    assert baseline_e2el({"before": {"e2el_s": 1.0}, "after": {"e2el_s": 1.2}}) == pytest.approx(1.1)
    assert baseline_e2el({"before": {"e2el_s": 1.0}, "after": {"e2el_s": math.nan}}) == pytest.approx(1.0)
    assert math.isnan(baseline_e2el({})) and math.isnan(baseline_e2el(None))


@pytest.mark.parametrize("kwargs, word", [({"tolerance": -0.1}, "tolerance"), ({"tolerance": 1.0}, "tolerance"),
                                          ({"max_wait_s": -1}, "max_wait_s"), ({"interval_s": 0}, "interval_s")])
def test_bad_gate_settings_are_refused_naming_the_setting(kwargs, word):
    with pytest.raises(ValueError, match=word):
        GateSettings(**kwargs)


def test_the_reference_latency_is_measured_on_a_real_server():
    # The emulator (a STAND-IN for vLLM) serves cpu-tiny: 512 prompt tokens and 32 out take
    # tens of milliseconds of TTFT and tens per output token.
    with spawn(1, "cpu-tiny", args=["--block-size", "32"]) as urls:
        m = asyncio.run(reference_latency(urls[0], CheckSettings(reference_requests=2, reference_input=64,
                                                                  reference_output=4)))
    assert m["requests"] == 2
    assert 0 < m["ttft_s"] < m["e2el_s"] and m["tpot_s"] > 0


def test_a_dead_backend_is_named():
    with pytest.raises(BackendError, match="127.0.0.1:9"):
        asyncio.run(reference_latency("http://127.0.0.1:9"))


def test_by_default_the_gate_measures_once_and_never_waits():
    said = []
    host = FakeHost([1.10, 1.0])
    record = gate(host, 1.0, GateSettings(), said)
    assert host.calls == 1 and record["within"] is False and record["waited_s"] == pytest.approx(2.0)
    assert said == [] and describe(record) == "1.10x, outside 3%"
