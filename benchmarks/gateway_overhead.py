"""How much TTFT does a router add? Our gateway vs the PyPI ``vllm-router``, against emulators.

For each request rate, the same streaming trace (Poisson arrivals, fixed prompt and
output lengths, no shared prefixes) is replayed three times against the same
emulator processes, which are reset in between:

- ``direct``: the load generator routes round-robin straight to the emulators;
- ``gateway``: through ``python -m live.gateway --strategy round_robin``;
- ``vllm-router``: through the vLLM project's Rust router (``--policy round_robin``),
  installed in a separate venv (``python -m venv .bench-venv &&
  .bench-venv/bin/pip install vllm-router``).

Each (rate, router) is measured in ``--rounds`` short segments, the three
targets taking turns (so slow drifts of the machine's load hit all three alike);
percentiles are over all segments' requests together. Added TTFT is a router's
TTFT percentile minus the direct one at the same rate. CPU per request is the
router process's user+system time over its segments divided by the requests it
served. The machine is shared and noisy: compare routers within one run, not
across runs.

    python benchmarks/gateway_overhead.py                    # 50, 100, 200 req/s
    python benchmarks/gateway_overhead.py --rates 100 --duration 5 --rounds 6
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import routing  # noqa: E402
from live.emulator import spawn  # noqa: E402
from live.router import LiveRouter  # noqa: E402
from live.gateway.spawn import start_gateway  # noqa: E402
from live.loadgen import LoadOptions, replay  # noqa: E402
from live.transport.processes import wait_health  # noqa: E402
from live.run import reset_backends, run_async  # noqa: E402
from workload import build_trace  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class VllmRouter:
    """The Rust ``vllm-router`` binary as a child process."""

    def __init__(self, binary: str, urls: list[str], policy: str) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [binary, "--worker-urls", *urls, "--policy", policy, "--host", "127.0.0.1",
             "--port", str(port), "--log-level", "error", "--max-concurrent-requests", "4096",
             "--queue-size", "4096"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_health(self.url, time.monotonic() + 120)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def trace_for(rate: float, duration: float, input_len: int, output_len: int, seed: int):
    n = max(int(rate * duration), 1)
    return build_trace(
        {"source": "synthetic", "synthetic": {"input": {"dist": "fixed", "value": input_len},
                                              "output": {"dist": "fixed", "value": output_len},
                                              "num_requests": n}},
        {"pattern": "poisson", "rate": rate}, seed=seed, num_requests=n, cache_dir=False)


def measure(target: str, url: str | None, urls: list[str], trace, pid: int | None,
            concurrency: int) -> dict:
    """Replay ``trace``; TTFT percentiles and the router process's CPU."""
    # TTFT counts from the actual send, so exact send times are not needed: no spin-wait
    # (it would only take CPU from the processes being measured).
    opts = LoadOptions(concurrency=concurrency, timeout_s=60, drain_s=60, spin_s=0.0)
    c0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    if url is None:
        fleet = LiveRouter(urls, routing.build("round_robin"), scrape=False, track_prefix=False)  # direct
        result = run_async(replay(trace, router=fleet, options=opts))
    else:
        result = run_async(replay(trace, gateway_url=url, options=opts))
    wall = time.perf_counter() - t0
    cpu = (cpu_seconds(pid) - c0) if pid else float("nan")
    ok = [r for r in result.records if r.status == "ok"]
    ttft = np.array([r.first_token_s - r.arrival_s for r in ok]) * 1e3
    return {
        "target": target, "sent": len(result.records), "ok": len(ok),
        "ttft_ms": ttft.tolist(),
        "ttft_p50_ms": float(np.percentile(ttft, 50)) if len(ttft) else float("nan"),
        "ttft_p99_ms": float(np.percentile(ttft, 99)) if len(ttft) else float("nan"),
        "lag_p99_ms": float(np.percentile(result.send_lag_s, 99) * 1e3),
        "cpu_s": cpu, "wall_s": wall,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="50,100,200", help="comma-separated request rates (req/s)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds of traffic per segment")
    p.add_argument("--rounds", type=int, default=4,
                   help="segments per (rate, router), taking turns with the other targets")
    p.add_argument("--backends", type=int, default=2, help="emulator processes")
    p.add_argument("--profile", default="cpu-tiny", help="emulator latency profile")
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens per request")
    p.add_argument("--output-len", type=int, default=32, help="output tokens per request (streamed)")
    p.add_argument("--policy", default="round_robin",
                   help="routing policy of both routers (our strategy name; vllm-router's --policy)")
    p.add_argument("--concurrency", type=int, default=512, help="client connections per host")
    p.add_argument("--vllm-router", default=str(ROOT / ".bench-venv" / "bin" / "vllm-router"),
                   help="path of the vllm-router binary (skipped if missing)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    have_vr = Path(args.vllm_router).is_file() or shutil.which(args.vllm_router) is not None
    if not have_vr:
        print(f"note: {args.vllm_router} not found; measuring without vllm-router "
              "(python -m venv .bench-venv && .bench-venv/bin/pip install vllm-router)")

    rows = []
    with spawn(args.backends, args.profile) as urls, \
            start_gateway(urls, args.policy) as gw_url:
        gw_pid = _pid_of_listener(gw_url)
        vr = VllmRouter(args.vllm_router, urls, args.policy) if have_vr else None
        try:
            targets = [("direct", None, None), ("gateway", gw_url, gw_pid)]
            if vr:
                targets.append(("vllm-router", vr.url, vr.proc.pid))
            for rate in rates:
                for rnd in range(args.rounds):
                    trace = trace_for(rate, args.duration, args.input_len, args.output_len, seed=rnd)
                    warm = trace_for(rate, 1.0, args.input_len, args.output_len, seed=1000 + rnd)
                    order = targets if rnd % 2 == 0 else targets[:1] + targets[:0:-1]
                    for name, url, pid in order:
                        if rnd == 0:  # open connections, load code paths: not measured
                            reset_backends(urls, emulated=True)
                            measure(name, url, urls, warm, None, args.concurrency)
                        reset_backends(urls, emulated=True)
                        row = measure(name, url, urls, trace, pid, args.concurrency)
                        row.update(rate=rate, round=rnd)
                        rows.append(row)
                        print(f"  {rate:>5g} req/s  segment {rnd}  {name:<12} "
                              f"p50 {row['ttft_p50_ms']:7.2f} ms  p99 {row['ttft_p99_ms']:7.2f} ms  "
                              f"ok {row['ok']}/{row['sent']}", flush=True)
        finally:
            if vr:
                vr.stop()
    table = summarize(rows, rates)
    print()
    print(table)
    if args.json:
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "ttft_ms"}
                                         for r in rows], indent=2))
    return 0


def _pid_of_listener(url: str) -> int:
    """The pid of the process listening on the URL's port (the gateway child)."""
    port = int(url.rsplit(":", 1)[1])
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    pid = out.split("pid=", 1)[1].split(",", 1)[0]
    return int(pid)


def summarize(rows: list[dict], rates: list[float]) -> str:
    header = (f"{'rate':>6}  {'router':<12} {'TTFT p50':>9} {'TTFT p99':>9} {'added p50':>10} "
              f"{'added p99':>10} {'CPU ms/req':>11} {'core %':>7} {'ok/sent':>11}")
    lines = [header, "-" * len(header)]
    best: dict[str, float] = {}
    added_p50: dict[tuple[float, str], float] = {}
    for rate in rates:
        pooled: dict[str, dict] = {}
        for r in rows:
            if r["rate"] != rate:
                continue
            p = pooled.setdefault(r["target"], {"ttft": [], "cpu": 0.0, "wall": 0.0, "ok": 0, "sent": 0})
            p["ttft"] += r["ttft_ms"]
            p["cpu"] += r["cpu_s"]
            p["wall"] += r["wall_s"]
            p["ok"] += r["ok"]
            p["sent"] += r["sent"]
        base = pooled.get("direct")
        for name, p in pooled.items():
            t = np.asarray(p["ttft"])
            p50, p99 = (np.percentile(t, [50, 99]) if len(t) else (float("nan"),) * 2)
            add50 = add99 = float("nan")
            if name != "direct" and base is not None and len(base["ttft"]):
                b50, b99 = np.percentile(base["ttft"], [50, 99])
                add50, add99 = p50 - b50, p99 - b99
                added_p50[(rate, name)] = add50
                if add99 < 10.0:
                    best[name] = max(best.get(name, 0.0), rate)
            cpu = p["cpu"] / p["sent"] * 1e3 if name != "direct" else float("nan")
            core = p["cpu"] / p["wall"] * 100 if name != "direct" else float("nan")
            lines.append(f"{rate:>6g}  {name:<12} {p50:>9.2f} {p99:>9.2f} {_f(add50):>10} "
                         f"{_f(add99):>10} {_f(cpu):>11} {_f(core, 1):>7} {p['ok']:>5}/{p['sent']:<5}")
    lines.append("")
    for name in ("gateway", "vllm-router"):
        if any(k[1] == name for k in added_p50):
            top = best.get(name)
            lines.append(f"{name}: highest measured rate with added p99 < 10 ms: "
                         f"{f'{top:g} req/s' if top else 'none'}")
    for rate in rates:
        g, v = added_p50.get((rate, "gateway")), added_p50.get((rate, "vllm-router"))
        if g is not None and v is not None:
            ratio = f" (ratio {g / v:.2f})" if v > 0 else ""
            lines.append(f"{rate:g} req/s: gateway added p50 {g:.2f} ms vs vllm-router {v:.2f} ms{ratio}")
    return "\n".join(lines)


def _f(x: float, digits: int = 2) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    raise SystemExit(main())
