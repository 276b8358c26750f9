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
    raw = tokens[: n_full * block_size].astype("<i8").tobytes()
    step = block_size * 8
    # Each block hashes (parent hash as 8 little-endian bytes) + its token ids as
    # little-endian int64; the 8-byte digest, read little-endian, is its hash.
    # Keeping the digests as bytes avoids int conversions in the loop.
    h = int(parent).to_bytes(8, "little")
    digests = []
    for start in range(0, n_full * step, step):
        h = hashlib.blake2b(h + raw[start : start + step], digest_size=8).digest()
        digests.append(h)
    return np.frombuffer(b"".join(digests), dtype="<u8").astype(np.uint64)


def extend_chain(
    chain: np.ndarray, token_ids: Sequence[int] | np.ndarray, block_size: int = 16
) -> np.ndarray:
    """Hashes of the full blocks of ``prefix + token_ids`` given the prefix's chain.

    ``token_ids`` must start at a block boundary of the prefix (i.e. the prefix's
    length is a multiple of ``block_size``).
    """
    parent = int(chain[-1]) if len(chain) else ROOT_HASH
    return np.concatenate([chain, block_hash_chain(token_ids, block_size, parent)])


def continue_chain(
    chain: np.ndarray, token_ids: Sequence[int] | np.ndarray, block_size: int = 16
) -> np.ndarray:
    """Hashes of every full block of ``token_ids`` when ``chain`` already covers its first blocks.

    ``chain`` must be the chain of ``token_ids[: len(chain) * block_size]`` (for
    instance the previous turn's prompt, which is a prefix of this one). Only the
    new blocks are hashed, so growing a conversation turn by turn costs time in
    proportion to its new tokens, not to its whole length.
    """
    chain = np.asarray(chain, dtype=np.uint64)
    tokens = np.asarray(token_ids, dtype=np.int64)
    if len(chain) * block_size > len(tokens):
        raise ValueError(
            f"chain has {len(chain)} blocks but token_ids has only {len(tokens)} tokens "
            f"(block_size {block_size})"
        )
    parent = int(chain[-1]) if len(chain) else ROOT_HASH
    tail = block_hash_chain(tokens[len(chain) * block_size :], block_size, parent)
    return np.concatenate([chain, tail])


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def mix64(values: np.ndarray | int, salt: int = 0) -> np.ndarray:
    """SplitMix64 finaliser, vectorised: a fast bijective scramble of 64-bit values.

    Used where many pseudo-random numbers must be a pure function of a key
    (token ids derived from a block hash, re-salting hashes of a repeated pass),
    without a stateful generator. ``salt`` selects an independent permutation.
    """
    x = np.asarray(values).astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x += _GOLDEN * np.uint64((salt + 1) & 0xFFFFFFFFFFFFFFFF)
        x ^= x >> np.uint64(30)
        x *= _MIX1
        x ^= x >> np.uint64(27)
        x *= _MIX2
        x ^= x >> np.uint64(31)
    return x


def keyed_stream(key: int, length: int, salt: int = 0) -> np.ndarray:
    """``length`` pseudo-random ``uint64`` values that are a pure function of ``(key, salt)``.

    Counter-based, so any request's synthetic tokens can be regenerated from its
    key alone, in any order, with no generator state to carry around.
    """
    base = mix64(np.uint64(int(key) & 0xFFFFFFFFFFFFFFFF), salt)
    with np.errstate(over="ignore"):
        counter = base + np.arange(length, dtype=np.uint64)
    return mix64(counter, salt)
