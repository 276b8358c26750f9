"""Subscribe to a KV-event publisher and decode it with vLLM's own classes.

Runs in vLLM's interpreter (``.vllm/venv/bin/python`` or ``$VLLM_PYTHON``) and imports
nothing from the lab: ``test_kv_events_vllm.py`` starts it beside an emulator to check
that what the emulator publishes is what vLLM's consumers read. It subscribes to
``--endpoint`` for ``--seconds``, then asks ``--replay`` for every batch from 0 (vLLM's
replay protocol, a REQ-style request on a DEALER socket) and prints one JSON line per
batch received live, then per batch replayed: its sequence number and events decoded
by ``vllm.distributed.kv_events.KVEventBatch`` (hashes as ints, or hex for bytes).
"""
from __future__ import annotations

import argparse
import json
import time

import msgspec
import zmq
from vllm.distributed.kv_events import (
    AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch, ZmqEventPublisher,
)


def _h(x):
    return x.hex() if isinstance(x, bytes) else x


def describe(seq: int, payload: bytes, decoder, source: str) -> dict:
    batch = decoder.decode(payload)
    events = []
    for ev in batch.events:
        if isinstance(ev, BlockStored):
            events.append({"type": "BlockStored", "block_hashes": [_h(h) for h in ev.block_hashes],
                           "parent_block_hash": _h(ev.parent_block_hash),
                           "token_ids": list(ev.token_ids), "block_size": ev.block_size,
                           "medium": ev.medium, "lora_id": ev.lora_id, "group_idx": ev.group_idx,
                           "kv_cache_spec_kind": ev.kv_cache_spec_kind})
        elif isinstance(ev, BlockRemoved):
            events.append({"type": "BlockRemoved", "block_hashes": [_h(h) for h in ev.block_hashes],
                           "medium": ev.medium})
        elif isinstance(ev, AllBlocksCleared):
            events.append({"type": "AllBlocksCleared"})
        else:
            raise TypeError(f"unexpected event {ev!r}")
    return {"source": source, "seq": seq, "ts": batch.ts, "rank": batch.data_parallel_rank,
            "events": events}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--replay", default=None)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--topic", default="")
    args = p.parse_args()
    decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, args.topic.encode())
    sub.connect(args.endpoint)
    print(json.dumps({"ready": True}), flush=True)
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        if sub.poll(50):
            topic, seq, payload = sub.recv_multipart()
            print(json.dumps(describe(int.from_bytes(seq, "big"), payload, decoder, "live")),
                  flush=True)
    if args.replay:
        req = ctx.socket(zmq.DEALER)
        req.connect(args.replay)
        req.send_multipart((b"", (0).to_bytes(8, "big")))
        while req.poll(5000):
            frames = req.recv_multipart()
            _, topic, seq, payload = frames
            if seq == ZmqEventPublisher.END_SEQ:
                print(json.dumps({"replay_end": True}), flush=True)
                break
            print(json.dumps(describe(int.from_bytes(seq, "big"), payload, decoder, "replay")),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
