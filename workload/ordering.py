"""In which order the pool's requests are sent, and what happens when it runs out.

Turns of one conversation always keep their order (turn k+1 needs turn k's
reply first). ``interleave`` models concurrent chat sessions: ``active_sessions``
conversations are open at a time, each step sends the next turn of a randomly
chosen open one, and a finished conversation is replaced by the next in line.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from workload.hashing import mix64
from workload.pool import RequestPool
from workload.trace import Trace

#: Rows re-salted at a time by take_with_passes (bounds its temporaries).
SALT_CHUNK_ROWS = 1 << 16


def _conversation_rows(starts: np.ndarray, conv_order: np.ndarray) -> np.ndarray:
    """Row indices of whole conversations, in ``conv_order``, turns in order."""
    lens = starts[conv_order + 1] - starts[conv_order]
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.zeros(len(lens), dtype=np.int64)
    np.cumsum(lens[:-1], out=offsets[1:])
    return np.repeat(starts[conv_order] - offsets, lens) + np.arange(total)


def _interleave(starts: np.ndarray, conv_order: np.ndarray, sessions: int, rng) -> np.ndarray:
    queue = conv_order.tolist()
    active: list[list[int]] = []  # [next row, end row] per open conversation
    out = np.empty(int(starts[-1]), dtype=np.int64)
    picks = rng.random(len(out))
    q = 0
    while len(active) < sessions and q < len(queue):
        c = queue[q]
        q += 1
        active.append([int(starts[c]), int(starts[c + 1])])
    for i in range(len(out)):
        j = int(picks[i] * len(active))
        slot = active[j]
        out[i] = slot[0]
        slot[0] += 1
        if slot[0] == slot[1]:
            if q < len(queue):
                c = queue[q]
                q += 1
                active[j] = [int(starts[c]), int(starts[c + 1])]
            else:
                active[j] = active[-1]
                active.pop()
    return out


def one_pass(pool: RequestPool, order: str, active_sessions: int, rng) -> np.ndarray:
    """Every pool row once, in ``order``."""
    starts = pool.conv_starts
    n_conv = pool.n_conversations
    if order == "sequential":
        return np.arange(len(pool), dtype=np.int64)
    conv_order = rng.permutation(n_conv)
    if order == "shuffle":
        return _conversation_rows(starts, conv_order)
    if order == "interleave":
        return _interleave(starts, conv_order, active_sessions, rng)
    raise ValueError(f"order must be 'interleave', 'shuffle' or 'sequential', got {order!r}")


def ordered_rows(
    pool: RequestPool, n: int, order: str, active_sessions: int, rng
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` rows of repeated passes over the pool, and each row's pass number.

    Each pass is a fresh seeded order (``sequential`` repeats the dataset order).
    """
    rows, passes, have, p = [], [], 0, 0
    while have < n:
        r = one_pass(pool, order, active_sessions, rng)[: n - have]
        rows.append(r)
        passes.append(np.full(len(r), p, dtype=np.int64))
        have += len(r)
        p += 1
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(passes)


def take_with_passes(pool: RequestPool, rows: np.ndarray, passes: np.ndarray) -> Trace:
    """``pool.trace.take(rows)``, with repeated passes made distinct from the first.

    A request sent again in pass p > 0 gets conversation id ``"<id>#p"`` and its
    block hashes re-salted with p (a bijection, so sharing within the pass is
    kept), so it does not hit the prefix cache entries of its earlier copy.
    """
    trace = pool.trace.take(rows)
    if not len(passes) or passes.max() == 0:
        return trace
    repeat = passes > 0
    conv = trace.conversation_id.copy()
    conv[repeat] = [f"{c}#{p}" for c, p in zip(conv[repeat], passes[repeat])]
    # ``take`` made a fresh hash array: re-salt it in place, a bounded run of rows
    # at a time, so a million-request trace needs no full-size temporaries.
    hashes, offsets = trace.block_hashes, trace.hash_offsets
    for lo in range(0, len(passes), SALT_CHUNK_ROWS):
        hi = min(lo + SALT_CHUNK_ROWS, len(passes))
        part = passes[lo:hi]
        if not part.any():
            continue
        a, b = int(offsets[lo]), int(offsets[hi])
        hash_pass = np.repeat(part, np.diff(offsets[lo:hi + 1]))
        view = hashes[a:b]
        for p in np.unique(part[part > 0]):
            sel = hash_pass == p
            view[sel] = mix64(view[sel], salt=int(p))
    return replace(trace, conversation_id=conv)
