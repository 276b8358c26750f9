"""One huge prompt through the gateway: how long /health waits, and where memory ends.

Starts two cpu-tiny emulators and a gateway (``python -m live.gateway`` with the
given extra arguments), sends one text prompt of ``--mb`` megabytes
(``"hello world " * n``, as in the reliability report that found the gateway
freezing), polls ``/health`` every 20 ms meanwhile, and prints the answer, the
time it took, the slowest ``/health`` answer, and the gateway's RSS before, at
its peak (VmHWM) and after. The load average is printed beside the numbers: on a
busy machine they are provisional.

    python benchmarks/gateway_large_prompt.py                       # defaults: 413 at once
    python benchmarks/gateway_large_prompt.py --max-body-bytes 33554432 --max-prompt-tokens 0
    python benchmarks/gateway_large_prompt.py --max-body-bytes 33554432   # refused at the context
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from live.emulator.spawn import spawn  # noqa: E402
from live.transport.processes import ChildServer, start_all, stop_all  # noqa: E402


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1000
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=float, default=15.7, help="prompt size in megabytes of text")
    args, gateway_args = p.parse_known_args()
    prompt = "hello world " * int(args.mb * 1e6 / 12)
    body = json.dumps({"prompt": prompt, "max_tokens": 5}).encode()
    with spawn(2, "cpu-tiny") as urls:
        gw = ChildServer("live.gateway", ["--backends", ",".join(urls), "--port", "0",
                                          "--log-level", "warning", *gateway_args])
        try:
            start_all([gw], 60)
            before = rss_mb(gw.proc.pid)
            latencies: list[float] = []
            done = threading.Event()

            def poll() -> None:
                while not done.is_set():
                    t = time.perf_counter()
                    urllib.request.urlopen(gw.url + "/health", timeout=60).read()
                    latencies.append(time.perf_counter() - t)
                    time.sleep(0.02)

            th = threading.Thread(target=poll, daemon=True)
            th.start()
            t0 = time.perf_counter()
            req = urllib.request.Request(gw.url + "/v1/completions", data=body,
                                         headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=600) as r:
                    status, answer = r.status, r.read()
            except urllib.error.HTTPError as exc:
                status, answer = exc.code, exc.read()
            took = time.perf_counter() - t0
            done.set()
            th.join(60)
            time.sleep(0.5)
            after, peak = rss_mb(gw.proc.pid), rss_mb(gw.proc.pid, "VmHWM")
        finally:
            stop_all([gw])
    message = json.loads(answer).get("error", {}).get("message", "") if status != 200 else "ok"
    print(f"prompt {len(body) / 1e6:.1f} MB, gateway args: {' '.join(gateway_args) or '(defaults)'}")
    print(f"answer   HTTP {status} in {took:.2f} s: {message[:120]}")
    print(f"/health  {len(latencies)} answers meanwhile, slowest {max(latencies) * 1e3:.0f} ms")
    print(f"RSS      {before:.0f} MB before, {peak:.0f} MB peak, {after:.0f} MB after")
    print(f"load average {os.getloadavg()[0]:.2f} (a busy machine makes these provisional)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
