"""Instructions the simulator executes, counted by valgrind: a speed figure a busy machine cannot blur.

    python benchmarks/sim_instructions.py                         # this checkout
    python benchmarks/sim_instructions.py --tree /tmp/other      # and another (e.g. an older commit)

CPU time on a shared machine varies by tens of percent between identical runs;
the number of instructions does not. For each workload this runs the simulation
under ``valgrind --tool=callgrind`` twice, with and without ``simulate()``, and
prints the difference: the instructions of the simulation alone. Workloads: the
first 3,000 requests of the Azure conversation trace on 16 H100 TP4 backends
(its own rate and 10x, fast and exact mode), and the shipped ``poisson`` scenario
(ShareGPT) at 16 req/s, 1,500 requests, with the rules of the engine as it is;
and a slice of ``sim_speed.py --fleet``: 64 replicas, multi-turn ShareGPT at
7.8 req/s per replica for 1 s of arrivals (about 500 requests), ``least_load``
and ``cache_aware`` (where routing's cost per backend shows).
About a minute per workload and checkout. Needs ``valgrind`` on the PATH.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = {
    "azure-own-fast": ("azure", 1.0, "fast"),
    "azure-10x-fast": ("azure", 10.0, "fast"),
    "azure-own-exact": ("azure", 1.0, "exact"),
    "sharegpt-16": ("sharegpt", 16.0, "fast"),
    "fleet64-least-load": ("fleet:least_load", 500.0, "fast"),
    "fleet64-cache-aware": ("fleet:cache_aware", 500.0, "fast"),
}

CHILD = r'''
import sys
from dataclasses import asdict
import routing
from sim.cluster import BackendConfig, ClusterConfig, simulate
from workload import build_trace
kind, rate, mode, run = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
strategy = "least_load"
if kind.startswith("fleet:"):
    from sim.engine import EngineConfig
    from sim.latency import load_profile
    strategy = kind.split(":", 1)[1]
    trace = build_trace({"source": "sharegpt", "max_input_len": 3072, "max_output_len": 1024},
                        {"pattern": "poisson", "rate": rate, "sessions": "open"}, seed=0, duration_s=1.0)
    prof = load_profile("h100-llama2-70b-tp4")
    d = prof.engine
    engine = EngineConfig(d.num_kv_blocks, d.block_size, d.max_num_seqs, d.max_num_batched_tokens)
    cfg = ClusterConfig([BackendConfig(f"b{i}", "h100", prof, engine) for i in range(64)], mode=mode)
elif kind == "azure":
    from sim.engine import EngineConfig
    from sim.latency import load_profile
    trace = build_trace({"source": "azure"}, {"pattern": "replay", "time_scale": rate}, seed=0,
                        num_requests=19366)
    trace = trace.take(list(range(3000)))
    prof = load_profile("h100-llama2-70b-tp4")
    d = prof.engine
    engine = EngineConfig(d.num_kv_blocks, d.block_size, d.max_num_seqs, d.max_num_batched_tokens)
    cfg = ClusterConfig([BackendConfig(f"b{i}", "h100", prof, engine) for i in range(16)], mode=mode)
else:
    from scenarios.runs import load_for_run
    from sim.fleet import cluster_config
    _, points = load_for_run("poisson", extra={"arrivals.rate": [rate], "num_requests": 1500})
    p = points[0].scenario
    trace = build_trace(asdict(p.workload), asdict(p.arrivals), seed=0, num_requests=p.num_requests)
    cfg = cluster_config(p)
if run:
    simulate(trace, routing.build(strategy, seed=0), cfg, seed=0)
'''


def instructions(tree: Path, args: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg.out", sys.executable,
             "-c", CHILD, *args],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)}, check=True)
    m = re.search(r"Collected : (\d+)", out.stderr)
    if m is None:
        raise RuntimeError(f"no instruction count from valgrind:\n{out.stderr[-2000:]}")
    return int(m.group(1))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", action="append", default=[], help="another checkout to count too")
    p.add_argument("--only", nargs="+", choices=list(WORKLOADS), help="some workloads only")
    a = p.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not on the PATH (apt-get install valgrind)", file=sys.stderr)
        return 2
    trees = [REPO, *map(Path, a.tree)]
    print(f"{'workload':18s} " + " ".join(f"{str(t)[-28:]:>30s}" for t in trees))
    for name in a.only or WORKLOADS:
        kind, rate, mode = WORKLOADS[name]
        counts = []
        for tree in trees:
            base = instructions(tree, [kind, str(rate), mode, "0"])
            counts.append(instructions(tree, [kind, str(rate), mode, "1"]) - base)
        print(f"{name:18s} " + " ".join(f"{c / 1e9:29.3f}G" for c in counts), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
