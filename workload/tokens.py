"""Concrete prompt token ids for live mode, with the trace's prefix-sharing structure.

A trace stores prompts as block hash chains only. To send a request to a real
server we need token ids whose blocks are shared exactly where the trace's are:
each full block's tokens are a pure function of that block's hash (so equal
hashes give equal tokens, and a chain of equal blocks gives an equal chain in
vLLM's prefix cache), and the partial tail comes from the request id.
"""
from __future__ import annotations

import numpy as np

from workload.hashing import keyed_stream
from workload.trace import Trace

_BLOCK_SALT = 0xB10C
_TAIL_SALT = 0x7A11


def _in_range(values: np.ndarray, low: int, span: int) -> np.ndarray:
    return (values % np.uint64(span)).astype(np.int64) + low


def prompt_token_ids(
    trace: Trace,
    i: int,
    vocab_size: int,
    *,
    reserved_low: int = 1000,
    reserved_high: int = 1000,
) -> list[int]:
    """``trace.input_len[i]`` token ids in ``[reserved_low, vocab_size - reserved_high)``.

    The reserved ranges keep clear of special and control tokens, which tokenizers
    usually put at the start or end of the vocabulary.
    """
    span = vocab_size - reserved_high - reserved_low
    if span < 2:
        raise ValueError(
            f"no usable token ids: vocab_size={vocab_size}, reserved_low={reserved_low}, "
            f"reserved_high={reserved_high}"
        )
    bs = trace.block_size
    hashes = trace.hashes(i)
    n = int(trace.input_len[i])
    if len(hashes) * bs > n:
        raise ValueError(f"request {i}: {len(hashes)} blocks do not fit in input_len {n}")
    parts = [_in_range(keyed_stream(int(h), bs, _BLOCK_SALT), reserved_low, span) for h in hashes]
    tail = n - len(hashes) * bs
    if tail:
        parts.append(_in_range(keyed_stream(int(trace.request_id[i]), tail, _TAIL_SALT), reserved_low, span))
    return np.concatenate(parts).tolist() if parts else []
