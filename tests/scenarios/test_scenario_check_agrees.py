"""``python -m scenarios check`` refuses exactly what ``python -m sim`` and ``python -m
live`` refuse before they start: the same error, naming the same key."""
from __future__ import annotations

from pathlib import Path

import pytest

from live.cli import main as live_main
from scenarios.__main__ import main as check_main
from scenarios.preflight import TRACE_BYTES_PER_REQUEST, check_runnable, physical_memory_bytes
from scenarios.runs import load_for_run
from sim.cli import main as sim_main
from sim.latency import load_profile

SCENARIO = """\
name = "agree"
seeds = [0]
num_requests = 50
[workload]
source = "synthetic"
[arrivals]
pattern = "poisson"
rate = 4.0
[[cluster.groups]]
name = "gpu"
count = 2
profile = "{profile}"
[router]
strategies = ["round_robin", "least_load"]
"""


def _file(tmp_path: Path, profile: str = "h100-llama2-70b-tp4") -> Path:
    path = tmp_path / "agree.toml"
    path.write_text(SCENARIO.format(profile=profile))
    return path


BAD = [
    # (file's profile, --set overrides, text every command must print)
    ("h200-imaginary", [], "cluster.groups.gpu.profile: unknown latency profile 'h200-imaginary'"),
    ("h100-llama2-70b-tp4", ['cluster.groups.gpu.profile="h200-imaginary"'],
     "cluster.groups.gpu.profile: unknown latency profile 'h200-imaginary'"),
    ("h100-llama2-70b-tp4", ['cluster.groups.gpu.profile=["h100-llama2-70b-tp4", "nope"]'],
     "cluster.groups.gpu.profile: unknown latency profile 'nope'"),
    ("profiles/missing.json", [], "latency profile file profiles/missing.json does not exist"),
    ("h100-llama2-70b-tp4", ["num_requests=1000000000000"],
     "num_requests: 1,000,000,000,000 requests need at least 60 TB"),
    ("h100-llama2-70b-tp4", ['router.strategies=[{name="power_of_two", choices=1}]'],
     "router.strategies[0]"),
]


@pytest.mark.parametrize("profile, overrides, message", BAD)
def test_check_sim_and_live_refuse_the_same_scenarios(tmp_path, capsys, profile, overrides, message):
    path = _file(tmp_path, profile)
    sets = [x for o in overrides for x in ("--set", o)]
    assert check_main(["check", str(path), *sets]) == 1
    check_err = capsys.readouterr().err
    assert message in check_err and "Traceback" not in check_err
    assert sim_main([str(path), *sets, "--out", str(tmp_path / "s"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert live_main([str(path), *sets, "--emulate", "2", "--out", str(tmp_path / "l"), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "l").exists()


def test_a_scenario_check_accepts_is_accepted_by_the_preflight(tmp_path, capsys):
    path = _file(tmp_path)
    assert check_main(["check", str(path), "--set", "num_requests=100000"]) == 0
    assert "OK" in capsys.readouterr().out
    sc, points = load_for_run(str(path), ["num_requests=100000"])
    check_runnable(sc, points, load_profile)  # does not raise


def test_the_memory_bound_is_the_machines():
    sc, points = load_for_run("poisson", ["num_requests=1000"])
    # 1000 requests fit in 60 kB, not in 59 kB
    check_runnable(sc, points, load_profile, memory_bytes=1000 * TRACE_BYTES_PER_REQUEST)
    with pytest.raises(ValueError, match="num_requests"):
        check_runnable(sc, points, load_profile, memory_bytes=1000 * TRACE_BYTES_PER_REQUEST - 1)
    assert physical_memory_bytes() is None or physical_memory_bytes() > 2**28
