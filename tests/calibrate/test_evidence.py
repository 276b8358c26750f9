"""The gates' evidence recomputed from kept campaigns (``python -m calibrate.evidence``)."""
import json
import math
from pathlib import Path

import pytest

from calibrate.evidence import main, read_campaign, split

DATA = Path(__file__).resolve().parents[1] / "data"


def _kept(first: str, last: str):
    folders = sorted(f for f in DATA.glob("checks-*") if first <= f.name[7:] <= last)
    return [c for f in folders for c in read_campaign(f)]


def test_the_steadiness_gates_line_splits_the_kept_checks_as_the_docs_say():
    """docs/calibration.md, section 6: 106 checks of 04d-06h; below 6% 39 of 89, at or above 3 of 17."""
    checks = _kept("2026-12-04d", "2026-12-06h")
    s = split(checks, "wander", 0.06)
    assert (s.met_within, s.within, s.met_beyond, s.beyond) == (39, 89, 3, 17)
    s5 = split(checks, "wander", 0.05)
    assert (s5.met_within, s5.within, s5.met_beyond, s5.beyond) == (36, 81, 6, 25)


def test_the_drift_gates_line_splits_the_kept_checks_as_the_docs_say():
    """docs/calibration.md, section 6: 41 checks with both timings; at most 10% 14 of 28, beyond 3 of 13."""
    checks = _kept("2026-12-04c", "2026-12-07b")
    s = split(checks, "drift", 0.10)
    assert (s.met_within, s.within, s.met_beyond, s.beyond) == (14, 28, 3, 13)
    # Campaign 07b's tiny profiling: 724 ms before, 869 ms after.
    [c07b] = [c for c in checks if c.campaign == "checks-2026-12-07b"]
    assert c07b.profiling_drift == pytest.approx(0.2003, abs=1e-3) and not c07b.met


def test_the_checks_own_reference_drift_does_not_pick_the_checks_that_pass():
    """docs/calibration.md, section 6: of the 123 kept checks to 07d, those whose own reference probes
    drifted by at most 5% met the target in 10 of 29, the rest in 35 of 94: no line for a gate."""
    checks = _kept("2026-12-00", "2026-12-07d")
    assert len(checks) == 123
    s5 = split(checks, "check drift", 0.05)
    assert (s5.met_within, s5.within, s5.met_beyond, s5.beyond) == (10, 29, 35, 94)
    s3 = split(checks, "check drift", 0.03)
    assert (s3.met_within, s3.within, s3.met_beyond, s3.beyond) == (5, 14, 40, 109)
    [mid1] = [c for c in checks if (c.campaign, c.shape, c.run) == ("checks-2026-12-07d", "mid", 1)]
    assert mid1.check_drift == pytest.approx(0.1179, abs=1e-3) and not mid1.met


def _write(path: Path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def _probe(*rates):
    return {"speed": {"window_s": 1.0, "seconds": float(len(rates)), "per_core": {"0": list(rates)}}}


def test_a_campaigns_own_layout_is_read_and_missing_measurements_are_left_out(tmp_path):
    out = tmp_path / "calibration-x"
    _write(out / "tiny" / "check-1" / "check.json", {"max_abs_err": 0.08, "step_speed": {"max_abs_err": 0.03},
                                                     "reference": {"drift": 0.04}})
    _write(out / "tiny" / "check-1" / "host-speed.json", _probe(100.0, 50.0, 100.0, 50.0))  # cv 33%
    _write(out / "tiny" / "check-2" / "check.json", {"max_abs_err": 0.30})  # no probe, no step speeds
    _write(out / "tiny" / "profile-reference.json", {"before": {"e2el_s": 1.0}, "after": {"e2el_s": 1.2}})
    _write(out / "small" / "check-1" / "check.json", {"max_abs_err": 0.05, "reference": {"drift": 0.12}})
    _write(out / "small" / "check-1" / "host-speed.json", _probe(100.0, 0.0))  # a stalled window
    checks = {(c.shape, c.run): c for c in read_campaign(out)}
    assert set(checks) == {("tiny", 1), ("tiny", 2), ("small", 1)}
    assert checks["tiny", 1].wander == pytest.approx(1 / 3, abs=1e-3) and checks["tiny", 1].met
    assert math.isnan(checks["tiny", 2].wander) and math.isnan(checks["tiny", 2].max_abs_err_step_speed)
    assert checks["tiny", 2].profiling_drift == pytest.approx(0.2)
    assert math.isinf(checks["small", 1].wander) and math.isnan(checks["small", 1].profiling_drift)
    w = split(list(checks.values()), "wander", 0.06)  # the unprobed check is left out; the stalled one is beyond
    assert (w.met_within, w.within, w.met_beyond, w.beyond) == (0, 0, 2, 2)
    d = split(list(checks.values()), "drift", 0.10)
    assert (d.within, d.beyond, d.met_beyond) == (0, 2, 1)
    # The checks' own reference probes: 4% and 12%; the check without a "reference" is left out.
    assert checks["tiny", 1].check_drift == pytest.approx(0.04) and math.isnan(checks["tiny", 2].check_drift)
    c = split(list(checks.values()), "check drift", 0.10)
    assert (c.met_within, c.within, c.met_beyond, c.beyond) == (1, 1, 1, 1)
    assert c.sentence().startswith("check drift at most 10%: 1 of 1 met the target")
    with pytest.raises(ValueError, match="unknown measurement 'speed'; allowed: wander, drift, check drift"):
        split([], "speed", 0.1)


def test_without_folders_the_command_reads_every_kept_campaign_from_anywhere(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--wander-lines", "6", "--drift-lines", "10"]) == 0
    kept = sorted(f for f in DATA.glob("checks-*") if f.is_dir())
    assert f" checks in {len(kept)} campaigns; " in capsys.readouterr().out


def test_the_command_prints_the_splits_writes_strict_json_and_names_bad_input(tmp_path, capsys):
    out = tmp_path / "c"
    _write(out / "tiny" / "check-1" / "check.json", {"max_abs_err": 0.08})
    _write(out / "tiny" / "check-1" / "host-speed.json", _probe(100.0, 98.0, 102.0, 100.0))
    assert main([str(out), "--wander-lines", "6", "--drift-lines", "10", "--check-drift-lines", "5", "--table",
                 "--json", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    assert "1 checks in 1 campaigns; 1 met the 10% target raw" in text
    assert "wander below 6%: 1 of 1 met the target (100%); beyond: 0 of 0 (n/a)" in text
    assert "| c | tiny | 1 | 8.0% | n/a | 1.4% | n/a | n/a |" in text
    doc = json.loads((tmp_path / "e.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert doc["checks"][0]["profiling_drift"] is None and len(doc["splits"]) == 3
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "holds no check.json" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    for flag in ("--wander-lines", "--check-drift-lines"):
        for bad in ("abc", "0", "150"):
            with pytest.raises(SystemExit):
                main([str(out), flag, bad])
            assert flag in capsys.readouterr().err
