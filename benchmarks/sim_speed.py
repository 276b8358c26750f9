"""Simulator speed and memory: the Azure conversation trace, and a big fleet.

    python benchmarks/sim_speed.py                 # own rate and 10x, fast and exact modes
    python benchmarks/sim_speed.py --million       # plus a 1M-request run (memory)
    python benchmarks/sim_speed.py --fleet         # 256 replicas, 2,000 req/s, 10 minutes
    python benchmarks/sim_speed.py --fleet --minutes 1 --replicas 64   # a scaled-down one
    python benchmarks/sim_speed.py --scaling --minutes 1   # 4, 16, 64, 256 replicas, rate per replica fixed

``--fleet`` is the production-sized configuration of issue 20: ``--replicas``
backends (256) of ``--fleet-profile`` (Llama-3.1-8B on one H100) under Poisson
arrivals at ``--rate-per-replica`` (7.8125, so 2,000 req/s at 256) of multi-turn
ShareGPT (every turn an open-loop arrival; later turns resend the conversation so
far, so they hit the prefix cache where they land), for ``--minutes`` simulated
minutes of arrivals (10), once per strategy in ``--strategies`` (``least_load``
and ``cache_aware``). Printed as well: the CPU time spent inside the router's
decisions (``Router.dispatch``: snapshot filling, the strategy, the bookkeeping),
per request; it includes two ``process_time`` calls per decision (about 0.5 µs).
``--scaling`` runs the same at 4, 16, 64 and 256 replicas with the rate per
replica held, so the cost per request shows how it grows with the fleet.

A fleet that cannot serve its load measures a meltdown, not a fleet: its queues
grow for the whole run, so memory and the cost per request grow with them. Each
row therefore prints the median TTFT of the requests arriving in the first and in
the last fifth of the arrivals, and says ``OVERLOADED`` when the last is more than
twice the first plus half a second. (Llama-2-70B on four H100s, this benchmark's
first fleet, is: at 7.8 req/s per replica its TTFT median climbs from 0.3 s to
66 s within four minutes.)

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
import math
import os
import subprocess
import sys
from array import array
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: The packaged copy of the trace (gzip); ``--trace`` takes another.
DEFAULT_TRACE = REPO / "workload" / "data" / "azure_llm_inference_conv_2023.csv.gz"


def one(args: argparse.Namespace) -> dict:
    """Build one configuration's trace in this process, run it and report its numbers."""
    from workload import build_trace

    if args.fleet_child:
        # Multi-turn ShareGPT, Poisson arrivals; turns are open-loop (each at its own time).
        workload = {"source": "sharegpt", "max_input_len": 3072, "max_output_len": 1024}
        rate = args.rate_per_replica * args.backends
        trace = build_trace(workload, {"pattern": "poisson", "rate": rate, "sessions": "open"},
                            seed=0, duration_s=args.minutes * 60.0)
        return _run(args, trace)
    workload = {"source": "azure", "path": args.trace}
    if args.requests:
        # Azure lengths, Poisson arrivals at 10x the trace's mean rate, cycled as needed.
        arrivals = {"pattern": "poisson", "rate": 55.0}
        trace = build_trace(workload, arrivals, seed=0, num_requests=args.requests)
    else:
        trace = build_trace(workload, {"pattern": "replay", "time_scale": args.scale}, seed=0,
                            num_requests=19366)
    return _run(args, trace)


def _run(args: argparse.Namespace, trace) -> dict:
    import resource
    import tempfile
    import time
    from collections import Counter

    import routing
    from results.records import RecordWriter
    from sim.cluster import BackendConfig, ClusterConfig, ClusterSim
    from sim.engine import EngineConfig
    from sim.latency import load_profile
    from tqdm import tqdm

    prof = load_profile(args.fleet_profile if args.fleet_child else args.profile)
    d = prof.engine
    engine = EngineConfig(d.num_kv_blocks, d.block_size, d.max_num_seqs, d.max_num_batched_tokens)
    cfg = ClusterConfig([BackendConfig(f"b{i}", "h100", prof, engine) for i in range(args.backends)],
                        mode=args.mode)
    name, params = parse_strategy(args.strategy)
    strategy = routing.build(name, seed=0, **params)
    # Records stream to a Parquet file as requests end, as `python -m sim` does; the
    # statuses are counted on the way (reading the file back would cost more memory
    # than the simulation itself at a million requests).
    statuses: Counter[str] = Counter()
    # Arrival and TTFT of every served request, for the stability check (16 bytes each).
    arrived, ttft = array("d"), array("d")
    ended = 0
    # On a terminal, a bar of requests ended (the big fleet's rows take many minutes each);
    # updated every 16,384 requests so it costs nothing measurable.
    bar = tqdm(total=len(trace), desc=f"{args.strategy} x {args.backends}", unit="req",
               unit_scale=True, disable=None, leave=False)
    with tempfile.TemporaryDirectory() as tmp, bar:
        with RecordWriter(Path(tmp) / "records.parquet") as writer:
            def sink(rec) -> None:
                nonlocal ended
                statuses[rec.status] += 1
                writer.write(rec)
                ended += 1
                if not ended & 16383:
                    bar.update(16384)
                if rec.status == "ok":
                    arrived.append(rec.arrival_s)
                    ttft.append(rec.first_token_s - rec.arrival_s)

            cpu0, wall0 = time.process_time(), time.perf_counter()
            sim = ClusterSim(trace, strategy, cfg, seed=0, sink=sink)
            decision_ns = _time_decisions(sim.router) if args.decision_cost else None
            result = sim.run()
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    ok = statuses["ok"]
    first, last = ttft_first_and_last_fifth(np.frombuffer(arrived), np.frombuffer(ttft))
    return {
        "requests": len(trace), "ok": ok, "sim_s": result.end_time, "cpu_s": cpu, "wall_s": wall,
        "req_per_cpu_s": len(trace) / cpu, "speedup": result.end_time / cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "decision_us": decision_ns[0] / max(decision_ns[1], 1) / 1e3 if decision_ns else float("nan"),
        "decision_share": decision_ns[0] / 1e9 / cpu if decision_ns else float("nan"),
        "load_avg": os.getloadavg()[0],
        "ttft_first_s": first, "ttft_last_s": last,
    }


def parse_strategy(spec: str) -> tuple[str, dict]:
    """``NAME`` or ``NAME:KEY=VALUE,...`` (``cache_aware:index_blocks=0``) as a name and parameters.

    Each ``KEY=VALUE`` is read as ``python -m sim --set`` reads one (VALUE in TOML, a
    bare word as text); the strategy's own checks then name a wrong key or value and
    the allowed ones. Commas separate parameters, so a value cannot hold one.
    """
    from scenarios.overrides import parse_assignment

    name, _, rest = spec.partition(":")
    params = dict(parse_assignment(item) for item in rest.split(",") if item.strip())
    return name.strip(), params


def ttft_first_and_last_fifth(arrival: np.ndarray, ttft: np.ndarray) -> tuple[float, float]:
    """Median TTFT of the requests arriving in the first and the last fifth of the arrivals."""
    if len(arrival) == 0:
        return math.nan, math.nan
    lo, hi = float(arrival.min()), float(arrival.max())
    cut = (hi - lo) / 5.0
    first = ttft[arrival <= lo + cut]
    last = ttft[arrival >= hi - cut]
    return float(np.median(first)), float(np.median(last))


def overloaded(first: float, last: float) -> bool:
    """Queues that grow for the whole run: the last fifth waits far longer than the first."""
    return last > 2.0 * first + 0.5


def _time_decisions(router) -> list[int]:
    """Wrap ``router.dispatch`` to add up its CPU time: [total ns, decisions]."""
    import time

    clock = time.process_time_ns
    inner = router.dispatch
    acc = [0, 0]

    def dispatch(request, now):
        t0 = clock()
        try:
            return inner(request, now)
        finally:
            acc[0] += clock() - t0
            acc[1] += 1

    router.dispatch = dispatch
    return acc


def run_child(extra: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if hasattr(os, "sched_getaffinity"):
        cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *cmd]
    # The child's stderr (its progress bar, or an error) goes straight to this terminal.
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fleet(args: argparse.Namespace) -> int:
    """The big-fleet table: one row per (replicas, strategy), each in its own process."""
    sizes = [4, 16, 64, 256] if args.scaling else [args.replicas]
    print(f"Multi-turn ShareGPT, Poisson {args.rate_per_replica:g} req/s per replica, "
          f"{args.minutes:g} simulated minutes of arrivals, {args.fleet_profile}, one core")
    print(engine_line() + "\n")
    header = (f"{'replicas':>8s} {'req/s':>6s} {'strategy':14s} {'requests':>9s} {'ok':>9s} "
              f"{'sim time':>9s} {'CPU s':>8s} {'req/CPU-s':>10s} {'x real':>7s} {'peak RSS':>9s} "
              f"{'decision µs/req':>15s} {'share':>6s} {'load':>5s} {'TTFT p50 first/last fifth':>26s}")
    print(header)
    print("-" * len(header))
    for n in sizes:
        for strategy in args.strategies:
            r = run_child(["--fleet-child", "--decision-cost", "--backends", str(n),
                           "--fleet-profile", args.fleet_profile, "--strategy", strategy,
                           "--rate-per-replica", repr(args.rate_per_replica),
                           "--minutes", repr(args.minutes)])
            print(f"{n:8d} {n * args.rate_per_replica:6.0f} {strategy:14s}{r['requests']:10,d} "
                  f"{r['ok']:9,d} {r['sim_s']:8.0f}s {r['cpu_s']:8.1f} {r['req_per_cpu_s']:10,.0f} "
                  f"{r['speedup']:6.1f}x {r['peak_rss_mb']:7.0f}MB {r['decision_us']:15.1f} "
                  f"{r['decision_share']:6.0%} {r['load_avg']:5.1f} "
                  f"{r['ttft_first_s']:9.3f}s / {r['ttft_last_s']:8.3f}s"
                  f"{'  OVERLOADED' if overloaded(r['ttft_first_s'], r['ttft_last_s']) else ''}", flush=True)
    print("\nCPU s: the simulation alone (building the trace excluded); peak RSS includes the trace. "
          "load: the 1-minute load average at the end of the run (timing is only firm near 1). "
          "OVERLOADED: queues grew for the whole run (last fifth's TTFT median > 2x the first's + 0.5 s); "
          "such a row measures a meltdown, not a fleet.")
    return 0


def engine_line() -> str:
    """Which engine the rows measure: compiled modules (labcore) or the pure-Python reference."""
    import labcore
    if labcore.forced_pure():
        return f"engine: pure Python ({labcore.PURE_ENV} is set)"
    built = sum(s["build"] == "compiled" for s in labcore.status().values())
    return (f"engine: {built} of {len(labcore.CANDIDATES)} candidate modules compiled and current "
            f"(python -m labcore)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default=str(DEFAULT_TRACE), help="Azure conversation trace CSV")
    p.add_argument("--backends", type=int, default=16)
    p.add_argument("--profile", default="h100-llama2-70b-tp4", help="Azure rows: the backends' profile")
    p.add_argument("--fleet-profile", default="derived-llama-3.1-8b-h100-sxm-tp1",
                   help="big fleet: the replicas' profile (Llama-3.1-8B on one H100, which serves "
                        "7.8 req/s of this workload; Llama-2-70B on four H100s does not)")
    p.add_argument("--strategy", default="least_load")
    p.add_argument("--million", action="store_true", help="also run 1,000,000 requests (minutes)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scale", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="fast", help=argparse.SUPPRESS)
    p.add_argument("--requests", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--fleet", action="store_true",
                   help="the big-fleet configuration (ShareGPT, --replicas, --minutes) instead")
    p.add_argument("--scaling", action="store_true",
                   help="the big-fleet configuration at 4, 16, 64, 256 replicas (rate per replica held)")
    p.add_argument("--replicas", type=int, default=256, help="big fleet: number of backends (256)")
    p.add_argument("--rate-per-replica", type=float, default=2000.0 / 256,
                   help="big fleet: Poisson req/s per replica (7.8125: 2,000 req/s at 256)")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="big fleet: simulated minutes of arrivals (10; 1 for development)")
    p.add_argument("--strategies", nargs="+", default=["least_load", "cache_aware"],
                   help="big fleet: strategies to run (least_load cache_aware); each NAME or "
                        "NAME:KEY=VALUE,... with the strategy's parameters, e.g. "
                        "cache_aware:index_blocks=0 (the approximate index sized like each "
                        "replica's KV cache instead of SGLang's 2^20 blocks)")
    p.add_argument("--fleet-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--decision-cost", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one(args)))
        return 0
    if args.fleet or args.scaling:
        if not args.minutes > 0:
            p.error(f"--minutes must be > 0, got {args.minutes}")
        if args.replicas < 1:
            p.error(f"--replicas must be >= 1, got {args.replicas}")
        if not args.rate_per_replica > 0:
            p.error(f"--rate-per-replica must be > 0, got {args.rate_per_replica}")
        import routing
        from sim.latency import load_profile
        try:
            load_profile(args.fleet_profile)
        except (ValueError, FileNotFoundError, KeyError) as exc:
            p.error(f"--fleet-profile: {exc}")
        for spec in args.strategies:  # a bad name or parameter fails here, before any row runs
            try:
                name, params = parse_strategy(spec)
                if name not in routing.available():
                    raise ValueError(f"unknown strategy {name!r}; allowed: {', '.join(routing.available())}")
                routing.build(name, seed=0, **params)
            except (ValueError, TypeError) as exc:  # (a ScenarioError is a ValueError)
                p.error(f"--strategies {spec}: {exc}")
        return fleet(args)
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
    print(f"Azure conversation trace on {args.backends} x {args.profile}, {args.strategy}, one core")
    print(engine_line() + "\n")
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
