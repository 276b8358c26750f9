"""Start emulators as child processes on free loopback ports, and always stop them.

Each emulator is its own process (``python -m live.emulator --port 0``), so N of
them step their engines truly in parallel, as N servers would. The context
manager yields their URLs once every one answers ``/health`` and stops them all
on exit, whatever happened; on Linux the children are also told to die with the
parent (``PR_SET_PDEATHSIG``), so a killed test run leaves no orphans.
"""
from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


class EmulatorStartError(RuntimeError):
    """An emulator did not come up (its exit status and arguments are in the message)."""


@dataclass(frozen=True)
class EmulatorSpec:
    """One emulator to start: its latency profile and any extra CLI arguments."""

    profile: str = "cpu-tiny"
    args: Sequence[str] = field(default_factory=tuple)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class EmulatorProcess:
    """A running emulator child: its URL and process handle."""

    def __init__(self, spec: EmulatorSpec, host: str, python: str) -> None:
        self.spec = spec
        cmd = [python, "-m", "live.emulator", "--profile", spec.profile, "--host", host,
               "--port", "0", *spec.args]
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.url: str | None = None

    def read_ready(self, deadline: float) -> str:
        """Wait for the ``READY <url>`` line."""
        out = self.proc.stdout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EmulatorStartError(f"emulator did not start in time: {' '.join(self.cmd)}")
            ready, _, _ = select.select([out], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(out.fileno(), 4096)
                if not chunk:
                    code = self.proc.wait()
                    raise EmulatorStartError(
                        f"emulator exited with status {code} before it was ready: "
                        f"{' '.join(self.cmd)} (see its stderr above)")
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        if not line.startswith("READY "):
            raise EmulatorStartError(f"unexpected first line from the emulator: {line!r}")
        self.url = line.split(" ", 1)[1].strip()
        return self.url

    def stop(self, timeout_s: float = 5.0) -> None:
        p = self.proc
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p.stdout is not None:
            p.stdout.close()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None


def wait_health(url: str, deadline: float) -> None:
    """Block until ``GET url/health`` answers 200 (standard library only)."""
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1.0) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise EmulatorStartError(f"{url} did not become healthy in time")
        time.sleep(0.05)


@contextlib.contextmanager
def spawn_specs(
    specs: Sequence[EmulatorSpec], *, host: str = "127.0.0.1", startup_timeout_s: float = 60.0,
    python: str = sys.executable,
) -> Iterator[list[EmulatorProcess]]:
    """Start one emulator per spec; yield the processes (``.url``, ``.proc``); stop all."""
    procs: list[EmulatorProcess] = []
    try:
        for spec in specs:
            procs.append(EmulatorProcess(spec, host, python))
        deadline = time.monotonic() + startup_timeout_s
        for p in procs:
            p.read_ready(deadline)
        for p in procs:
            wait_health(p.url, deadline)
        yield procs
    finally:
        for p in procs:
            if p.alive:
                p.proc.terminate()
        for p in procs:
            p.stop()


@contextlib.contextmanager
def spawn(n: int, profile: str = "cpu-tiny", *, args: Sequence[str] = (),
          host: str = "127.0.0.1", startup_timeout_s: float = 60.0) -> Iterator[list[str]]:
    """Start ``n`` identical emulators; yield their base URLs; stop them on exit.

    ::

        with spawn(2, "cpu-tiny") as urls:
            ...  # urls == ["http://127.0.0.1:41235", "http://127.0.0.1:39127"]
    """
    if n < 1:
        raise ValueError(f"spawn needs n >= 1, got {n}")
    with spawn_specs([EmulatorSpec(profile, tuple(args))] * n, host=host,
                     startup_timeout_s=startup_timeout_s) as procs:
        yield [p.url for p in procs]
