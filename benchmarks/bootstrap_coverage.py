"""Coverage of the intervals for a mean p99 over five seeds: t-interval vs two-stage bootstrap.

    python benchmarks/bootstrap_coverage.py                  # three cases, 200 trials each (~1 min)
    python benchmarks/bootstrap_coverage.py --trials 500 --requests 1500

Each trial simulates five runs ("seeds") of autocorrelated lognormal latencies
(AR(1), phi 0.6, median 100 ms, sigma 0.5), takes each run's p99, and asks whether
a nominal 95% interval for the mean p99 contains the truth (the mean p99 of 4,000
runs). Cases: no seed effect; a normal seed effect (log-scale sd 0.15); queueing
episodes (a Poisson(0.7) number per run of stretches of 10-40 consecutive requests
that wait up to an exponential(300 ms) extra). Intervals: Student-t over the five
per-seed p99s (what every other metric gets), the plain percentile interval of
the two-stage bootstrap, and its expanded percentile interval (what
``results.stats.aggregate`` uses). Prints coverage and mean width per case.
Deterministic (seeded); no quiet machine needed.
"""
from __future__ import annotations

import argparse

import numpy as np

from results.bootstrap import expanded_interval, two_stage, unit_replicates
from results.stats import confidence_interval


def make_run(rng: np.random.Generator, n: int, case: str) -> np.ndarray:
    e = rng.normal(size=n)
    x = np.empty(n)
    x[0] = e[0]
    for i in range(1, n):
        x[i] = 0.6 * x[i - 1] + 0.8 * e[i]
    u = rng.normal(0, 0.15) if case == "seed effect" else 0.0
    y = 100 * np.exp(u + 0.5 * x)
    if case == "queueing episodes":
        for _ in range(rng.poisson(0.7)):
            a, length = rng.integers(0, n - 40), rng.integers(10, 40)
            y[a:a + length] += rng.exponential(300) * np.linspace(1, 0, length)
    return y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--requests", type=int, default=800)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(f"{args.trials} trials, {args.seeds} seeds of {args.requests} requests; nominal 95%")
    print(f"{'case':<20} {'truth ms':>9}  {'t-interval':>17}  {'percentile boot':>17}  {'expanded boot':>17}")
    for case in ("no seed effect", "seed effect", "queueing episodes"):
        rng = np.random.default_rng(2)
        truth = np.mean([np.percentile(make_run(rng, args.requests, case), 99) for _ in range(4000)])
        hits = {"t": 0, "pct": 0, "exp": 0}
        width = {"t": 0.0, "pct": 0.0, "exp": 0.0}
        for trial in range(args.trials):
            values, devs = {}, {}
            for s in range(args.seeds):
                run = make_run(rng, args.requests, case)
                values[s] = float(np.percentile(run, 99))
                devs[s] = unit_replicates({"ttft": run}, f"{case}{trial}", s)["p99_ttft_ms"]
            draws = two_stage(values, devs, (case, trial))
            ci = confidence_interval(list(values.values()))
            for key, (lo, hi) in (("t", (ci["ci_low"], ci["ci_high"])),
                                  ("pct", tuple(np.percentile(draws, [2.5, 97.5]))),
                                  ("exp", expanded_interval(draws, args.seeds))):
                hits[key] += lo <= truth <= hi
                width[key] += hi - lo
        cells = [f"{hits[k] / args.trials:5.3f} (w {width[k] / args.trials:5.0f})" for k in ("t", "pct", "exp")]
        print(f"{case:<20} {truth:9.1f}  {cells[0]:>17}  {cells[1]:>17}  {cells[2]:>17}")


if __name__ == "__main__":
    main()
