"""Profiling prompts as token ids, so prefix-cache sharing is exact by construction.

A prompt is ``shared_len`` tokens of a shared prefix (a pure function of
``prefix_id``) followed by tokens unique to the request (a pure function of
``request_id``). Two prompts share exactly the blocks inside their common
prefix, never by accident, so the profiler knows every request's prefix-cache
hit and the fitter can rebuild the same sharing structure (as block hash
chains) to replay a phase through the simulator. ``salt`` separates profiling
runs against one long-lived server: a new salt never hits an old run's blocks.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from workload.hashing import block_hash_chain, keyed_stream
from workload.trace import Trace

#: Token ids are drawn from [LOW, vocab_size - HIGH): clear of special tokens at both ends.
RESERVED_LOW = 1000
RESERVED_HIGH = 1000
_PREFIX_SALT = 0x5EED_0001
_UNIQUE_SALT = 0x5EED_0002


def _ids(key: int, n: int, salt: int, vocab_size: int) -> np.ndarray:
    span = vocab_size - RESERVED_LOW - RESERVED_HIGH
    if span < 2:
        raise ValueError(f"vocab_size {vocab_size} leaves no usable token ids")
    return (keyed_stream(key, n, salt) % np.uint64(span)).astype(np.int64) + RESERVED_LOW


def prompt_tokens(request_id: int, input_len: int, *, prefix_id: int = -1, shared_len: int = 0,
                  vocab_size: int, salt: int = 0) -> np.ndarray:
    """The ``input_len`` token ids of one profiling prompt."""
    if input_len < 1:
        raise ValueError(f"input_len must be >= 1, got {input_len}")
    if prefix_id < 0:
        shared_len = 0
    if not 0 <= shared_len <= input_len:
        raise ValueError(f"shared_len must be in [0, input_len={input_len}], got {shared_len}")
    head = _ids(prefix_id, shared_len, _PREFIX_SALT + salt, vocab_size) if shared_len else None
    tail = _ids(request_id, input_len - shared_len, _UNIQUE_SALT + salt, vocab_size)
    return tail if head is None else np.concatenate([head, tail])


def hit_tokens(chain: np.ndarray, seen: set[int], input_len: int, block_size: int) -> int:
    """Prefix-cache hit of a prompt whose block hashes are ``chain``, given blocks already cached.

    vLLM reuses the longest run of leading full blocks it holds, and always
    recomputes the last prompt token, so at most ``(input_len - 1) // block_size``
    blocks can hit.
    """
    limit = (input_len - 1) // block_size
    n = 0
    for h in chain[:limit].tolist():
        if h not in seen:
            break
        n += 1
    return n * block_size


def profiling_trace(request_id: Sequence[int], input_len: Sequence[int], output_len: Sequence[int],
                arrival_s: Sequence[float], prefix_id: Sequence[int], shared_len: Sequence[int],
                *, block_size: int, vocab_size: int, label: str = "") -> Trace:
    """A simulator ``Trace`` with the same lengths, arrivals and block sharing as sent requests."""
    n = len(request_id)
    chains = []
    for i in range(n):
        toks = prompt_tokens(int(request_id[i]), int(input_len[i]), prefix_id=int(prefix_id[i]),
                             shared_len=int(shared_len[i]), vocab_size=vocab_size)
        chains.append(block_hash_chain(toks, block_size))
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([len(c) for c in chains], out=offsets[1:])
    order = np.argsort(np.asarray(arrival_s, dtype=np.float64), kind="stable")
    trace = Trace(
        request_id=np.asarray(request_id, dtype=np.int64),
        conversation_id=np.asarray([f"{label}{int(r)}" for r in request_id], dtype=object),
        turn=np.zeros(n, dtype=np.int32),
        input_len=np.asarray(input_len, dtype=np.int32),
        output_len=np.asarray(output_len, dtype=np.int32),
        arrival_s=np.asarray(arrival_s, dtype=np.float64),
        timestamp_s=np.full(n, np.nan),
        hash_offsets=offsets,
        block_hashes=np.concatenate(chains).astype(np.uint64) if n and offsets[-1] else np.zeros(0, np.uint64),
        block_size=block_size,
        meta={"source": "calibrate", "label": label},
    )
    return trace.take(order)
