"""Stopping ``python -m sim`` by signal: run as a subprocess, signalled as a terminal,
a script or a CI runner would, and checked for time, kept units, the resume command
and leftover worker processes. Every wait here is bounded."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_helpers import pid_alive

from test_sim_sweep import REPO, write_scenario

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

PATTERN = "records/point=*/strategy=*/seed=*.parquet"
# Three strategies x two seeds x two points = 12 units of ~1 s each on two workers.
OPTIONS = ["--seeds", "0,1", "--set", "drain_s=500", "--mode", "exact", "--workers", "2", "--quiet"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _start(tmp_path: Path, out: Path, *, ignore_sigint: bool = False, extra=()) -> subprocess.Popen:
    scenario = write_scenario(tmp_path, n=4000, rates="[6.0, 9.0]",
                              strategies='["round_robin", "least_load", "power_of_two"]')

    def as_background_job():  # what a shell does to `cmd &` in a script
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    return subprocess.Popen(
        [sys.executable, "-m", "sim", str(scenario), "--out", str(out), *OPTIONS, *extra],
        cwd=tmp_path, env=_env(), start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=as_background_job if ignore_sigint else None)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _wait_for_units(proc: subprocess.Popen, out: Path, n: int = 1, timeout_s: float = 120) -> list[int]:
    """Wait until ``n`` units are written; the worker pids then."""
    deadline = time.monotonic() + timeout_s
    while len(list(out.glob(PATTERN))) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no unit finished in time"
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2, f"expected two workers, found {workers}"
    return workers


def _finish(proc: subprocess.Popen, timeout_s: float) -> tuple[int, str, str, float]:
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"python -m sim did not stop within {timeout_s} s")
    return proc.returncode, out, err, time.monotonic() - t0


def _gone(pids: list[int], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stamps(out: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob(PATTERN)}


def test_one_ctrl_c_stops_within_seconds_and_the_printed_command_resumes(tmp_path):
    out = tmp_path / "run"
    proc = _start(tmp_path, out)
    workers = _wait_for_units(proc, out)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
    code, _, err, took = _finish(proc, 30)
    assert code == 130
    assert took < 5, f"one Ctrl-C took {took:.1f} s to stop"
    assert _gone(workers), "worker processes outlived the stop"
    kept = _stamps(out)
    assert 1 <= len(kept) < 12
    # The printed command reproduces --set, --seeds and --mode: following it resumes the run.
    line = next(ln for ln in err.splitlines() if "--resume" in ln)
    argv = shlex.split(line.strip())
    assert argv[argv.index("--mode") + 1] == "exact" and argv[argv.index("--seeds") + 1] == "0,1"
    assert argv[argv.index("--set") + 1] == "drain_s=500"
    if argv[0] == "python":
        argv[0] = sys.executable
    again = subprocess.run(argv, cwd=tmp_path, env=_env(), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    after = _stamps(out)
    assert len(after) == 12
    assert all(after[p] == s for p, s in kept.items()), "a finished unit was redone"
    assert len(json.loads((out / "summary.json").read_text())["units"]) == 12


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    out = tmp_path / "run"
    proc = _start(tmp_path, out)
    workers = _wait_for_units(proc, out)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    code, _, err, took = _finish(proc, 15)
    assert code == 130 and took < 3, (code, took)
    assert "stopped at once" in err and "--resume" in err
    assert _gone(workers)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_workers_end_with_the_main_process(tmp_path, how):
    # kill -9 (an OOM kill, a CI timeout's last resort) or a plain kill of the main process only.
    out = tmp_path / "run"
    proc = _start(tmp_path, out)
    workers = _wait_for_units(proc, out)
    os.kill(proc.pid, getattr(signal, how))
    code, _, _, _ = _finish(proc, 30)
    assert code == (-9 if how == "SIGKILL" else 143)
    assert _gone(workers), f"workers {workers} outlived the main process"


def test_kill_int_stops_a_background_job(tmp_path):
    # A script's `python -m sim ... &` starts with SIGINT ignored; kill -INT must still stop it.
    out = tmp_path / "run"
    proc = _start(tmp_path, out, ignore_sigint=True)
    workers = _wait_for_units(proc, out)
    os.kill(proc.pid, signal.SIGINT)
    code, _, err, took = _finish(proc, 30)
    assert code == 130 and took < 8
    assert "--resume" in err
    assert _gone(workers)
