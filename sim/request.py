"""Request state inside one engine, as plain data (after vLLM's ``v1/request.py``).

Token accounting follows vLLM: ``num_tokens`` = prompt + generated tokens;
``num_computed`` = tokens whose KV is in the cache. A step schedules
``num_tokens - num_computed`` tokens (capped by the budget); when a request has
computed all its tokens it samples one more. The true output length comes from the
trace and plays the role of EOS (``ignore_eos`` with ``max_tokens``).

Block hashes. vLLM hashes every full block of a request, prompt or generated,
and caches it, so a later prompt that contains this request's prompt *and reply*
hits the reply's blocks too. ``block_hashes`` is the request's chain as far as
the caller knows it: the prompt's full blocks, then (``output_hashes``) the
blocks its reply fills, which a workload can know when a later turn's prompt
contains the reply (``workload.trace.Trace.reply_blocks``). Blocks past the
known chain get hashes no other request has (``hash_of``): nobody can hit them.
"""
from __future__ import annotations

import math
from enum import IntEnum

import numpy as np

from sim.itl import ItlEncoder

_MASK = (1 << 64) - 1
#: Salt of the hashes of reply blocks no later prompt contains.
_REPLY_SALT = 0x5EED_0F_12E7_1E5


def unique_block_hash(request_id: int, index: int) -> int:
    """A 64-bit hash of block ``index`` of request ``request_id`` that no prompt chain has.

    A pure function (SplitMix64 of the pair), so the same request always names its
    unshared reply blocks alike, in the simulator and in the emulator.
    """
    x = ((request_id * 0x9E3779B97F4A7C15) ^ (index + _REPLY_SALT)) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class Status(IntEnum):
    WAITING = 0
    RUNNING = 1
    FINISHED = 2
    ABORTED = 3


class EngineRequest:
    """One request's progress; times are filled in by the engine as steps complete."""

    __slots__ = (
        "id", "prompt_len", "max_tokens", "block_hashes", "num_shareable", "num_computed",
        "num_output", "shared_blocks", "num_private", "num_registered", "freed_extent",
        "num_cached", "num_preemptions", "status", "seq", "arrival", "received", "first_token_time",
        "last_token_time", "itl", "streak_start", "last_tick", "in_group", "tracked",
        "g_tick0", "g_out0", "g_comp0", "g_entry", "payload",
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
        output_hashes: np.ndarray | list[int] | None = None,
    ) -> None:
        if prompt_len < 1:
            raise ValueError(f"request {request_id}: prompt_len must be >= 1, got {prompt_len}")
        if max_tokens < 1:
            raise ValueError(f"request {request_id}: max_tokens must be >= 1, got {max_tokens}")
        self.id = request_id
        self.prompt_len = prompt_len
        self.max_tokens = max_tokens
        if prompt_hashes is None:
            hashes: list[int] = []
        elif isinstance(prompt_hashes, np.ndarray):
            hashes = prompt_hashes.tolist()
        else:
            hashes = list(prompt_hashes)
        if output_hashes is not None and len(output_hashes):
            hashes += output_hashes.tolist() if isinstance(output_hashes, np.ndarray) else list(output_hashes)
        #: The known chain: the prompt's full blocks, then the reply's (see the module doc).
        self.block_hashes = hashes
        n_known = len(hashes)
        #: Leading blocks other requests may share (see ``sim.kv_cache``); -1 means
        #: "every known block" (always correct, slower).
        self.num_shareable = n_known if num_shareable < 0 else min(num_shareable, n_known)
        self.num_computed = 0
        self.num_output = 0
        #: Block ids of the shareable head, then a count of private blocks.
        self.shared_blocks: list[int] = []
        self.num_private = 0
        #: How many leading blocks are full and cached (hashed), named or private.
        self.num_registered = 0
        #: The free-queue extent holding this request's private blocks after a preemption.
        self.freed_extent = None
        #: Prefix-cache hit (tokens) at first admission; -1 before it.
        self.num_cached = -1
        self.num_preemptions = 0
        self.status = Status.WAITING
        #: Admission number: the running queue is in increasing ``seq`` order.
        self.seq = -1
        self.arrival = arrival
        #: When the engine got it (asynchronous scheduling admits it only at a step
        #: scheduled later than that); -inf: before any step that could matter.
        self.received = -math.inf
        self.first_token_time = math.nan
        self.last_token_time = math.nan
        self.itl = ItlEncoder()
        #: The engine's ticks (see ``sim.timeline``) of the first and last token of the
        #: current streak of consecutive tokens; their gaps are read from the timeline.
        self.streak_start = -1
        self.last_tick = -1
        #: Decode-group membership, counters as of joining, and the membership's
        #: entry number in the group's finish heap (see ``sim.decode_group``).
        self.in_group = False
        self.tracked = False
        self.g_tick0 = self.g_out0 = self.g_comp0 = self.g_entry = 0
        #: Opaque data of whoever drives the engine (the simulator's record fields).
        self.payload = payload

    def hash_of(self, index: int) -> int:
        """The hash of block ``index`` (a known one, else one no other request has)."""
        hashes = self.block_hashes
        return hashes[index] if index < len(hashes) else unique_block_hash(self.id, index)

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
