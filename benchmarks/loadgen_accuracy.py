"""How close to its schedule does the load generator send? (actual - scheduled send time)

Replays Poisson traces at each rate against emulator processes (short prompts,
a few output tokens, so the servers stay light) and reports the lateness of
every send: p50, p99 and max, with and without the final spin-wait (the
dispatcher sleeps until ``spin_s`` before each deadline, then yields to the
event loop until the deadline passes; timers alone are millisecond-grained).
The load generator's own CPU use is shown too: spinning costs CPU.

    python benchmarks/loadgen_accuracy.py                       # 100, 200, 500 req/s
    python benchmarks/loadgen_accuracy.py --rates 200 --duration 20
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import routing  # noqa: E402
from live.emulator import spawn  # noqa: E402
from live.router import LiveRouter  # noqa: E402
from live.loadgen import LoadOptions, replay  # noqa: E402
from live.run import reset_backends, run_async  # noqa: E402
from workload import build_trace  # noqa: E402


def own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="100,200,500", help="comma-separated request rates (req/s)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of traffic per rate")
    p.add_argument("--spins", default="0,0.002", help="spin-wait windows to compare (seconds)")
    p.add_argument("--backends", type=int, default=2, help="emulator processes")
    args = p.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    spins = [float(s) for s in args.spins.split(",")]

    rows = []
    with spawn(args.backends, "cpu-tiny") as urls:
        for rate in rates:
            n = int(rate * args.duration)
            trace = build_trace(
                {"source": "synthetic", "synthetic": {"input": {"dist": "fixed", "value": 32},
                                                      "output": {"dist": "fixed", "value": 4},
                                                      "num_requests": n}},
                {"pattern": "poisson", "rate": rate}, seed=0, num_requests=n, cache_dir=False)
            for spin in spins:
                reset_backends(urls, emulated=True)
                fleet = LiveRouter(urls, routing.build("round_robin"), scrape=False, track_prefix=False)
                c0, t0 = own_cpu(), time.perf_counter()
                result = run_async(replay(trace, router=fleet, options=LoadOptions(
                    concurrency=1024, spin_s=spin, timeout_s=60)))
                cpu = (own_cpu() - c0) / (time.perf_counter() - t0) * 100
                lag = result.send_lag_s * 1e3
                ok = sum(r.status == "ok" for r in result.records)
                rows.append((rate, spin, len(lag), ok, np.percentile(lag, 50), np.percentile(lag, 99),
                             lag.max(), cpu))
                print(f"  {rate:g} req/s spin {spin * 1e3:g} ms: p99 {rows[-1][5]:.3f} ms", flush=True)

    print()
    print(f"{'rate':>6} {'spin ms':>8} {'sent':>6} {'ok':>6} {'lag p50 ms':>11} {'lag p99 ms':>11} "
          f"{'lag max ms':>11} {'loadgen CPU %':>14}")
    for rate, spin, sent, ok, p50, p99, mx, cpu in rows:
        print(f"{rate:>6g} {spin * 1e3:>8g} {sent:>6} {ok:>6} {p50:>11.3f} {p99:>11.3f} {mx:>11.3f} "
              f"{cpu:>14.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
