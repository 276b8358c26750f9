"""Small traces and fleets for simulator tests, built by hand (no dataset needed)."""
from __future__ import annotations

import math

import numpy as np

from sim.cluster import BackendConfig, ClusterConfig
from sim.engine import EngineConfig
from sim.latency import EngineDefaults, LatencyModel, LatencyProfile
from workload.trace import Trace

LAT = LatencyModel(step_s=0.02, token_s=2e-5, seq_s=1e-4, prefill_attn_s=1e-8, decode_attn_s=2e-7)


def profile(jitter_cv: float = 0.0, model: LatencyModel = LAT) -> LatencyProfile:
    return LatencyProfile("test", model, EngineDefaults(400), jitter_cv=jitter_cv)


def fleet(n: int = 3, *, blocks: int = 300, seqs: int = 32, budget: int = 512, mode: str = "fast",
          timeout_s: float = 0.0, delay_s: float = 0.0, scrape_s: float = 0.3, drain_s: float = 600.0,
          jitter_cv: float = 0.0, caching: bool = True, model: LatencyModel = LAT,
          async_scheduling: bool = False) -> ClusterConfig:
    prof = profile(jitter_cv, model)
    ec = EngineConfig(num_kv_blocks=blocks, max_num_seqs=seqs, max_num_batched_tokens=budget,
                      enable_prefix_caching=caching, async_scheduling=async_scheduling)
    return ClusterConfig([BackendConfig(f"b{i}", "g" if i % 2 else "h", prof, ec) for i in range(n)],
                         mode=mode, timeout_s=timeout_s, network_delay_s=delay_s,
                         scrape_interval_s=scrape_s, drain_s=drain_s)


def conversation_trace(n_conv: int = 60, *, seed: int = 0, rate: float = 20.0, bs: int = 16,
                       max_turns: int = 4, max_out: int = 300) -> Trace:
    """Multi-turn conversations (turn k+1's prompt extends turn k's), interleaved, Poisson."""
    rng = np.random.default_rng(seed)
    system = [int(x) for x in rng.integers(0, 2**62, 50)]
    rows, chains = [], []
    for c in range(n_conv):
        own = [int(x) for x in rng.integers(0, 2**62, 200)]
        base = int(rng.integers(20, 400))
        shared_system = c % 3 == 0
        for t in range(int(rng.integers(1, max_turns + 1))):
            length = base + t * int(rng.integers(30, 300))
            nb = length // bs
            chain = (system[: min(nb, 50)] + own[: max(0, nb - 50)]) if shared_system else own[:nb]
            rows.append((c, t, length, int(rng.integers(1, max_out))))
            chains.append(chain)
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    chains = [chains[i] for i in order]
    n = len(rows)
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(c) for c in chains])
    hashes = np.array([h for c in chains for h in c], dtype=np.uint64)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, n))
    return Trace(
        request_id=np.arange(n, dtype=np.int64),
        conversation_id=np.array([f"c{r[0]}" for r in rows], dtype=object),
        turn=np.array([r[1] for r in rows], dtype=np.int32),
        input_len=np.array([r[2] for r in rows], dtype=np.int32),
        output_len=np.array([r[3] for r in rows], dtype=np.int32),
        arrival_s=arrivals,
        timestamp_s=np.full(n, np.nan),
        hash_offsets=offsets,
        block_hashes=hashes,
        block_size=bs,
    )


def chat_trace(n_conv: int = 40, *, seed: int = 0, rate: float = 20.0, bs: int = 16,
               max_turns: int = 4, max_out: int = 200) -> Trace:
    """Multi-turn chat as ``workload.expand`` lays it out: turn k+1's prompt is turn k's
    prompt, its reply and a new message, hashed as one token stream (so the blocks a
    reply fills are named in the next turn's chain); some conversations share a
    system prompt that ends inside a block. Turns interleave; arrivals are Poisson."""
    from workload.hashing import block_hash_chain

    rng = np.random.default_rng(seed)
    system = rng.integers(0, 50_000, 70).tolist()
    rows, chains = [], []
    for c in range(n_conv):
        stream = list(system) if c % 3 == 0 else []
        for t in range(int(rng.integers(1, max_turns + 1))):
            stream += rng.integers(0, 50_000, int(rng.integers(5, 200))).tolist()  # the user's message
            out = int(rng.integers(1, max_out))
            rows.append((c, t, len(stream), out))
            chains.append(block_hash_chain(np.asarray(stream), bs))
            stream += rng.integers(0, 50_000, out).tolist()  # the reply
    # Interleave conversations at random, each one's turns in order (as traces do).
    by_conv: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_conv.setdefault(r[0], []).append(i)
    labels = [r[0] for r in rows]
    rng.shuffle(labels)
    taken = dict.fromkeys(by_conv, 0)
    seq = []
    for c in labels:
        seq.append(by_conv[c][taken[c]])
        taken[c] += 1
    rows = [rows[i] for i in seq]
    chains = [chains[i] for i in seq]
    n = len(rows)
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(ch) for ch in chains])
    hashes = np.concatenate(chains).astype(np.uint64) if n else np.zeros(0, dtype=np.uint64)
    return Trace(
        request_id=np.arange(n, dtype=np.int64),
        conversation_id=np.array([f"c{r[0]}" for r in rows], dtype=object),
        turn=np.array([r[1] for r in rows], dtype=np.int32),
        input_len=np.array([r[2] for r in rows], dtype=np.int32),
        output_len=np.array([r[3] for r in rows], dtype=np.int32),
        arrival_s=np.cumsum(rng.exponential(1.0 / rate, n)),
        timestamp_s=np.full(n, np.nan),
        hash_offsets=offsets,
        block_hashes=hashes,
        block_size=bs,
    )


def simple_trace(arrivals, input_len, output_len, bs: int = 16) -> Trace:
    """Independent requests (no shared blocks) at the given times."""
    n = len(arrivals)
    input_len = np.broadcast_to(np.asarray(input_len, dtype=np.int32), (n,)).copy()
    output_len = np.broadcast_to(np.asarray(output_len, dtype=np.int32), (n,)).copy()
    offsets = np.zeros(n + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(input_len // bs)
    hashes = (np.arange(offsets[-1], dtype=np.uint64) + np.uint64(1) << np.uint64(20))
    return Trace(np.arange(n, dtype=np.int64), np.array([f"c{i}" for i in range(n)], dtype=object),
                 np.zeros(n, dtype=np.int32), input_len, output_len,
                 np.asarray(arrivals, dtype=np.float64), np.full(n, np.nan), offsets, hashes, bs)


RECORD_FIELDS = (
    "request_id", "status", "backend", "output_len", "cached_tokens", "num_preemptions",
    "arrival_s", "dispatch_s", "first_token_s", "last_token_s", "finish_s",
    "router_inflight_requests", "router_inflight_tokens", "router_running", "router_waiting",
    "router_kv_usage", "router_scrape_age_s", "router_prefix_hit_tokens", "ready_s", "think_s",
    "conversation_id", "turn",
)


def record_differences(a, b, rel: float = 1e-9) -> list[tuple]:
    """Field-by-field differences of two record lists (NaN equals NaN; floats to ``rel``)."""
    from results.records import expand_itl

    diffs = []
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for f in RECORD_FIELDS:
            u, v = getattr(x, f), getattr(y, f)
            if isinstance(u, float):
                same = (math.isnan(u) and math.isnan(v)) or (
                    u == v or abs(u - v) <= rel * max(1.0, abs(u)))
            else:
                same = u == v
            if not same:
                diffs.append((x.request_id, f, u, v))
        ga = expand_itl(x.itl_start, x.itl_step, x.itl_count)
        gb = expand_itl(y.itl_start, y.itl_step, y.itl_count)
        if len(ga) != len(gb) or (len(ga) and np.max(np.abs(ga - gb)) > rel * max(1.0, np.max(ga))):
            diffs.append((x.request_id, "itl", len(ga), len(gb)))
    return diffs
