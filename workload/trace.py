"""``Trace``: a workload as columns (numpy arrays), not a list of dicts.

One row per request. Prompts are kept as their block hash chains (CSR: one flat
``uint64`` array plus offsets), which is everything the simulator's prefix cache
and a cache-aware router need, at a sixteenth of the size of the token ids. Live
mode turns a hash chain back into concrete token ids with the same sharing
structure (``workload.tokens.prompt_token_ids``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


#: Rows gathered at a time by Trace.take: bounds its temporary index arrays.
TAKE_CHUNK_ROWS = 1 << 16


@dataclass(frozen=True)
class Trace:
    """Requests in dispatch order. ``arrival_s`` is NaN until arrivals are assigned."""

    request_id: np.ndarray  # int64, unique
    conversation_id: np.ndarray  # str (object) array
    turn: np.ndarray  # int32, 0-based user turn within the conversation
    input_len: np.ndarray  # int32, prompt tokens (the conversation so far)
    output_len: np.ndarray  # int32, tokens of the real reply (what the request generates)
    arrival_s: np.ndarray  # float64 seconds from the start of the run
    timestamp_s: np.ndarray  # float64 dataset timestamps (epoch seconds), NaN if none
    hash_offsets: np.ndarray  # int64, len n+1: request i's hashes are block_hashes[o[i]:o[i+1]]
    block_hashes: np.ndarray  # uint64
    block_size: int = 16
    meta: dict[str, Any] = field(default_factory=dict)  # source, tokenizer, filters...
    #: float64 seconds between the previous turn's reply and this turn (NaN: none, e.g. a
    #: session's first turn). In a pool: what the dataset recorded; in a trace with
    #: closed sessions: the think time the client waits before sending (``workload.sessions``).
    think_s: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.request_id)
        if self.think_s is None:
            object.__setattr__(self, "think_s", np.full(n, np.nan))
        for name in ("conversation_id", "turn", "input_len", "output_len", "arrival_s", "timestamp_s",
                     "think_s"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Trace column {name} has {len(getattr(self, name))} rows, expected {n}")
        if len(self.hash_offsets) != n + 1:
            raise ValueError("Trace.hash_offsets must have one more entry than there are requests")

    def __len__(self) -> int:
        return len(self.request_id)

    def hashes(self, i: int) -> np.ndarray:
        """Request ``i``'s block hash chain (a view, no copy)."""
        return self.block_hashes[self.hash_offsets[i] : self.hash_offsets[i + 1]]

    def take(self, idx: np.ndarray | list[int]) -> Trace:
        """Rows ``idx`` in that order (hashes are re-packed)."""
        idx = np.asarray(idx, dtype=np.int64)
        starts = self.hash_offsets[idx]
        lens = self.hash_offsets[idx + 1] - starts
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        hashes = np.empty(int(offsets[-1]), dtype=np.uint64)
        # Gathered a bounded number of rows at a time: one index array for a whole
        # million-request trace would cost four times the hashes themselves.
        for lo in range(0, len(idx), TAKE_CHUNK_ROWS):
            hi = min(lo + TAKE_CHUNK_ROWS, len(idx))
            out_lo, out_hi = int(offsets[lo]), int(offsets[hi])
            if out_hi > out_lo:
                part = lens[lo:hi]
                gather = np.repeat(starts[lo:hi] - offsets[lo:hi], part)
                gather += np.arange(out_lo, out_hi)
                hashes[out_lo:out_hi] = self.block_hashes[gather]
        return replace(
            self,
            request_id=self.request_id[idx],
            conversation_id=self.conversation_id[idx],
            turn=self.turn[idx],
            input_len=self.input_len[idx],
            output_len=self.output_len[idx],
            arrival_s=self.arrival_s[idx],
            timestamp_s=self.timestamp_s[idx],
            think_s=self.think_s[idx],
            hash_offsets=offsets,
            block_hashes=hashes,
        )

    def reply_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """Per request, where the hashes of the blocks its reply fills can be read.

        A multi-turn conversation's later prompt contains every earlier prompt and
        reply (``workload.expand``: the conversation is one token stream), so the
        chain of the next turn of the same conversation in this trace names the
        blocks request ``i``'s reply fills: its blocks ``input_len[i] // bs ..``,
        up to the last block full before the final token, which is never computed
        (vLLM caches ``(input_len + output_len - 1) // bs`` blocks at most).

        Returns ``(row, count)``: the row whose chain holds them (-1: none, as for
        the last turn in the trace, a single-turn source, or a later prompt that
        does not start with this prompt plus the whole reply) and how many of the
        reply's blocks it holds. ``hashes(row)[input_len[i] // bs:][:count]``.
        """
        n = len(self)
        rows = np.full(n, -1, dtype=np.int64)
        counts = np.zeros(n, dtype=np.int64)
        if n < 2:
            return rows, counts
        _, conv = np.unique(self.conversation_id.astype(str), return_inverse=True)
        order = np.lexsort((self.turn, conv))
        a, b = order[:-1], order[1:]  # b is the next turn of a's conversation, if any
        link = (conv[a] == conv[b]) & (self.turn[b] > self.turn[a])
        inp = self.input_len.astype(np.int64)
        out = self.output_len.astype(np.int64)
        link &= inp[b] >= inp[a] + out[a]
        bs = self.block_size
        offsets = self.hash_offsets
        lens = offsets[1:] - offsets[:-1]
        k = lens[a]  # a's prompt chain, which b's chain must start with
        link &= lens[b] >= k
        has = link & (k > 0)
        same = np.zeros(len(a), dtype=bool)
        same[has] = (self.block_hashes[offsets[b[has]] + k[has] - 1]
                     == self.block_hashes[offsets[a[has]] + k[has] - 1])
        link &= (k == 0) | same
        a, b = a[link], b[link]
        first = inp[a] // bs
        counts_ab = np.minimum((inp[a] + out[a] - 1) // bs, lens[b]) - first
        rows[a] = b
        counts[a] = np.maximum(counts_ab, 0)
        return rows, counts

    def shareable_with_replies(self, shared: np.ndarray,
                               replies: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """``shareable_blocks()`` when each request's chain continues with its reply's blocks.

        ``replies`` is ``reply_blocks()``: a linked request's prompt and reply
        blocks are all shared with the later prompt that holds them, whose blocks
        up to the end of that reply are shared in turn. Shared blocks stay a
        leading run, so the counts combine by maximum.
        """
        out = np.array(shared, dtype=np.int64, copy=True)
        rows, counts = replies
        linked = np.flatnonzero(rows >= 0)
        full = self.input_len[linked].astype(np.int64) // self.block_size + counts[linked]
        np.maximum.at(out, linked, full)
        np.maximum.at(out, rows[linked], full)
        return out

    def shareable_blocks(self) -> np.ndarray:
        """Per request, how many leading blocks have a hash that another request also has.

        In a hash chain a block's hash fixes every block before it, so the requests
        sharing block j are a subset of those sharing block j-1: the shared blocks
        of a request are always a leading run, and everything after it is unique to
        the request. The simulator uses this to keep unique blocks as counts.
        """
        n = len(self)
        out = np.zeros(n, dtype=np.int64)
        hashes = self.block_hashes
        if n == 0 or len(hashes) == 0:
            return out
        # Hash values that occur more than once (a sorted copy; the duplicates are few).
        ordered = np.sort(hashes)
        dup = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
        del ordered
        if len(dup) == 0:
            return out
        # Flag shared blocks and count them per request, in bounded chunks.
        offsets = self.hash_offsets
        step = 1 << 22
        shared = np.empty(len(hashes), dtype=bool)
        for lo in range(0, len(hashes), step):
            chunk = hashes[lo:lo + step]
            idx = np.minimum(np.searchsorted(dup, chunk), len(dup) - 1)
            shared[lo:lo + step] = dup[idx] == chunk
        starts = offsets[:-1]
        nonempty = offsets[1:] > starts
        if nonempty.any():
            sums = np.add.reduceat(shared, starts[nonempty], dtype=np.int64)
            out[nonempty] = sums
        return out

    def with_arrivals(self, arrival_s: np.ndarray) -> Trace:
        arrival_s = np.asarray(arrival_s, dtype=np.float64)
        if len(arrival_s) != len(self):
            raise ValueError(f"{len(arrival_s)} arrival times for {len(self)} requests")
        if len(arrival_s) > 1 and np.any(np.diff(arrival_s) < 0):
            raise ValueError("arrival times must be non-decreasing")
        return replace(self, arrival_s=arrival_s)
