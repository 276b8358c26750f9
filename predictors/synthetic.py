"""Synthetic training rows with a known latency law (for demos, benchmarks, tests).

Not a stand-in for real data: it exists so that the CLI, the benchmark and the
docs work before any profiling or simulation has been run, and so that model
quality can be checked against a law that is known. The law is vLLM-shaped:

- TTFT = speed * (0.015 + 1.5e-4 * uncached prompt tokens + 6e-3 * queued requests
  + 2e-6 * in-flight prompt tokens), times log-normal noise;
- TPOT = speed * (0.012 + 4e-4 * running requests), times log-normal noise;
- E2EL = TTFT + TPOT * (output_len - 1);

where ``speed`` is 1.0 for the first group, 0.6 for the second, and so on (a
heterogeneous fleet), and 5% of rows come from a backend never scraped.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from predictors.features import FEATURES, LABEL_COLUMNS, TARGETS

MAX_RUNNING = 32


def synthetic_rows(
    n: int, *, seed: int = 0, groups: Sequence[str] = ("a100", "h100"), noise: float = 0.15
) -> pd.DataFrame:
    """``n`` rows with every schema column, the three targets and the label columns."""
    if n <= 0:
        raise ValueError(f"need a positive number of rows, got {n}")
    if not groups:
        raise ValueError("need at least one group name")
    rng = np.random.default_rng(seed)
    input_len = np.clip(np.round(rng.lognormal(np.log(600), 0.9, n)), 16, 8192).astype(np.int64)
    hit_frac = np.where(rng.random(n) < 0.4, rng.random(n), 0.0)
    prefix_hit = (np.floor(hit_frac * (input_len - 1) / 16) * 16).astype(np.int64)
    group_idx = rng.integers(0, len(groups), n)
    speed = 0.6 ** group_idx
    inflight = rng.poisson(rng.uniform(0, 40, n))
    inflight_tokens = np.round(inflight * rng.lognormal(np.log(600), 0.5, n)).astype(np.int64)
    running_true = np.minimum(inflight, MAX_RUNNING)
    waiting_true = inflight - running_true
    kv = np.clip(inflight_tokens / 120_000, 0.0, 1.0)
    # The scrape is up to half a second old: its counts drift from the truth a little.
    age = rng.uniform(0.0, 0.5, n)
    running = np.maximum(running_true + rng.integers(-2, 3, n), 0).astype(np.float64)
    waiting = np.maximum(waiting_true + rng.integers(-2, 3, n), 0).astype(np.float64)
    never = rng.random(n) < 0.05
    running[never] = waiting[never] = kv[never] = np.nan
    age[never] = np.inf
    uncached = input_len - prefix_hit
    ttft = speed * (0.015 + 1.5e-4 * uncached + 6e-3 * waiting_true + 2e-6 * inflight_tokens)
    ttft *= rng.lognormal(0.0, noise, n)
    tpot = speed * (0.012 + 4e-4 * running_true) * rng.lognormal(0.0, noise, n)
    output_len = np.clip(np.round(rng.lognormal(np.log(200), 0.8, n)), 1, 2048).astype(np.int64)
    e2el = ttft + tpot * (output_len - 1)
    frame = pd.DataFrame(
        {
            "input_len": input_len,
            "prefix_hit_tokens": prefix_hit,
            "inflight_requests": inflight,
            "inflight_tokens": inflight_tokens,
            "running": running,
            "waiting": waiting,
            "kv_usage": kv,
            "scrape_age_s": age,
            "group": np.asarray(list(groups), dtype=object)[group_idx],
            TARGETS["ttft"]: ttft,
            TARGETS["tpot"]: np.where(output_len > 1, tpot, np.nan),
            TARGETS["e2el"]: e2el,
            "output_len": output_len,
            "cached_tokens": prefix_hit,
        }
    )
    return frame[list(FEATURES) + list(TARGETS.values()) + list(LABEL_COLUMNS)]
