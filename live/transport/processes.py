"""Child server processes (emulators, gateways) that announce their URL and never outlive us.

A child prints ``READY <url>`` on stdout once its socket listens (``--port 0``
lets the kernel pick a free port, so parallel tests never collide). The parent
reads that line, waits for ``/health``, and stops the child on exit: SIGTERM,
then SIGKILL after a grace period. On Linux the child also gets
``PR_SET_PDEATHSIG``, so it dies with the parent even if the parent is killed.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence


class ChildStartError(RuntimeError):
    """A child server did not come up (its exit status and command are in the message)."""


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    """A ``preexec_fn``: the child gets SIGTERM when its parent dies (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ChildServer:
    """``python -m <module> ... --port 0`` as a child; ``url`` once ``read_ready`` returned.

    ``ready_prefix`` is what precedes the URL on the first line (``""`` for a
    command that prints the bare URL, as ``python -m calibrate serve`` does);
    ``env`` replaces the inherited environment.
    """

    def __init__(self, module: str, args: Sequence[str], *, python: str = sys.executable,
                 ready_prefix: str = "READY ", env: Mapping[str, str] | None = None) -> None:
        self.cmd = [python, "-m", module, *args]
        self.ready_prefix = ready_prefix
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.url: str | None = None
        self._signalled = False

    def read_ready(self, deadline: float) -> str:
        """Wait (until ``deadline``, a ``time.monotonic`` value) for ``<ready_prefix><url>``."""
        out = self.proc.stdout
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildStartError(f"did not start in time: {' '.join(self.cmd)}")
            ready, _, _ = select.select([out], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(out.fileno(), 4096)
                if not chunk:
                    code = self.proc.wait()
                    raise ChildStartError(f"exited with status {code} before it was ready: "
                                          f"{' '.join(self.cmd)} (its stderr is above)")
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode()
        url = line[len(self.ready_prefix):].strip() if line.startswith(self.ready_prefix) else ""
        if not url.startswith("http"):
            raise ChildStartError(f"unexpected first line {line!r} from {' '.join(self.cmd)}")
        self.url = url
        return self.url

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive and not self._signalled:
            self.proc.terminate()
            self._signalled = True

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``; always reaps the process."""
        p = self.proc
        if p.poll() is None:
            self.terminate()  # once: a child mid-shutdown takes a second SIGTERM as "hurry"
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p.stdout is not None:
            p.stdout.close()


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
            raise ChildStartError(f"{url} did not become healthy in time")
        time.sleep(0.05)


def start_all(children: Sequence[ChildServer], timeout_s: float) -> list[str]:
    """Wait for every child's READY line and health; their URLs in order."""
    deadline = time.monotonic() + timeout_s
    urls = [c.read_ready(deadline) for c in children]
    for u in urls:
        wait_health(u, deadline)
    return urls


def stop_all(children: Sequence[ChildServer], timeout_s: float = 5.0) -> None:
    """Signal every child first (they shut down in parallel), then reap each.

    ``timeout_s`` is each child's grace before SIGKILL (a child that itself
    stops a process tree, such as ``calibrate serve``, needs longer).
    """
    for c in children:
        c.terminate()
    for c in children:
        c.stop(timeout_s)
