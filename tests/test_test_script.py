"""scripts/test.sh (CI's command) spreads the suite over the cores, except where that would hurt.

The script prints the arguments it would give pytest when VLLM_LAB_PRINT_PYTEST_ARGS is
set, before it installs or runs anything.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARALLEL = ["-n", "logical", "--dist", "worksteal"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="scripts/test.sh is a bash script")


def pytest_args(*args: str) -> list[str]:
    env = {**os.environ, "VLLM_LAB_PRINT_PYTEST_ARGS": "1"}
    out = subprocess.run(["bash", str(REPO / "scripts" / "test.sh"), *args], env=env, capture_output=True,
                         text=True, check=True, timeout=30).stdout
    return [line for line in out.splitlines() if line]


def test_plain_and_filtered_runs_use_every_core():
    assert pytest_args() == PARALLEL
    assert pytest_args("-m", "not slow", "tests/sim") == PARALLEL + ["-m", "not slow", "tests/sim"]
    # Leaving the real-vLLM tests out is not selecting them.
    assert pytest_args("-m", "not vllm") == PARALLEL + ["-m", "not vllm"]


@pytest.mark.parametrize("args", [("-n", "0"), ("-n3",), ("--numprocesses=2",), ("-p", "no:xdist")])
def test_a_caller_who_picks_the_workers_gets_exactly_that(args):
    assert pytest_args(*args) == list(args)


@pytest.mark.parametrize("marker", ["vllm", "vllm and not slow"])
def test_the_real_vllm_tests_run_serially(marker):
    assert pytest_args("-m", marker, "tests/calibrate") == ["-m", marker, "tests/calibrate"]


def test_the_marker_expression_joined_to_its_option_is_read_too():
    assert pytest_args("-mvllm") == ["-mvllm"]
    assert pytest_args("-mnot vllm") == PARALLEL + ["-mnot vllm"]
