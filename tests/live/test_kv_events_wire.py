"""vLLM's KV-event wire format (``live.kv_events.wire``) and naming blocks from their tokens.

The encodings are checked against msgpack bytes written out by hand from vLLM
0.32's class declarations (``vllm/distributed/kv_events.py``); the real-vLLM
decoder test is in ``test_kv_events_vllm.py`` (``-m vllm``).
"""
from __future__ import annotations

import hashlib
import struct

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from live.kv_events.subscriber import EventSource, HashTranslator, resolve_endpoint, sources_from_info
from live.kv_events.wire import (
    END_SEQ, AllBlocksClearedMsg, BlockRemovedMsg, BlockStoredMsg, Cleared, Removed, Stored,
    WireError, decode_batch, encode_batch, seq_bytes, seq_of,
)
from routing.prefix_index import ExactPrefixIndex
from workload.hashing import ROOT_HASH, block_hash_chain


def _s(text: str) -> bytes:  # a msgpack fixstr
    assert len(text) < 32
    return bytes([0xA0 | len(text)]) + text.encode()


def test_all_blocks_cleared_batch_bytes_by_hand():
    # [ts, [{"type": "AllBlocksCleared"}], data_parallel_rank]
    expected = (b"\x93" + b"\xcb" + struct.pack(">d", 1.5) + b"\x91" + b"\x81" + _s("type")
                + _s("AllBlocksCleared") + b"\x00")
    assert encode_batch(1.5, [AllBlocksClearedMsg()]) == expected


def test_block_removed_bytes_by_hand():
    # map: type, block_hashes, medium (no default: always written), group_idx (set)
    payload = encode_batch(0.0, [BlockRemovedMsg(block_hashes=[7], medium="GPU", group_idx=0)])
    event = (b"\x84" + _s("type") + _s("BlockRemoved") + _s("block_hashes") + b"\x91\x07"
             + _s("medium") + _s("GPU") + _s("group_idx") + b"\x00")
    assert payload == b"\x93" + b"\xcb" + struct.pack(">d", 0.0) + b"\x91" + event + b"\x00"


def test_block_stored_writes_the_fields_without_defaults_even_when_none():
    msg = BlockStoredMsg(block_hashes=[2**64 - 1], parent_block_hash=None, token_ids=[1, 2],
                         block_size=2, lora_id=None, medium="GPU", lora_name=None)
    doc = msgspec.msgpack.decode(encode_batch(3.0, [msg]))
    assert doc[0] == 3.0 and doc[2] == 0
    ev = doc[1][0]
    # Key order is vLLM's declaration order, the tag first; defaults left out.
    assert list(ev) == ["type", "block_hashes", "parent_block_hash", "token_ids", "block_size",
                        "lora_id", "medium", "lora_name"]
    assert ev["block_hashes"] == [2**64 - 1]  # a 64-bit unsigned hash survives


def test_decode_round_trip_and_lenient_input():
    stored = BlockStoredMsg(block_hashes=[b"\x01" * 32, 5], parent_block_hash=b"\x02" * 32,
                            token_ids=list(range(8)), block_size=4, lora_id=None, medium="GPU",
                            lora_name=None, extra_keys=[None, None], group_idx=0,
                            kv_cache_spec_kind="full_attention")
    batch = decode_batch(encode_batch(9.25, [stored, BlockRemovedMsg([5], "CPU"),
                                             AllBlocksClearedMsg()]))
    assert batch.ts == 9.25 and batch.data_parallel_rank == 0
    s, r, c = batch.events
    assert s == Stored((b"\x01" * 32, 5), b"\x02" * 32, tuple(range(8)), 4, "GPU", None, False)
    assert r == Removed((5,), "CPU") and c == Cleared()
    # An older or newer vLLM: optional fields absent, unknown ones present, no rank.
    doc = [1.0, [{"type": "BlockStored", "block_hashes": [1], "future_field": 3},
                 {"type": "BlockRemoved", "block_hashes": [1]}]]
    got = decode_batch(msgspec.msgpack.encode(doc))
    assert got.events[0] == Stored((1,), None, (), 0, None, None, False)
    assert got.data_parallel_rank is None


@pytest.mark.parametrize("payload", [
    b"", b"\xc1", msgspec.msgpack.encode({"ts": 1}), msgspec.msgpack.encode([1.0, [{"type": "Nope"}]]),
    msgspec.msgpack.encode([1.0, [{"type": "BlockRemoved"}]]),  # block_hashes is required
    msgspec.msgpack.encode(["x", []]),
])
def test_malformed_payloads_raise_wire_error_only(payload):
    with pytest.raises(WireError, match="not a vLLM KV-event batch"):
        decode_batch(payload)


def test_sequence_frames():
    assert seq_bytes(1) == b"\x00" * 7 + b"\x01" and seq_of(seq_bytes(2**40)) == 2**40
    assert seq_of(END_SEQ) == -1 and END_SEQ == b"\xff" * 8
    with pytest.raises(WireError):
        seq_of(b"\x00")


def test_sources_and_endpoints():
    assert resolve_endpoint("tcp://*:5557", "http://10.1.2.3:8000") == "tcp://10.1.2.3:5557"
    assert resolve_endpoint("tcp://127.0.0.1:5", "http://h:1") == "tcp://127.0.0.1:5"
    assert resolve_endpoint("ipc:///tmp/x.ipc", "http://h:1") == "ipc:///tmp/x.ipc"
    with pytest.raises(ValueError, match="only tcp"):
        resolve_endpoint("inproc://x", "http://h:1")
    doc = {"0": {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": "tcp://*:6000",
                 "replay_endpoint": "tcp://*:6001", "topic": "kv"}}
    assert sources_from_info(doc, "http://127.0.0.1:8000") == EventSource(
        "tcp://127.0.0.1:6000", "tcp://127.0.0.1:6001", "kv")
    assert sources_from_info({}, "http://h:1") is None
    assert sources_from_info({"0": {"enable_kv_cache_events": False}}, "http://h:1") is None
    two = {"0": doc["0"], "1": doc["0"]}
    with pytest.raises(ValueError, match="data-parallel ranks"):
        sources_from_info(two, "http://h:1")


# --- naming blocks from their tokens ---------------------------------------------------------
def vllm_like_hash(parent: bytes | None, tokens: tuple[int, ...]) -> bytes:
    """A stand-in for vLLM's SHA-256 block hash: chained, over the parent and the tokens."""
    return hashlib.sha256((parent or b"root") + repr(tokens).encode()).digest()


def test_translator_names_blocks_as_the_router_hashes_prompts():
    bs = 4
    prompt = list(range(100, 112))  # three full blocks
    lab = block_hash_chain(prompt, bs).tolist()
    h = []
    parent = None
    for i in range(3):
        parent = vllm_like_hash(parent, tuple(prompt[i * bs:(i + 1) * bs]))
        h.append(parent)
    tr = HashTranslator(bs)
    first = tr.stored(Stored((h[0], h[1]), None, tuple(prompt[:8]), bs, "GPU", None, False))
    assert first.block_hashes == (lab[0], lab[1]) and first.parent_block_hash is None
    # The next block names its parent by the engine's hash: the map gives the router's name.
    nxt = tr.stored(Stored((h[2],), h[1], tuple(prompt[8:]), bs, "GPU", None, False))
    assert nxt.block_hashes == (lab[2],) and nxt.parent_block_hash == lab[1]
    assert tr.removed(Removed((h[2], b"unknown"), "GPU")).block_hashes == (lab[2], b"unknown")
    assert len(tr) == 2  # h[2]'s last copy is gone


def test_translator_keeps_unnamable_blocks_under_the_engine_hash():
    tr = HashTranslator(2)
    no_tokens = tr.stored(Stored((11, 12), None, (), 2, "GPU", None, False))
    assert no_tokens.block_hashes == (11, 12) and tr.unnamed == 2
    salted = tr.stored(Stored((b"s",), None, (1, 2), 2, "GPU", (("salt",),), False))
    lora = tr.stored(Stored((b"l",), None, (1, 2), 2, "GPU", None, True))
    assert salted.block_hashes == (b"s",) and lora.block_hashes == (b"l",)
    orphan = tr.stored(Stored((b"o",), b"missing-parent", (1, 2), 2, "GPU", None, False))
    assert orphan.block_hashes == (b"o",) and orphan.parent_block_hash == b"missing-parent"
    # A child of an unnamable block cannot be named either (its parent's name is unknown).
    child = tr.stored(Stored((b"c",), 12, (3, 4), 2, "GPU", None, False))
    assert child.block_hashes == (b"c",) and child.parent_block_hash == 12


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_translated_stream_mirrors_the_engine_as_lab_hashes_would(data):
    """Invariant: feeding an exact index with a vLLM-hashed event stream through the
    translator gives the same reachable blocks as feeding it the lab's own hashes."""
    bs = 2
    prefixes = [tuple(data.draw(st.lists(st.integers(0, 5), min_size=0, max_size=6)))
                for _ in range(3)]
    prompts = []
    for _ in range(data.draw(st.integers(1, 8))):
        p = prefixes[data.draw(st.integers(0, 2))] + tuple(
            data.draw(st.lists(st.integers(0, 5), min_size=2, max_size=8)))
        prompts.append(p)
    tr = HashTranslator(bs)
    via_engine, via_lab = ExactPrefixIndex(), ExactPrefixIndex()
    cached: dict[bytes, int] = {}  # the "engine": engine hash -> lab name, cached blocks
    for p in prompts:
        n = len(p) // bs
        lab = block_hash_chain(list(p), bs).tolist()
        eng, parent = [], None
        for i in range(n):
            parent = vllm_like_hash(parent, p[i * bs:(i + 1) * bs])
            eng.append(parent)
        start = data.draw(st.integers(0, n))  # the engine stores the blocks it lacked
        while start > 0 and eng[start - 1] not in cached:
            start -= 1
        if start < n:
            ev = Stored(tuple(eng[start:n]), eng[start - 1] if start else None,
                        p[start * bs:n * bs], bs, "GPU", None, False)
            out = tr.stored(ev)
            via_engine.store(out.block_hashes, out.parent_block_hash)
            via_lab.store(lab[start:n], lab[start - 1] if start else None)
            for i in range(start, n):
                cached[eng[i]] = lab[i]
        if cached and data.draw(st.booleans()):  # evict one cached block (any, as LRU may)
            victim = data.draw(st.sampled_from(sorted(cached)))
            via_engine.remove(tr.removed(Removed((victim,), "GPU")).block_hashes)
            via_lab.remove((cached.pop(victim),))
    assert via_engine.rooted == via_lab.rooted
    assert via_engine.stored == via_lab.stored
    probe = [block_hash_chain(list(p), bs) for p in prompts]
    for chain in probe:
        assert via_engine.hit_blocks(chain) == via_lab.hit_blocks(chain)
    assert ROOT_HASH not in via_engine.stored
    assert np.all([isinstance(k, int) for k in via_engine.stored])
