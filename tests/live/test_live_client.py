"""``live.transport.client`` against small scripted SSE servers: timing, usage, failures."""
from __future__ import annotations

import asyncio
import contextlib
import json
import math

import pytest
from aiohttp import web

from live.transport.client import (
    check_health, list_models, make_session, post_stream, scrape_metrics, stream_completion,
    wait_healthy, CompletionResult,
)

from live_helpers import arun

pytestmark = pytest.mark.timeout(60)


def _event(doc) -> bytes:
    return b"data: " + json.dumps(doc).encode() + b"\n\n"


@contextlib.asynccontextmanager
async def scripted(handler, path="/v1/completions", method="POST"):
    app = web.Application()
    app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def sse_handler(n_chunks: int, gap_s: float, usage: dict | None, done: bool = True,
                prefill_s: float = 0.0):
    async def handler(request):
        body = await request.json()
        handler.bodies.append(body)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await asyncio.sleep(prefill_s)
        for k in range(n_chunks):
            if k:
                await asyncio.sleep(gap_s)
            await resp.write(_event({"choices": [{"index": 0, "text": f"t{k}",
                                                  "finish_reason": None}]}))
        if usage is not None:
            await resp.write(_event({"choices": [], "usage": usage}))
        if done:
            await resp.write(b"data: [DONE]\n\n")
        return resp
    handler.bodies = []
    return handler


def test_chunk_times_ttft_itl_and_usage():
    usage = {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16,
             "prompt_tokens_details": {"cached_tokens": 4}}
    handler = sse_handler(5, 0.03, usage, prefill_s=0.05)

    async def main():
        async with scripted(handler) as url, make_session(4) as s:
            return await stream_completion(s, url, prompt=[1, 2, 3], max_tokens=9, keep_text=True)

    r = arun(main())
    assert r.ok and r.status == 200 and r.error == ""
    assert len(r.chunk_times_s) == 5
    assert r.ttft_s == r.chunk_times_s[0] and r.ttft_s >= 0.05
    assert len(r.itl_s) == 4 and all(g >= 0.025 for g in r.itl_s)  # spread, not bunched
    assert (r.output_tokens, r.prompt_tokens, r.cached_tokens) == (9, 7, 4)  # usage wins over chunks
    assert r.e2el_s >= r.chunk_times_s[-1]
    assert r.text == "t0t1t2t3t4"
    assert r.tpot_s == pytest.approx((r.e2el_s - r.ttft_s) / 8)
    sent = handler.bodies[0]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["ignore_eos"] is True and sent["prompt"] == [1, 2, 3] and sent["max_tokens"] == 9


def test_without_usage_the_chunks_are_counted():
    async def main():
        async with scripted(sse_handler(3, 0.0, None)) as url, make_session(2) as s:
            return await stream_completion(s, url, prompt="hi", max_tokens=3)

    r = arun(main())
    assert r.ok and r.output_tokens == 3 and r.prompt_tokens == -1 and r.cached_tokens == -1


def test_stream_cut_before_done_is_an_error_keeping_what_arrived():
    async def main():
        async with scripted(sse_handler(2, 0.0, None, done=False)) as url, make_session(2) as s:
            return await stream_completion(s, url, prompt="hi", max_tokens=3)

    r = arun(main())
    assert not r.ok and "[DONE]" in r.error and len(r.chunk_times_s) == 2


def test_http_error_carries_the_openai_message():
    async def handler(request):
        return web.json_response({"error": {"message": "max_tokens too big", "type": "BadRequestError",
                                            "code": 400}}, status=400)

    async def main():
        async with scripted(handler) as url, make_session(2) as s:
            return await stream_completion(s, url, prompt="hi", max_tokens=3)

    r = arun(main())
    assert not r.ok and r.status == 400 and "max_tokens too big" in r.error and "400" in r.error


def test_error_event_inside_the_stream_fails_the_request():
    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_event({"choices": [{"index": 0, "text": "a"}]}))
        await resp.write(_event({"error": {"message": "engine died", "code": 500}}))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def main():
        async with scripted(handler) as url, make_session(2) as s:
            return await stream_completion(s, url, prompt="hi", max_tokens=3)

    r = arun(main())
    assert not r.ok and r.error == "engine died"


def test_timeout_keeps_partial_chunks_and_the_given_result_object():
    async def main():
        async with scripted(sse_handler(50, 0.02, None)) as url, make_session(2) as s:
            res = CompletionResult(ok=False, status=0, start=math.nan)
            out = await post_stream(s, url + "/v1/completions", b'{"prompt": "x"}', timeout_s=0.2,
                                    result=res)
            return res, out

    res, out = arun(main())
    assert out is res
    assert res.timed_out and not res.ok and "timeout" in res.error
    assert 1 <= len(res.chunk_times_s) < 50 and res.output_tokens == len(res.chunk_times_s)


def test_connection_refused_is_reported_not_raised():
    async def main():
        async with make_session(2) as s:
            # A port nothing listens on: bind one, note it, close it.
            import socket
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.close()
            return (await stream_completion(s, f"http://127.0.0.1:{port}", prompt="x", max_tokens=1),
                    await check_health(s, f"http://127.0.0.1:{port}"))

    r, healthy = arun(main())
    assert not r.ok and r.status == 0 and r.error and not healthy


def test_models_health_metrics_and_wait():
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
    )
    calls = {"health": 0}

    async def health(request):
        calls["health"] += 1
        return web.Response(status=200 if calls["health"] >= 3 else 503)

    async def model_list(request):
        return web.json_response({"object": "list", "data": [{"id": "m1", "object": "model"}]})

    async def metrics(request):
        return web.Response(text=text)

    async def main():
        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/v1/models", model_list)
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        try:
            async with make_session(2) as s:
                waited = await wait_healthy(s, url, timeout_s=5, interval_s=0.01)
                return waited, await list_models(s, url), await scrape_metrics(s, url)
        finally:
            await runner.cleanup()

    waited, models, m = arun(main())
    assert calls["health"] == 3 and waited >= 0
    assert models == ["m1"]
    assert m.running == 2.0 and m.kv_usage == 0.5 and math.isnan(m.waiting)


def test_wait_healthy_times_out_naming_the_url():
    async def main():
        async with make_session(2) as s:
            await wait_healthy(s, "http://127.0.0.1:9", timeout_s=0.3, interval_s=0.05)

    with pytest.raises(TimeoutError, match="127.0.0.1:9"):
        arun(main())


def test_make_session_rejects_bad_concurrency():
    async def main():
        make_session(0)

    with pytest.raises(ValueError, match="concurrency"):
        arun(main())
