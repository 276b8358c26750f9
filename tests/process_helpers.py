"""Process checks shared by the tests that start servers (on the tests' path via tests/conftest.py)."""
from __future__ import annotations

from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs: it exists and is not a zombie (state ``Z`` in /proc/PID/stat)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
