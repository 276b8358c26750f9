"""The profiling drift gate: a profiling during which the engine changed speed is set aside and redone."""
import json
import math

import pytest

from calibrate import drift_gate
from calibrate.campaign import Campaign, CampaignSettings
from calibrate.drift_gate import DriftSettings, ProfilingDrifted, profiling_drift, verdict
from calibrate.speed_gate import GateSettings
from calibrate.steady_gate import HostUnsteady


def _ref(before, after):
    return {"before": {"e2el_s": before}, "after": {"e2el_s": after}}


def test_the_drift_is_the_reference_e2el_after_profiling_over_before_less_one():
    assert profiling_drift(_ref(0.724, 0.869)) == pytest.approx(0.2003, abs=1e-4)  # campaign 07b
    assert profiling_drift(_ref(1.0, 0.8)) == pytest.approx(-0.2)
    for bad in (None, {}, {"before": {"e2el_s": 1.0}}, _ref(0.0, 1.0), _ref(1.0, None), _ref(math.nan, 1.0),
                _ref("1.0", 1.0), _ref(-1.0, 1.0)):
        assert math.isnan(profiling_drift(bad)), bad


def test_the_verdict_keeps_a_drift_up_to_the_bound_either_way_and_says_why_it_did_not_judge():
    s = DriftSettings(max_drift=0.10)
    assert verdict(0.10, s) == "kept" and verdict(-0.10, s) == "kept"
    assert verdict(0.1001, s) == "drifted" and verdict(-0.12, s) == "drifted"
    assert verdict(math.nan, s) == "no reference"
    assert verdict(0.5, DriftSettings(max_drift=0)) == "gate off"


def test_bad_settings_are_named():
    for kwargs, name in (({"max_drift": 1.0}, "max_drift"), ({"max_drift": -0.1}, "max_drift"),
                         ({"max_drift": math.nan}, "max_drift"), ({"tries": 0}, "tries")):
        with pytest.raises(ValueError, match=name):
            DriftSettings(**kwargs)


def test_the_give_up_message_lists_each_drift_and_how_to_go_on():
    msg = drift_gate.give_up_message("tiny", [0.2, -0.15], DriftSettings(max_drift=0.1))
    assert "+20.0%, -15.0%" in msg and "beyond the 10%" in msg
    assert "--resume" in msg and "--max-profile-drift 0" in msg and "drifted-profiling-K/" in msg
    assert issubclass(ProfilingDrifted, HostUnsteady)  # the CLI's and the docs' "host unsteady" stop


class FakeProfiling:
    """Stands in for ``profile_backend`` (no server): writes a finished profiling and remembers
    whether it was asked to resume."""

    def __init__(self):
        self.calls = []

    async def __call__(self, url, csv, settings, *, resume, progress):
        self.calls.append(resume)
        csv.write_text(f"unit,e2el\nrun{len(self.calls)},1.0\n")
        csv.with_name(csv.name + ".meta.json").write_text(json.dumps({"finished": "2026-12-07T05:00:00Z"}))
        csv.with_name(csv.name + ".token_times.jsonl").write_text('{"unit": "poisson/r0.3"}\n')
        return csv


def _campaign(tmp_path, monkeypatch, e2els, drift=DriftSettings(), gate=GateSettings()):
    """A campaign whose profiling is ``FakeProfiling`` and whose reference requests take ``e2els`` in turn."""
    times = iter(e2els)

    async def reference(url):
        return {"e2el_s": next(times), "ttft_s": 0.1, "tpot_s": 0.02, "requests": 3, "utc": "now"}

    fake = FakeProfiling()
    monkeypatch.setattr("calibrate.campaign.speed_gate.reference_latency", reference)
    monkeypatch.setattr("calibrate.campaign.profile_backend", fake)
    lines = []
    settings = CampaignSettings(shapes=("tiny",), progress=False, speed_probe_s=0, drift=drift, gate=gate)
    camp = Campaign(tmp_path, settings, log=lines.append)
    camp.shape_dir("tiny").mkdir(parents=True, exist_ok=True)
    return camp, fake, lines


def test_a_profiling_within_the_bound_is_kept_and_its_drift_recorded(tmp_path, monkeypatch):
    camp, fake, lines = _campaign(tmp_path, monkeypatch, [1.0, 1.05])
    camp._profile_until_kept("tiny", "http://127.0.0.1:9")
    d = tmp_path / "tiny"
    assert fake.calls == [False] and (d / "profiling.csv").is_file() and not list(d.glob("drifted-*"))
    [entry] = json.loads((d / "profile-drift.json").read_text())
    assert entry["verdict"] == "kept" and entry["drift"] == pytest.approx(0.05) and entry["set_aside_in"] is None
    assert camp.profiling_drift_cell("tiny") == "+5.0%"
    assert any("+5.0% across profiling (kept)" in line for line in lines)


def test_a_drifted_profiling_is_set_aside_whole_and_the_shape_profiled_afresh(tmp_path, monkeypatch):
    camp, fake, lines = _campaign(tmp_path, monkeypatch, [0.724, 0.869, 0.80, 0.816])
    camp._profile_until_kept("tiny", "http://127.0.0.1:9")
    d = tmp_path / "tiny"
    # The second profiling started afresh (nothing to resume: the drifted rows were moved away).
    assert fake.calls == [False, False]
    assert (d / "profiling.csv").read_text().splitlines()[1].startswith("run2")
    aside = d / "drifted-profiling-1"
    assert sorted(p.name for p in aside.iterdir()) == ["profile-reference.json", "profiling.csv",
                                                       "profiling.csv.meta.json", "profiling.csv.token_times.jsonl"]
    assert (aside / "profiling.csv").read_text().splitlines()[1].startswith("run1")
    assert json.loads((aside / "profile-reference.json").read_text())["after"]["e2el_s"] == 0.869
    # The kept profiling's own timings are the speed gate's baseline for the checks.
    kept = json.loads((d / "profile-reference.json").read_text())
    assert (kept["before"]["e2el_s"], kept["after"]["e2el_s"]) == (0.80, 0.816)
    tries = json.loads((d / "profile-drift.json").read_text())
    assert [t["verdict"] for t in tries] == ["drifted", "kept"]
    assert tries[0]["set_aside_in"] == "drifted-profiling-1"
    assert camp.profiling_drift_cell("tiny") == "+2.0% (1 set aside)"
    assert any("+20.0% across profiling, beyond 10%" in line and "profiling again (2 of 3)" in line
               for line in lines)
    assert camp.pending("tiny")[0] == "fit"  # the kept profiling is finished


def test_a_shape_that_drifts_every_time_stops_the_campaign_keeping_every_try(tmp_path, monkeypatch):
    camp, fake, _ = _campaign(tmp_path, monkeypatch, [1.0, 1.2, 1.0, 0.85], drift=DriftSettings(tries=2))
    with pytest.raises(ProfilingDrifted, match=r"tiny: every profiling drifted: .*\+20\.0%, -15\.0%.*--resume"):
        camp._profile_until_kept("tiny", "http://127.0.0.1:9")
    d = tmp_path / "tiny"
    assert fake.calls == [False, False]
    assert [(d / f"drifted-profiling-{k}" / "profiling.csv").is_file() for k in (1, 2)] == [True, True]
    assert not (d / "profiling.csv").exists() and camp.pending("tiny")[0] == "profile"  # --resume profiles again
    assert camp.profiling_drift_cell("tiny") == "none kept (2 set aside, the last at -15.0%)"
    # A resumed campaign numbers its set-aside folders on, and the record keeps every try.
    camp2, _, _ = _campaign(tmp_path, monkeypatch, [1.0, 1.3, 1.0, 1.0])
    camp2._profile_until_kept("tiny", "http://127.0.0.1:9")
    assert (d / "drifted-profiling-3").is_dir()
    assert [t["verdict"] for t in json.loads((d / "profile-drift.json").read_text())] == [
        "drifted", "drifted", "drifted", "kept"]
    assert camp2.profiling_drift_cell("tiny") == "+0.0% (3 set aside)"


@pytest.mark.parametrize("drift, gate, judged", [
    (DriftSettings(max_drift=0), GateSettings(), "gate off"),
    (DriftSettings(), GateSettings(tolerance=0), "no reference"),  # no speed gate: no reference requests
])
def test_without_the_gate_or_a_reference_the_profiling_is_kept_and_says_why(tmp_path, monkeypatch, drift, gate,
                                                                           judged):
    camp, fake, _ = _campaign(tmp_path, monkeypatch, [1.0, 1.5], drift=drift, gate=gate)
    camp._profile_until_kept("tiny", "http://127.0.0.1:9")
    [entry] = json.loads((tmp_path / "tiny" / "profile-drift.json").read_text())
    assert fake.calls == [False] and entry["verdict"] == judged
    assert (tmp_path / "tiny" / "profiling.csv").is_file()


def test_the_summary_states_the_kept_profilings_drift(tmp_path, monkeypatch):
    camp, _, _ = _campaign(tmp_path, monkeypatch, [1.0, 1.25, 1.0, 0.97])
    camp._profile_until_kept("tiny", "http://127.0.0.1:9")
    summary = camp.summarize()
    assert summary["shapes"]["tiny"]["profiling_drift"] == "-3.0% (1 set aside)"
    assert "Profiling drift (the engine's reference requests, end of profiling against its start): -3.0% " \
           "(1 set aside)" in (tmp_path / "summary.md").read_text()
    (tmp_path / "tiny" / "profile-drift.json").write_text("[{")  # cut short: no cell, no crash
    assert camp.profiling_drift_cell("tiny") == "n/a"
