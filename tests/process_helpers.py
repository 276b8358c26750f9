"""Process checks shared by the tests that start servers (on the tests' path via tests/conftest.py)."""
from __future__ import annotations

import time
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs: it exists and is not a zombie (state ``Z`` in /proc/PID/stat)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def still_alive_after(pids, timeout_s: float = 10.0) -> list[int]:
    """The ``pids`` still running once they have all ended or ``timeout_s`` has passed (a stop
    that signals a process group returns before every member has exited)."""
    deadline = time.monotonic() + timeout_s
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [p for p in pids if pid_alive(p)]
