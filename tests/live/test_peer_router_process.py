"""``live.peer_routers.PeerRouter`` as a process: it dies with its parent, its whole
process group is stopped, and starting one leaks no file descriptor.

The router here is a stand-in: a few lines of Python answering ``/health`` on
loopback (and, for the group test, a grandchild), not vllm-router or sglang-router.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from live.peer_routers import PeerRouter, free_port

pytestmark = pytest.mark.timeout(60)

STAND_IN = textwrap.dedent("""
    import http.server, subprocess, sys
    port, grandchild = int(sys.argv[1]), sys.argv[2] == "1"
    if grandchild:  # a helper process of the router, as sglang-router's launcher has
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        print("HELPER", helper.pid, flush=True)
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
        def log_message(self, *a): pass
    http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
""")


def stand_in(port: int, grandchild: bool = False) -> list[str]:
    return [sys.executable, "-c", STAND_IN, str(port), "1" if grandchild else "0"]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, limit_s: float = 10) -> bool:
    """Whether ``pid`` ends within ``limit_s``; if not, it is killed (no orphan is left)."""
    deadline = time.monotonic() + limit_s
    while alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return False
        time.sleep(0.05)
    return True


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_running_router_holds_no_file_descriptor_of_ours():
    before = open_fds()
    logs, during = [], []
    for _ in range(3):
        port = free_port()
        with PeerRouter(stand_in(port), port) as router:
            logs.append(router.log_path)
            during.append(open_fds())
            assert router.log_path.is_file()
    assert during == [before] * 3, "the temporary log's descriptor stays open in the parent"
    assert open_fds() == before
    assert not any(p.exists() for p in logs), "the temporary logs are removed"


def test_stop_ends_the_routers_helper_processes_too():
    port = free_port()
    router = PeerRouter(stand_in(port, grandchild=True), port)
    try:
        deadline = time.monotonic() + 10
        while b"HELPER" not in router.log_path.read_bytes():
            assert time.monotonic() < deadline, "the stand-in did not start its helper"
            time.sleep(0.05)
        helper = int(router.log_path.read_bytes().split(b"HELPER ")[1].split()[0])
        assert alive(helper)
    finally:
        router.stop()
    assert wait_gone(helper), "the router's helper outlived stop()"


PARENT = textwrap.dedent("""
    import sys, time
    from live.peer_routers import PeerRouter, free_port
    port = free_port()
    argv = [sys.executable, "-c", sys.argv[1], str(port), "0"]
    router = PeerRouter(argv, port)
    print(router.pid, flush=True)
    time.sleep(300)
""")


def test_the_router_dies_with_a_parent_killed_without_cleanup():
    parent = subprocess.Popen([sys.executable, "-c", PARENT, STAND_IN], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), line
        child = int(line)
        assert alive(child)
    finally:
        parent.kill()  # SIGKILL: no stop(), no atexit
        parent.wait()
    assert wait_gone(child), "the router outlived its parent"
