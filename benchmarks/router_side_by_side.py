"""Peers' routers side by side: vLLM's router vs the lab's models of its policies, one trace.

The same trace (a scenario's first grid point and seed), the same load generator
(``live.loadgen``) and the same emulator backends (reset before every unit, so each
starts from a cold prefix cache) are run, per policy, through:

- ``vllm-router``: the vLLM project's Rust router (PyPI ``vllm-router``, installed in
  ``.bench-venv``), ``--policy P`` with its parameters spelled out
  (``live.peer_routers``);
- ``lab``: ``python -m live.gateway`` running the lab's model of the same policy with
  the same parameters (``live.peer_routers.LAB_MODEL``);
- ``sglang-router`` too with ``--sglang`` (where it runs), for the policies it has;
- and once ``direct``: the load generator routing round robin itself, no router
  process in the path: the floor of the transport overhead.

Per unit: fleet prefix-hit rate (cached prompt tokens over prompt tokens, from each
response's ``usage.prompt_tokens_details.cached_tokens``, the backends' own count),
TTFT p50/p99, throughput (completed requests and output tokens per second), load
imbalance (the busiest backend's request count over the mean), and the router's
added latency: each emulator logs, per request, when it arrived and when its first
token left (``GET /_emulator/requests``); client TTFT minus that server TTFT is the
time spent outside the engine (load generator, network, router), matched request by
request through a digest of the prompt; its median minus the direct path's median is
what the router adds. ``--repeats`` runs every unit again (fresh backends' caches, the
same trace) to measure the run-to-run spread that differences must exceed.

    .venv/bin/python benchmarks/router_side_by_side.py                   # defaults below
    .venv/bin/python benchmarks/router_side_by_side.py --policies cache_aware --repeats 3 \\
        --set arrivals.rate=8 --max-requests 600 --json runs/side-by-side.json

The load average is printed with the table: on a busy machine the numbers are
provisional (compare rows of one run).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from live.emulator.server import prompt_digest  # noqa: E402
from live.emulator.spawn import EmulatorSpec, spawn_specs  # noqa: E402
from live.gateway.spawn import start_gateway  # noqa: E402
from live.loadgen import LoadOptions, replay  # noqa: E402
from live.peer_routers import (  # noqa: E402
    LAB_MODEL, SglangRouter, VllmRouter, sglang_router_python, vllm_router_binary,
)
from live.router import LiveRouter  # noqa: E402
from live.run import reset_backends, run_async  # noqa: E402
from routing import build  # noqa: E402
from scenarios import expand_grid, load_scenario, parse_assignment  # noqa: E402
from workload import build_trace  # noqa: E402
from workload.tokens import prompt_token_ids  # noqa: E402

DEFAULT_SCENARIO = ROOT / "scenarios" / "cache-routing.toml"
SGLANG_POLICIES = ("round_robin", "power_of_two", "cache_aware")


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as r:  # noqa: S310 - loopback emulator
        return json.loads(r.read())


def server_times(urls: list[str]) -> dict[str, list[tuple[int, float]]]:
    """digest -> [(backend, server TTFT)] from every emulator's request log."""
    out: dict[str, list[tuple[int, float]]] = {}
    for b, url in enumerate(urls):
        for digest, arrival, first in get_json(url + "/_emulator/requests")["requests"]:
            out.setdefault(digest, []).append((b, first - arrival))
    return out


def unit_metrics(trace, records, urls: list[str], vocab: int) -> dict:
    """What the table shows for one unit (see the module docstring)."""
    index = {int(r): i for i, r in enumerate(trace.request_id)}
    served = server_times(urls)
    ok = [r for r in records if r.status == "ok"]
    ttft = np.array([r.first_token_s - r.arrival_s for r in ok]) * 1e3
    outside, per_backend = [], np.zeros(len(urls), int)
    for r in ok:
        digest = prompt_digest(prompt_token_ids(trace, index[r.request_id], vocab))
        got = served.get(digest)
        if not got or len(got) != 1:  # unknown, or a repeated prompt: cannot be matched
            continue
        b, server_ttft = got[0]
        per_backend[b] += 1
        outside.append((r.first_token_s - r.arrival_s - server_ttft) * 1e3)
    reported = [r for r in ok if r.cached_tokens >= 0]  # -1: the backend did not say
    prompt = sum(r.input_len for r in reported)
    span = (max(r.finish_s for r in ok) - min(r.arrival_s for r in ok)) if ok else float("nan")
    return {
        "sent": len(records), "ok": len(ok),
        "hit_rate": sum(r.cached_tokens for r in reported) / prompt if prompt else float("nan"),
        "ttft_p50_ms": float(np.percentile(ttft, 50)) if len(ttft) else float("nan"),
        "ttft_p99_ms": float(np.percentile(ttft, 99)) if len(ttft) else float("nan"),
        "req_per_s": len(ok) / span if ok else float("nan"),
        "tok_per_s": sum(r.output_len for r in ok) / span if ok else float("nan"),
        "imbalance": float(per_backend.max() / per_backend.mean()) if per_backend.sum() else float("nan"),
        "per_backend": per_backend.tolist(),
        "outside_p50_ms": float(np.median(outside)) if outside else float("nan"),
        "matched": len(outside),
    }


def run_target(kind: str, policy: str, trace, urls: list[str], opts: LoadOptions, seed: int,
               block_size: int, logs: Path | None):
    """Replay the trace through one router; returns its ReplayResult."""
    if kind == "direct":
        fleet = LiveRouter(urls, build("round_robin"), scrape=False, track_prefix=False)
        return run_async(replay(trace, router=fleet, options=opts))
    if kind == "lab":
        name, params = LAB_MODEL[policy]
        with start_gateway(urls, name, params=params, seed=seed,
                           extra=["--block-size", str(block_size)]) as url:
            return run_async(replay(trace, gateway_url=url, options=opts))
    cls = VllmRouter if kind == "vllm-router" else SglangRouter
    log = logs / f"{kind}-{policy}.log" if logs else None
    with cls(urls, policy, log_path=log) as peer:
        return run_async(replay(trace, gateway_url=peer.url, options=opts))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenario", default=str(DEFAULT_SCENARIO),
                   help="scenario whose workload, arrivals and profile make the trace "
                        "(its first grid point; default: scenarios/cache-routing.toml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="scenario override (repeatable), e.g. arrivals.rate=6")
    p.add_argument("--seed", type=int, default=0, help="trace seed")
    p.add_argument("--max-requests", type=int, default=300, help="requests per unit")
    p.add_argument("--backends", type=int, default=4, help="emulator processes")
    p.add_argument("--profile", default=None,
                   help="emulator profile (default: the scenario's first group's)")
    p.add_argument("--block-size", type=int, default=16,
                   help="KV block size of the emulators and the lab's hashing")
    p.add_argument("--policies", default="round_robin,power_of_two,consistent_hash,cache_aware",
                   help=f"comma-separated, of: {', '.join(LAB_MODEL)}")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs of every unit (the spread between them is the noise floor)")
    p.add_argument("--sglang", action="store_true", help="also run sglang-router's policies")
    p.add_argument("--logs", type=Path, default=None, help="folder for the peers' router logs")
    p.add_argument("--json", type=Path, default=None, help="also write every unit's numbers here")
    args = p.parse_args()

    policies = [x.strip() for x in args.policies.split(",") if x.strip()]
    bad = [x for x in policies if x not in LAB_MODEL]
    if bad:
        p.error(f"--policies: unknown {', '.join(bad)}; known: {', '.join(LAB_MODEL)}")
    overrides = dict(parse_assignment(s) for s in args.set)
    scenario = load_scenario(args.scenario, overrides)
    point = expand_grid(scenario)[0]
    sc = point.scenario
    trace = build_trace(asdict(sc.workload), asdict(sc.arrivals), seed=args.seed,
                        num_requests=min(args.max_requests, sc.num_requests or args.max_requests))
    trace = trace.take(list(range(min(len(trace), args.max_requests))))
    group = sc.cluster.groups[0]
    profile = args.profile or (group.profile if isinstance(group.profile, str) else None)
    if profile is None:
        p.error("the scenario's profile is not a shipped name: give --profile")
    kinds = ["lab"]
    if vllm_router_binary():
        kinds.append("vllm-router")
    else:
        print("note: vllm-router not installed (python -m venv .bench-venv && "
              ".bench-venv/bin/pip install vllm-router): the lab's gateway only")
    if args.sglang:
        if sglang_router_python():
            kinds.append("sglang-router")
        else:
            print("note: sglang-router not installed: left out")
    if args.logs:
        args.logs.mkdir(parents=True, exist_ok=True)
    opts = LoadOptions(concurrency=256, timeout_s=120, drain_s=120, spin_s=0.0)
    vocab = opts.vocab_size
    print(f"trace: {len(trace)} requests of {args.scenario} ({point.label}), seed {args.seed}, "
          f"{trace.arrival_s[-1]:.0f} s of arrivals; backends: {args.backends} x {profile}")
    load_before = os.getloadavg()
    rows = []
    spec = EmulatorSpec(profile, ("--block-size", str(args.block_size)))
    with spawn_specs([spec] * args.backends) as children:
        urls = [c.url for c in children]
        units = [("direct", "round_robin")] + [(k, pol) for pol in policies for k in kinds
                                               if k != "sglang-router" or pol in SGLANG_POLICIES]
        for rep in range(args.repeats):
            for kind, policy in units:
                reset_backends(urls, emulated=True)
                t0 = time.perf_counter()
                try:
                    result = run_target(kind, policy, trace, urls, opts, args.seed,
                                        args.block_size, args.logs)
                except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, not fatal
                    print(f"  {kind:<13} {policy:<16} FAILED: {type(exc).__name__}: {exc}")
                    rows.append({"router": kind, "policy": policy, "repeat": rep,
                                 "error": f"{type(exc).__name__}: {exc}"})
                    continue
                m = unit_metrics(trace, result.records, urls, vocab)
                m.update(router=kind, policy=policy, repeat=rep, wall_s=time.perf_counter() - t0)
                rows.append(m)
                print(f"  rep {rep} {kind:<13} {policy:<16} hit {m['hit_rate']:6.1%}  TTFT p50 "
                      f"{m['ttft_p50_ms']:8.1f} p99 {m['ttft_p99_ms']:8.1f} ms  {m['req_per_s']:5.2f} "
                      f"req/s  imbalance {m['imbalance']:.2f}  outside p50 {m['outside_p50_ms']:.2f} ms"
                      f"  ok {m['ok']}/{m['sent']}", flush=True)
    load_after = os.getloadavg()
    print()
    print(table(rows, policies))
    print(f"\nload average (1, 5, 15 min): before {', '.join(f'{x:.2f}' for x in load_before)}, "
          f"after {', '.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} cores")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"scenario": args.scenario, "overrides": args.set,
                                         "seed": args.seed, "requests": len(trace),
                                         "backends": args.backends, "profile": profile,
                                         "load_before": load_before, "load_after": load_after,
                                         "rows": rows}, indent=2))
    return 0


def table(rows: list[dict], policies: list[str]) -> str:
    """Mean over repeats, with the spread (max - min) of hit rate and TTFT p50 beside it."""
    good = [r for r in rows if "error" not in r]
    floor = [r["outside_p50_ms"] for r in good if r["router"] == "direct"]
    base = float(np.nanmean(floor)) if floor else float("nan")
    head = (f"{'policy':<16} {'router':<13} {'hit %':>6} {'(spread)':>9} {'TTFT p50':>9} {'(spread)':>9} "
            f"{'TTFT p99':>9} {'req/s':>6} {'tok/s':>7} {'imbal.':>7} {'added ms':>9} {'n':>2}")
    lines = [head, "-" * len(head)]
    keys = [("round_robin", "direct")] + [(p, k) for p in policies
                                         for k in ("lab", "vllm-router", "sglang-router")]
    for policy, kind in keys:
        rs = [r for r in good if r["policy"] == policy and r["router"] == kind]
        if not rs:
            continue
        def col(k):
            return np.array([r[k] for r in rs], float)
        hit, t50 = col("hit_rate") * 100, col("ttft_p50_ms")
        added = np.nanmean(col("outside_p50_ms")) - base if kind != "direct" else float("nan")
        lines.append(
            f"{policy if kind != 'direct' else '(direct)':<16} {kind:<13} {hit.mean():6.1f} "
            f"{np.ptp(hit):9.1f} {t50.mean():9.1f} {np.ptp(t50):9.1f} {col('ttft_p99_ms').mean():9.1f} "
            f"{col('req_per_s').mean():6.2f} {col('tok_per_s').mean():7.0f} "
            f"{col('imbalance').mean():7.2f} {added:9.2f} {len(rs):>2}")
    failed = [r for r in rows if "error" in r]
    for r in failed:
        lines.append(f"{r['policy']:<16} {r['router']:<13} FAILED: {r['error']}")
    lines.append(f"(direct: transport outside the engine, p50 {base:.2f} ms; 'added' is each "
                 "router's median outside-the-engine time minus it)")
    return "\n".join(lines)


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    raise SystemExit(main())
