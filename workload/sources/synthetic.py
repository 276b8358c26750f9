"""Synthetic requests: lengths from simple distributions, optional shared prefixes.

With ``prefix_groups`` > 0 each request starts with one of that many distinct
``prefix_len``-token prefixes (a system prompt or few-shot header shared by many
users), then its own tokens; ``input_len`` = ``prefix_len`` + the drawn length, as
in ``vllm bench serve``'s random dataset with a prefix. With ``turns`` above 1,
requests come in sessions: a session draws its number of turns and one system
prompt, and turn ``t`` sends the system prompt, every earlier message and reply
(the conversation so far, as a chat client does) and a new message of ``input``
tokens; its reply has ``output`` tokens. Everything is a function of the seed.
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
    turns = spec.turns
    if not (turns.name == "fixed" and turns.value == 1):
        return _session_pool(spec, block_size, filters, seed, meta, progress)
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


_REPLY_SALT = 0x7E1


def _session_pool(spec: SyntheticSpec, block_size: int, filters: Filters, seed: int,
                  meta: dict[str, Any], progress: bool) -> RequestPool:
    """Multi-turn sessions on shared system prompts, ``num_requests`` requests in all."""
    rng = np.random.default_rng([seed, 0x5F])
    prefixes = [
        _tokens(g, spec.prefix_len, (seed << 12) ^ _PREFIX_SALT) for g in range(spec.prefix_groups)
    ]
    prefix_chains = [block_hash_chain(p, block_size) for p in prefixes]
    builder = PoolBuilder(block_size)
    dropped = sessions = 0
    total = 0
    bar = tqdm(total=spec.num_requests, desc="generating sessions", unit="req", disable=not progress)
    empty_in_a_row = 0
    while total < spec.num_requests:
        if empty_in_a_row > 10_000:
            raise ValueError(
                f"10,000 synthetic sessions in a row had no turn within the length filters "
                f"{filters.as_dict()}; widen the filters or the [workload.synthetic] lengths")
        k = sessions
        sessions += 1
        n_turns = int(spec.turns.draw(1, rng)[0])
        users = spec.input.draw(n_turns, rng)
        replies = spec.output.draw(n_turns, rng)
        g = int(rng.integers(spec.prefix_groups)) if spec.prefix_groups else -1
        parts = [prefixes[g]] if g >= 0 else []
        requests = []
        context = spec.prefix_len if g >= 0 else 0
        for t in range(n_turns):
            if total + len(requests) >= spec.num_requests:
                break
            inp = context + int(users[t])
            out = int(replies[t])
            if not filters.keep_lengths(inp, out) or (filters.max_turns and t >= filters.max_turns):
                dropped += n_turns - t  # later turns only grow
                break
            parts.append(_tokens(k, int(users[t]), (seed << 12) ^ _SUFFIX_SALT ^ (t << 20)))
            requests.append((t, inp, out, math.nan))
            parts.append(_tokens(k, out, (seed << 12) ^ _REPLY_SALT ^ (t << 20)))
            context = inp + out
        if not requests:
            empty_in_a_row += 1
            continue
        empty_in_a_row = 0
        tokens = np.concatenate(parts)
        if g >= 0:
            chain = continue_chain(prefix_chains[g], tokens, block_size)
        else:
            chain = block_hash_chain(tokens, block_size)
        builder.add_conversation(f"synthetic-s{k}", requests, chain)
        total += len(requests)
        bar.update(len(requests))
    bar.close()
    return builder.build({**meta, "sessions": sessions, "rows_filtered_length": dropped})
