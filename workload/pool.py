"""``RequestPool``: every request a dataset offers, before ordering and arrivals.

Requests of one conversation are contiguous and in turn order, so a conversation
is a row range (``conv_starts``). That lets ordering move whole conversations or
interleave them without looking at ids.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workload.trace import Trace


@dataclass(frozen=True)
class RequestPool:
    trace: Trace  # request_id = row; arrival_s NaN
    conv_starts: np.ndarray  # int64, len n_conversations + 1
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.trace)

    @property
    def n_conversations(self) -> int:
        return len(self.conv_starts) - 1


class PoolBuilder:
    """Accumulates requests conversation by conversation, then packs columns once."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._conv_ids: list[str] = []
        self._conv_of: list[int] = []
        self._turn: list[int] = []
        self._input: list[int] = []
        self._output: list[int] = []
        self._ts: list[float] = []
        self._think: list[float] = []
        self._hashes: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._turn)

    def add_conversation(
        self,
        conversation_id: str,
        requests: list[tuple[int, int, int, float]],
        chain: np.ndarray,
    ) -> None:
        """``requests``: (turn, input_len, output_len, timestamp_s[, think_s]); each prompt's
        hashes are the first ``input_len // block_size`` entries of ``chain``. ``think_s``
        is the think time the dataset recorded before the turn (NaN or absent: none)."""
        if not requests:
            return
        c = len(self._conv_ids)
        self._conv_ids.append(conversation_id)
        for turn, input_len, output_len, ts, *think in requests:
            nb = input_len // self.block_size
            if nb > len(chain):
                raise ValueError(
                    f"conversation {conversation_id!r} turn {turn}: chain has {len(chain)} "
                    f"blocks, prompt needs {nb}"
                )
            self._conv_of.append(c)
            self._turn.append(turn)
            self._input.append(input_len)
            self._output.append(output_len)
            self._ts.append(ts)
            self._think.append(think[0] if think else math.nan)
            self._hashes.append(chain[:nb])

    def add_requests(
        self,
        conversation_id: str,
        requests: list[tuple[int, int, int, float]],
        chains: list[np.ndarray],
    ) -> None:
        """Like ``add_conversation``, with each prompt's own hash chain.

        For sources whose turns need not extend one another (a trace's session
        reconstructed from shared prefixes): ``chains[i]`` holds at least the
        ``input_len // block_size`` hashes of ``requests[i]``.
        """
        if not requests:
            return
        c = len(self._conv_ids)
        self._conv_ids.append(conversation_id)
        for (turn, input_len, output_len, ts, *think), chain in zip(requests, chains, strict=True):
            nb = input_len // self.block_size
            if nb > len(chain):
                raise ValueError(f"conversation {conversation_id!r} turn {turn}: chain has "
                                 f"{len(chain)} blocks, prompt needs {nb}")
            self._conv_of.append(c)
            self._turn.append(turn)
            self._input.append(input_len)
            self._output.append(output_len)
            self._ts.append(ts)
            self._think.append(think[0] if think else math.nan)
            self._hashes.append(chain[:nb])

    def build(self, meta: dict[str, Any]) -> RequestPool:
        n = len(self._turn)
        conv_of = np.asarray(self._conv_of, dtype=np.int64)
        lens = np.fromiter((len(h) for h in self._hashes), dtype=np.int64, count=n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        hashes = (
            np.concatenate(self._hashes).astype(np.uint64, copy=False)
            if n and offsets[-1]
            else np.zeros(0, dtype=np.uint64)
        )
        conv_ids = np.asarray(self._conv_ids, dtype=object)
        starts = np.searchsorted(conv_of, np.arange(len(self._conv_ids) + 1)).astype(np.int64)
        trace = Trace(
            request_id=np.arange(n, dtype=np.int64),
            conversation_id=conv_ids[conv_of] if n else np.zeros(0, dtype=object),
            turn=np.asarray(self._turn, dtype=np.int32),
            input_len=np.asarray(self._input, dtype=np.int32),
            output_len=np.asarray(self._output, dtype=np.int32),
            arrival_s=np.full(n, np.nan),
            timestamp_s=np.asarray(self._ts, dtype=np.float64),
            think_s=np.asarray(self._think, dtype=np.float64),
            hash_offsets=offsets,
            block_hashes=hashes,
            block_size=self.block_size,
            meta=dict(meta),
        )
        return RequestPool(trace, starts, dict(meta))
