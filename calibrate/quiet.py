"""Run one measurement and say how quiet the machine was while it ran.

    python -m calibrate.quiet [--json FILE] -- COMMAND [ARG ...]

Runs COMMAND as a child, passes its exit status through, and prints (to stderr)
the load average before and after and the CPU time every *other* process used
meanwhile (``calibrate.machine.OtherCpu``), the figure that says whether the
command's timings are evidence: its own processes, however busy, do not count.
``scripts/measure-quiet.sh`` wraps each of its steps in it.

Before and after the command it also runs ``calibrate.host_probe``'s stall probe
(one second each, ``--host-probe-s``): the share of time the vCPUs stopped without
the guest counting it as stolen, which a quiet guest on a busy host shows. A
command whose microsecond tails are the figures (a decision-latency benchmark) is
not evidence when that share is above ``host_probe.UNSTEADY_STALL_SHARE``; the wrapper
says so (``host_probe.StallWindow``).

SIGTERM, SIGINT and SIGHUP sent to the wrapper are passed on to COMMAND, which runs
in a process group of its own, and the wrapper still writes its record when COMMAND
has stopped. Why: a backgrounded campaign is started as ``calibrate.quiet -- python -m
calibrate campaign ...``, and ``kill`` on the wrapper used to end the wrapper alone:
the campaign and its server ran on with no one left to record them. The group of its
own is why a Ctrl-C at the terminal reaches COMMAND once, through the wrapper, and
not also straight from the terminal.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from calibrate.host_probe import StallWindow
from calibrate.machine import BUSY_OTHER_SHARE, OtherCpu, loadavg, utc_now


def become_subreaper() -> bool:
    """Adopt this process's orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``).

    A server killed with its process group can leave a child orphaned; it would be
    reparented to init, and its CPU time would then leave the measured tree and
    count as another process's. Adopted, it stays in the tree. False where the
    call is not available.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


#: How long to wait, after the command, for adopted descendants still ending.
ORPHAN_WAIT_S = 10.0


def reap_orphans(wait_s: float = ORPHAN_WAIT_S) -> None:
    """Collect adopted descendants as they end (their CPU time joins ours), for at
    most ``wait_s`` seconds: the processes of a server stopped at the command's end
    may take a moment; one still running after that is left alone."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no child left
        if pid == 0:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)


#: Signals the wrapper passes on to its command (``run_passing_signals``).
PASSED_ON = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def run_passing_signals(command: list[str]) -> tuple[int, str | None]:
    """Run ``command`` to its end, passing ``PASSED_ON`` signals on to it; return its exit
    status as a shell gives it (128 + N when signal N ended it) and the name of the first
    signal passed on (None if none was). ``OSError`` when the command cannot start."""
    child = subprocess.Popen(command, process_group=0)
    received: list[int] = []

    def pass_on(signum, _frame):
        received.append(signum)
        child.send_signal(signum)  # a no-op once the child has been reaped

    previous = {s: signal.signal(s, pass_on) for s in PASSED_ON}
    try:
        status = child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if status < 0:
        status = 128 - status
    return status, signal.Signals(received[0]).name if received else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m calibrate.quiet",
        description="Run a measurement command and report the CPU time other processes used "
                    "meanwhile (its own children excluded), with the load average before and after.")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the figures to this JSON file")
    parser.add_argument("--host-probe-s", type=float, default=1.0,
                        help="seconds of the host stall probe before and after the command "
                             "(calibrate.host_probe; default 1, 0 skips it)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the command to run, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (python -m calibrate.quiet -- COMMAND ...)")
    if args.host_probe_s < 0:
        parser.error(f"--host-probe-s must be >= 0, got {args.host_probe_s}")
    with StallWindow(args.host_probe_s) as host:
        before, started = loadavg(), utc_now()
        become_subreaper()
        others = OtherCpu().start()
        try:
            status, passed_on = run_passing_signals(command)
        except OSError as exc:
            print(f"calibrate.quiet: cannot run {command[0]!r}: {exc}", file=sys.stderr)
            return 127
        reap_orphans()
        used = others.stop()
    share = used["other_cpu_share"]
    busy = share == share and share > BUSY_OTHER_SHARE
    record = {"command": command, "started": started, "finished": utc_now(), "status": status,
              "signal_passed_on": passed_on,
              "loadavg_before": before, "loadavg_after": loadavg(), **used, "busy": busy,
              "host_stalls_before": host.before, "host_stalls_after": host.after}
    verdict = ("BUSY MACHINE: its timings are not evidence" if busy
               else "quiet" if share == share else "unknown (no /proc here)")
    print(f"# other processes used {share * 100:.1f}% of the machine's CPU, the hypervisor stole "
          f"{used['stolen_cpu_share'] * 100:.1f}%: {verdict}", file=sys.stderr)
    if host.line:
        record["host_unsteady"] = host.unsteady
        print(f"# {host.line}", file=sys.stderr)
    if passed_on:
        print(f"# stopped: {passed_on} passed on to the command, which exited {status}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
