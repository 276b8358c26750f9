"""Sessions and cache-aware routing through the gateway: the same decisions as the simulator."""
from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
from live_helpers import arun

import routing
from live.router import LiveRouter
from live.gateway import GatewayConfig, serve_gateway
from live.transport.client import make_session, stream_completion
from routing import Outcome, RequestInfo, ScrapedMetrics
from sim.cluster import BackendConfig, ClusterConfig, ClusterSim
from sim.engine import EngineConfig
from sim.latency import load_profile
from workload.hashing import block_hash_chain
from workload.trace import Trace

pytestmark = pytest.mark.timeout(120)


@contextlib.asynccontextmanager
async def gateway(backends, **kwargs):
    async with serve_gateway(GatewayConfig(backends=list(backends), **kwargs)) as gw:
        yield gw, gw.url


def test_the_gateway_keys_sessions_on_the_header_then_the_user_field(emulators):
    async def main():
        async with gateway(emulators, strategy="session_affinity") as (app, url), make_session(4) as s:
            served = {}
            for k in range(6):
                for key, kw in (("h", {"headers": {"x-session-id": "conv-h"}}),
                                ("u", {"extra": {"user": "conv-u"}}),
                                ("both", {"headers": {"x-session-id": "conv-x"}, "extra": {"user": "ignored"}})):
                    res = await stream_completion(s, url, prompt=list(range(40 + k)), max_tokens=2, **kw)
                    assert res.ok, res.error
                    served.setdefault(key, set()).add(res.routed_to)
            return served, set(app.fleet.strategy._table)

    served, sessions = arun(main())
    assert all(len(backends) == 1 for backends in served.values())  # each session stayed put
    assert sessions == {"conv-h", "conv-u", "conv-x"}  # the header wins over the user field


def test_the_gateway_reports_first_tokens_to_routers_that_price_prefill(emulators):
    async def main():
        async with gateway(emulators, strategy="kv_cost", params={"index": "approximate"}) as (app, url), \
                make_session(4) as s:
            task = asyncio.create_task(stream_completion(s, url, prompt=list(range(300)), max_tokens=120))
            router = app.fleet.router
            seen_pending = False
            for _ in range(400):  # until the request is in flight, then until its first token
                await asyncio.sleep(0.005)
                if router.inflight:
                    b = next(i for i, snap in enumerate(router.snapshots) if snap.inflight_requests)
                    pending = router._active[b].prefill_tokens
                    seen_pending |= pending == 300
                    if pending == 0:
                        break
            still_in_flight = router.inflight == 1
            res = await task
            return seen_pending, still_in_flight, res.ok, router._active[b].prefill_tokens

    seen_pending, still_in_flight, ok, after = arun(main())
    assert ok and still_in_flight and after == 0
    assert seen_pending  # 300 uncached prompt tokens pending until the first token came back


NEW = ["prefix_affinity", "precise_prefix", "cache_aware", "lmetric", "kv_cost", "session_affinity",
       "consistent_hash", "sticky_least_loaded", "weighted"]


@pytest.mark.parametrize("name", NEW)
def test_the_simulators_router_and_the_gateways_make_the_same_choices(name):
    """The same requests, scrapes, first tokens and finishes give the same decisions.

    One router is built as ``sim.cluster.ClusterSim`` builds it, the other as the
    gateway's ``LiveRouter`` does; requests are built as each mode builds them (the
    simulator from the trace's hashes, the gateway from the prompt's token ids).
    """
    n, blocks = 4, 2000
    profile = load_profile("cpu-tiny")
    config = ClusterConfig([BackendConfig(f"backend-{i}", "g", profile,
                                          EngineConfig(num_kv_blocks=blocks)) for i in range(n)])
    empty = Trace(request_id=np.zeros(0, np.int64), conversation_id=np.zeros(0, object),
                  turn=np.zeros(0, np.int32), input_len=np.zeros(0, np.int32), output_len=np.zeros(0, np.int32),
                  arrival_s=np.zeros(0), timestamp_s=np.zeros(0), hash_offsets=np.zeros(1, np.int64),
                  block_hashes=np.zeros(0, np.uint64), block_size=16)
    sim_router = ClusterSim(empty, routing.build(name, seed=3), config).router
    # Scrapes are the one thing the modes deliver differently (the simulator computes them on
    # demand from its engines, the gateway's scraper pushes them): here both get the same pushes.
    sim_router._scrape_source = None
    fleet = LiveRouter([f"http://127.0.0.1:{9000 + i}" for i in range(n)], routing.build(name, seed=3),
                      names=[f"backend-{i}" for i in range(n)], groups=["g"] * n, block_size=16)
    live_router = fleet.router
    for r in (sim_router, live_router):  # the gateway learns capacity as the simulator knows it
        for idx in r._prefix:
            idx.capacity = blocks
    rng = np.random.default_rng(0)
    system = rng.integers(0, 50_000, 256).tolist()
    convs = {c: system[: 128 * (c % 2)] + rng.integers(0, 50_000, 2000).tolist() for c in range(12)}
    inflight = []
    for k in range(160):
        now = 0.05 * k
        c = int(rng.integers(12))
        tokens = convs[c][: int(rng.integers(40, 1500))]
        if k % 7 == 0:
            for r in (sim_router, live_router):
                for i in range(n):
                    r.record_scrape(i, ScrapedMetrics(running=float(i + k % 3), waiting=float((k + i) % 4),
                                                      kv_usage=0.1 * ((k + i) % 9)), now)
        # the simulator hashes the trace's tokens; the gateway hashes the prompt it receives
        sim_req = RequestInfo(k, len(tokens), now, block_hash_chain(tokens, 16).tolist(), session_id=f"conv{c}")
        live_req = RequestInfo(k, len(tokens), now, block_hash_chain(tokens, 16), session_id=f"conv{c}")
        a = sim_router.dispatch(sim_req, now).backend
        b = live_router.dispatch(live_req, now).backend
        assert a == b, f"request {k}: the simulator's router chose {a}, the gateway's {b}"
        inflight.append((k, a))
        if len(inflight) > 2:
            for r in (sim_router, live_router):
                r.first_token(inflight[-3][0])
        if len(inflight) > 10:
            rid, backend = inflight.pop(0)
            for r in (sim_router, live_router):
                r.finish(Outcome(rid, backend, True, 100, 10, 0.1, 0.5))
