"""Stopping ``python -m live`` by signal, as a script's background job: it stops the
emulators it started, keeps finished units and prints a resume command that works."""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_helpers import pid_alive

from test_live_cli import SCENARIO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]
PATTERN = "records/point=*/strategy=*/seed=*.parquet"


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def test_kill_int_of_a_background_live_run_stops_it_and_the_resume_command_works(tmp_path):
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(SCENARIO.replace("num_requests = 12", "num_requests = 30"))
    out = tmp_path / "run"
    env = {**os.environ, "VLLM_LAB_CACHE": str(tmp_path / "cache")}

    def as_background_job():  # a shell starts a script's `cmd &` with SIGINT ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen(
        [sys.executable, "-m", "live", str(scenario), "--emulate", "2", "--seeds", "0,1",
         "--set", "arrivals.rate=8.0", "--out", str(out), "--quiet"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, preexec_fn=as_background_job)
    try:
        deadline = time.monotonic() + 150
        while not list(out.glob(PATTERN)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no live unit finished in time"
            time.sleep(0.05)
        emulators = _children(proc.pid)
        assert len(emulators) == 2
        os.kill(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130 and took < 15, (proc.returncode, took, err)
    assert not any(pid_alive(p) for p in emulators), "emulators outlived the run"
    kept = {p: p.stat().st_mtime_ns for p in out.glob(PATTERN)}
    assert 1 <= len(kept) < 4
    line = next(ln for ln in err.splitlines() if "--resume" in ln)
    argv = shlex.split(line.strip())
    assert argv[argv.index("--seeds") + 1] == "0,1" and argv[argv.index("--emulate") + 1] == "2"
    assert argv[argv.index("--set") + 1] == "arrivals.rate=8.0"
    if argv[0] == "python":
        argv[0] = sys.executable
    again = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert len(list(out.glob(PATTERN))) == 4
    assert all(p.stat().st_mtime_ns == m for p, m in kept.items()), "a finished unit was rerun"
