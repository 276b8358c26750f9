"""KV-cache events: what an engine tells routers about its prefix cache.

The three event kinds and their fields follow vLLM's KV-event publisher
(``vllm/distributed/kv_events.py`` in vLLM 0.32: ``BlockStored``,
``BlockRemoved``, ``AllBlocksCleared``), so the same consumer can learn an
engine's exact cache contents from the simulator's engine model, from the
emulator, or from a real vLLM started with ``--kv-events-config``. Only the
fields a router needs are kept; hashes are the engine's block hashes (in the
lab, the values of ``workload.hashing.block_hash_chain``).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BlockStored:
    """Full blocks that became cached, in chain order.

    ``parent_block_hash`` is the hash of the block before the first one (None
    at the start of a prompt); ``token_ids`` may be empty where the producer
    does not know them (the simulator keeps hashes, not tokens).
    """

    block_hashes: tuple[int, ...]
    parent_block_hash: int | None
    block_size: int
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class BlockRemoved:
    """Cached blocks that were evicted and may no longer be hit."""

    block_hashes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AllBlocksCleared:
    """The whole prefix cache was reset (``/reset_prefix_cache``, a restart)."""


KVEvent = BlockStored | BlockRemoved | AllBlocksCleared
