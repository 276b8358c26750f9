"""Time per routing decision over N backends: predictive models, heuristics and cache-aware strategies.

What is timed is ``Strategy.choose(request, snapshots)`` exactly as the router
calls it: building one feature row per backend from its ``BackendSnapshot``,
predicting, and picking. Models are trained inside the script on synthetic rows
(``predictors.synthetic``) or on a given CSV, and loaded from their files, as a
scenario would. The snapshots come from the data's rows, so loads vary from one
decision to the next; only rows of scraped backends are used (the steady state:
a router scrapes every backend; before a backend's first scrape the encoder's
imputation path adds a few microseconds).

Each strategy is timed ``--repeats`` times and the repeat with the lowest p99 is
reported. On a shared machine, other jobs preempt a few percent of decisions
and the p99 then measures them, not the strategy: run it as
``nice -n -15 python benchmarks/decision_latency.py`` (as root), which is how
the figures in docs/predictors.md were taken (mean close to p50 says the run
was not preempted).

    python benchmarks/decision_latency.py            # 16 backends, 20000 decisions
    python benchmarks/decision_latency.py --data profiling_data.csv --backends 32

Targets: p99 <= 50 us for linear, tree and the distilled tree, <= 200 us for the
MLP, and <= 50 us for every cache- and session-aware strategy. Timings on a shared
machine are noisy; run twice.

**Cache-aware suite** (``--suite cache``). These strategies read the router's
indexes, so what is timed is the router's whole decision, ``Router.prepare`` (every
backend's estimated and exact prefix hit, the work in flight) plus
``Strategy.choose``, for an 8k-token prompt (512 blocks of 16 tokens). The router
is in a steady state built by the script: 32 system prompts of 2,048 tokens shared
by 4,000 conversations, each request one conversation's 8,192-token prompt
(sessions = conversations), about 8 requests in flight per backend, scrapes every
backend, and for the exact mirrors an event stream from an LRU model of each
backend's cache (65,536 blocks). The bookkeeping after a decision (updating the
indexes; llm-d does it off the request path) is timed apart and reported as
``commit``, and so is applying the KV events that arrived since the last decision
(``events``; an event listener does that, not the request).

Before and after each suite's timing (models are trained first, outside it) the
script runs ``calibrate.host_probe``'s stall probe (``--host-probe-s``) and prints
the share of time the host stopped the vCPUs unseen; above 1% it says the p99s are
the host's (docs/performance.md, "The host sets the floor"). It also says whether
the router's hot parts ran compiled (``routing.decision_core``, built by a plain
install; ``VLLM_LAB_PURE_PYTHON=1`` times the pure-Python reference instead).

    python benchmarks/decision_latency.py --suite cache      # about 15 minutes (1 with --repeats 1 --cache-decisions 1000 --cache-warmup 1000)
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

import labcore
import routing
from calibrate.host_probe import StallWindow
from predictors import NUMERIC_FEATURES, make_model, save_model
from predictors.features import training_rows
from predictors.synthetic import synthetic_rows
from routing.types import BackendSnapshot, Outcome, RequestInfo

#: (label, strategy, model kind or None, p99 target in us or None)
CASES = [
    ("linear", "predictive", "linear", 50.0),
    ("tree", "predictive", "tree", 50.0),
    ("distilled tree", "predictive", "distill", 50.0),
    ("mlp", "predictive", "mlp", 200.0),
    ("online_linear", "online_linear", "online_linear", None),
    ("least_load", "least_load", None, None),
    ("power_of_two", "power_of_two", None, None),
]


def scenarios(frame: pd.DataFrame, n_backends: int, count: int, seed: int):
    """``count`` (request, snapshots) pairs drawn from the data's rows of scraped backends.

    The fleet is fixed, as in a run: backend i belongs to the i-th group in turn,
    and its load in each scenario is a random row of that group.
    """
    rng = np.random.default_rng(seed)
    frame = frame[np.isfinite(frame["scrape_age_s"].to_numpy(float))]
    groups = sorted(frame["group"].astype(str).unique())
    by_group = [frame[frame["group"].astype(str) == g] for g in groups]
    out = []
    for k in range(count):
        picks = [by_group[i % len(groups)] for i in range(n_backends)]
        rows = pd.concat([p.iloc[[int(rng.integers(0, len(p)))]] for p in picks])
        input_len = int(rng.choice(frame["input_len"].to_numpy()))
        request = RequestInfo(request_id=k, input_len=input_len, arrival_s=float(k))
        snaps = []
        for i, r in enumerate(rows.itertuples(index=False)):
            snaps.append(
                BackendSnapshot(
                    index=i, name=f"b{i}", group=str(r.group),
                    inflight_requests=int(r.inflight_requests), inflight_tokens=int(r.inflight_tokens),
                    running=float(r.running), waiting=float(r.waiting), kv_usage=float(r.kv_usage),
                    scrape_age_s=float(r.scrape_age_s),
                    prefix_hit_tokens=min(int(r.prefix_hit_tokens), input_len - 1),
                )
            )
        out.append((request, snaps))
    return out


def time_decisions(strategy, cases, decisions: int, learn: bool) -> np.ndarray:
    """Nanoseconds per ``choose``; learners get an outcome after each (not timed)."""
    times = np.empty(decisions, dtype=np.int64)
    clock = time.perf_counter_ns
    for k in range(decisions):
        request, snaps = cases[k % len(cases)]
        request = RequestInfo(request_id=k, input_len=request.input_len, arrival_s=float(k))
        t0 = clock()
        pos = strategy.choose(request, snaps)
        times[k] = clock() - t0
        if learn:
            strategy.observe(Outcome(k, pos, True, request.input_len, 100, 0.05 + 1e-4 * request.input_len, 2.0))
    return times


def train_models(frame: pd.DataFrame, target: str, folder: Path, seed: int, teacher_epochs: int):
    X, y, _ = training_rows(frame, target)
    params = {
        "distill": {"teacher_epochs": teacher_epochs},
        "mlp": {"epochs": 60},
    }
    paths = {}
    kinds = [c[2] for c in CASES if c[2]]
    for kind in tqdm(kinds, desc="training", unit="model", disable=None):
        model = make_model(kind, target=target, seed=seed, **params.get(kind, {}))
        model.fit(X, y)
        paths[kind] = save_model(model, folder / kind)
    return paths


#: (label, strategy, parameters) for the cache-aware suite; target p99 50 us each.
CACHE_CASES = [
    ("prefix_affinity", "prefix_affinity", {}),
    ("precise_prefix", "precise_prefix", {}),
    ("cache_aware", "cache_aware", {}),
    ("lmetric", "lmetric", {}),
    ("kv_cost", "kv_cost", {}),
    ("kv_cost approximate, T=0.5", "kv_cost", {"index": "approximate", "temperature": 0.5}),
    ("session_affinity", "session_affinity", {}),
    ("consistent_hash", "consistent_hash", {}),
    ("consistent_hash bounded 1.25", "consistent_hash", {"load_factor": 1.25}),
    ("sticky_least_loaded", "sticky_least_loaded", {}),
    ("weighted (llm-d default 3:2:2)", "weighted", {}),
    ("weighted, all scorers", "weighted", {
        "weights": {"queue-scorer": 2, "kv-cache-utilization-scorer": 2, "prefix-cache-scorer": 3,
                    "precise-prefix-cache-scorer": 1, "active-request-scorer": 1, "token-load-scorer": 1,
                    "no-hit-lru-scorer": 1, "session-affinity-scorer": 1},
        "filters": ["prefix-cache-affinity-filter"], "picker": "weighted-random-picker"}),
    ("least_load (baseline)", "least_load", {}),
]
CACHE_TARGET_US = 50.0


class _EngineCache:
    """An LRU model of one backend's prefix cache that emits vLLM-style KV events."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: dict[int, None] = {}

    def store(self, chain: list[int]) -> list:
        from routing.kv_events import BlockRemoved, BlockStored
        blocks = self.blocks
        start = 0
        while start < len(chain) and chain[start] in blocks:
            start += 1
        events = []
        if start < len(chain):
            events.append(BlockStored(tuple(chain[start:]), chain[start - 1] if start else None, 16))
        for h in reversed(chain):  # touched tail first, so the head is the most recent
            blocks.pop(h, None)
            blocks[h] = None
        gone = []
        while len(blocks) > self.capacity:
            h = next(iter(blocks))
            del blocks[h]
            gone.append(h)
        if gone:
            events.append(BlockRemoved(tuple(gone)))
        return events


def cache_workload(count: int, seed: int, prompt_blocks: int = 512, system_blocks: int = 128,
                   systems: int = 32, conversations: int = 4000):
    """``count`` (chain, session) pairs: shared system prompts, then each conversation's blocks."""
    rng = np.random.default_rng(seed)
    sys_chains = rng.integers(1, 2**62, size=(systems, system_blocks)).tolist()
    conv_tail = prompt_blocks - system_blocks
    convs: dict[int, list[int]] = {}
    out = []
    for _ in range(count):
        c = int(rng.integers(conversations))
        if c not in convs:
            convs[c] = sys_chains[c % systems] + rng.integers(1, 2**62, size=conv_tail).tolist()
        out.append((convs[c], f"conv-{c}"))
    return out


def time_cache_strategy(name: str, params: dict, n_backends: int, decisions: int, warmup: int,
                        seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Nanoseconds per decision (prepare + choose) and per commit, in a steady state."""
    from routing import BackendSpec, Router, ScrapedMetrics

    strategy = routing.build(name, seed=seed, **params)
    router = Router(strategy, [BackendSpec(f"b{i}", "g", 65536) for i in range(n_backends)], block_size=16)
    engines = [_EngineCache(65536) for _ in range(n_backends)]
    seq = [0] * n_backends
    work = cache_workload(warmup + decisions, seed)
    rng = np.random.default_rng(seed + 1)
    inflight: list[tuple[int, int]] = []
    decide = np.empty(decisions, dtype=np.int64)
    commit = np.empty(decisions, dtype=np.int64)
    ingest = np.empty(decisions, dtype=np.int64)
    clock = time.perf_counter_ns
    prompt_tokens = 512 * 16
    for k, (chain, session) in enumerate(work):
        now = k * 0.01
        if k % 16 == 0:
            for i in range(n_backends):
                router.record_scrape(i, ScrapedMetrics(running=float(rng.integers(0, 32)),
                                                       waiting=float(rng.integers(0, 8)),
                                                       kv_usage=float(rng.random())), now)
        request = RequestInfo(k, prompt_tokens, now, chain, session_id=session)
        t = clock()
        router.deliver_events(now)  # event ingestion, off the decision path as in llm-d and Dynamo
        t0 = clock()
        candidates, hashes = router.prepare(request, now)
        pos = strategy.choose(request, candidates)
        t1 = clock()
        decision = router.commit(request, candidates[pos], hashes, now)
        t2 = clock()
        j = k - warmup
        if j >= 0:
            decide[j] = t1 - t0
            commit[j] = t2 - t1
            ingest[j] = t0 - t
        b = decision.backend
        if router.wants_kv_events:
            router.record_kv_events(b, engines[b].store(chain), now, seq[b])
            seq[b] += 1
        inflight.append((k, b))
        if len(inflight) > 2:
            router.first_token(inflight[-3][0])
        if len(inflight) > 8 * n_backends:
            rid, rb = inflight.pop(0)
            router.finish(Outcome(rid, rb, True, prompt_tokens, 100, 0.1, 2.0))
    return decide, commit, ingest


def router_reads_events(name: str, params: dict) -> bool:
    return bool(routing.build(name, **params).needs_precise_prefix)


def run_cache_suite(args) -> pd.DataFrame:
    rows = []
    for label, name, params in tqdm(CACHE_CASES, desc="cache-aware", unit="strategy", disable=None):
        runs = [time_cache_strategy(name, params, args.backends, args.cache_decisions, args.cache_warmup, args.seed)
                for _ in range(args.repeats)]
        decide, commit, ingest = min(runs, key=lambda r: np.percentile(r[0], 99))
        us, cus, ius = decide / 1000.0, commit / 1000.0, ingest / 1000.0
        p99 = float(np.percentile(us, 99))
        target = None if name == "least_load" else CACHE_TARGET_US
        rows.append({
            "strategy": label,
            "p50_us": float(np.percentile(us, 50)), "p99_us": p99, "mean_us": float(us.mean()),
            "target_p99_us": target if target is not None else math.nan,
            "meets": "" if target is None else ("yes" if p99 <= target else "NO"),
            "commit_p50_us": float(np.percentile(cus, 50)), "commit_p99_us": float(np.percentile(cus, 99)),
            "events_p50_us": float(np.percentile(ius, 50)) if router_reads_events(name, params) else math.nan,
        })
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="training rows (CSV with the feature schema); default: synthetic rows")
    parser.add_argument("--rows", type=int, default=4000, help="synthetic rows to train on when --data is not given; default 4000")
    parser.add_argument("--target", default="ttft", choices=("ttft", "e2el"), help="what the models predict; default ttft")
    parser.add_argument("--backends", type=int, default=16, help="backends per decision; default 16")
    parser.add_argument("--decisions", type=int, default=20000, help="timed decisions per strategy; default 20000")
    parser.add_argument("--warmup", type=int, default=1000, help="untimed decisions first; default 1000")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per strategy, the lowest-p99 one is reported; default 3")
    parser.add_argument("--teacher-epochs", type=int, default=10, help="epochs of the distillation teacher; default 10")
    parser.add_argument("--seed", type=int, default=0, help="seed for data, training and strategies; default 0")
    parser.add_argument("--suite", default="all", choices=("all", "predictive", "cache"),
                        help="predictive models and heuristics, cache- and session-aware strategies, or both; default all")
    parser.add_argument("--cache-decisions", type=int, default=5000,
                        help="timed decisions per cache-aware strategy (each runs the router's steady state); default 5000")
    parser.add_argument("--cache-warmup", type=int, default=3000,
                        help="untimed decisions that fill the cache-aware router's indexes first; default 3000")
    parser.add_argument("--host-probe-s", type=float, default=1.0,
                        help="seconds of calibrate.host_probe's stall probe before and after each "
                             "suite's timing: above 1%% of the time lost, its p99s are the host's and it "
                             "says so (0 skips it); default 1")
    args = parser.parse_args(argv)
    if args.host_probe_s < 0:
        parser.error(f"--host-probe-s must be >= 0, got {args.host_probe_s}")
    fmt = lambda v: f"{v:.1f}"  # noqa: E731
    if args.suite in ("all", "cache"):
        with StallWindow(args.host_probe_s) as host:
            table = run_cache_suite(args)
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        print(
            f"cache-aware routing decisions (us): router prepare + choose over {args.backends} backends, "
            f"8,192-token prompts (512 blocks), {args.cache_decisions} decisions after {args.cache_warmup} "
            f"warm-up, best p99 of {args.repeats} runs; commit = index bookkeeping after the decision. "
            f"Load average: {load}. routing.decision_core: "
            f"{labcore.status()['routing.decision_core']['running']}"
        )
        if host.line:
            print(host.line)
        print(table.to_string(index=False, float_format=fmt, na_rep="-"))
        if args.suite == "cache":
            return 0
        print()

    frame = pd.read_csv(args.data) if args.data else synthetic_rows(args.rows, seed=args.seed)
    missing = [c for c in NUMERIC_FEATURES + ("group",) if c not in frame.columns]
    if missing:
        parser.error(f"--data lacks column(s) {', '.join(missing)}")
    cases = scenarios(frame, args.backends, 512, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = train_models(frame, args.target, Path(tmp), args.seed, args.teacher_epochs)
        with StallWindow(args.host_probe_s) as host:  # after training: only the timing is probed
            for label, name, kind, target_us in CASES:
                params = {} if kind is None else {"model": str(paths[kind])}
                if name == "predictive":
                    params["objective"] = args.target
                elif name == "online_linear":
                    params["objective"] = args.target
                strategy = routing.build(name, seed=args.seed, **params)
                learn = name == "online_linear"
                time_decisions(strategy, cases, args.warmup, learn)
                runs = [time_decisions(strategy, cases, args.decisions, learn) / 1000.0 for _ in range(args.repeats)]
                ns = min(runs, key=lambda r: np.percentile(r, 99))
                p99 = float(np.percentile(ns, 99))
                rows.append(
                    {
                        "strategy": label,
                        "p50_us": float(np.percentile(ns, 50)),
                        "p99_us": p99,
                        "mean_us": float(ns.mean()),
                        "target_p99_us": target_us if target_us is not None else math.nan,
                        "meets": "" if target_us is None else ("yes" if p99 <= target_us else "NO"),
                    }
                )
    table = pd.DataFrame(rows)
    print(
        f"routing decision latency (us): {args.backends} backends, {args.decisions} decisions "
        f"per run, best p99 of {args.repeats} runs; models predict {args.target} "
        f"(trained on {len(frame)} rows)"
    )
    if host.line:
        print(host.line)
    print(table.to_string(index=False, float_format=fmt, na_rep="-"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
