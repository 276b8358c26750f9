"""Synthetic requests: lengths from simple distributions, optional shared prefixes.

With ``prefix_groups`` > 0 each request starts with one of that many distinct
``prefix_len``-token prefixes (a system prompt or few-shot header shared by many
users), then its own tokens; ``input_len`` = ``prefix_len`` + the drawn length, as
in ``vllm bench serve``'s random dataset with a prefix. Everything is a function
of the seed.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from workload.config import Filters, SyntheticSpec
from workload.hashing import block_hash_chain, continue_chain, keyed_stream
from workload.pool import PoolBuilder, RequestPool

TOKEN_SPACE = 100_000
_PREFIX_SALT = 0x9F1
_SUFFIX_SALT = 0x5AF


def _tokens(key: int, length: int, salt: int) -> np.ndarray:
    return (keyed_stream(key, length, salt) % np.uint64(TOKEN_SPACE)).astype(np.int64)


def synthetic_pool(
    spec: SyntheticSpec,
    block_size: int,
    filters: Filters,
    seed: int,
    meta: dict[str, Any],
    progress: bool = False,
) -> RequestPool:
    rng = np.random.default_rng([seed, 0x5E])
    n = spec.num_requests
    own = spec.input.draw(n, rng)
    out = spec.output.draw(n, rng)
    groups = rng.integers(spec.prefix_groups, size=n) if spec.prefix_groups else np.zeros(n, int)
    prefixes = [
        _tokens(g, spec.prefix_len, (seed << 12) ^ _PREFIX_SALT)
        for g in range(spec.prefix_groups)
    ]
    prefix_chains = [block_hash_chain(p, block_size) for p in prefixes]
    builder = PoolBuilder(block_size)
    dropped = 0
    for i in tqdm(range(n), desc="generating synthetic", unit="req", disable=not progress):
        inp = spec.prefix_len + int(own[i])
        if not filters.keep_lengths(inp, int(out[i])):
            dropped += 1
            continue
        suffix = _tokens(i, int(own[i]), (seed << 12) ^ _SUFFIX_SALT)
        if spec.prefix_groups:
            g = int(groups[i])
            chain = continue_chain(prefix_chains[g], np.concatenate([prefixes[g], suffix]), block_size)
        else:
            chain = block_hash_chain(suffix, block_size)
        builder.add_conversation(f"synthetic-{i}", [(0, inp, int(out[i]), math.nan)], chain)
    return builder.build({**meta, "rows_filtered_length": dropped})
