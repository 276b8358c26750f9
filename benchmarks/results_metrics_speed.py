"""How long per-unit metrics take on large units; pooled ITL selection vs full expansion.

    python benchmarks/results_metrics_speed.py                 # 10k, 100k, 300k requests
    python benchmarks/results_metrics_speed.py --requests 1000000

Records are generated with numpy in the shape the simulator writes: each ok
request's gaps come as several arithmetic runs (a new run whenever its batch
changes), 2% of requests fail. Prints one row per size: gaps and runs pooled,
``unit_metrics`` time on an Arrow table and on pandas, and the ITL percentiles
alone by exact selection vs by expanding every gap and calling numpy (the
values are checked equal).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa

from results.itl_stats import _Runs, pooled_itl_stats
from results.metrics import unit_metrics
from results.records import SCHEMA


def make_table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    arrival = np.sort(rng.uniform(0, n / 50, n))
    out_len = rng.integers(1, 500, n).astype(np.int32)
    runs_per = np.maximum(1, (out_len - 1) // 12)
    total_runs = int(runs_per.sum())
    owner = np.repeat(np.arange(n), runs_per)
    # split each request's out_len - 1 gaps over its runs
    base = np.repeat((out_len - 1) // runs_per, runs_per)
    first_of = np.cumsum(runs_per) - runs_per
    extra = np.zeros(total_runs, np.int64)
    extra[first_of] = (out_len - 1) - ((out_len - 1) // runs_per) * runs_per
    count = (base + extra).astype(np.int32)
    start = rng.uniform(0.02, 0.06, total_runs)
    step = rng.normal(0, 2e-6, total_runs)
    offsets = np.r_[0, np.cumsum(runs_per)].astype(np.int32)
    gaps_sum = np.bincount(owner, weights=count * start + step * count * (count - 1) / 2, minlength=n)
    ttft = rng.exponential(0.3, n)
    first = arrival + ttft
    last = first + gaps_sum
    status = np.where(rng.random(n) < 0.02, "error", "ok")
    lst = lambda values: pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))  # noqa: E731
    cols = {
        "experiment_id": pa.array(["bench"] * n), "point_id": pa.array(["p0"] * n),
        "strategy": pa.array(["s"] * n), "seed": pa.array(np.zeros(n, np.int64)),
        "request_id": pa.array(np.arange(n)), "conversation_id": pa.array(["c"] * n),
        "turn": pa.array(np.zeros(n, np.int32)), "backend": pa.array(rng.integers(0, 8, n).astype(np.int32)),
        "arrival_s": arrival, "dispatch_s": arrival, "first_token_s": first, "last_token_s": last,
        "finish_s": last, "input_len": pa.array(rng.integers(10, 3000, n).astype(np.int32)),
        "cached_tokens": pa.array(np.zeros(n, np.int32)), "output_len": pa.array(out_len),
        "requested_output_len": pa.array(out_len), "num_preemptions": pa.array(np.zeros(n, np.int32)),
        "status": pa.array(status), "error": pa.array([""] * n),
        "itl_start": lst(start), "itl_step": lst(step), "itl_count": lst(count),
        "router_inflight_requests": pa.array(np.zeros(n, np.int32)),
        "router_inflight_tokens": pa.array(np.zeros(n, np.int64)),
        "router_running": np.zeros(n), "router_waiting": np.zeros(n), "router_kv_usage": np.zeros(n),
        "router_scrape_age_s": np.zeros(n), "router_prefix_hit_tokens": pa.array(np.zeros(n, np.int32)),
    }
    return pa.table([pa.array(cols[f.name]).cast(f.type) for f in SCHEMA], schema=SCHEMA)


def timed(fn, repeat: int = 3):
    best, value = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t)
    return best, value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, nargs="+", default=[10_000, 100_000, 300_000],
                        help="unit sizes to time (requests per unit)")
    args = parser.parse_args(argv)
    slo = {"ttft_ms": 500, "tpot_ms": 50}
    header = ["requests", "ITL gaps", "ITL runs", "unit_metrics arrow s", "unit_metrics pandas s",
              "ITL select s", "ITL expand s", "equal"]
    print("  ".join(header))
    for n in args.requests:
        table = make_table(n)
        frame = table.to_pandas()
        t_arrow, _ = timed(lambda: unit_metrics(table, slo))
        t_pandas, _ = timed(lambda: unit_metrics(frame, slo), repeat=1)
        ok = table.filter(pa.compute.equal(table["status"], "ok"))
        s, d, c = (pa.compute.list_flatten(ok[k]).to_numpy() for k in ("itl_start", "itl_step", "itl_count"))
        pcts = (50, 90, 95, 99)
        t_sel, sel = timed(lambda: pooled_itl_stats(s, d, c, pcts, expand_limit=0))
        t_exp, ref = timed(lambda: np.percentile(_Runs.build(s, d, c).expand_all(), pcts), repeat=1)
        equal = [sel.percentiles[p] for p in pcts] == ref.tolist()
        row = [f"{n:,}", f"{int(c.sum()):,}", f"{len(c):,}", f"{t_arrow:.3f}", f"{t_pandas:.3f}",
               f"{t_sel:.3f}", f"{t_exp:.3f}", "yes" if equal else "NO"]
        print("  ".join(v.rjust(len(h)) for v, h in zip(row, header)))


if __name__ == "__main__":
    main()
