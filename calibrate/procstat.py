"""CPU time of a local server's processes, found by the port it listens on (Linux ``/proc``).

Profiling measures the work vLLM's API server does per request and per streamed
token (``calibrate.profiling``'s ``frontend`` phase) as CPU seconds of its
process: a fact about the front end that the fit then cannot contradict
(a job's service time is at least its CPU time). The server is found from its
URL: the listening socket's inode in ``/proc/net/tcp{,6}``, then the process
holding that socket. Elsewhere (another machine, no ``/proc``) nothing is found
and the measurement is skipped.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
LOOPBACK = ("127.0.0.1", "localhost", "::1", "0.0.0.0", "::")


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes = set()
    for table in ("net/tcp", "net/tcp6"):
        path = proc / table
        if not path.is_file():
            continue
        for line in path.read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) < 10:
                continue
            local, state, inode = parts[1], parts[3], parts[9]
            if state == _LISTEN and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def listening_pid(url: str, proc: str | Path = "/proc") -> int | None:
    """The pid of the local process listening on ``url``'s port, or None if not found here."""
    parsed = urlparse(url)
    if parsed.hostname not in LOOPBACK or parsed.port is None:
        return None
    proc = Path(proc)
    try:
        inodes = _listening_inodes(parsed.port, proc)
    except OSError:
        return None
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(entry.name)
        except OSError:
            continue  # gone, or not ours to read
    return None


def command_name(text: str) -> str:
    """The command name of a ``/proc/PID/stat`` text (between the first '(' and the last ')')."""
    return text[text.index("(") + 1:text.rindex(")")]


def _stat_fields(text: str) -> list[str]:
    """The fields of a ``/proc/PID/stat`` after the command name (which may hold spaces
    and parentheses): [0] state, [1] parent pid, [11:15] utime, stime, cutime, cstime."""
    return text.rsplit(")", 1)[1].split()


def clock_tick_s() -> float:
    """The resolution of a process's CPU time in /proc: one clock tick (10 ms at the usual 100 Hz)."""
    return 1.0 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, proc: str | Path = "/proc") -> float:
    """User plus system CPU seconds the process has used (its own threads, not its children)."""
    fields = _stat_fields((Path(proc) / str(pid) / "stat").read_text())
    return (int(fields[11]) + int(fields[12])) * clock_tick_s()


def process_table(proc: str | Path = "/proc") -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds of the process and of the children it reaped)."""
    out = {}
    tick = clock_tick_s()
    for entry in Path(proc).iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields((entry / "stat").read_text())
        except OSError:
            continue  # it ended meanwhile
        out[int(entry.name)] = (int(fields[1]), sum(int(x) for x in fields[11:15]) * tick)
    return out


def tree_pids(root: int, table: dict[int, tuple[int, float]]) -> list[int]:
    """``root`` and its descendants in a ``process_table`` (living, or reaped by one of them)."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append(pid)
        todo += children.get(pid, [])
    return sorted(out)


def tree_cpu_seconds(root: int, table: dict[int, tuple[int, float]] | None = None) -> float:
    """CPU seconds used by ``root`` and its descendants (living, or reaped by one of them)."""
    table = process_table() if table is None else table
    return sum(table[pid][1] for pid in tree_pids(root, table))


def machine_cpu_seconds(proc: str | Path = "/proc") -> tuple[float, float] | None:
    """(busy, stolen) CPU seconds of all cores since boot (``/proc/stat``), or None.

    Busy is user, nice and system time: what processes can be charged with. Interrupt
    time is left out, because no process is charged with it (a load generator talking
    to a server over loopback makes softirq time that would otherwise look like
    someone else's work). Stolen time is what the hypervisor gave other guests while
    this one wanted to run.
    """
    try:
        with open(Path(proc) / "stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...
    t = [int(x) for x in fields[1:9]] + [0] * max(0, 9 - len(fields))
    tick = os.sysconf("SC_CLK_TCK")
    return (t[0] + t[1] + t[2]) / tick, t[7] / tick
