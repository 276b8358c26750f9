"""How much TTFT does a router add? Our gateway vs the PyPI ``vllm-router``, against emulators.

For each routing policy and request rate, the same streaming trace (Poisson arrivals,
fixed prompt and output lengths, no shared prefixes) is replayed against the same
emulator processes, which are reset in between, three ways:

- ``direct``: the load generator routes straight to the emulators with the lab's model
  of the policy (no router process in the path);
- ``gateway``: through ``python -m live.gateway`` running the lab's model of the policy;
- ``vllm-router``: through the vLLM project's Rust router with the same policy and
  parameters, installed in a separate venv (``python -m venv .bench-venv &&
  .bench-venv/bin/pip install vllm-router``).

Policies: ``round_robin``, and ``cache_aware`` (vllm-router's approximate radix tree;
the lab's ``cache_aware`` with vllm-router's command-line parameters: cache threshold
0.3, balance thresholds 64 and 1.5), which does per-request prefix matching and so
costs the router more.

**The backends must not queue.** A router's added latency is well under a millisecond;
measured against backends that queue, it drowns in their TTFT noise. The emulators
therefore run with ``--fixed-step`` (default 1 ms): every engine step takes exactly that
long whatever it holds, so a request's TTFT is its wait for the next step plus one step
plus HTTP, a few milliseconds at any rate this machine can send, and what differs
between the three paths is the router. A fitted CPU profile would not do: ``cpu-tiny``
spends 18 ms per step plus 2.9 ms per running sequence, so two of them saturate at
a few tens of requests per second. Before reporting a rate, the benchmark checks that
the direct path is not saturated (TTFT p50 at most ``--max-direct-p50-ms``, p99 at most
``--max-direct-p99-ms``, no failed request); if it is, that rate is **refused**, not
reported, and the command exits with status 3.

Each (policy, rate, router) is measured in ``--rounds`` short segments, the three
targets taking turns (so slow drifts of the machine's load hit all three alike);
percentiles are over all segments' requests together. Added TTFT is a router's
TTFT percentile minus the direct one at the same policy and rate. CPU per request is
the router process's user+system time over its segments divided by the requests it
served. The load average is printed beside the table: on a busy machine, compare
routers within one run, not across runs.

    python benchmarks/gateway_overhead.py                    # 50, 100, 200 req/s, both policies
    python benchmarks/gateway_overhead.py --rates 100 --policies cache_aware --rounds 6
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import routing  # noqa: E402
from live.emulator import spawn  # noqa: E402
from live.peer_routers import LAB_MODEL, VllmRouter, vllm_router_binary  # noqa: E402
from live.router import LiveRouter  # noqa: E402
from live.gateway.spawn import start_gateway  # noqa: E402
from live.loadgen import LoadOptions, replay  # noqa: E402
from live.run import reset_backends, run_async  # noqa: E402
from workload import build_trace  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: The lab's model of each vllm-router policy, with vllm-router 0.1.17's command-line values.
LAB_POLICY = LAB_MODEL


def trace_for(rate: float, duration: float, input_len: int, output_len: int, seed: int):
    n = max(int(rate * duration), 1)
    return build_trace(
        {"source": "synthetic", "synthetic": {"input": {"dist": "fixed", "value": input_len},
                                              "output": {"dist": "fixed", "value": output_len},
                                              "num_requests": n}},
        {"pattern": "poisson", "rate": rate}, seed=seed, num_requests=n, cache_dir=False)


def measure(target: str, url: str | None, urls: list[str], trace, pid: int | None,
            concurrency: int, policy: str = "round_robin") -> dict:
    """Replay ``trace``; TTFT percentiles and the router process's CPU."""
    # TTFT counts from the actual send, so exact send times are not needed: no spin-wait
    # (it would only take CPU from the processes being measured).
    opts = LoadOptions(concurrency=concurrency, timeout_s=60, drain_s=60, spin_s=0.0)
    c0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    if url is None:
        name, params = LAB_POLICY[policy]
        fleet = LiveRouter(urls, routing.build(name, **params), scrape=False)  # direct
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
    p.add_argument("--profile", default="cpu-tiny",
                   help="emulator latency profile (its engine limits; the step time is --fixed-step)")
    p.add_argument("--fixed-step", type=float, default=0.001, metavar="SECONDS",
                   help="every emulator step takes this long (0: the profile's own step times, "
                        "which queue at these rates)")
    p.add_argument("--max-direct-p50-ms", type=float, default=10.0,
                   help="refuse a rate whose direct TTFT p50 exceeds this (the backends queue)")
    p.add_argument("--max-direct-p99-ms", type=float, default=50.0,
                   help="refuse a rate whose direct TTFT p99 exceeds this")
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens per request")
    p.add_argument("--output-len", type=int, default=32, help="output tokens per request (streamed)")
    p.add_argument("--policies", default="round_robin,cache_aware",
                   help=f"comma-separated policies, run on both routers (of: {', '.join(LAB_POLICY)})")
    p.add_argument("--concurrency", type=int, default=512, help="client connections per host")
    p.add_argument("--vllm-router", default=vllm_router_binary() or str(ROOT / ".bench-venv" / "bin" / "vllm-router"),
                   help="path of the vllm-router binary (skipped if missing)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = p.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    bad = [x for x in policies if x not in LAB_POLICY]
    if bad:
        p.error(f"--policies: unknown {', '.join(bad)}; known: {', '.join(LAB_POLICY)}")
    have_vr = Path(args.vllm_router).is_file() or shutil.which(args.vllm_router) is not None
    if not have_vr:
        print(f"note: {args.vllm_router} not found; measuring without vllm-router "
              "(python -m venv .bench-venv && .bench-venv/bin/pip install vllm-router)")
    emu_args = ["--block-size", "16"] + (["--fixed-step", repr(args.fixed_step)]
                                         if args.fixed_step else [])
    load_before = os.getloadavg()
    rows = []
    with spawn(args.backends, args.profile, args=emu_args) as urls:
        for policy in policies:
            name, params = LAB_POLICY[policy]
            with start_gateway(urls, name, params=params) as gw_url:
                gw_pid = _pid_of_listener(gw_url)
                vr = VllmRouter(urls, policy, binary=args.vllm_router) if have_vr else None
                try:
                    targets = [("direct", None, None), ("gateway", gw_url, gw_pid)]
                    if vr:
                        targets.append(("vllm-router", vr.url, vr.proc.pid))
                    for rate in rates:
                        for rnd in range(args.rounds):
                            trace = trace_for(rate, args.duration, args.input_len, args.output_len,
                                              seed=rnd)
                            warm = trace_for(rate, 1.0, args.input_len, args.output_len,
                                             seed=1000 + rnd)
                            order = targets if rnd % 2 == 0 else targets[:1] + targets[:0:-1]
                            for target, url, pid in order:
                                if rnd == 0:  # open connections, load code paths: not measured
                                    reset_backends(urls, emulated=True)
                                    measure(target, url, urls, warm, None, args.concurrency, policy)
                                reset_backends(urls, emulated=True)
                                row = measure(target, url, urls, trace, pid, args.concurrency, policy)
                                row.update(rate=rate, round=rnd, policy=policy)
                                rows.append(row)
                                print(f"  {policy:<12} {rate:>5g} req/s  segment {rnd}  {target:<12} "
                                      f"p50 {row['ttft_p50_ms']:7.2f} ms  p99 {row['ttft_p99_ms']:7.2f} ms"
                                      f"  ok {row['ok']}/{row['sent']}", flush=True)
                finally:
                    if vr:
                        vr.stop()
    load_after = os.getloadavg()
    table, refused = summarize(rows, rates, policies, args.max_direct_p50_ms, args.max_direct_p99_ms)
    print()
    print(table)
    print(f"\nload average (1, 5, 15 min): before {_load(load_before)}, after {_load(load_after)}"
          f" on {os.cpu_count()} cores; backends: {args.backends} x {args.profile}"
          + (f" with --fixed-step {args.fixed_step:g} s" if args.fixed_step else ""))
    if args.json:
        args.json.write_text(json.dumps({"load_before": load_before, "load_after": load_after,
                                         "refused": refused,
                                         "rows": [{k: v for k, v in r.items() if k != "ttft_ms"}
                                                  for r in rows]}, indent=2))
    return 3 if refused else 0


def _load(avg) -> str:
    return ", ".join(f"{x:.2f}" for x in avg)


def _pid_of_listener(url: str) -> int:
    """The pid of the process listening on the URL's port (the gateway child)."""
    port = int(url.rsplit(":", 1)[1])
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    pid = out.split("pid=", 1)[1].split(",", 1)[0]
    return int(pid)


def saturation(base: dict | None, max_p50: float, max_p99: float) -> str:
    """Why the direct path at one rate cannot serve as the baseline ("" when it can)."""
    if base is None or not len(base["ttft"]):
        return "the direct path served no request"
    if base["ok"] < base["sent"]:
        return f"the direct path failed {base['sent'] - base['ok']} of {base['sent']} requests"
    b50, b99 = np.percentile(base["ttft"], [50, 99])
    if b50 > max_p50:
        return f"direct TTFT p50 {b50:.1f} ms > {max_p50:g} ms"
    if b99 > max_p99:
        return f"direct TTFT p99 {b99:.1f} ms > {max_p99:g} ms"
    return ""


def summarize(rows: list[dict], rates: list[float], policies: list[str], max_p50: float = 10.0,
              max_p99: float = 50.0) -> tuple[str, list[str]]:
    """The table, and the (policy, rate) units refused because the direct path saturated."""
    header = (f"{'policy':<12} {'rate':>6}  {'router':<12} {'TTFT p50':>9} {'TTFT p99':>9} "
              f"{'added p50':>10} {'added p99':>10} {'CPU ms/req':>11} {'core %':>7} {'ok/sent':>11}")
    lines = [header, "-" * len(header)]
    best: dict[tuple[str, str], float] = {}
    added_p50: dict[tuple[str, float, str], float] = {}
    refused: list[str] = []
    for policy in policies:
        for rate in rates:
            pooled: dict[str, dict] = {}
            for r in rows:
                if r["rate"] != rate or r.get("policy", "round_robin") != policy:
                    continue
                p = pooled.setdefault(r["target"], {"ttft": [], "cpu": 0.0, "wall": 0.0, "ok": 0,
                                                    "sent": 0})
                p["ttft"] += r["ttft_ms"]
                p["cpu"] += r["cpu_s"]
                p["wall"] += r["wall_s"]
                p["ok"] += r["ok"]
                p["sent"] += r["sent"]
            if not pooled:
                continue
            base = pooled.get("direct")
            why = saturation(base, max_p50, max_p99)
            if why:
                refused.append(f"{policy} at {rate:g} req/s: {why}")
                lines.append(f"{policy:<12} {rate:>6g}  REFUSED: the direct path is saturated ({why}); "
                             "a router's added latency would be the backends' queueing noise. Use "
                             "more --backends, a shorter --fixed-step or lower --rates.")
                continue
            for name, p in pooled.items():
                t = np.asarray(p["ttft"])
                p50, p99 = (np.percentile(t, [50, 99]) if len(t) else (float("nan"),) * 2)
                add50 = add99 = float("nan")
                if name != "direct":
                    b50, b99 = np.percentile(base["ttft"], [50, 99])
                    add50, add99 = p50 - b50, p99 - b99
                    added_p50[(policy, rate, name)] = add50
                    if add99 < 10.0:
                        best[(policy, name)] = max(best.get((policy, name), 0.0), rate)
                cpu = p["cpu"] / p["sent"] * 1e3 if name != "direct" else float("nan")
                core = p["cpu"] / p["wall"] * 100 if name != "direct" else float("nan")
                lines.append(f"{policy:<12} {rate:>6g}  {name:<12} {p50:>9.2f} {p99:>9.2f} "
                             f"{_f(add50):>10} {_f(add99):>10} {_f(cpu):>11} {_f(core, 1):>7} "
                             f"{p['ok']:>5}/{p['sent']:<5}")
    lines.append("")
    for policy in policies:
        for name in ("gateway", "vllm-router"):
            if any(k[0] == policy and k[2] == name for k in added_p50):
                top = best.get((policy, name))
                lines.append(f"{policy} / {name}: highest measured rate with added p99 < 10 ms: "
                             f"{f'{top:g} req/s' if top else 'none'}")
        for rate in rates:
            g = added_p50.get((policy, rate, "gateway"))
            v = added_p50.get((policy, rate, "vllm-router"))
            if g is not None and v is not None:
                ratio = f" (ratio {g / v:.2f})" if v > 0 else ""
                lines.append(f"{policy} {rate:g} req/s: gateway added p50 {g:.2f} ms vs vllm-router "
                             f"{v:.2f} ms{ratio}")
    if refused:
        lines.append("")
        lines.append("REFUSED (not reported): " + "; ".join(refused))
    return "\n".join(lines), refused


def _f(x: float, digits: int = 2) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    raise SystemExit(main())
