"""Simulator speed with open and closed-loop sessions on the same ShareGPT traffic.

    python benchmarks/sessions_speed.py                 # 6,000 requests at 16 req/s
    python benchmarks/sessions_speed.py --requests 20000

The ``poisson`` scenario's fleet (8 H100 Llama-2-70B TP4, least_load), one seed;
each mode's trace is built once and simulated three times, and the best CPU time
is printed (CPU rather than wall time: the machines these run on are shared).
Run it on an older commit (``sessions`` then falls back to open) to compare
before and after the session driver.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=6000)
    ap.add_argument("--rate", type=float, default=16.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import routing
    from scenarios.runs import load_for_run
    from sim.cluster import simulate
    from sim.fleet import cluster_config
    from workload import build_trace

    for mode in ("open", "closed"):
        sets = [f"num_requests={args.requests}", f"arrivals.rate={args.rate}", "seeds=[0]"]
        try:
            _, points = load_for_run("poisson", sets + [f"arrivals.sessions={mode}"])
        except Exception:  # noqa: BLE001 - a commit before sessions: open only
            if mode == "closed":
                continue
            _, points = load_for_run("poisson", sets)
        sc = points[0].scenario
        trace = build_trace(asdict(sc.workload), asdict(sc.arrivals), seed=0,
                            num_requests=sc.num_requests)
        config = cluster_config(sc)
        best = float("inf")
        for _ in range(args.repeat):
            t = time.process_time()
            simulate(trace, routing.build("least_load", seed=0), config, seed=0)
            best = min(best, time.process_time() - t)
        print(f"{mode:6s} {len(trace):7,d} requests  {best:6.2f} s CPU  "
              f"{len(trace) / best:8,.0f} requests per CPU-second")


if __name__ == "__main__":
    main()
