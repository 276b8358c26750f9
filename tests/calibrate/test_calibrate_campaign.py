"""The calibration campaign end to end, with the emulator (a STAND-IN for vLLM) as each shape's server."""
import contextlib
import json

import pytest

from calibrate.campaign import Campaign, CampaignSettings, expected_duration
from calibrate.check import CheckSettings
from live.emulator import spawn

from test_calibrate_probe import SMALL

pytestmark = pytest.mark.timeout(600)

CHECK = CheckSettings(max_input=400, max_output=24, prefix_len=64, requests_per_level=10, burst=5)


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

    settings = CampaignSettings(shapes=("tiny",), checks=2, profile=SMALL, check=CHECK, progress=False,
                                fit_replays=60)
    lines = []
    camp = Campaign(tmp_path, settings, server=counting, log=lines.append)
    assert camp.pending("tiny") == ["profile", "fit", "check-1", "check-2"]
    summary = camp.run()
    assert started == ["tiny"] and camp.pending("tiny") == []
    assert "expected about" in lines[0]
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
    # A lost profile file is refitted without starting a server.
    (tmp_path / "tiny" / "cpu-tiny.json").unlink()
    assert camp.pending("tiny") == ["fit"]
    camp.run()
    assert started == ["tiny", "tiny"] and (tmp_path / "tiny" / "cpu-tiny.json").exists()


def test_settings_and_duration():
    with pytest.raises(ValueError, match="unknown model shape 'huge'"):
        CampaignSettings(shapes=("tiny", "huge"))
    expected, worst = expected_duration(["tiny", "small", "mid"])
    assert 0 < expected < worst
