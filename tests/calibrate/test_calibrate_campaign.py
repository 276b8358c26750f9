"""The calibration campaign end to end, with the emulator (a STAND-IN for vLLM) as each shape's server."""
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest

from calibrate.campaign import (Campaign, CampaignSettings, changed_measurement_settings, expected_duration,
                                host_drift_note, record_input, slowdown)
from calibrate.check import CheckSettings
from calibrate.drift_gate import DriftSettings
from calibrate.procstat import process_table, tree_pids
from calibrate.profiling import meta_path
from calibrate.speed_gate import GateSettings
from calibrate.steady_gate import HostUnsteady, SteadySettings
from live.emulator import spawn

from process_helpers import still_alive_after
from test_calibrate_probe import SMALL

pytestmark = pytest.mark.timeout(600)

CHECK = CheckSettings(max_input=400, max_output=24, prefix_len=64, requests_per_level=10, burst=5, warmup_s=1)


@contextlib.contextmanager
def emulated(shape, settings):
    with spawn(1, "cpu-tiny", args=["--block-size", "32"]) as urls:
        yield urls[0]


def test_a_campaign_serves_profiles_fits_checks_twice_and_resumes(tmp_path):
    started = []

    @contextlib.contextmanager
    def counting(shape, settings):
        started.append(shape)
        with emulated(shape, settings) as url:
            yield url

    # A wide tolerance and no wait: the emulator's timing on a busy CI machine must not hold the test.
    # No steadiness or drift gate either: a CI machine's speed may wander more than a measurement's host should.
    settings = CampaignSettings(shapes=("tiny",), checks=2, profile=SMALL, check=CHECK, progress=False,
                                fit_replays=60, speed_probe_s=2, gate=GateSettings(tolerance=0.5, max_wait_s=0),
                                steady=SteadySettings(max_cv=0), drift=DriftSettings(max_drift=0))
    lines = []
    camp = Campaign(tmp_path, settings, server=counting, log=lines.append)
    assert camp.pending("tiny") == ["profile", "fit", "check-1", "check-2"]
    summary = camp.run()
    assert started == ["tiny"] and camp.pending("tiny") == []
    assert "expected about" in lines[0]
    assert any(line.startswith("tiny: a check's units last about ")
               and line.endswith("(simulated on this campaign's fit)") for line in lines), lines
    for f in ("tiny/profiling.csv", "tiny/cpu-tiny.json", "tiny/check-1/check.json", "tiny/check-2/check.json",
              "log.jsonl", "summary.md", "summary.json"):
        assert (tmp_path / f).exists(), f
    loads = summary["shapes"]["tiny"]["loads"]
    assert set(loads) == {"poisson-50", "poisson-80", "burst"}
    for d in loads.values():
        assert len(d["runs"]) == 2 and set(d["real_spread"]) == {"ttft_p50", "ttft_p90", "tpot_p50", "tpot_p90",
                                                                 "e2el_p50"}
        assert d["largest_error"] == max(r["max_abs_err"] for r in d["runs"])
    steps = [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == ["profile", "fit", "check-1", "check-2"]
    md = (tmp_path / "summary.md").read_text()
    assert "## tiny" in md and "spread of real" in md and "Fit: " in md
    assert "machine vs profile" in md
    for d in loads.values():  # every check ran its reference probes: a speed and an adjusted error per run
        assert all(r["speed_factor"] > 0 and r["max_abs_err_speed_adjusted"] >= 0 for r in d["runs"])
    # Before each check the machine's speed wander was probed and the check replayed under it.
    for k in (1, 2):
        probe = json.loads((tmp_path / "tiny" / f"check-{k}" / "host-speed.json").read_text())
        assert len(probe["speed"]["per_core"]["0"]) == 2  # two 1-s windows of the model's core
        assert probe["steady_gate"]["skipped"] == "gate off" and len(probe["steady_gate"]["tries"]) == 1
        band = json.loads((tmp_path / "tiny" / f"check-{k}" / "check.json").read_text())["speed_band"]
        assert band["realisations"] == 8 and band["period_s"] == 2.0
    for d in loads.values():
        assert all(r["max_abs_err_beyond_speed_band"] >= 0 for r in d["runs"])
    assert "beyond the speed band" in md
    # The host's speed was probed before and after profiling too; each check says how its own
    # probe compares (on one quiet machine minutes apart: near 1).
    profiling = json.loads((tmp_path / "tiny" / "profile-host-speed.json").read_text())
    assert set(profiling) == {"before", "after"}
    assert all(len(profiling[w]["speed"]["per_core"]["0"]) == 2 for w in profiling)
    for d in loads.values():
        assert all(0.5 < r["host_vs_profiling"] < 2.0 for r in d["runs"]), d["runs"]
    assert "host vs profiling (matmul probe), its wander" in md
    # The engine's reference latency was measured at the start and end of profiling, and each
    # check was started once the engine ran within the gate's tolerance of it (the emulator: near 1).
    reference = json.loads((tmp_path / "tiny" / "profile-reference.json").read_text())
    assert set(reference) == {"before", "after"} and all(reference[w]["e2el_s"] > 0 for w in reference)
    for k in (1, 2):
        record = json.loads((tmp_path / "tiny" / f"check-{k}" / "speed-gate.json").read_text())
        assert record["baseline_e2el_s"] == pytest.approx((reference["before"]["e2el_s"]
                                                           + reference["after"]["e2el_s"]) / 2)
        assert len(record["tries"]) == 1 and 0.5 <= record["tries"][0]["ratio"] <= 1.5 and record["within"]
    assert "engine vs profiling at the start (speed gate)" in md
    for d in loads.values():
        assert all(r["speed_gate"].endswith("x") for r in d["runs"]), d["runs"]
    assert sum("as slow as while profiled (matmul probe)" in line for line in lines) == 2
    # Each check found the server's processes by its port and kept, per load, how long they
    # ran and waited for a core: the emulator is one process that ran in every Poisson load.
    for k in (1, 2):
        runqueue = json.loads((tmp_path / "tiny" / f"check-{k}" / "check.json").read_text())["runqueue"]
        assert set(runqueue) == {"poisson-50", "poisson-80", "burst"}
        for load, procs in runqueue.items():
            assert all(p["run_s"] > 0 and p["wait_s"] >= 0 for p in procs.values()), procs
            # The emulator spends 20-70 ms of CPU on a Poisson level here, and about 15 ms on the
            # 5-request burst, which a fast host brings under the 10 ms a process must run to be listed.
            assert procs or load == "burst", (load, runqueue)
    # Every check timed its engine steps: the emulator runs the engine model, so the median
    # decode step ran near the fitted model's duration, and the table shows it per run.
    for d in loads.values():
        assert all(0.5 < r["step_ratios"]["decode"] < 2.0 for r in d["runs"]), d["runs"]
    assert "steps real / model: decode, prefill" in md and md.count("x, ") >= 6
    assert "largest at its steps' speed" in md
    for d in loads.values():
        assert all(r["max_abs_err_step_speed"] >= 0 for r in d["runs"])
    # Each run's largest error over redraws of its requests brackets a non-negative interval.
    for d in loads.values():
        assert all(0 <= r["max_abs_err_redraws"][0] <= r["max_abs_err_redraws"][1] for r in d["runs"])
    assert "largest over redraws (90%)" in md
    # Each run names what a miss is made of: within target, or at its steps' speed within it or not.
    for d in loads.values():
        for r in d["runs"]:
            assert (r["miss_cause"] == "within") == (r["max_abs_err"] <= 0.10), r
            assert r["miss_cause"] in ("within", "speed", "not_speed"), r
    assert "| a miss is |" in md and md.count("Within target: ") == 1
    # Each load had a one-second warm-up before it, and was replayed at the speed its steps ran.
    for d in loads.values():
        assert all(r["max_abs_err_warmup_speed"] >= 0 for r in d["runs"]), d["runs"]
    assert "| largest at its warm-up's speed |" in md
    assert md.count("At the speed each load's warm-up ran, measured before it: ") == 1
    assert sum("at the speed of each load's warm-up, measured before it: " in line for line in lines) == 2
    header = next(line for line in md.splitlines() if line.startswith("| load |"))
    rule = md.splitlines()[md.splitlines().index(header) + 1]
    assert header.count("|") == rule.count("|")  # every column has its rule
    assert all(line.count("|") == header.count("|") for line in md.splitlines() if line.startswith("| poisson"))
    # Resuming does nothing more (no server is even started).
    before = (tmp_path / "tiny" / "check-1" / "check.json").stat().st_mtime_ns
    Campaign(tmp_path, settings, server=counting, log=lines.append).run()
    assert started == ["tiny"]
    assert (tmp_path / "tiny" / "check-1" / "check.json").stat().st_mtime_ns == before
    # A lost check is redone alone: the profile is not refitted.
    (tmp_path / "tiny" / "check-2" / "check.json").unlink()
    assert camp.pending("tiny") == ["check-2"]
    fitted = (tmp_path / "tiny" / "cpu-tiny.json").stat().st_mtime_ns
    camp.run()
    assert started == ["tiny", "tiny"] and (tmp_path / "tiny" / "check-2" / "check.json").exists()
    assert (tmp_path / "tiny" / "cpu-tiny.json").stat().st_mtime_ns == fitted
    # A lost profile file is refitted; the checks, of the lost profile, are redone.
    (tmp_path / "tiny" / "cpu-tiny.json").unlink()
    assert camp.pending("tiny") == ["fit", "check-1", "check-2"]
    camp.run()
    assert started == ["tiny", "tiny", "tiny"] and camp.pending("tiny") == []
    refit = hashlib.sha256((tmp_path / "tiny" / "cpu-tiny.json").read_bytes()).hexdigest()
    for k in (1, 2):
        record = json.loads((tmp_path / "tiny" / f"check-{k}" / "check.json.input").read_text())
        assert record == {"input": "cpu-tiny.json", "sha256": refit}
    steps = [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps[-3:] == ["fit", "check-1", "check-2"]
    [drift] = json.loads((tmp_path / "tiny" / "profile-drift.json").read_text())
    assert drift["verdict"] == "gate off" and drift["drift"] is not None  # measured and recorded, not judged


def fake_campaign(tmp_path, checks=2):
    """A finished campaign's files, written by hand (no server, no fit)."""
    settings = CampaignSettings(shapes=("tiny",), checks=checks, progress=False)
    camp = Campaign(tmp_path, settings, log=lambda line: None)
    d = tmp_path / "tiny"
    d.mkdir(parents=True)
    (d / "profiling.csv").write_text("unit,ttft\n1,0.5\n")
    (d / "profiling.csv.meta.json").write_text(json.dumps({"finished": "2026-12-02T10:00:00Z"}))
    assert meta_path(d / "profiling.csv") == d / "profiling.csv.meta.json"
    (d / "cpu-tiny.json").write_text('{"name": "cpu-tiny", "fit": {"convergence": "a"}}\n')
    record_input(d / "cpu-tiny.json", d / "profiling.csv")
    for k in range(1, checks + 1):
        (d / f"check-{k}").mkdir()
        (d / f"check-{k}" / "check.json").write_text(json.dumps({"results": {}, "run": k}))
        record_input(d / f"check-{k}" / "check.json", d / "cpu-tiny.json")
    assert camp.pending("tiny") == []
    return camp, d


def test_a_refitted_profile_makes_its_checks_stale(tmp_path):
    camp, d = fake_campaign(tmp_path)
    (d / "cpu-tiny.json").write_text('{"name": "cpu-tiny", "fit": {"convergence": "b"}}\n')
    assert camp.pending("tiny") == ["check-1", "check-2"]
    # the summary shows the new profile and none of the old profile's checks
    summary = camp.summarize()
    assert summary["shapes"]["tiny"]["profile"]["convergence"] == "b"
    assert summary["shapes"]["tiny"]["loads"] == {}


def test_a_changed_or_unfinished_profiling_run_makes_every_later_step_stale(tmp_path):
    camp, d = fake_campaign(tmp_path)
    with open(d / "profiling.csv", "a") as f:
        f.write("2,0.7\n")
    # the fit is redone first (without a server); run() then asks again for the checks
    assert camp.pending("tiny") == ["fit"]
    (d / "profiling.csv.meta.json").write_text(json.dumps({}))  # profiling resumed, not finished
    assert camp.pending("tiny") == ["profile", "fit", "check-1", "check-2"]


def test_outputs_without_an_input_record_are_redone(tmp_path):
    camp, d = fake_campaign(tmp_path)
    (d / "check-2" / "check.json.input").unlink()
    assert camp.pending("tiny") == ["check-2"]
    (d / "cpu-tiny.json.input").write_text("not json")
    assert camp.pending("tiny") == ["fit", "check-2"]


def test_a_step_without_a_load_average_says_so(tmp_path, monkeypatch):
    import calibrate.campaign as campaign

    monkeypatch.setattr(campaign, "loadavg", lambda: [])
    lines = []
    camp = Campaign(tmp_path, CampaignSettings(shapes=("tiny",), progress=False), log=lines.append)
    with camp._step("tiny", "fit"):
        pass
    assert "tiny: fit (load average unknown" in lines[0] and "BUSY" not in lines[0]
    assert json.loads((tmp_path / "log.jsonl").read_text())["started_loadavg"] == []


class FixedOthers:
    """Stands in for ``OtherCpu``: others used ``share`` of the machine during the step."""

    def __init__(self, share):
        self.share = share

    def __call__(self):
        return self

    def start(self):
        return self

    def stop(self):
        return {"other_cpu_s": self.share * 10, "other_cpu_share": self.share,
                "stolen_cpu_s": 0.0, "stolen_cpu_share": 0.0}


@pytest.mark.parametrize("share, busy", [(0.0, False), (0.04, False), (0.3, True)])
def test_a_step_is_busy_when_other_processes_used_the_machine_not_by_its_own_load(
        tmp_path, monkeypatch, share, busy):
    import calibrate.campaign as campaign

    # A high load average of the campaign's own (a server that just started) is not "busy".
    monkeypatch.setattr(campaign, "loadavg", lambda: [3.5, 2.0, 1.0])
    monkeypatch.setattr(campaign, "OtherCpu", FixedOthers(share))
    lines = []
    camp = Campaign(tmp_path, CampaignSettings(shapes=("tiny",), progress=False), log=lines.append)
    with camp._step("tiny", "check-1"):
        pass
    assert ("BUSY MACHINE" in lines[-1]) == busy
    assert f"other processes used {share * 100:.1f}% of the machine" in lines[-1]
    rec = json.loads((tmp_path / "log.jsonl").read_text())
    assert rec["busy"] == busy and rec["other_cpu_share"] == share
    assert camp.step_records()[("tiny", "check-1")]["other_cpu_share"] == share


def test_settings_and_duration():
    with pytest.raises(ValueError, match="unknown model shape 'huge'"):
        CampaignSettings(shapes=("tiny", "huge"))
    minutes = {"tiny": 14.0, "small": 50.0, "mid": 23.0}
    expected, worst = expected_duration(["tiny", "small", "mid"], 2, minutes)
    assert 2 * (14 + 50 + 23) < expected < worst
    # No checks: only each shape's start, profiling and fit, whatever the checks would take.
    assert expected_duration(["small"], 0, {"small": 5.0}) == expected_duration(["small"], 0, {"small": 500.0})


def test_the_duration_estimate_grows_with_each_checks_simulated_minutes():
    at = {m: expected_duration(["small"], 2, {"small": m}) for m in (10.0, 20.0, 30.0)}
    assert at[10.0][0] < at[20.0][0] < at[30.0][0] and at[10.0][1] < at[20.0][1] < at[30.0][1]
    # Each check adds its units' minutes once to the expected figure, and allows three times as many
    # in the worst case (a host that much slower than the profile says).
    assert at[30.0][0] - at[20.0][0] == pytest.approx(2 * 10.0)
    assert at[30.0][1] - at[20.0][1] == pytest.approx(2 * 3 * 10.0)
    assert expected_duration(["small"], 4, {"small": 10.0})[0] > at[10.0][0]
    with pytest.raises(KeyError):  # a shape whose check was not simulated is not guessed
        expected_duration(["tiny"], 2, {"small": 10.0})


def test_the_worst_case_allows_for_the_gates_waits_and_profilings_set_aside():
    base = expected_duration(["small"], 2, {"small": 10.0})
    # Two more profilings of their 15-min budget, then a 15-min steady wait before each of 3 profilings
    # and 2 checks; the expected figure assumes neither.
    gated = expected_duration(["small"], 2, {"small": 10.0}, profile_tries=3, steady_wait_minutes=15.0)
    assert gated[0] == base[0] and gated[1] - base[1] == pytest.approx(2 * 15 + 5 * 15)


def test_a_campaign_estimates_its_checks_on_the_shipped_profile_then_on_its_own_fit(tmp_path):
    camp = Campaign(tmp_path, CampaignSettings(shapes=("tiny",), check=CHECK), log=lambda _m: None)
    shipped, on = camp.check_minutes("tiny")
    assert on == "simulated on the shipped cpu-tiny" and shipped > 0
    # A fit of a machine twice as slow: twice the minutes for its loads and probes (rates half, requests
    # twice as long); its Poisson warm-ups still send for warmup_s, at half the rate.
    from sim.latency import load_profile
    camp.shape_dir("tiny").mkdir(parents=True)
    load_profile("cpu-tiny").slowed(2.0).save(camp.profile_json("tiny"))
    own, on = camp.check_minutes("tiny")
    assert on == "simulated on this campaign's fit" and 1.8 * shipped < own <= 2 * shipped * (1 + 1e-9)


def test_a_campaign_that_cannot_estimate_its_time_says_why_and_goes_on(tmp_path, monkeypatch):
    def no_estimate(profile, settings):
        raise ValueError("unit check/poisson-50: 3 request(s) cannot be served by profile cpu-tiny")

    def server(shape, settings):
        raise RuntimeError("the server would start here")

    monkeypatch.setattr("calibrate.campaign.check_seconds", no_estimate)
    lines = []
    camp = Campaign(tmp_path, CampaignSettings(shapes=("tiny",), check=CHECK), server=server, log=lines.append)
    with pytest.raises(RuntimeError, match="the server would start here"):
        camp.run()
    assert lines[0].endswith("shapes tiny; no time estimate (unit check/poisson-50: 3 request(s) cannot be "
                             "served by profile cpu-tiny)")


def test_a_campaign_resumed_with_other_check_settings_is_refused_naming_them(tmp_path):
    camp, d = fake_campaign(tmp_path)
    written = json.dumps({"shapes": ["tiny"], "checks": 2, "profile": {"budget_s": 900.0},
                          "check": {"requests_per_level": 120, "burst": 32, "retired_key": 1}})
    (tmp_path / "settings.json").write_text(written)

    def no_server(shape, settings):
        raise AssertionError("a refused campaign starts nothing")

    other = CampaignSettings(shapes=("tiny",), progress=False, check=CheckSettings(requests_per_level=240))
    with pytest.raises(ValueError, match=r"check\.requests_per_level: was 120, now 240"):
        Campaign(tmp_path, other, server=no_server, log=lambda line: None).run()
    per_load = CampaignSettings(shapes=("tiny",), progress=False, check=CheckSettings(requests_per_level=(120, 240)))
    with pytest.raises(ValueError, match=r"check\.requests_per_level: was 120, now \[120, 240\]"):
        Campaign(tmp_path, per_load, server=no_server, log=lambda line: None).run()
    assert (tmp_path / "settings.json").read_text() == written  # nothing lost
    # The same settings (and keys the file does not know, or it no longer has) pass.
    now = {"profile": {"budget_s": 900.0, "new_key": 3}, "check": {"requests_per_level": 120, "burst": 32}}
    assert changed_measurement_settings(tmp_path / "settings.json", now) == []
    assert changed_measurement_settings(tmp_path / "none.json", now) == []


def _speed(*rates_of_core_0, core_1=(1.0,)):
    return {"speed": {"window_s": 1.0, "seconds": float(len(rates_of_core_0)),
                      "per_core": {"0": list(rates_of_core_0), "1": list(core_1)}}}


def test_the_host_slowdown_compares_the_model_cores_matmul_rate_while_profiling_and_at_the_check():
    # Profiled at 110 (a mean of 100 before and 120 after), checked at 100: 1.1x as slow.
    assert slowdown([_speed(100.0, 100.0), _speed(120.0, 120.0)], _speed(100.0, 100.0), 0) == pytest.approx(1.1)
    # Core 1 sped up meanwhile, but the model runs on core 0.
    assert slowdown([_speed(100.0, core_1=(50.0,))], _speed(80.0, core_1=(100.0,)), 0) == pytest.approx(1.25)
    assert slowdown([_speed(100.0, core_1=(50.0,))], _speed(80.0, core_1=(100.0,)), 1) == pytest.approx(0.5)
    # A skipped probe on either side gives no number, not a guess.
    skipped = {"speed": {"skipped": "this platform cannot pin processes to cores"}}
    assert slowdown([skipped], _speed(100.0), 0) != slowdown([skipped], _speed(100.0), 0)  # NaN
    assert slowdown([_speed(100.0)], skipped, 0) != slowdown([_speed(100.0)], skipped, 0)
    assert slowdown([skipped, _speed(90.0)], _speed(100.0), 0) == pytest.approx(0.9)


def test_the_host_drift_clause_gives_the_matmul_ratio_and_judges_nothing():
    """The matmul probe does not track the engine's loaded steps (2026-12-06: 0.94x against steps
    at 1.05-1.11x the model), so its clause informs; the steps' verdict names the cause."""
    assert host_drift_note(float("nan")) == ""
    assert host_drift_note(1.05) == "; the host ran 1.05x as slow as while profiled (matmul probe)"
    assert host_drift_note(1.18) == "; the host ran 1.18x as slow as while profiled (matmul probe)"


def test_a_cut_short_speed_probe_file_gives_no_host_ratio_and_the_summary_still_builds(tmp_path):
    camp, d = fake_campaign(tmp_path)
    (d / "check-1" / "host-speed.json").write_text(json.dumps(_speed(100.0)))
    (d / "profile-host-speed.json").write_text(json.dumps({"before": _speed(110.0)}))
    assert camp.host_vs_profiling("tiny", 1) == pytest.approx(1.1)
    (d / "profile-host-speed.json").write_text('{"before": {"speed": {"window_s": 1.0, "per')  # a crash mid-write
    ratio = camp.host_vs_profiling("tiny", 1)
    assert ratio != ratio  # NaN
    summary = camp.summarize()  # read the cut file, as every summary does, and did not fail
    assert "tiny" in summary["shapes"] and (tmp_path / "summary.md").is_file()


def test_profiling_again_without_the_probe_leaves_no_earlier_profilings_speed(tmp_path):
    camp, d = fake_campaign(tmp_path)
    (d / "profile-host-speed.json").write_text(json.dumps({"before": _speed(110.0), "after": _speed(90.0)}))
    camp.settings.speed_probe_s = 0
    camp._profile_speed("tiny", "before")
    assert not (d / "profile-host-speed.json").exists()


def _traces(*traces):
    """A stand-in for ``speed_trace`` returning the given traces in turn (core 0's rates per window)."""
    it = iter(traces)
    return lambda seconds: _speed(*next(it))["speed"]


WANDERING = (100.0, 50.0, 100.0, 50.0)  # slowdown factors 0.67 / 1.33: a cv of 33%
STEADY = (100.0, 98.0, 102.0, 100.0)     # a cv of 1.4%


def test_a_wandering_host_stops_the_campaign_before_profiling_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("calibrate.campaign.speed_trace", lambda seconds: _speed(*WANDERING)["speed"])
    lines = []
    settings = CampaignSettings(shapes=("tiny",), progress=False,
                                steady=SteadySettings(max_cv=0.06, max_wait_s=0.05, interval_s=0.01))
    camp = Campaign(tmp_path, settings, log=lines.append)
    with pytest.raises(HostUnsteady, match=r"tiny: before profiling: .* wanders by 33\.3%.*--resume"):
        camp._profile_speed("tiny", "before")
    assert not (tmp_path / "tiny" / "profile-host-speed.json").exists()
    assert any("probing again" in line for line in lines)


def test_the_campaign_waits_for_a_steady_host_and_records_the_wait(tmp_path, monkeypatch):
    monkeypatch.setattr("calibrate.campaign.speed_trace", _traces(WANDERING, STEADY, WANDERING))
    settings = CampaignSettings(shapes=("tiny",), progress=False,
                                steady=SteadySettings(max_cv=0.06, max_wait_s=60, interval_s=0.01))
    camp = Campaign(tmp_path, settings, log=lambda line: None)
    camp._profile_speed("tiny", "before")
    before = json.loads((tmp_path / "tiny" / "profile-host-speed.json").read_text())["before"]
    assert before["speed"]["per_core"]["0"] == list(STEADY)  # the probe kept is the steady one
    gate = before["steady_gate"]
    assert gate["steady"] is True and [round(t["cv"], 3) for t in gate["tries"]] == [0.333, 0.014]
    # After profiling the host is only recorded: a wander then stops nothing.
    camp._profile_speed("tiny", "after")
    after = json.loads((tmp_path / "tiny" / "profile-host-speed.json").read_text())["after"]
    assert "steady_gate" not in after and after["speed"]["per_core"]["0"] == list(WANDERING)


def test_each_check_waits_for_a_steady_host_and_its_summary_row_gives_the_wander(tmp_path, monkeypatch):
    camp, d = fake_campaign(tmp_path)
    camp.settings.steady = SteadySettings(max_cv=0.06, max_wait_s=60, interval_s=0.01)
    monkeypatch.setattr("calibrate.campaign.speed_trace", _traces(WANDERING, STEADY))
    wander = camp._speed_trace("tiny", 1)
    assert wander.cv == pytest.approx(0.0141, abs=1e-3)
    kept = json.loads((d / "check-1" / "host-speed.json").read_text())
    assert len(kept["steady_gate"]["tries"]) == 2
    assert camp.host_wander("tiny", 1).startswith("1.4% after ")
    # A probe kept before the gate existed still gives its wander; no probe gives none.
    (d / "check-2" / "host-speed.json").write_text(json.dumps(_speed(*WANDERING)))
    assert camp.host_wander("tiny", 2) == "33.3%"
    (d / "check-2" / "host-speed.json").unlink()
    assert camp.host_wander("tiny", 2) == "n/a"


def test_a_probe_window_with_no_work_done_is_waited_out_not_a_crash(tmp_path, monkeypatch):
    camp, d = fake_campaign(tmp_path)
    camp.settings.steady = SteadySettings(max_cv=0.06, max_wait_s=60, interval_s=0.01)
    monkeypatch.setattr("calibrate.campaign.speed_trace", _traces((100.0, 0.0, 100.0), STEADY))
    camp._speed_trace("tiny", 1)
    tries = json.loads((d / "check-1" / "host-speed.json").read_text())["steady_gate"]["tries"]
    assert tries[0]["stalled"] is True and tries[1]["cv"] == pytest.approx(0.0141, abs=1e-3)
    (d / "check-2" / "host-speed.json").write_text(json.dumps(_speed(100.0, 0.0)))  # kept before the gate
    assert camp.host_wander("tiny", 2) == "stalled"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_backgrounded_campaign_stops_cleanly_on_sigterm_or_sigint_and_its_server_with_it(tmp_path, signum):
    """A shell starts background jobs with SIGINT ignored (so `kill -INT` did nothing), and SIGTERM killed
    the campaign outright; either signal must now stop it the way Ctrl-C does, with its server."""
    out = tmp_path / "c"
    proc = subprocess.Popen(
        [sys.executable, "-m", "calibrate", "campaign", "--shapes", "tiny", "--out", str(out), "--emulate",
         "cpu-tiny", "--speed-probe-s", "0", "--max-wander", "0", "--max-profile-drift", "0", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # as bash does for `cmd &`
    try:
        for line in proc.stdout:  # the profiling runs against the emulator from here on
            if ": profile (load average" in line:
                break
        else:
            pytest.fail(f"the campaign never reached its profiling: {proc.stderr.read()}")
        servers = [pid for pid in tree_pids(proc.pid, process_table()) if pid != proc.pid]
        assert servers, "the emulator should run under the campaign"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert still_alive_after(servers) == []
