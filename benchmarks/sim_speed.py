"""Simulator speed and memory on the Azure LLM conversation trace.

    python benchmarks/sim_speed.py                 # own rate and 10x, fast and exact modes
    python benchmarks/sim_speed.py --million       # plus a 1M-request run (memory)

The trace (19,366 requests over 58 minutes; Splitwise, ISCA'24) is replayed on 16
``h100-llama2-70b-tp4`` backends behind ``least_load``, at its own rate and
time-scaled 10x. Each configuration runs in its own process, on one core, so its
peak RSS is its own. Printed per configuration: simulated requests per second of
CPU time, simulated time / CPU time, and peak RSS. Records stream to a Parquet file
as requests end, as in ``python -m sim``; that is included. CPU time rather than
wall time, because the machines these run on are shared: compare ratios within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The packaged copy of the trace (gzip); ``--trace`` takes another.
DEFAULT_TRACE = REPO / "workload" / "data" / "azure_llm_inference_conv_2023.csv.gz"


def one(args: argparse.Namespace) -> dict:
    """Run one configuration in this process and report its numbers."""
    import resource
    import tempfile
    import time
    from collections import Counter

    import routing
    from results.records import RecordWriter
    from sim.cluster import BackendConfig, ClusterConfig, simulate
    from sim.engine import EngineConfig
    from sim.latency import load_profile
    from workload import build_trace

    workload = {"source": "azure", "path": args.trace}
    if args.requests:
        # Azure lengths, Poisson arrivals at 10x the trace's mean rate, cycled as needed.
        arrivals = {"pattern": "poisson", "rate": 55.0}
        trace = build_trace(workload, arrivals, seed=0, num_requests=args.requests)
    else:
        trace = build_trace(workload, {"pattern": "replay", "time_scale": args.scale}, seed=0,
                            num_requests=19366)
    prof = load_profile(args.profile)
    d = prof.engine
    engine = EngineConfig(d.num_kv_blocks, d.block_size, d.max_num_seqs, d.max_num_batched_tokens)
    cfg = ClusterConfig([BackendConfig(f"b{i}", "h100", prof, engine) for i in range(args.backends)],
                        mode=args.mode)
    strategy = routing.build(args.strategy, seed=0)
    # Records stream to a Parquet file as requests end, as `python -m sim` does; the
    # statuses are counted on the way (reading the file back would cost more memory
    # than the simulation itself at a million requests).
    statuses: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        with RecordWriter(Path(tmp) / "records.parquet") as writer:
            def sink(rec) -> None:
                statuses[rec.status] += 1
                writer.write(rec)

            cpu0, wall0 = time.process_time(), time.perf_counter()
            result = simulate(trace, strategy, cfg, seed=0, sink=sink)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    ok = statuses["ok"]
    return {
        "requests": len(trace), "ok": ok, "sim_s": result.end_time, "cpu_s": cpu, "wall_s": wall,
        "req_per_cpu_s": len(trace) / cpu, "speedup": result.end_time / cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if hasattr(os, "sched_getaffinity"):
        cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default=str(DEFAULT_TRACE), help="Azure conversation trace CSV")
    p.add_argument("--backends", type=int, default=16)
    p.add_argument("--profile", default="h100-llama2-70b-tp4")
    p.add_argument("--strategy", default="least_load")
    p.add_argument("--million", action="store_true", help="also run 1,000,000 requests (minutes)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="fast", help=argparse.SUPPRESS)
    p.add_argument("--requests", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one(args)))
        return 0
    if not Path(args.trace).exists():
        print(f"trace not found: {args.trace} (give --trace)", file=sys.stderr)
        return 2
    base = ["--trace", args.trace, "--backends", str(args.backends), "--profile", args.profile,
            "--strategy", args.strategy]
    configs = [
        ("own rate, fast", ["--scale", "1"]),
        ("own rate, exact", ["--scale", "1", "--mode", "exact"]),
        ("10x rate, fast", ["--scale", "10"]),
        ("10x rate, exact", ["--scale", "10", "--mode", "exact"]),
    ]
    if args.million:
        configs.append(("1M requests, fast", ["--requests", "1000000"]))
    print(f"Azure conversation trace on {args.backends} x {args.profile}, {args.strategy}, one core\n")
    header = f"{'configuration':22s} {'requests':>9s} {'sim time':>9s} {'CPU s':>7s} {'req/CPU-s':>10s} {'x real time':>11s} {'peak RSS':>9s}"
    print(header)
    print("-" * len(header))
    for label, extra in configs:
        r = run_child(base + extra)
        print(f"{label:22s} {r['requests']:9,d} {r['sim_s']:8.0f}s {r['cpu_s']:7.2f} "
              f"{r['req_per_cpu_s']:10,.0f} {r['speedup']:10,.0f}x {r['peak_rss_mb']:7.0f}MB")
    print("\nPeers on this trace (measured on this machine, docs/performance.md): Vidur 0.0.26 simulates "
          "16 replicas at ~45 req/s (9x real time), one replica at ~400 req/s (74x).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
