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


def cpu_seconds(pid: int, proc: str | Path = "/proc") -> float:
    """User plus system CPU seconds the process has used (its own threads, not its children)."""
    text = (Path(proc) / str(pid) / "stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
