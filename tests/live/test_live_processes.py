"""Child servers of the live side: started, read, and stopped with one SIGTERM each."""
from __future__ import annotations

import os
import sys
import textwrap
import time

from live.transport.processes import ChildServer, start_all, stop_all

#: A child that prints its URL, counts the SIGTERMs it gets and takes a while to exit,
#: as ``calibrate serve`` does while it stops vLLM.
SLOW_CHILD = textwrap.dedent("""
    import http.server, os, signal, sys, threading, time
    count = os.environ["SIGNAL_COUNT_FILE"]
    def on_term(signum, frame):
        with open(count, "a") as f:
            f.write("x")
        time.sleep(float(os.environ["SHUTDOWN_S"]))
        os._exit(0)
    signal.signal(signal.SIGTERM, on_term)
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
        def log_message(self, *a):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"http://127.0.0.1:{server.server_port}", flush=True)
    while True:
        time.sleep(0.1)
""")


def test_stop_all_signals_each_child_once_and_waits_for_its_shutdown(tmp_path):
    (tmp_path / "slow_child.py").write_text(SLOW_CHILD)
    counts = [tmp_path / f"count{i}" for i in range(2)]
    children = [ChildServer("slow_child", [], ready_prefix="",
                            env={**os.environ, "PYTHONPATH": str(tmp_path), "SIGNAL_COUNT_FILE": str(c),
                                 "SHUTDOWN_S": str(0.5 + i)})
                for i, c in enumerate(counts)]
    try:
        urls = start_all(children, timeout_s=30)
        assert len(set(urls)) == 2 and all(u.startswith("http://127.0.0.1:") for u in urls)
        stop_all(children, timeout_s=10)
    finally:
        for c in children:
            c.proc.kill()
    # The second child is still shutting down when the first has exited; it must not be
    # signalled again then: one SIGTERM each.
    assert [c.read_text() for c in counts] == ["x", "x"]
    assert all(c.proc.returncode == 0 for c in children)  # exited by themselves, not killed
