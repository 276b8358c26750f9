"""Peers' routers in front of the emulators (skipped unless installed in ``.bench-venv``).

``python -m venv .bench-venv && .bench-venv/bin/pip install vllm-router`` (what
``benchmarks/router_side_by_side.py`` and ``benchmarks/gateway_overhead.py`` use).
"""
from __future__ import annotations

import asyncio

import pytest
from live_helpers import arun, get_json

from live.emulator.server import prompt_digest
from live.emulator.spawn import spawn
from live.peer_routers import LAB_MODEL, VllmRouter, _policy_flags, vllm_router_binary
from live.run import reset_backends
from live.transport.client import make_session, stream_completion

needs_vllm_router = pytest.mark.skipif(vllm_router_binary() is None,
                                       reason="vllm-router not installed (.bench-venv)")


def test_policy_flags_spell_out_the_parameters():
    assert _policy_flags("round_robin") == ["--policy", "round_robin"]
    flags = _policy_flags("cache_aware")
    assert flags[:2] == ["--policy", "cache_aware"]
    assert flags[flags.index("--cache-threshold") + 1] == "0.3"
    assert flags[flags.index("--balance-abs-threshold") + 1] == "64"
    assert LAB_MODEL["cache_aware"][1]["cache_threshold"] == 0.3
    with pytest.raises(ValueError, match="one of"):
        _policy_flags("nope")


@needs_vllm_router
@pytest.mark.slow
def test_vllm_router_routes_to_emulators():
    with spawn(2, "cpu-tiny", args=["--fixed-step", "0.002", "--block-size", "16"]) as urls:
        with VllmRouter(urls, "round_robin") as rr:
            async def send(url, prompts):
                async with make_session() as s:
                    return await asyncio.gather(*(stream_completion(s, url, prompt=p, max_tokens=4)
                                                  for p in prompts))
            prompts = [list(range(k * 100, k * 100 + 40)) for k in range(8)]
            rs = arun(send(rr.url, prompts))
            assert all(r.ok and r.output_tokens == 4 for r in rs)
            logs = [get_json(u + "/_emulator/requests")["requests"] for u in urls]
            assert sorted(len(x) for x in logs) == [4, 4]  # round robin: half each
            seen = {d for log in logs for d, _, _ in log}
            assert seen == {prompt_digest(p) for p in prompts}
        reset_backends(urls, emulated=True)
        with VllmRouter(urls, "cache_aware") as ca:
            head = list(range(5000, 5200))

            async def sequential():
                async with make_session() as s:
                    return [await stream_completion(s, ca.url, prompt=head + [k] * 8, max_tokens=2)
                            for k in range(6)]
            rs = arun(sequential())
            # a shared 200-token head: after the first, every request matches it and
            # goes where it is cached (the backend reports the hit)
            assert all(r.ok for r in rs) and all(r.cached_tokens >= 192 for r in rs[1:])
            counts = sorted(len(get_json(u + "/_emulator/requests")["requests"]) for u in urls)
            assert counts == [0, 6]


@needs_vllm_router
@pytest.mark.slow
def test_vllm_router_consistent_hash_sticks_by_header_not_by_the_body_user_field():
    """What the side-by-side found (docs/cache-routing.md): vllm-router 0.1.17's
    consistent_hash keys a /v1/completions request on its x-session-id header, not on
    the body's ``user`` field (which the lab's load generator sends and the lab's model
    reads), so without the header a conversation's turns scatter."""
    import aiohttp

    with spawn(4, "cpu-tiny", args=["--fixed-step", "0.002"]) as urls, \
            VllmRouter(urls, "consistent_hash") as router:
        def where(sent):
            out = {}
            for b, u in enumerate(urls):
                for d, _, _ in get_json(u + "/_emulator/requests")["requests"]:
                    if d in sent:
                        out.setdefault(sent[d], set()).add(b)
            return out

        async def conversations(header: bool):
            sent = {}
            async with aiohttp.ClientSession() as s:
                for conv in range(3):
                    prompt = []
                    for turn in range(6):
                        prompt = prompt + list(range(1000 * conv + 100 * turn, 1000 * conv + 100 * turn + 60))
                        body = {"prompt": prompt, "max_tokens": 2, "stream": True, "user": f"c{conv}"}
                        hdrs = {"x-session-id": f"c{conv}"} if header else None
                        async with s.post(router.url + "/v1/completions", json=body, headers=hdrs) as r:
                            assert r.status == 200
                            await r.read()
                        sent[prompt_digest(prompt)] = conv
            return sent

        by_header = where(arun(conversations(True)))
        assert all(len(bs) == 1 for bs in by_header.values())  # each conversation sticks
        reset_backends(urls, emulated=True)
        by_user = where(arun(conversations(False)))
        assert any(len(bs) > 1 for bs in by_user.values())  # turns scatter
