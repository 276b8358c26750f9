"""KV-cache events live: the emulator publishes its engine's cache, the gateway mirrors it.

Everything runs in this process on loopback (in-process emulators and gateway, one
event loop), so each test can read the engine's real block table and the gateway's
mirror side by side. The wire format itself is in ``test_kv_events_wire.py``.
"""
from __future__ import annotations

import asyncio
import socket
from collections import Counter

import numpy as np
import pytest
import zmq
import zmq.asyncio
from live_helpers import arun, tiny_emulator

from live.gateway import GatewayConfig, serve_gateway
from live.kv_events.publisher import KVEventsConfig, parse_kv_events_config
from live.kv_events.subscriber import BackendStream, EventSource
from live.kv_events.wire import (
    AllBlocksClearedMsg, BlockStoredMsg, Cleared, Removed, Stored, decode_batch, encode_batch,
    seq_bytes, seq_of,
)
from live.transport.client import make_session, stream_completion
from routing import BackendSpec, Router, build
from workload.hashing import block_hash_chain

pytestmark = pytest.mark.slow

WITH_REPLAY = KVEventsConfig(enable_kv_cache_events=True, endpoint="tcp://*:0",
                             replay_endpoint="tcp://*:0")
NO_REPLAY = KVEventsConfig(enable_kv_cache_events=True, endpoint="tcp://*:0")


def engine_cache(emu) -> dict:
    """The engine's cached blocks, copies per hash (its block table, not its events)."""
    eng = emu.driver.engine
    eng.sync_all()
    return eng.kv.cached_hashes(list(eng.requests.values()) + list(eng.scheduler.finishing))


def prompts(n: int, seed: int = 0, shared: int = 3) -> list[list[int]]:
    """Prompts with shared 64-token system prompts and private tails (evictions on 64 blocks)."""
    rng = np.random.default_rng(seed)
    heads = [rng.integers(0, 30000, 64).tolist() for _ in range(shared)]
    return [heads[k % shared] + rng.integers(0, 30000, int(rng.integers(5, 90))).tolist()
            for k in range(n)]


async def send(url: str, ps: list[list[int]], gap_s: float = 0.01, max_tokens: int = 8) -> list:
    async with make_session(concurrency=16) as s:
        tasks = []
        for p in ps:
            tasks.append(asyncio.ensure_future(stream_completion(s, url, prompt=p,
                                                                 max_tokens=max_tokens)))
            await asyncio.sleep(gap_s)
        return await asyncio.gather(*tasks)


async def settle(*emus, extra_s: float = 0.25) -> None:
    """Wait until every engine is idle, then for the events to arrive."""
    for _ in range(400):
        if not any(e.driver.engine.has_work for e in emus):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(extra_s)


def mirror(gw, i: int) -> dict:
    return dict(gw.fleet.router.exact_index(i).stored)


def test_emulator_stream_rebuilds_the_engine_cache_exactly():
    """Subscribe with the lab's decoder, replay stores and removals, compare with the block table."""
    async def main():
        async with tiny_emulator(kv_events=WITH_REPLAY, num_kv_blocks=64) as emu:
            ctx = zmq.asyncio.Context.instance()
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(emu.publisher.endpoint)
            await asyncio.sleep(0.2)  # the subscription reaches the publisher
            counts: Counter = Counter()
            seqs = []

            async def listen():
                while True:
                    topic, seq, payload = await sub.recv_multipart()
                    seqs.append(seq_of(seq))
                    for ev in decode_batch(payload).events:
                        if type(ev) is Stored:
                            counts.update(ev.block_hashes)
                            n = len(ev.block_hashes)
                            assert len(ev.token_ids) in (0, n * ev.block_size)
                        elif type(ev) is Removed:
                            counts.subtract(ev.block_hashes)
                        else:
                            counts.clear()
            task = asyncio.ensure_future(listen())
            rs = await send(emu.url, prompts(40))
            await settle(emu)
            task.cancel()
            sub.close(linger=0)
            assert all(r.ok for r in rs)
            cache = engine_cache(emu)
            assert +counts == Counter(cache) and cache  # removals happened: 64 blocks is tight
            assert seqs == list(range(len(seqs))) and len(seqs) > 5
            assert emu.publisher.published == len(seqs)
    arun(main(), 60)


def test_stored_blocks_carry_their_prompt_tokens():
    async def main():
        async with tiny_emulator(kv_events=WITH_REPLAY) as emu:
            ctx = zmq.asyncio.Context.instance()
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            sub.connect(emu.publisher.endpoint)
            await asyncio.sleep(0.2)
            prompt = list(range(1000, 1040))  # two full 16-token blocks, 8 tokens more
            await send(emu.url, [prompt], max_tokens=30)  # 70 tokens: blocks 3 and 4 generated
            await settle(emu)
            stored = []
            while await sub.poll(50):
                _, _, payload = await sub.recv_multipart()
                stored += [e for e in decode_batch(payload).events if type(e) is Stored]
            sub.close(linger=0)
            from workload.hashing import block_hash_chain
            chain = block_hash_chain(prompt, 16).tolist()
            assert stored[0].block_hashes == tuple(chain) and stored[0].parent_block_hash is None
            assert stored[0].token_ids == tuple(prompt[:32]) and stored[0].medium == "GPU"
            # generated blocks: hashes no prompt has, no token ids (the output is filler)
            later = [h for e in stored[1:] for h in e.block_hashes]
            assert len(later) == 2 and not set(later) & set(chain)
            assert all(e.token_ids == () for e in stored[1:])
            assert stored[1].parent_block_hash == chain[-1]
    arun(main(), 60)


def test_gateway_mirror_equals_each_engine_cache():
    async def main():
        async with tiny_emulator(kv_events=WITH_REPLAY, num_kv_blocks=64) as e1, \
                tiny_emulator(kv_events=WITH_REPLAY, num_kv_blocks=64) as e2, \
                serve_gateway(GatewayConfig(backends=[e1.url, e2.url],
                                            strategy="precise_prefix")) as gw:
            await asyncio.sleep(0.2)
            rs = await send(gw.url, prompts(50, seed=1))
            await settle(e1, e2)
            assert all(r.ok for r in rs)
            router = gw.fleet.router
            for i, emu in enumerate((e1, e2)):
                assert router.kv_events_trusted(i)
                assert mirror(gw, i) == engine_cache(emu) and mirror(gw, i)
            # joined by replay before any traffic: no decision fell back
            assert router.precise_fallbacks == 0 and router.precise_lookups == 2 * 50
            text = gw.metrics.exposition().decode()
            assert 'gateway_kv_index_trusted{backend="backend-0"} 1.0' in text
            assert 'gateway_precise_fallbacks_total{backend="backend-1"} 0.0' in text
            # the mirror routes: a new prompt is cached at one backend only; its follow-up
            # goes there and hits all of it (by chance: one time in two, each round)
            for k in range(6):
                first = list(range(20000 + 1000 * k, 20000 + 1000 * k + 160))  # 10 blocks
                await send(gw.url, [first])
                await settle(e1, e2, extra_s=0.1)
                held = [router.exact_index(i).hit_blocks(block_hash_chain(first, 16)) for i in (0, 1)]
                assert sorted(held) == [0, 10]
                r = (await send(gw.url, [first + [7] * 40]))[0]
                await settle(e1, e2, extra_s=0.1)
                assert r.ok and r.cached_tokens == 160
    arun(main(), 60)


def test_gap_is_repaired_by_replay_and_the_mirror_stays_exact():
    async def main():
        async with tiny_emulator(kv_events=WITH_REPLAY, num_kv_blocks=64) as emu, \
                serve_gateway(GatewayConfig(backends=[emu.url], strategy="precise_prefix")) as gw:
            await asyncio.sleep(0.2)
            await send(gw.url, prompts(10, seed=2))
            await settle(emu)
            emu.publisher.drop_next(3)  # the next three batches never reach the wire
            await send(gw.url, prompts(20, seed=3))
            await settle(emu)
            stats = gw.fleet.kv_streams[0].stats
            assert emu.publisher.dropped == 3
            assert stats.gaps >= 1 and stats.replays >= 1 and stats.replayed >= 3
            assert stats.replay_failures == 0
            assert gw.fleet.router.kv_events_trusted(0)
            assert mirror(gw, 0) == engine_cache(emu)
            assert gw.fleet.router.precise_fallbacks == 0
    arun(main(), 60)


def test_gap_without_replay_falls_back_and_a_reset_recovers():
    async def main():
        async with tiny_emulator(kv_events=NO_REPLAY, num_kv_blocks=64) as emu, \
                serve_gateway(GatewayConfig(backends=[emu.url], strategy="precise_prefix")) as gw:
            router = gw.fleet.router
            await asyncio.sleep(0.2)
            await send(gw.url, prompts(10, seed=4))
            await settle(emu)
            assert router.kv_events_trusted(0)
            emu.publisher.drop_next(2)
            await send(gw.url, prompts(10, seed=5))
            await settle(emu)
            assert not router.kv_events_trusted(0)
            before = router.precise_fallbacks_by_backend[0]
            await send(gw.url, prompts(3, seed=6))
            assert router.precise_fallbacks_by_backend[0] == before + 3  # counted, still served
            await settle(emu)
            assert router.event_stats(0).gaps >= 1
            # an idle backend's cache reset (vLLM's endpoint) publishes AllBlocksCleared
            async with make_session() as s:
                async with s.post(emu.url + "/reset_prefix_cache") as resp:
                    assert (await resp.json()) == {"success": True}
            await asyncio.sleep(0.2)
            assert router.kv_events_trusted(0) and mirror(gw, 0) == engine_cache(emu) == {}
            await send(gw.url, prompts(5, seed=7))
            await settle(emu)
            assert router.kv_events_trusted(0) and mirror(gw, 0) == engine_cache(emu)
    arun(main(), 60)


def test_resync_reset_mode_asks_the_backend_to_reset():
    async def main():
        async with tiny_emulator(kv_events=NO_REPLAY, num_kv_blocks=64) as emu, \
                serve_gateway(GatewayConfig(backends=[emu.url], strategy="precise_prefix",
                                            kv_events_resync="reset")) as gw:
            await asyncio.sleep(0.2)
            emu.publisher.drop_next(1)
            await send(gw.url, prompts(8, seed=8))
            await settle(emu)
            for _ in range(40):  # the resync loop runs each second
                if gw.fleet.router.kv_events_trusted(0):
                    break
                await asyncio.sleep(0.1)
            assert gw.fleet.router.kv_events_trusted(0)
            assert gw.fleet.kv_streams[0].stats.resets_requested >= 1
            assert mirror(gw, 0) == engine_cache(emu) == {}
    arun(main(), 60)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("replay", [True, False])
def test_backend_restart_empties_the_mirror_and_follows_the_new_engine(replay):
    from live.transport.http import serving

    async def main():
        http_port, pub_port, rep_port = _free_port(), _free_port(), _free_port()
        cfg = parse_kv_events_config(
            '{"enable_kv_cache_events": true, "endpoint": "tcp://*:%d"%s}'
            % (pub_port, ', "replay_endpoint": "tcp://*:%d"' % rep_port if replay else ""))

        def emulator():
            ctx = tiny_emulator(kv_events=cfg, num_kv_blocks=64)
            ctx.sock.close()
            return serving(ctx.server, "127.0.0.1", http_port)  # the same ports each time

        first = emulator()
        emu = await first.__aenter__()
        try:
            async with serve_gateway(GatewayConfig(backends=[emu.url], strategy="precise_prefix",
                                                   health_interval_s=0.2, probe_interval_s=0.2,
                                                   eject_after=1)) as gw:
                await asyncio.sleep(0.2)
                await send(gw.url, prompts(15, seed=9))
                await settle(emu)
                assert mirror(gw, 0) == engine_cache(emu) and mirror(gw, 0)
                await first.__aexit__(None, None, None)
                first = None
                await asyncio.sleep(0.5)
                async with emulator() as emu2:  # a new process would do the same
                    for _ in range(50):
                        if gw.fleet.healthy(0):
                            break
                        await asyncio.sleep(0.1)
                    await send(gw.url, prompts(15, seed=10))
                    await settle(emu2, extra_s=0.5)
                    stream = gw.fleet.kv_streams[0]
                    assert stream.stats.restarts == 1
                    assert gw.fleet.router.kv_events_trusted(0)
                    assert mirror(gw, 0) == engine_cache(emu2) and mirror(gw, 0)
        finally:
            if first is not None:
                await first.__aexit__(None, None, None)
    arun(main(), 60)


def test_dropped_subscription_is_noticed_and_repaired():
    async def main():
        async with tiny_emulator(kv_events=WITH_REPLAY, num_kv_blocks=64) as emu, \
                serve_gateway(GatewayConfig(backends=[emu.url], strategy="precise_prefix")) as gw:
            await asyncio.sleep(0.2)
            stream = gw.fleet.kv_streams[0]
            await send(gw.url, prompts(5, seed=13))
            await settle(emu)
            stream._sub.close(linger=0)  # the subscription is gone; batches go nowhere
            await send(gw.url, prompts(10, seed=11))
            await settle(emu)
            stream.resubscribe()
            await asyncio.sleep(0.3)
            await send(gw.url, prompts(10, seed=12))
            await settle(emu)
            assert stream.stats.gaps >= 1 and stream.stats.replayed >= 1
            assert gw.fleet.router.kv_events_trusted(0)
            assert mirror(gw, 0) == engine_cache(emu)
    arun(main(), 60)


def test_bad_messages_and_block_size_mismatch_never_crash_the_stream():
    """A raw publisher sends garbage, then a good batch, then a 32-token block."""
    async def main():
        ctx = zmq.asyncio.Context.instance()
        pub = ctx.socket(zmq.PUB)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        router = Router(build("precise_prefix"), [BackendSpec("b0")], block_size=16)
        clock = [0.0]
        stream = BackendStream(0, "b0", EventSource(f"tcp://127.0.0.1:{port}"), router,
                               lambda: clock[0], 16)
        task = asyncio.ensure_future(stream.run())
        await asyncio.sleep(0.3)
        good = BlockStoredMsg([5], None, list(range(16)), 16, None, "GPU", None)
        await pub.send_multipart([b"", seq_bytes(0), encode_batch(0.0, [AllBlocksClearedMsg()])])
        await pub.send_multipart([b"", seq_bytes(1), b"not msgpack"])  # lost content
        await pub.send_multipart([b"only one frame"])
        await pub.send_multipart([b"", b"short", b""])
        await pub.send_multipart([b"", seq_bytes(2), encode_batch(0.0, [good])])
        await asyncio.sleep(0.3)
        assert stream.stats.decode_errors == 3
        assert not router.kv_events_trusted(0)  # batch 1's content is missing: a gap
        assert router.event_stats(0).gaps == 1
        await pub.send_multipart([b"", seq_bytes(3), encode_batch(0.0, [AllBlocksClearedMsg()])])
        await asyncio.sleep(0.2)
        assert router.kv_events_trusted(0)  # a reset heals it
        wrong = BlockStoredMsg([6], None, list(range(32)), 32, None, "GPU", None)
        await pub.send_multipart([b"", seq_bytes(4), encode_batch(0.0, [wrong])])
        await asyncio.sleep(0.2)
        assert "--block-size 32" in stream.disabled and not router.kv_events_trusted(0)
        assert not task.done()
        task.cancel()
        pub.close(linger=0)
    arun(main(), 30)


def test_emulator_endpoints_other_routers_call():
    async def main():
        async with tiny_emulator(kv_events=WITH_REPLAY) as emu:
            async with make_session() as s:
                async def get(path):
                    async with s.get(emu.url + path) as r:
                        return r.status, await r.json(content_type=None)

                async def post(path, doc=None):
                    async with s.post(emu.url + path, json=doc or {}) as r:
                        return r.status, await r.json(content_type=None)

                status, src = await get("/kv_event_sources")
                assert status == 200 and src["0"]["endpoint"] == emu.publisher.endpoint
                assert src["0"]["replay_endpoint"] == emu.publisher.replay_endpoint
                status, tok = await post("/tokenize", {"prompt": "hello world"})
                assert status == 200 and tok["count"] == len(tok["tokens"]) > 0
                status, detok = await post("/detokenize", {"tokens": tok["tokens"]})
                assert status == 200 and detok["prompt"] == "hello world"
                status, chat = await post("/tokenize", {"messages": [{"role": "user",
                                                                      "content": "hi"}]})
                assert status == 200 and chat["count"] > tok["count"] - 2
                assert (await post("/tokenize", {"prompt": 3}))[0] == 400
                assert (await post("/detokenize", {"tokens": ["x"]}))[0] == 400
                assert (await post("/tokenize", {"prompt": "x", "model": "other"}))[0] == 404
                assert (await get("/version"))[1]["version"] == "0.32.0"
                for path in ("/get_server_info", "/server_info", "/get_model_info"):
                    status, info = await get(path)
                    assert status == 200 and info["max_model_len"] == emu.max_model_len
                assert (await get("/load")) == (200, {"server_load": 0})
                assert (await get("/is_sleeping")) == (200, {"is_sleeping": False})
                async with s.get(emu.url + "/ping") as r:
                    assert r.status == 200
                # /reset_prefix_cache refuses while a request holds blocks (as vLLM does)
                task = asyncio.ensure_future(stream_completion(s, emu.url, prompt=list(range(64)),
                                                               max_tokens=40))
                await asyncio.sleep(0.1)
                assert (await post("/reset_prefix_cache")) == (200, {"success": False})
                await task
                assert (await post("/reset_prefix_cache")) == (200, {"success": True})
        async with tiny_emulator() as plain:
            async with make_session() as s:
                async with s.get(plain.url + "/kv_event_sources") as r:
                    assert r.status == 200 and await r.json() == {}
    arun(main(), 60)


def test_kv_events_config_errors_name_the_key():
    with pytest.raises(ValueError, match="unknown key.*endpont.*allowed: enable_kv_cache_events"):
        parse_kv_events_config('{"enable_kv_cache_events": true, "endpont": "tcp://*:1"}')
    with pytest.raises(ValueError, match="publisher must be"):
        parse_kv_events_config('{"publisher": "kafka"}')
    with pytest.raises(ValueError, match="tcp://host:port"):
        parse_kv_events_config('{"enable_kv_cache_events": true, "endpoint": "ipc:///x"}')
    with pytest.raises(ValueError, match="not JSON"):
        parse_kv_events_config("{enable")
    assert not parse_kv_events_config('{"publisher": "null"}').enabled
    with pytest.raises(ValueError, match="--kv-events: 1 endpoints for 2 backends"):
        GatewayConfig(backends=["http://a:1", "http://b:2"], kv_events=["tcp://*:1"]).validate()
    with pytest.raises(ValueError, match="--kv-events must be auto, off"):
        GatewayConfig(backends=["http://a:1"], kv_events="sometimes").validate()
    with pytest.raises(ValueError, match="--kv-events-resync"):
        GatewayConfig(backends=["http://a:1"], kv_events_resync="pray").validate()
    cfg = GatewayConfig(backends=["http://10.0.0.1:1", "http://b:2"], kv_events=["tcp://*:7", ""],
                        kv_events_replay=["tcp://*:8", ""])
    cfg.validate()
    assert cfg.kv_sources() == [EventSource("tcp://10.0.0.1:7", "tcp://10.0.0.1:8"), None]


PRECISE_SCENARIO = """\
name = "kv-live"
seeds = [0]
num_requests = 30

[workload]
source = "synthetic"
[workload.synthetic]
input = {dist = "uniform", min = 40, max = 200}
output = {dist = "uniform", min = 4, max = 12}
prefix_groups = 2
prefix_len = 64
num_requests = 100

[arrivals]
pattern = "poisson"
rate = 20.0

[[cluster.groups]]
name = "cpu"
count = 2
profile = "cpu-tiny"
block_size = 16

[router]
strategies = [%s]
"""


def test_live_emulators_publish_events_only_for_strategies_that_read_them():
    from dataclasses import asdict

    from live.emulator.spawn import spawn_specs
    from live.loadgen import LoadOptions, replay
    from live.router import LiveRouter
    from live.run import emulator_specs
    from scenarios import expand_grid, parse_scenario
    from workload import build_trace

    plain = expand_grid(parse_scenario(PRECISE_SCENARIO % '"round_robin", "prefix_affinity"'))[0]
    assert all("--kv-events-config" not in s.args for s in emulator_specs(plain))
    point = expand_grid(parse_scenario(PRECISE_SCENARIO % '"round_robin", "precise_prefix"'))[0]
    specs = emulator_specs(point)
    assert all("--kv-events-config" in s.args for s in specs)
    sc = point.scenario
    trace = build_trace(asdict(sc.workload), asdict(sc.arrivals), seed=0, num_requests=30,
                        cache_dir=False)
    with spawn_specs(specs) as children:
        urls = [c.url for c in children]
        fleet = LiveRouter(urls, build("precise_prefix"), block_size=16, scrape=False)
        result = arun(replay(trace, router=fleet, options=LoadOptions(timeout_s=60, drain_s=60)), 90)
        assert all(r.status == "ok" for r in result.records)
        # client-side routing found each emulator's publisher and never fell back
        assert all(s is not None and s.stats.batches > 0 for s in fleet.kv_streams)
        assert fleet.router.precise_fallbacks == 0 and fleet.router.precise_lookups == 2 * 30
        hits = sum(r.router_prefix_hit_tokens > 0 for r in result.records)
        assert hits > 0  # the shared 64-token heads were seen in the mirrors
