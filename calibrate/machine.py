"""Provenance facts about this machine and run, recorded with profiles and checks."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages (CPU contention distorts CPU-vLLM timings)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict:
    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def command_line() -> str:
    """How this process was invoked, as a copy-pasteable command."""
    return "python -m calibrate " + " ".join(shlex.quote(a) for a in sys.argv[1:])
