"""How long building a workload trace takes: the first time (tokenize, hash, write the
cache) and from the cache.

    .venv/bin/python benchmarks/workload_load.py                # ShareGPT, 100k requests
    .venv/bin/python benchmarks/workload_load.py --source azure --requests 19366

The first load uses a fresh temporary cache folder, so it always tokenizes. The
cached loads run in the same process after it; ``--fresh-process`` also times a
cached load in a new interpreter (imports included), as a simulator worker sees it.

Target (docs/performance.md): 100k ShareGPT requests in under a minute the first time and a
few seconds from the cache. Timings on a shared machine are noisy; run twice.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from workload import build_trace


def _timed(workload, arrivals, n, cache_dir, seed=0, progress=False):
    """Wall seconds, CPU seconds of this process (all threads) and the trace."""
    wall, cpu = time.perf_counter(), time.process_time()
    trace = build_trace(workload, arrivals, seed=seed, num_requests=n, cache_dir=cache_dir,
                        progress=progress)
    return time.perf_counter() - wall, time.process_time() - cpu, trace


def _fresh_process(workload, n, cache_dir) -> float:
    code = (
        "import time; t = time.perf_counter()\n"
        "from workload import build_trace\n"
        f"build_trace({workload!r}, {{}}, seed=0, num_requests={n}, cache_dir={str(cache_dir)!r})\n"
        "print(time.perf_counter() - t)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="sharegpt", choices=["sharegpt", "azure", "wildchat", "synthetic"],
                   help="workload source (default: sharegpt, the packaged file)")
    p.add_argument("--path", default="", help="dataset path (default: the source's default)")
    p.add_argument("--requests", type=int, default=100_000, help="requests in the trace")
    p.add_argument("--cached-runs", type=int, default=3, help="cached loads to time (the best is shown)")
    p.add_argument("--fresh-process", action="store_true",
                   help="also time one cached load in a new Python process (imports included)")
    p.add_argument("--progress", action="store_true", help="show the tokenization progress bar")
    args = p.parse_args(argv)

    workload = {"source": args.source, "path": args.path}
    arrivals = {"pattern": "poisson", "rate": 10.0}
    rows = []
    load_before = f"{os.getloadavg()[0]:.1f}"
    with tempfile.TemporaryDirectory(prefix="workload-bench-") as cache_dir:
        wall, cpu, trace = _timed(workload, arrivals, args.requests, cache_dir, progress=args.progress)
        rows.append(("first load (tokenize, hash, write cache)", wall, cpu, len(trace)))
        best = min((_timed(workload, arrivals, args.requests, cache_dir, seed=s)[:2]
                    for s in range(1, args.cached_runs + 1)), key=lambda r: r[0])
        rows.append((f"cached load (best of {args.cached_runs})", *best, len(trace)))
        if args.fresh_process:
            rows.append(("cached load, new process (with imports)",
                         _fresh_process(workload, args.requests, cache_dir), float("nan"), len(trace)))
    meta = trace.meta
    print(f"source {args.source}: pool {meta['pool_size']} requests from {meta['pool_conversations']} "
          f"conversations, trace {len(trace)} requests ({meta['passes']} pass(es)), "
          f"{len(trace.block_hashes)} block hashes, tokenizer {meta.get('tokenizer')}, "
          f"{os.cpu_count()} CPUs")
    print(f"load average before/after: {load_before} / {os.getloadavg()[0]:.1f} (other work on "
          f"the machine slows the wall-clock column; CPU seconds are steadier)")
    w = max(len(r[0]) for r in rows)
    print(f"{'stage':<{w}}  {'seconds':>8}  {'cpu s':>7}  {'requests':>9}  {'requests/s':>11}")
    print(f"{'-' * w}  {'-' * 8}  {'-' * 7}  {'-' * 9}  {'-' * 11}")
    for name, secs, cpu, n in rows:
        cpu_text = "-" if cpu != cpu else f"{cpu:.2f}"
        print(f"{name:<{w}}  {secs:>8.2f}  {cpu_text:>7}  {n:>9}  {n / secs:>11.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
