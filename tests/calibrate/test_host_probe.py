"""The host probes (``calibrate.host_probe``): stalls found from clock gaps, their summary,
what the report says, and the command line."""
import json
import mmap
import os

import pytest

from calibrate import host_probe
from calibrate.host_probe import clock_gaps, describe, mean_rate, stall_summary


def fake_clock(jumps: dict[int, int], step_ns: int = 1000):
    """A clock that advances ``step_ns`` per read, and ``jumps[k]`` ns at read number k."""
    state = {"t": 0, "reads": 0}

    def clock():
        state["reads"] += 1
        state["t"] += jumps.get(state["reads"], step_ns)
        return state["t"]

    return clock


def test_clock_gaps_are_exactly_the_jumps_longer_than_the_threshold():
    # read 5 jumps 50 us (a stall), read 9 jumps 3 ms, read 12 jumps 15 us (below 20 us)
    clock = fake_clock({5: 50_000, 9: 3_000_000, 12: 15_000})
    assert clock_gaps(0.004, gap_us=20.0, clock=clock) == [50_000, 3_000_000]


def test_stall_summary_by_hand():
    s = stall_summary([30_000, 50_000, 1_000_000], 2.0)
    # 1.08 ms lost in 2 s
    assert s["stall_share"] == pytest.approx(0.00054)
    assert s["stalls"] == 3 and s["stalls_per_s"] == 1.5
    assert s["median_us"] == 50.0 and s["max_us"] == 1000.0
    quiet = stall_summary([], 1.0)
    assert quiet["stall_share"] == 0 and quiet["stalls"] == 0 and quiet["max_us"] == 0


def test_the_report_says_what_each_probe_means():
    steady = {"seconds": 2.0, "stalls": 3, "stall_share": 0.001, "median_us": 30.0, "max_us": 40.0}
    unsteady = {**steady, "stall_share": 0.02}
    assert "steady" in describe({"stalls": steady})[0] and "unsteady" not in describe({"stalls": steady})[0]
    two_cores = {**unsteady, "seconds": 1.0, "worst_core": 1, "per_core": {0: steady, 1: unsteady}}
    assert "over 1.0 s on core 1 (the worst of 2 cores; median" in describe({"stalls": two_cores})[0]
    assert "unsteady" in describe({"stalls": unsteady})[0]
    base = {"core": 0, "neighbour": 1, "mib": 64, "alone_s": 0.01}
    assert "interfere" in describe({"interference": {**base, "ratio": 1.4}})[0]
    assert "no interference" in describe({"interference": {**base, "ratio": 1.02}})[0]
    assert "not measured" in describe({"interference": {"skipped": "needs two cores"}})[0]
    touch = {"first_touch": {"mib": 4, "page_bytes": 4096, "first_us_per_page": 12.6, "again_us_per_page": 0.8}}
    assert "12.60 us per 4 KiB page" in describe(touch)[0]


@pytest.mark.parametrize("before, after, unsteady", [
    (0.002, 0.009, False), (0.0101, 0.0, True), (0.0, 0.03, True), (0.01, 0.01, False),
])
def test_the_verdict_on_a_window_takes_the_worse_of_its_two_readings(before, after, unsteady):
    got, line = host_probe.stall_verdict({"stall_share": before}, {"stall_share": after})
    assert got is unsteady
    assert f"{before * 100:.2f}% of the time before, {after * 100:.2f}% after" in line
    assert ("UNSTEADY HOST" in line) is unsteady and line.endswith("host's" if unsteady else "steady")


def test_a_stall_window_probes_before_and_after_its_block_even_when_it_fails(monkeypatch):
    calls = []
    readings = iter([0.003, 0.025])
    monkeypatch.setattr(host_probe, "stalls", lambda seconds: calls.append(seconds) or {"stall_share": next(readings)})
    with pytest.raises(RuntimeError):
        with host_probe.StallWindow(0.5) as window:
            assert calls == [0.5] and window.after is None
            raise RuntimeError("the measurement failed")
    assert calls == [0.5, 0.5]
    assert window.before == {"stall_share": 0.003} and window.after == {"stall_share": 0.025}
    assert window.unsteady and "0.30% of the time before, 2.50% after: UNSTEADY HOST" in window.line


def test_a_stall_window_of_zero_seconds_probes_nothing_and_a_negative_one_is_refused(monkeypatch):
    monkeypatch.setattr(host_probe, "stalls", lambda seconds: pytest.fail("probed a 0 s window"))
    with host_probe.StallWindow(0) as window:
        pass
    assert window.before is None and window.after is None and not window.unsteady and window.line == ""
    with pytest.raises(ValueError, match="lasts >= 0 s, got -1"):
        host_probe.StallWindow(-1)


def test_first_touch_reports_a_cost_per_page_for_both_touches():
    got = host_probe.first_touch(4)
    assert got["page_bytes"] == mmap.PAGESIZE and got["mib"] == 4
    assert got["first_us_per_page"] > 0 and got["again_us_per_page"] > 0


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two cores")
def test_interference_needs_two_different_cores():
    core = min(os.sched_getaffinity(0))
    with pytest.raises(ValueError, match="two different cores"):
        host_probe.interference(core=core, neighbour=core)


def test_the_command_line_writes_the_figures(tmp_path, capsys):
    out = tmp_path / "host.json"
    assert host_probe.main(["--seconds", "0.05", "--first-touch-mib", "4", "--no-interference",
                            "--speed-seconds", "0", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    stalls = report["stalls"]
    assert 0 <= stalls["stall_share"] <= 1 and stalls["total_seconds"] == 0.05
    if stalls["per_core"]:  # the summary is the worst core's, over its share of the probe
        assert stalls["stall_share"] == max(c["stall_share"] for c in stalls["per_core"].values())
        assert stalls["seconds"] == pytest.approx(0.05 / len(stalls["per_core"]))
    assert report["first_touch"]["mib"] == 4 and "interference" not in report and "speed" not in report
    printed = capsys.readouterr().out
    assert "hidden stalls:" in printed and "first touch of fresh memory:" in printed


@pytest.mark.parametrize("args, message", [(["--seconds", "0"], "--seconds must be > 0"),
                                           (["--first-touch-mib", "-1"], "--first-touch-mib must be >= 0")])
def test_bad_arguments_are_named(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        host_probe.main(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two cores")
def test_the_interference_probe_stops_its_neighbour_and_restores_the_cores():
    import multiprocessing

    before = os.sched_getaffinity(0)
    got = host_probe.interference(mib=1, repeats=2)
    assert os.sched_getaffinity(0) == before  # the probe pinned itself, and let go
    assert multiprocessing.active_children() == []  # the busy neighbour is gone
    assert got["core"] != got["neighbour"] and {got["core"], got["neighbour"]} <= before
    assert got["ratio"] > 0 and got["alone_s"] > 0


def test_the_speed_summary_by_hand():
    # Core 0 did the fixed work at 100/s then 50/s: slowdowns 2/3 and 4/3 (mean 1), cv 1/3.
    trace = {"window_s": 1.0, "per_core": {0: [100.0, 50.0, 100.0, 50.0], 1: [50.0, 100.0, 50.0, 100.0]}}
    s = host_probe.speed_summary(trace)
    c0 = s["per_core"][0]
    assert c0["cv"] == pytest.approx(1 / 3, abs=1e-4)
    assert c0["slowest"] == pytest.approx(4 / 3, abs=1e-3) and c0["fastest"] == pytest.approx(2 / 3, abs=1e-3)
    assert c0["windows"] == 4
    assert s["correlation"] == pytest.approx(-1.0)  # one core slow exactly when the other is fast
    steady = host_probe.speed_summary({"window_s": 1.0, "per_core": {0: [10.0, 10.0, 10.0], 1: [5.0, 6.0, 7.0]}})
    assert steady["per_core"][0]["cv"] == 0.0 and steady["correlation"] is None  # no variation: undefined


def test_a_core_that_did_no_work_in_a_window_is_reported_stalled_not_a_crash():
    report = {"speed": {"window_s": 1.0, "per_core": {0: [100.0, 0.0, 100.0], 1: [90.0, 95.0, 100.0]}}}
    s = host_probe.speed_summary(report["speed"])
    assert s["per_core"][0] == {"stalled_windows": 1, "windows": 3} and "cv" in s["per_core"][1]
    lines = host_probe.describe(report)
    assert any(line.startswith("speed wander on core 0: 1 of 3 1-s windows did no matmul at all") for line in lines)


def test_a_wander_is_read_from_a_report_with_the_core_named():
    report = {"speed": {"window_s": 0.5, "per_core": {"0": [100.0, 50.0], "1": [80.0, 80.0]}}}
    w = host_probe.wander_from_report(report)  # JSON keys are strings; the first core by default
    assert w.window_s == 0.5 and w.factors == pytest.approx((2 / 3, 4 / 3))
    assert host_probe.wander_from_report(report, 1).factors == (1.0, 1.0)
    with pytest.raises(ValueError, match=r"no core 3; it has cores \[0, 1\]"):
        host_probe.wander_from_report(report, 3)
    with pytest.raises(ValueError, match="has no speed trace"):
        host_probe.wander_from_report({"stalls": {}})


def test_the_speed_probe_runs_on_every_core_at_once_and_says_what_it_means(tmp_path, capsys):
    import multiprocessing

    out = tmp_path / "host.json"
    env = dict(os.environ)
    assert host_probe.main(["--seconds", "0.05", "--first-touch-mib", "0", "--no-interference",
                            "--speed-seconds", "1", "--speed-window", "0.5", "--json", str(out)]) == 0
    speed = json.loads(out.read_text())["speed"]
    cores = sorted(os.sched_getaffinity(0))
    assert speed["window_s"] == 0.5 and sorted(int(c) for c in speed["per_core"]) == cores
    assert all(len(r) == 2 and min(r) > 0 for r in speed["per_core"].values())
    assert multiprocessing.active_children() == []
    assert dict(os.environ) == env  # the children's one-thread BLAS settings are not left behind
    printed = capsys.readouterr().out
    assert "speed wander on core" in printed


@pytest.mark.parametrize("args, message", [(["--speed-seconds", "-1"], "--speed-seconds must be >= 0"),
                                           (["--speed-seconds", "2", "--speed-window", "0"],
                                            "--speed-window must be > 0 and at most --speed-seconds"),
                                           (["--speed-seconds", "1", "--speed-window", "3"],
                                            "--speed-window must be > 0 and at most --speed-seconds")])
def test_bad_speed_probe_arguments_are_named(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        host_probe.main(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_the_mean_rate_is_of_the_named_core_or_the_first_and_nan_without_a_trace():
    report = {"speed": {"window_s": 1.0, "seconds": 2.0, "per_core": {"1": [30.0, 50.0], "0": [10.0, 20.0]}}}
    assert mean_rate(report, 1) == 40.0
    assert mean_rate(report) == 15.0  # core 0, the lowest, though listed second
    for missing in (mean_rate(report, 7), mean_rate({"speed": {"skipped": "no pinning"}}), mean_rate({})):
        assert missing != missing  # NaN
