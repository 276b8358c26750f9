"""What two of vLLM's behaviours change in simulated results: asynchronous scheduling and cached replies.

    python benchmarks/engine_fidelity_effects.py                     # poisson.toml, rates 4..16
    python benchmarks/engine_fidelity_effects.py --requests 1000 --rates 8 16

Runs the shipped ``poisson`` scenario (ShareGPT, 4 x H100 Llama-2-70B TP4,
Poisson arrivals) through the simulator in three variants and prints, per rate
and strategy, TTFT and TPOT percentiles, the prefix-cache hit share and the
preemptions:

- ``sync``: vLLM as on CPU (synchronous scheduling), later turns do not hit the
  blocks earlier replies filled (what the model did before they were cached);
- ``sync+replies``: later turns hit them (vLLM caches generated blocks);
- ``async+replies``: also asynchronous scheduling, vLLM's default on GPU (what the
  GPU profiles now do): a finished request holds its seat and blocks through the
  next schedule, and a request arriving during a step joins the step after next.

Deterministic (a seed fixes a run); the numbers are the simulator's, not timings.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import asdict

import numpy as np

VARIANTS = {
    "sync": dict(async_scheduling=False, replies=False),
    "sync+replies": dict(async_scheduling=False, replies=True),
    "async+replies": dict(async_scheduling=True, replies=True),
}


def run(scenario: str, rates: list[float], requests: int, strategies: list[str], seed: int) -> None:
    import routing
    from scenarios.runs import load_for_run
    from sim.cluster import simulate
    from sim.fleet import cluster_config
    from workload import build_trace

    sc, points = load_for_run(scenario, extra={"arrivals.rate": rates, "num_requests": requests})
    print(f"{sc.name}: {requests} requests, seed {seed}")
    header = (f"{'rate':>5s} {'strategy':13s} {'variant':14s} {'TTFT p50':>9s} {'p90':>8s} {'p99':>8s} "
              f"{'TPOT p50':>9s} {'p90':>8s} {'hit %':>6s} {'preempt':>7s}")
    print(header)
    print("-" * len(header))
    for point in points:
        psc = point.scenario
        trace = build_trace(asdict(psc.workload), asdict(psc.arrivals), seed=seed,
                            num_requests=psc.num_requests, duration_s=psc.duration_s)
        base = cluster_config(psc)
        for name in strategies:
            for variant, opt in VARIANTS.items():
                cfg = dataclasses.replace(base, backends=[
                    dataclasses.replace(b, engine=dataclasses.replace(
                        b.engine, async_scheduling=opt["async_scheduling"])) for b in base.backends])
                res = simulate(trace, routing.build(name, seed=seed), cfg, seed=seed,
                               replies_in_prompts=opt["replies"])
                ok = [r for r in res.records if r.status == "ok"]
                ttft = np.array([r.first_token_s - r.arrival_s for r in ok]) * 1e3
                tpot = np.array([(r.last_token_s - r.first_token_s) / (r.output_len - 1)
                                 for r in ok if r.output_len > 1]) * 1e3
                hit = sum(r.cached_tokens for r in ok) / max(1, sum(r.input_len for r in ok))
                pre = sum(r.num_preemptions for r in res.records)
                rate = psc.arrivals.rate
                print(f"{rate:5.1f} {name:13s} {variant:14s} {np.percentile(ttft, 50):9.0f} "
                      f"{np.percentile(ttft, 90):8.0f} {np.percentile(ttft, 99):8.0f} "
                      f"{np.percentile(tpot, 50):9.1f} {np.percentile(tpot, 90):8.1f} "
                      f"{100 * hit:6.1f} {pre:7d}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default="poisson")
    p.add_argument("--rates", type=float, nargs="+", default=[4.0, 8.0, 12.0, 16.0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--strategies", nargs="+", default=["round_robin", "least_load"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    run(args.scenario, args.rates, args.requests, args.strategies, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
