"""Request state inside one engine, as plain data (after vLLM's ``v1/request.py``).

Token accounting follows vLLM: ``num_tokens`` = prompt + generated tokens;
``num_computed`` = tokens whose KV is in the cache. A step schedules
``num_tokens - num_computed`` tokens (capped by the budget); when a request has
computed all its tokens it samples one more. The true output length comes from the
trace and plays the role of EOS (``ignore_eos`` with ``max_tokens``).
"""
from __future__ import annotations

import math
from enum import IntEnum

import numpy as np

from results.records import ItlEncoder


class Status(IntEnum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2
    ABORTED = 3


class EngineRequest:
    """One request's progress; times are filled in by the engine as steps complete."""

    __slots__ = (
        "id", "prompt_len", "max_tokens", "prompt_hashes", "num_shareable", "num_computed",
        "num_output", "shared_blocks", "num_private", "num_registered", "freed_extent",
        "num_cached", "num_preemptions", "status", "arrival", "first_token_time",
        "last_token_time", "itl", "streak_start", "last_tick", "in_group", "g_tick0",
        "g_out0", "g_comp0", "g_finish", "payload",
    )

    def __init__(
        self,
        request_id: int,
        prompt_len: int,
        max_tokens: int,
        prompt_hashes: np.ndarray | list[int] | None = None,
        arrival: float = 0.0,
        payload: object = None,
        num_shareable: int = -1,
    ) -> None:
        if prompt_len < 1:
            raise ValueError(f"request {request_id}: prompt_len must be >= 1, got {prompt_len}")
        if max_tokens < 1:
            raise ValueError(f"request {request_id}: max_tokens must be >= 1, got {max_tokens}")
        self.id = request_id
        self.prompt_len = prompt_len
        self.max_tokens = max_tokens
        if prompt_hashes is None:
            self.prompt_hashes: list[int] = []
        elif isinstance(prompt_hashes, np.ndarray):
            self.prompt_hashes = prompt_hashes.tolist()
        else:
            self.prompt_hashes = list(prompt_hashes)
        n_full = len(self.prompt_hashes)
        #: Leading prompt blocks other requests may share (see ``sim.kv_cache``);
        #: -1 means "all of them" (always correct, slower).
        self.num_shareable = n_full if num_shareable < 0 else min(num_shareable, n_full)
        self.num_computed = 0
        self.num_output = 0
        #: Block ids of the shareable head, then a count of private blocks.
        self.shared_blocks: list[int] = []
        self.num_private = 0
        #: How many of ``shared_blocks`` are registered in the prefix cache.
        self.num_registered = 0
        #: The free-queue extent holding this request's private blocks after a preemption.
        self.freed_extent = None
        #: Prefix-cache hit (tokens) at first admission; -1 before it.
        self.num_cached = -1
        self.num_preemptions = 0
        self.status = Status.WAITING
        self.arrival = arrival
        self.first_token_time = math.nan
        self.last_token_time = math.nan
        self.itl = ItlEncoder()
        #: The engine's ticks (see ``sim.timeline``) of the first and last token of the
        #: current streak of consecutive tokens; their gaps are read from the timeline.
        self.streak_start = -1
        self.last_tick = -1
        #: Decode-group membership and counters as of joining (see ``sim.decode_group``).
        self.in_group = False
        self.g_tick0 = self.g_out0 = self.g_comp0 = self.g_finish = 0
        #: Opaque data of whoever drives the engine (the simulator's record fields).
        self.payload = payload

    @property
    def num_tokens(self) -> int:
        return self.prompt_len + self.num_output

    @property
    def num_blocks(self) -> int:
        return len(self.shared_blocks) + self.num_private

    @property
    def finished(self) -> bool:
        return self.num_output >= self.max_tokens

    def __repr__(self) -> str:
        return (
            f"EngineRequest(id={self.id}, prompt={self.prompt_len}, out={self.num_output}/"
            f"{self.max_tokens}, computed={self.num_computed}, blocks={self.num_blocks}, "
            f"status={self.status.name})"
        )
