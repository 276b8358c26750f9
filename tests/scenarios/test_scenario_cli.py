"""``python -m scenarios``: check and list, exit codes, --help."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scenarios.__main__ import main
from scenario_helpers import MINIMAL

REPO = Path(__file__).resolve().parents[2]


def test_check_prints_points_strategies_seeds_and_units(capsys):
    assert main(["check", str(REPO / "scenarios" / "burst.toml")]) == 0
    out = capsys.readouterr().out
    assert "OK  scenario 'burst'" in out
    assert "2 point(s) x 6 strategies x 3 seeds = 36 units" in out
    assert "peak_rate=30" in out and "peak_rate=60" in out
    assert "round_robin" in out and "least_kv" in out
    assert "[8 backends]" in out


def test_check_applies_overrides(capsys):
    code = main(["check", "burst", "--set", "seeds=[7]", "--set", "cluster.groups.h100.count=[2,4,6]",
                 "--set", "router.mode=exact"])
    assert code == 0
    out = capsys.readouterr().out
    assert "6 point(s) x 6 strategies x 1 seeds = 36 units" in out
    assert "h100.count=6, peak_rate=60" not in out  # axes are listed in expansion order
    assert "peak_rate=60, h100.count=6  [6 backends]" in out


def test_check_reports_bad_files_and_fails(tmp_path, capsys):
    good = tmp_path / "good.toml"
    good.write_text(MINIMAL)
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL.replace("count = 2", "count = -3"))
    assert main(["check", str(bad), str(good)]) == 1
    captured = capsys.readouterr()
    assert f"{bad}: cluster.groups[0].count: got -3" in captured.err
    assert "OK  scenario 'mini'" in captured.out  # the good file is still checked
    assert "Traceback" not in captured.err


def test_check_rejects_a_malformed_set(capsys):
    assert main(["check", "burst", "--set", "no-equals-sign"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_list_shows_every_shipped_scenario(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("azure-replay", "burst", "constant", "heterogeneous", "poisson", "wildchat-replay"):
        assert name in out
    assert "INVALID" not in out


@pytest.mark.parametrize("args", [["--help"], ["check", "--help"], ["list", "--help"]])
def test_help_explains_options(args):
    result = subprocess.run([sys.executable, "-m", "scenarios", *args], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout
    if args[0] == "check":
        assert "--set KEY=VALUE" in result.stdout and "FILE" in result.stdout


def test_module_entry_point_exits_nonzero_on_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = not [ toml")
    result = subprocess.run([sys.executable, "-m", "scenarios", "check", str(bad)], capture_output=True,
                            text=True, timeout=60, cwd=REPO)
    assert result.returncode == 1
    assert "invalid TOML" in result.stderr and "line 1" in result.stderr
