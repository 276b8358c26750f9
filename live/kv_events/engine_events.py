"""The emulator's engine events as vLLM's block pool publishes them, token ids included.

``sim.engine.Engine`` reports its block pool's events (``routing.kv_events``) with
hashes only. vLLM's ``BlockStored`` also carries the stored blocks' token ids, which
is what lets a router that hashes differently from the engine name the blocks itself
(``live.kv_events.subscriber`` does). ``EngineEvents`` is the engine's event sink: it
keeps the token ids of the prompts in flight (counted per block hash, dropped when
the last request holding a block ends), turns each event into its wire message, and
``flush`` hands one step's events to the publisher as one batch, as vLLM publishes a
step's events with its output.

Generated blocks carry no token ids: the emulator's output is filler text without
token ids, and the engine names those blocks with hashes no prompt has
(``sim.request.unique_block_hash``), so they can never be hit, exactly as in a real
vLLM behind the lab's load generator. A consumer sees them as blocks it cannot name,
which is what they are.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from live.kv_events.wire import (
    MEDIUM_GPU, AllBlocksClearedMsg, BlockRemovedMsg, BlockStoredMsg, EventMsg,
)
from routing.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent

#: vLLM annotates every stored block with its KV-cache group's kind (one full-attention
#: group for the models the lab emulates).
SPEC_KIND = "full_attention"


class EngineEvents:
    """Sink for one engine's KV events; ``flush`` publishes what a step produced."""

    __slots__ = ("block_size", "publish", "pending", "_tokens", "_refs")

    def __init__(self, block_size: int, publish: Callable[[list[EventMsg]], object]) -> None:
        self.block_size = block_size
        self.publish = publish
        self.pending: list[EventMsg] = []
        #: block hash -> (prompt token ids, block index), for blocks of prompts in flight
        self._tokens: dict[int, tuple[np.ndarray, int]] = {}
        self._refs: dict[int, int] = {}

    # --- prompts in flight ------------------------------------------------------------
    def track(self, token_ids: np.ndarray, hashes: np.ndarray) -> list[int]:
        """Remember a prompt's block tokens; returns the keys to ``release`` when it ends."""
        keys = hashes.tolist()
        tokens, refs = self._tokens, self._refs
        for i, h in enumerate(keys):
            r = refs.get(h, 0)
            refs[h] = r + 1
            if not r:
                tokens[h] = (token_ids, i)
        return keys

    def release(self, keys: list[int]) -> None:
        tokens, refs = self._tokens, self._refs
        for h in keys:
            r = refs.get(h, 0) - 1
            if r > 0:
                refs[h] = r
            elif r == 0:
                del refs[h]
                del tokens[h]

    # --- the engine's sink ------------------------------------------------------------------
    def __call__(self, event: KVEvent, tick: int = 0) -> None:
        if isinstance(event, BlockStored):
            hashes = list(event.block_hashes)
            known = self._known(hashes)
            parent = event.parent_block_hash
            if known:  # prompt blocks, with their tokens
                self.pending.append(self._stored(hashes[:known], parent, self._token_ids(hashes[:known])))
            if known < len(hashes):  # generated blocks (after a preemption, with prompt ones)
                self.pending.append(self._stored(hashes[known:], hashes[known - 1] if known else parent, []))
        elif isinstance(event, BlockRemoved):
            for h in event.block_hashes:  # vLLM sends one event per evicted block
                self.pending.append(BlockRemovedMsg(block_hashes=[h], medium=MEDIUM_GPU,
                                                    group_idx=0))
        elif isinstance(event, AllBlocksCleared):
            self.pending.append(AllBlocksClearedMsg())
        else:
            raise TypeError(f"not a KV-cache event: {event!r}")

    def _stored(self, hashes: list[int], parent: int | None, token_ids: list[int]) -> BlockStoredMsg:
        return BlockStoredMsg(
            block_hashes=hashes, parent_block_hash=parent, token_ids=token_ids,
            block_size=self.block_size, lora_id=None, medium=MEDIUM_GPU, lora_name=None,
            group_idx=0, kv_cache_spec_kind=SPEC_KIND)

    def _known(self, hashes: list[int]) -> int:
        """How many leading blocks are prompt blocks of a request in flight."""
        tokens = self._tokens
        for k, h in enumerate(hashes):
            if h not in tokens:
                return k
        return len(hashes)

    def _token_ids(self, hashes: list[int]) -> list[int]:
        bs = self.block_size
        out: list[int] = []
        tokens = self._tokens
        for h in hashes:
            ids, i = tokens[h]
            out.extend(ids[i * bs:(i + 1) * bs].tolist())
        return out

    def flush(self) -> None:
        """Publish the events since the last flush as one batch (none: nothing sent)."""
        if self.pending:
            batch, self.pending = self.pending, []
            self.publish(batch)
