"""A child process in its own process group that can be stopped without orphans.

vLLM's API server starts helper processes (the engine core, workers). Starting
it as the leader of a new session puts all of them in one process group, so
stopping signals the whole group: SIGTERM first (vLLM shuts down cleanly), then
SIGKILL to whatever is left after a grace period. On Linux the leader also gets
PR_SET_PDEATHSIG, so it is told to stop even if this Python process is killed
with SIGKILL and never runs its cleanup. An optional CPU affinity confines the
whole group (every process inherits it) to some cores, and an optional nice
value raises or lowers its scheduling priority. A nice value this process may
not set (lower than its own without root or CAP_SYS_NICE) is refused before
anything starts, with a ``NiceNotPermitted`` that names ``--nice``: a run meant
to be measured at raised priority should not quietly run at normal priority.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_CAP_SYS_NICE = 23


class NiceNotPermitted(PermissionError):
    """The requested nice value needs privileges this process lacks."""


def _has_cap_sys_nice() -> bool:
    """Whether CAP_SYS_NICE is in this process's effective set (Linux ``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_SYS_NICE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0 if hasattr(os, "geteuid") else False


def nice_permitted(nice: int) -> bool:
    """Whether a child of this process may run at ``nice`` (``setpriority``'s rule:
    raising the value is always allowed; lowering it below our own needs CAP_SYS_NICE
    or an RLIMIT_NICE that reaches it)."""
    if nice >= os.getpriority(os.PRIO_PROCESS, 0) or _has_cap_sys_nice():
        return True
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    except (ImportError, AttributeError, OSError):
        return False
    return soft == resource.RLIM_INFINITY or 20 - soft <= nice


def check_nice(nice: int) -> None:
    """Raise ``NiceNotPermitted`` (naming ``--nice``) when ``nice`` cannot be applied."""
    if nice and not nice_permitted(nice):
        own = os.getpriority(os.PRIO_PROCESS, 0)
        raise NiceNotPermitted(
            f"--nice {nice}: this user may not run processes at a nice value below its own "
            f"({own}); that needs root or CAP_SYS_NICE (or a high enough RLIMIT_NICE). Drop "
            f"--nice (normal priority) or run as root.")


def _child_setup(affinity: list[int] | None, nice: int) -> None:  # pragma: no cover - runs in the child
    if affinity:
        os.sched_setaffinity(0, affinity)  # inherited by every process vLLM starts
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)  # inherited too
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except OSError:
            pass


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` still exists (zombies aside)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) succeeds while zombies remain; look for a live member.
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            return True
    return False


class ManagedProcess:
    """Start ``argv`` as a new process group; ``stop()`` ends every process in it."""

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, log_path: str | Path | None = None,
                 cpu_affinity: list[int] | None = None, nice: int = 0) -> None:
        self.argv = [str(a) for a in argv]
        self.env = dict(env) if env is not None else None
        self.cwd = str(cwd) if cwd is not None else None
        self.log_path = Path(log_path) if log_path is not None else None
        self.cpu_affinity = list(cpu_affinity) if cpu_affinity else None
        self.nice = int(nice)
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("process not started")
        return self.proc.pid

    def start(self) -> ManagedProcess:
        """Start the group; ``NiceNotPermitted`` first if ``nice`` cannot be applied."""
        if self.proc is not None:
            raise RuntimeError("process already started")
        check_nice(self.nice)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")
            out = self._log
        else:
            out = subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=lambda: _child_setup(self.cpu_affinity, self.nice),
            )
        except subprocess.SubprocessError as exc:  # Python says only "Exception occurred in preexec_fn"
            if self._log is not None:
                self._log.close()
                self._log = None
            steps = [f"nice {self.nice} (--nice; negative needs root or CAP_SYS_NICE)"] if self.nice else []
            if self.cpu_affinity:
                steps.append(f"CPU affinity {self.cpu_affinity} (--cores; must be cores this "
                             f"process may use: {sorted(os.sched_getaffinity(0))})")
            raise RuntimeError(f"could not start {self.argv[0]}: setting up the child failed "
                               f"({exc}); it sets {' and '.join(steps) or 'PR_SET_PDEATHSIG'}") from exc
        return self

    def poll(self) -> int | None:
        """The leader's exit code, or None while it runs."""
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        text = self.log_path.read_bytes()[-20000:].decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the group, wait up to ``grace_s``, then SIGKILL what is left. Idempotent."""
        proc = self.proc
        if proc is None:
            return
        pgid = proc.pid  # the leader of a new session: its pid is the group id
        if group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                proc.poll()  # reap the leader so it does not linger as a zombie
                if not group_alive(pgid):
                    break
                time.sleep(0.05)
        while group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                break
            proc.poll()
            time.sleep(0.05)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILLed above
            pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ManagedProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
