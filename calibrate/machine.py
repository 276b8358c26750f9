"""Provenance facts about this machine and run, recorded with profiles and checks."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
import time

from calibrate.procstat import machine_cpu_seconds, tree_cpu_seconds

#: A measurement during which other processes used more than this share of all cores
#: ran on a busy machine (``OtherCpu``): its timings are not evidence.
BUSY_OTHER_SHARE = 0.05


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


class OtherCpu:
    """CPU time used on this machine by everything outside one process tree.

    The one-minute load average cannot tell a busy machine from a measurement's
    own load (a vLLM server that just started, the previous step's load
    generator); this counts only what *other* processes used, between ``start``
    and ``stop``: the machine's busy time (``/proc/stat``) minus the tree's own.
    Linux only; elsewhere ``stop`` returns NaN. Kernel threads count as others
    (a few tenths of a percent). A descendant orphaned while it runs is reparented
    out of the tree and its CPU time then counts as others' (a vLLM engine process
    whose API server died first): measure under a subreaper, as
    ``calibrate.quiet`` does, or across steps in which no process ends, as the
    calibration campaign does.
    """

    def __init__(self, root: int | None = None) -> None:
        self.root = os.getpid() if root is None else root
        self._t0 = self._cpu0 = self._own0 = None

    def start(self) -> "OtherCpu":
        self._cpu0 = machine_cpu_seconds()
        self._own0 = tree_cpu_seconds(self.root) if self._cpu0 is not None else None
        self._t0 = time.monotonic()
        return self

    def stop(self) -> dict:
        """``other_cpu_s`` and ``stolen_cpu_s`` (CPU seconds), and each as a share of all
        cores' time (``other_cpu_share``, ``stolen_cpu_share``); ``own_cpu_s``: the tree's."""
        cpu = machine_cpu_seconds()
        if cpu is None or self._cpu0 is None:
            nan = float("nan")
            return {"other_cpu_s": nan, "other_cpu_share": nan, "stolen_cpu_s": nan,
                    "stolen_cpu_share": nan, "own_cpu_s": nan}
        span = (time.monotonic() - self._t0) * (os.cpu_count() or 1)
        own = tree_cpu_seconds(self.root) - self._own0
        other = max((cpu[0] - self._cpu0[0]) - own, 0.0)
        stolen = cpu[1] - self._cpu0[1]
        return {"own_cpu_s": round(own, 2), "other_cpu_s": round(other, 2),
                "other_cpu_share": round(other / span, 4) if span > 0 else float("nan"),
                "stolen_cpu_s": round(stolen, 2),
                "stolen_cpu_share": round(stolen / span, 4) if span > 0 else float("nan")}
