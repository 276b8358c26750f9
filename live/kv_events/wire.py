"""vLLM's KV-event wire format: ZMQ frames and the msgpack encoding of event batches.

Read beside vLLM 0.32's ``vllm/distributed/kv_events.py`` (``ZmqEventPublisher``,
``EventBatch``, ``KVCacheEvent`` and its three kinds) and
``vllm/config/kv_events.py`` (``KVEventsConfig``). What goes over the wire:

- **Frames.** Each batch is one ZMQ multipart message ``(topic, seq, payload)`` on a
  PUB socket: ``topic`` the configured topic in UTF-8 (empty by default), ``seq`` the
  batch's sequence number as 8 big-endian bytes (0, 1, 2, ... per publisher: a
  restarted server starts again at 0), ``payload`` the msgpack batch.
- **Replay.** With a ``replay_endpoint`` the publisher also binds a ROUTER socket. A
  client sends ``(b"", start_seq)`` (8 big-endian bytes; a REQ socket adds the empty
  frame itself) and receives every buffered batch with ``seq >= start_seq`` as
  ``(b"", topic, seq, payload)``, then the end marker ``(b"", b"", seq -1, b"")``
  (``-1`` as 8 signed big-endian bytes). The buffer keeps the last
  ``buffer_steps`` batches (10,000 by default).
- **Batch.** msgspec ``array_like`` with ``omit_defaults``: ``[ts, events,
  data_parallel_rank]`` (the publisher sets the rank, 0 without data parallelism).
- **Events.** Tagged msgspec structs, encoded as maps whose first key is ``"type"``
  (the class name) followed by the fields in declaration order; fields without a
  default are always written, fields with a default only when they differ from it.
  ``BlockStored``: ``block_hashes``, ``parent_block_hash`` (None at a prompt's
  start), ``token_ids`` (the stored blocks' tokens), ``block_size``, ``lora_id``,
  ``medium`` ("GPU" for the engine's own pool), ``lora_name``, then optional
  ``extra_keys`` (per block: LoRA name, multimodal ids, cache salt),
  ``group_idx``, ``kv_cache_spec_kind``, ``kv_cache_spec_sliding_window``,
  ``locality``, ``ownership``, ``session_id``. ``BlockRemoved``: ``block_hashes``,
  ``medium``, then optional ``group_idx``, ``locality``, ``ownership``.
  ``AllBlocksCleared``: no fields.
- **Hashes** are vLLM's ``ExternalBlockHash``: 32 bytes of SHA-256 by default, or a
  64-bit int with ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``. The emulator sends the
  lab's 64-bit block hashes (``workload.hashing``) as ints.

The classes here are the lab's own, declared to produce and accept exactly that
layout; the tests decode the emulator's stream with vLLM's classes too. Decoding is
lenient the way a router must be: unknown fields are ignored, optional ones may be
absent, and a malformed payload raises ``WireError`` (never anything else).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import msgspec

__all__ = [
    "END_SEQ", "MEDIUM_GPU", "AllBlocksClearedMsg", "BlockRemovedMsg", "BlockStoredMsg",
    "DecodedBatch", "WireError", "decode_batch", "encode_batch", "seq_bytes", "seq_of",
]

#: The storage tier vLLM names its own KV pool with (``MEDIUM_GPU``, also on CPU builds).
MEDIUM_GPU = "GPU"
#: The replay stream's end marker: sequence number -1 as 8 signed big-endian bytes.
END_SEQ = (-1).to_bytes(8, "big", signed=True)

Hash = Union[int, bytes]


class WireError(ValueError):
    """A frame or payload that is not a vLLM KV-event batch."""


# --- what the emulator sends (vLLM's exact layout) -----------------------------------------
class _Event(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    """Base of the three kinds: a tagged map, ``"type"`` first (vLLM's ``KVCacheEvent``)."""


class BlockStoredMsg(_Event, tag="BlockStored"):
    block_hashes: list[Hash]
    parent_block_hash: Hash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: str | None = None
    ownership: str | None = None
    session_id: str | None = None


class BlockRemovedMsg(_Event, tag="BlockRemoved"):
    block_hashes: list[Hash]
    medium: str | None
    group_idx: int | None = None
    locality: str | None = None
    ownership: str | None = None


class AllBlocksClearedMsg(_Event, tag="AllBlocksCleared"):
    pass


EventMsg = Union[BlockStoredMsg, BlockRemovedMsg, AllBlocksClearedMsg]


class _BatchOut(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[EventMsg]
    data_parallel_rank: int | None = None


# --- what a router accepts (the same layout; fields vLLM may leave out are optional) --------
class _StoredIn(msgspec.Struct, tag="BlockStored", gc=False):
    block_hashes: list[Hash]
    parent_block_hash: Hash | None = None
    token_ids: list[int] = []
    block_size: int = 0
    lora_id: int | None = None
    medium: str | None = None
    lora_name: str | None = None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None


class _RemovedIn(msgspec.Struct, tag="BlockRemoved", gc=False):
    block_hashes: list[Hash]
    medium: str | None = None
    group_idx: int | None = None


class _ClearedIn(msgspec.Struct, tag="AllBlocksCleared", gc=False):
    pass


class _BatchIn(msgspec.Struct, array_like=True, gc=False):
    ts: float
    events: list[Union[_StoredIn, _RemovedIn, _ClearedIn]]
    data_parallel_rank: int | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_BatchIn)


def encode_batch(ts: float, events: list[EventMsg], data_parallel_rank: int = 0) -> bytes:
    """The msgpack payload of one batch, as vLLM's publisher encodes ``KVEventBatch``."""
    return _encoder.encode(_BatchOut(ts, events, data_parallel_rank))


@dataclass(frozen=True, slots=True)
class Stored:
    """A decoded ``BlockStored``: the engine's hashes and what names them."""

    block_hashes: tuple[Hash, ...]
    parent_block_hash: Hash | None
    token_ids: tuple[int, ...]
    block_size: int
    medium: str | None
    #: Per block, or None: anything beyond the tokens that went into the hash
    #: (LoRA, multimodal inputs, cache salt).
    extra_keys: tuple[Any, ...] | None
    lora: bool


@dataclass(frozen=True, slots=True)
class Removed:
    block_hashes: tuple[Hash, ...]
    medium: str | None


@dataclass(frozen=True, slots=True)
class Cleared:
    pass


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    ts: float
    events: tuple[Stored | Removed | Cleared, ...]
    data_parallel_rank: int | None


def decode_batch(payload: bytes) -> DecodedBatch:
    """Decode one payload; ``WireError`` says what is wrong with a malformed one."""
    try:
        batch = _decoder.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WireError(f"not a vLLM KV-event batch: {exc}") from None
    out: list[Stored | Removed | Cleared] = []
    for ev in batch.events:
        if type(ev) is _StoredIn:
            extra = ev.extra_keys
            if extra is not None and not any(k is not None for k in extra):
                extra = None
            out.append(Stored(tuple(ev.block_hashes), ev.parent_block_hash, tuple(ev.token_ids),
                              ev.block_size, ev.medium, None if extra is None else tuple(extra),
                              ev.lora_id is not None or ev.lora_name is not None))
        elif type(ev) is _RemovedIn:
            out.append(Removed(tuple(ev.block_hashes), ev.medium))
        else:
            out.append(Cleared())
    return DecodedBatch(batch.ts, tuple(out), batch.data_parallel_rank)


def seq_bytes(seq: int) -> bytes:
    """A sequence number as the frame carries it (8 bytes, big-endian)."""
    return seq.to_bytes(8, "big", signed=seq < 0)


def seq_of(frame: bytes) -> int:
    """The sequence number of a frame (-1 for the replay end marker)."""
    if len(frame) != 8:
        raise WireError(f"sequence frame must be 8 bytes, got {len(frame)}")
    return int.from_bytes(frame, "big", signed=frame == END_SEQ)
