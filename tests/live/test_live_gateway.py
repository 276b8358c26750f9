"""The gateway in front of emulator processes: pass-through, failover, health, limits."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys

import openai
import pytest
from live_helpers import TINY, arun, get_json, post_json

from live.transport.client import make_session, stream_completion
from live.emulator import spawn
from live.gateway import Gateway, GatewayConfig, serve_gateway
from live.transport.prometheus import iter_samples, sum_by_name
from sim.latency import load_profile

pytestmark = pytest.mark.timeout(120)


def dead_url() -> str:
    """A loopback URL nothing listens on."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


@contextlib.asynccontextmanager
async def gateway(backends, **kwargs):
    kwargs.setdefault("strategy", "round_robin")
    async with serve_gateway(GatewayConfig(backends=list(backends), **kwargs)) as gw:
        yield gw, gw.url


def assert_no_leak(app: Gateway) -> None:
    assert app.fleet.router.inflight == 0
    assert all(s.inflight_requests == 0 and s.inflight_tokens == 0
               for s in app.fleet.router.snapshots)


async def gateway_metrics(session, url) -> dict[str, float]:
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    return {k: v for k, (v, _) in sum_by_name(text).items()}


def test_stream_passes_through_chunk_by_chunk(emulators):
    tpot = load_profile(TINY).model.single_request(64, 30)[1]

    async def main():
        async with gateway(emulators) as (app, url), make_session(2) as s:
            via = await stream_completion(s, url, prompt=list(range(64)), max_tokens=30)
            assert_no_leak(app)
            return via

    via = arun(main())
    assert via.ok and via.output_tokens == 30 and via.routed_to in ("backend-0", "backend-1")
    # Chunks arrive one decode step apart, as the backend sends them, not at the end.
    assert len(via.chunk_times_s) >= 15
    gaps = sorted(via.itl_s)
    assert gaps[len(gaps) // 2] == pytest.approx(tpot, rel=0.5)
    assert via.ttft_s < via.e2el_s / 3


def test_openai_client_streaming_and_not(emulators):
    async def main():
        async with gateway(emulators) as (app, url):
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            done = await client.completions.create(model=TINY, prompt="Hello", max_tokens=5,
                                                   extra_body={"ignore_eos": True})
            stream = await client.chat.completions.create(
                model=TINY, messages=[{"role": "user", "content": "Hi there"}], max_tokens=4,
                stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True})
            pieces, usage = [], None
            async for chunk in stream:
                if chunk.choices:
                    pieces.append(chunk.choices[0].delta.content or "")
                if chunk.usage:
                    usage = chunk.usage
            models = await client.models.list()
            await client.close()
            assert_no_leak(app)
            return done, pieces, usage, [m.id for m in models.data]

    done, pieces, usage, models = arun(main())
    assert done.choices[0].text and done.usage.completion_tokens == 5
    assert "".join(pieces).strip() and usage.completion_tokens == 4
    assert models == [TINY]


@pytest.mark.parametrize("failing, kind", [("dead", "connect"), ("erroring", "status")])
def test_failover_before_first_byte(emulators, failing, kind):
    bad = dead_url() if failing == "dead" else emulators[0]
    post_json(emulators[0] + "/_emulator/faults", {"error_rate": 1.0, "error_status": 500})

    async def main():
        async with gateway([bad, emulators[1]], eject_after=100) as (app, url), \
                make_session(4) as s:
            results = [await stream_completion(s, url, prompt=[1, 2, 3], max_tokens=3)
                       for _ in range(4)]
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            assert_no_leak(app)
            return results, text

    results, text = arun(main())
    assert all(r.ok and r.routed_to == "backend-1" for r in results)
    errors = {(lb["backend"], lb["kind"]): v for n, lb, v in iter_samples(text)
              if n == "gateway_upstream_errors_total"}
    retries = {lb["backend"]: v for n, lb, v in iter_samples(text) if n == "gateway_retries_total"}
    # Round robin sends half the first attempts to the failing backend; each failure
    # was retried on the other one before any byte reached the client.
    assert errors[("backend-0", kind)] == 2 and retries["backend-0"] == 2
    assert retries["backend-1"] == 0


def test_all_attempts_failing_returns_the_backend_error(emulators):
    for u in emulators:
        post_json(u + "/_emulator/faults", {"error_rate": 1.0, "error_status": 503})

    async def main():
        async with gateway(emulators, eject_after=100, max_retries=1) as (app, url), \
                make_session(2) as s:
            r = await stream_completion(s, url, prompt=[1], max_tokens=1)
            assert_no_leak(app)
            return r

    r = arun(main())
    assert r.status == 503 and "injected" in r.error


def test_failing_backend_is_ejected_then_probed_back(emulators):
    a, b = emulators
    post_json(a + "/_emulator/faults", {"error_rate": 1.0, "health_status": 503})

    async def main():
        async with gateway(emulators, eject_after=2, probe_interval_s=0.1) as (app, url), \
                make_session(4) as s:
            for _ in range(6):
                r = await stream_completion(s, url, prompt=[1, 2], max_tokens=2)
                assert r.ok
            ejected = not app.fleet.healthy(0)
            ejections = app.fleet.ejections[0]
            sent_to_a_while_out = app.metrics.decisions[0]._value.get()
            for _ in range(3):
                await stream_completion(s, url, prompt=[1, 2], max_tokens=2)
            still_a = app.metrics.decisions[0]._value.get()
            post_json(a + "/_emulator/faults", {"error_rate": 0.0, "health_status": 200})
            for _ in range(100):
                if app.fleet.healthy(0):
                    break
                await asyncio.sleep(0.02)
            back = app.fleet.healthy(0)
            results = [await stream_completion(s, url, prompt=[1, 2], max_tokens=2) for _ in range(4)]
            m = await gateway_metrics(s, url)
            assert_no_leak(app)
            return ejected, ejections, sent_to_a_while_out, still_a, back, results, app, m

    ejected, ejections, before, after, back, results, app, m = arun(main())
    assert ejected and ejections == 1
    assert after == before  # nothing routed to the ejected backend
    assert back
    assert all(r.ok for r in results) and {r.routed_to for r in results} == {"backend-0", "backend-1"}
    assert m["gateway_backend_ejections_total"] == 1


def test_client_disconnect_cancels_the_upstream_request(emulators):
    async def main():
        async with gateway(emulators[:1]) as (app, url), make_session(4) as s:
            body = {"prompt": list(range(300)), "max_tokens": 5000, "stream": True,
                    "ignore_eos": True}
            async with s.post(url + "/v1/completions", json=body) as resp:
                await resp.content.readline()
                during = get_json(emulators[0] + "/_emulator/state")["running"]
                inflight = app.fleet.router.inflight
            for _ in range(300):
                state = get_json(emulators[0] + "/_emulator/state")
                if state["running"] == 0 and app.fleet.router.inflight == 0:
                    break
                await asyncio.sleep(0.01)
            m = await gateway_metrics(s, url)
            return during, inflight, state, app, m

    during, inflight, state, app, m = arun(main())
    assert during == 1 and inflight == 1
    assert state["running"] == 0 and state["kv_used_blocks"] == 0  # the backend aborted it
    assert_no_leak(app)
    assert m["gateway_client_disconnects_total"] == 1


def test_input_errors_limits_and_auth(emulators):
    async def main():
        async with gateway(emulators, api_key="s3cret", max_body_bytes=2000) as (app, url), \
                make_session(2) as s:
            out = {}
            good = {"Authorization": "Bearer s3cret"}

            async def call(path, body=None, headers=None, method="POST", raw=None):
                kw = {"headers": headers or {}}
                if raw is not None:
                    kw["data"] = raw
                    kw["headers"] = {**kw["headers"], "Content-Type": "application/json"}
                elif body is not None:
                    kw["json"] = body
                async with s.request(method, url + path, **kw) as r:
                    ctype = r.headers.get("Content-Type", "")
                    return r.status, (await r.json() if "json" in ctype else await r.read()), r.headers

            out["noauth"] = await call("/v1/completions", {"prompt": [1], "max_tokens": 1})
            out["wrong"] = await call("/v1/completions", {"prompt": [1], "max_tokens": 1},
                                      {"Authorization": "Bearer nope"})
            out["ok"] = await call("/v1/completions", {"prompt": [1], "max_tokens": 1}, good)
            out["badjson"] = await call("/v1/completions", headers=good, raw=b"{oops")
            out["noprompt"] = await call("/v1/completions", {"max_tokens": 1}, good)
            out["badmsgs"] = await call("/v1/chat/completions", {"messages": "hi"}, good)
            out["big"] = await call("/v1/completions", {"prompt": list(range(1000))}, good)
            out["backend400"] = await call("/v1/completions", {"prompt": [1], "max_tokens": 0}, good)
            out["get"] = await call("/v1/completions", headers=good, method="GET")
            out["health"] = await call("/health", method="GET")
            out["models_noauth"] = await call("/v1/models", method="GET")
            assert_no_leak(app)
            return out

    out = arun(main())
    status, doc, headers = out["noauth"]
    assert status == 401 and doc["error"]["type"] == "AuthenticationError"
    assert headers.get("WWW-Authenticate") == "Bearer"
    assert out["wrong"][0] == 401 and out["ok"][0] == 200
    assert out["badjson"][0] == 400 and "JSON" in out["badjson"][1]["error"]["message"]
    assert out["noprompt"][0] == 400 and out["noprompt"][1]["error"]["param"] == "prompt"
    assert out["badmsgs"][0] == 400 and "messages" in out["badmsgs"][1]["error"]["message"]
    assert out["big"][0] == 413 and "limit" in out["big"][1]["error"]["message"]
    assert out["backend400"][0] == 400  # the backend's own validation, passed through
    assert out["get"][0] == 405
    assert out["health"][0] == 200  # health and metrics need no key
    assert out["models_noauth"][0] == 401


def test_no_healthy_backend_gives_502_then_503():
    async def main():
        async with gateway([dead_url()], eject_after=1, max_retries=0,
                           probe_interval_s=60) as (app, url), make_session(2) as s:
            first = await stream_completion(s, url, prompt=[1], max_tokens=1)
            second = await stream_completion(s, url, prompt=[1], max_tokens=1)
            async with s.get(url + "/health") as r:
                health = r.status
            assert_no_leak(app)
            return first, second, health

    first, second, health = arun(main())
    assert first.status == 502 and "connect" in first.error
    assert second.status == 503 and "no healthy backend" in second.error
    assert health == 503


def test_inflight_counts_never_leak_under_mixed_failures(emulators):
    post_json(emulators[0] + "/_emulator/faults", {"error_rate": 0.5})

    async def main():
        async with gateway(emulators + [dead_url()], eject_after=1000,
                           strategy="random") as (app, url), make_session(32) as s:
            async def hang_up():
                body = {"prompt": [3] * 40, "max_tokens": 2000, "stream": True, "ignore_eos": True}
                async with s.post(url + "/v1/completions", json=body) as resp:
                    await resp.content.readline()

            jobs = []
            for k in range(24):
                if k % 4 == 0:
                    jobs.append(hang_up())
                elif k % 4 == 1:
                    jobs.append(stream_completion(s, url, prompt=[1], max_tokens=0))  # 400 upstream
                else:
                    jobs.append(stream_completion(s, url, prompt=list(range(k + 5)), max_tokens=4))
            await asyncio.gather(*jobs, return_exceptions=True)
            for _ in range(200):
                if app.fleet.router.inflight == 0:
                    break
                await asyncio.sleep(0.01)
            return app

    app = arun(main())
    assert_no_leak(app)


@pytest.mark.slow
def test_stream_broken_after_first_byte_ends_with_an_sse_error():
    async def main(crashing, healthy):
        async with gateway([crashing, healthy]) as (app, url), make_session(4) as s:
            task = asyncio.ensure_future(stream_completion(
                s, url, prompt=list(range(50)), max_tokens=3000))
            for _ in range(200):  # wait until tokens flow from the crashing backend
                if app.fleet.router.snapshots[0].inflight_requests and \
                        get_json(crashing + "/_emulator/state")["running"]:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            # A second request straight to that backend makes it crash mid-stream.
            await stream_completion(s, crashing, prompt=[1], max_tokens=1)
            r = await task
            for _ in range(100):
                if app.fleet.router.inflight == 0:
                    break
                await asyncio.sleep(0.01)
            m = await gateway_metrics(s, url)
            assert_no_leak(app)
            return r, m

    with spawn(1, TINY, args=["--crash-after", "1"]) as crash, spawn(1, TINY) as ok:
        r, m = arun(main(crash[0], ok[0]))
    assert not r.ok and len(r.chunk_times_s) >= 1 and "upstream" in r.error
    midstream = [v for k, v in m.items() if k.startswith("gateway_upstream_errors_total")]
    assert sum(midstream) >= 1


def test_gateway_metrics_names(emulators):
    async def main():
        async with gateway(emulators, strategy="least_kv", scrape_interval_s=0.05) as (app, url), \
                make_session(2) as s:
            await stream_completion(s, url, prompt=[1, 2, 3], max_tokens=2)
            await asyncio.sleep(0.15)
            async with s.get(url + "/metrics") as r:
                text = await r.text()
            snaps = [(sn.running, sn.kv_usage) for sn in app.fleet.router.snapshots]
            return text, snaps

    text, snaps = arun(main())
    names = {n for n, _, _ in iter_samples(text)}
    for n in ("gateway_decisions_total", "gateway_inflight_requests", "gateway_backend_healthy",
              "gateway_retries_total", "gateway_upstream_errors_total",
              "gateway_time_to_first_token_seconds_bucket", "gateway_e2e_request_latency_seconds_bucket",
              "gateway_routing_overhead_seconds_bucket", "gateway_backend_ejections_total",
              "gateway_responses_total"):
        assert n in names, n
    decisions = [v for n, lb, v in iter_samples(text) if n == "gateway_decisions_total"]
    assert sum(decisions) == 1
    # least_kv reads scraped metrics: the gateway scraped both backends' /metrics.
    assert all(r == r and kv == kv for r, kv in snaps)  # not NaN


@pytest.mark.slow
def test_cli_help_and_errors():
    run = [sys.executable, "-m", "live.gateway"]
    help_text = subprocess.run(run + ["--help"], capture_output=True, text=True, timeout=30).stdout
    for flag in ("--backends", "--strategy", "--param", "--scrape-interval", "--api-key",
                 "--max-body-bytes", "--eject-after", "--host"):
        assert flag in help_text
    bad = subprocess.run(run + ["--backends", "http://127.0.0.1:1", "--strategy", "nope"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "round_robin" in bad.stderr
    bad = subprocess.run(run + ["--backends", "http://127.0.0.1:1", "--param", "speed=3"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "speed" in bad.stderr
    bad = subprocess.run(run + ["--backends", "127.0.0.1:1"], capture_output=True, text=True,
                         timeout=30)
    assert bad.returncode == 2 and "URL" in bad.stderr
