"""Block hash chains: how the prefix cache (and a cache-aware router) names prompt blocks.

As in vLLM's prefix caching, only *full* blocks of ``block_size`` tokens get a hash,
and each block's hash covers its parent's hash and its own token ids, so two
prompts share a block hash exactly when they share every token up to the end of
that block. The trace builder, the emulator and the gateway all call this one
function, so the simulator's prefix cache and a live router agree on block names.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

#: The parent hash of a prompt's first block.
ROOT_HASH = 0x9E3779B97F4A7C15


def block_hash_chain(
    token_ids: Sequence[int] | np.ndarray,
    block_size: int = 16,
    parent: int = ROOT_HASH,
) -> np.ndarray:
    """64-bit hashes of each full block of ``token_ids``, chained from ``parent``."""
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    tokens = np.asarray(token_ids, dtype=np.int64)
    n_full = len(tokens) // block_size
    out = np.empty(n_full, dtype=np.uint64)
    raw = tokens[: n_full * block_size].astype("<i8").tobytes()
    step = block_size * 8
    h = int(parent)
    for i in range(n_full):
        digest = hashlib.blake2b(
            h.to_bytes(8, "little") + raw[i * step : (i + 1) * step], digest_size=8
        ).digest()
        h = int.from_bytes(digest, "little")
        out[i] = h
    return out


def extend_chain(
    chain: np.ndarray, token_ids: Sequence[int] | np.ndarray, block_size: int = 16
) -> np.ndarray:
    """Hashes of the full blocks of ``prefix + token_ids`` given the prefix's chain.

    ``token_ids`` must start at a block boundary of the prefix (i.e. the prefix's
    length is a multiple of ``block_size``).
    """
    parent = int(chain[-1]) if len(chain) else ROOT_HASH
    return np.concatenate([chain, block_hash_chain(token_ids, block_size, parent)])
