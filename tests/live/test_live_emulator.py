"""The emulator: the simulator's engine on the wall clock behind vLLM's API."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from live_helpers import TINY, arun, tiny_emulator

from live.transport.client import make_session, scrape_metrics, stream_completion
from live.emulator import pseudo_eos_length, spawn
from live.transport.prometheus import iter_samples
from sim.latency import load_profile
from workload.tokenizer import load_tokenizer

pytestmark = pytest.mark.timeout(90)

# vLLM's bucket edges, typed from vllm/v1/metrics/loggers.py (not from our module).
VLLM_TTFT_EDGES = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                   5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
VLLM_ITL_EDGES = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                  7.5, 10.0, 20.0, 40.0, 80.0]
VLLM_REQUEST_EDGES = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                      60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]


async def _metrics_text(session, url) -> str:
    async with session.get(url + "/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


def _samples(text: str) -> dict[str, list[tuple[dict, float]]]:
    out: dict[str, list] = {}
    for name, labels, value in iter_samples(text):
        out.setdefault(name, []).append((labels, value))
    return out


def test_tokens_stream_at_the_modelled_step_times():
    model = load_profile(TINY).model
    n_in, n_out = 64, 40

    async def main():
        async with tiny_emulator() as emu, make_session(2) as s:
            url = emu.url
            return await stream_completion(s, url, prompt=list(range(1000, 1000 + n_in)),
                                           max_tokens=n_out)

    r = arun(main())
    # One chunk per step; a reader that falls behind gets several tokens in one chunk.
    assert r.ok and r.output_tokens == n_out and n_out // 2 <= len(r.chunk_times_s) <= n_out
    ttft, tpot = model.single_request(n_in, n_out)
    decode_total = tpot * (n_out - 1)
    # Tokens come one step apart, not in a burst at the end.
    gaps = sorted(r.itl_s)
    assert gaps[len(gaps) // 2] == pytest.approx(tpot, rel=0.5)
    # Steps run on absolute deadlines: the whole decode is as long as the model says
    # (late wake-ups do not add up over 39 steps), and never shorter.
    observed = r.chunk_times_s[-1] - r.chunk_times_s[0]
    assert observed >= decode_total * 0.9
    assert observed - decode_total < 0.05 + 0.3 * decode_total
    assert r.ttft_s >= ttft * 0.9


def test_metrics_have_vllm_names_labels_buckets_and_counts():
    n_in, n_out = 40, 12

    async def main():
        async with tiny_emulator(model="m-test") as emu, make_session(2) as s:
            url = emu.url
            r = await stream_completion(s, url, prompt=list(range(2000, 2000 + n_in)),
                                        max_tokens=n_out)
            return r, await _metrics_text(s, url)

    r, text = arun(main())
    assert r.ok
    m = _samples(text)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:prefix_cache_queries_total",
                 "vllm:prefix_cache_hits_total", "vllm:num_preemptions_total",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:request_success_total", "vllm:time_to_first_token_seconds_bucket",
                 "vllm:inter_token_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket",
                 "vllm:request_queue_time_seconds_bucket", "vllm:cache_config_info"):
        assert name in m, name
    for labels, _ in m["vllm:num_requests_running"] + m["vllm:generation_tokens_total"]:
        assert labels["model_name"] == "m-test" and labels["engine"] == "0"

    def edges(name):
        return [float(lb["le"]) for lb, _ in m[name + "_bucket"] if lb["le"] != "+Inf"]

    assert edges("vllm:time_to_first_token_seconds") == VLLM_TTFT_EDGES
    assert edges("vllm:inter_token_latency_seconds") == VLLM_ITL_EDGES
    assert edges("vllm:e2e_request_latency_seconds") == VLLM_REQUEST_EDGES
    assert edges("vllm:request_queue_time_seconds") == VLLM_REQUEST_EDGES

    def one(name, **want):
        vals = [v for lb, v in m[name] if all(lb.get(k) == x for k, x in want.items())]
        assert len(vals) == 1, (name, want)
        return vals[0]

    assert one("vllm:generation_tokens_total") == n_out
    assert one("vllm:prompt_tokens_total") == n_in
    assert one("vllm:request_success_total", finished_reason="length") == 1
    assert one("vllm:time_to_first_token_seconds_count") == 1
    assert one("vllm:inter_token_latency_seconds_count") == n_out - 1
    assert one("vllm:e2e_request_latency_seconds_count") == 1
    assert one("vllm:num_requests_running") == 0
    assert one("vllm:prefix_cache_queries_total") == n_in
    assert one("vllm:kv_cache_usage_perc") == 0.0  # finished: its blocks are free (cached)


def test_prefix_cache_hit_is_reported_in_usage_and_metrics():
    n_in = 200
    prompt = list(range(3000, 3000 + n_in))

    async def main():
        async with tiny_emulator() as emu, make_session(2) as s:
            url = emu.url
            first = await stream_completion(s, url, prompt=prompt, max_tokens=4)
            second = await stream_completion(s, url, prompt=prompt, max_tokens=4)
            return first, second, await scrape_metrics(s, url)

    first, second, m = arun(main())
    expected_hit = (n_in - 1) // 16 * 16  # vLLM recomputes at least the last prompt token
    assert first.cached_tokens == 0
    assert second.cached_tokens == expected_hit
    assert m.prefix_hits == expected_hit and m.prefix_queries == 2 * n_in


def test_client_disconnect_aborts_the_request_and_frees_its_kv():
    async def main():
        async with tiny_emulator() as emu, make_session(4) as s:
            url = emu.url
            body = {"prompt": list(range(5000, 5300)), "max_tokens": 5000, "stream": True,
                    "ignore_eos": True}
            async with s.post(url + "/v1/completions", json=body) as resp:
                await resp.content.readline()  # the first token is out: it is running
                during = await scrape_metrics(s, url)
            # The response context closed the connection mid-stream.
            for _ in range(200):
                after = await scrape_metrics(s, url)
                if after.running == 0:
                    break
                await asyncio.sleep(0.01)
            text = await _metrics_text(s, url)
            return during, after, text

    during, after, text = arun(main())
    assert during.running == 1 and during.kv_usage > 0
    assert after.running == 0 and after.waiting == 0 and after.kv_usage == 0
    aborted = [v for n, lb, v in iter_samples(text)
               if n == "vllm:request_success_total" and lb["finished_reason"] == "abort"]
    assert aborted == [1.0]


def test_completions_and_chat_shapes_streaming_and_not():
    async def main():
        async with tiny_emulator(model="m") as emu, make_session(2) as s:
            url = emu.url
            out = {}
            async with s.post(url + "/v1/completions",
                              json={"model": "m", "prompt": [5, 6, 7], "max_tokens": 3,
                                    "ignore_eos": True}) as r:
                out["completion"] = (r.status, await r.json())
            async with s.post(url + "/v1/chat/completions",
                              json={"messages": [{"role": "user", "content": "hi"}],
                                    "max_completion_tokens": 2, "ignore_eos": True}) as r:
                out["chat"] = (r.status, await r.json())
            async with s.post(url + "/v1/chat/completions",
                              json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                                    "ignore_eos": True, "stream": True,
                                    "stream_options": {"include_usage": True}}) as r:
                lines = [ln for ln in (await r.read()).decode().split("\n") if ln.startswith("data: ")]
                out["chat_stream"] = (r.status, lines)
            async with s.get(url + "/v1/models") as r:
                out["models"] = await r.json()
            return out

    out = arun(main(), timeout=90)
    status, doc = out["completion"]
    assert status == 200 and doc["object"] == "text_completion" and doc["model"] == "m"
    assert doc["choices"][0]["finish_reason"] == "length" and doc["choices"][0]["text"]
    assert doc["usage"]["completion_tokens"] == 3 and doc["usage"]["prompt_tokens"] == 3
    status, doc = out["chat"]
    assert status == 200 and doc["object"] == "chat.completion"
    assert doc["choices"][0]["message"]["role"] == "assistant" and doc["usage"]["completion_tokens"] == 2
    status, lines = out["chat_stream"]
    assert status == 200 and lines[-1] == "data: [DONE]"
    events = [json.loads(ln[6:]) for ln in lines[:-1]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[0]["object"] == "chat.completion.chunk"
    content = [e for e in events if e["choices"]]
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3
    assert out["models"]["data"][0]["id"] == "m"


def test_text_prompts_use_the_workload_tokenizer():
    text = "The emulator counts tokens the way the workload package does."
    expected = len(load_tokenizer("deepseek").encode_batch([text])[0])

    async def main():
        async with tiny_emulator() as emu, make_session(2) as s:
            url = emu.url
            return await stream_completion(s, url, prompt=text, max_tokens=2)

    r = arun(main())
    assert r.ok and r.prompt_tokens == expected


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 100000), min_size=1, max_size=50), st.integers(1, 500),
       st.integers(0, 500))
def test_pseudo_eos_length_is_a_bounded_function_of_the_prompt(ids, max_tokens, min_tokens):
    n = pseudo_eos_length(ids, max_tokens, min_tokens)
    assert n == pseudo_eos_length(list(ids), max_tokens, min_tokens)
    assert 1 <= n <= max_tokens
    assert n >= min(min_tokens, max_tokens)


def test_without_ignore_eos_requests_stop_at_the_pseudo_eos():
    prompts = [list(range(k, k + 30)) for k in (100, 200, 300, 400)]

    async def main():
        async with tiny_emulator() as emu, make_session(4) as s:
            url = emu.url
            return await asyncio.gather(*(stream_completion(s, url, prompt=p, max_tokens=40,
                                                            ignore_eos=False) for p in prompts))

    results = arun(main())
    for p, r in zip(prompts, results):
        expected = pseudo_eos_length(p, 40)
        assert r.ok and r.output_tokens == expected
        assert r.finish_reason == ("stop" if expected < 40 else "length")


@pytest.mark.parametrize("body, status, needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"max_tokens": 3}', 400, "prompt"),
    (b'{"prompt": [1, 2], "max_tokens": 0}', 400, "max_tokens"),
    (b'{"prompt": [1, 2], "max_tokens": 99999999}', 400, "maximum context length"),
    (b'{"prompt": [1, 2], "model": "other"}', 404, "does not exist"),
    (b'{"prompt": [1, 2], "n": 2}', 400, "n = 1"),
    (b'{"prompt": [1, 2], "stream_options": {"include_usage": true}}', 400, "stream=True"),
    (b'{"prompt": [1, "a"]}', 400, "token ids"),
    (b'{"prompt": [1, 2], "stream": "yes"}', 400, "stream"),
])
def test_bad_requests_get_openai_style_errors(body, status, needle):
    async def main():
        async with tiny_emulator() as emu, make_session(2) as s:
            url = emu.url
            async with s.post(url + "/v1/completions", data=body,
                              headers={"Content-Type": "application/json"}) as r:
                return r.status, await r.json()

    got, doc = arun(main())
    assert got == status
    assert needle in doc["error"]["message"] and doc["error"]["code"] == status
    assert doc["error"]["type"].endswith("Error")


def test_method_path_and_size_limits():
    async def main():
        async with tiny_emulator(max_body_bytes=1000) as emu, make_session(2) as s:
            url = emu.url
            out = []
            async with s.get(url + "/v1/completions") as r:
                out.append(r.status)
            async with s.get(url + "/nope") as r:
                out.append(r.status)
            async with s.post(url + "/v1/completions", json={"prompt": list(range(2000))}) as r:
                out.append(r.status)
            return out

    assert arun(main()) == [405, 404, 413]


def test_injected_errors_hangs_and_runtime_changes():
    async def main():
        async with tiny_emulator() as emu, make_session(4) as s:
            url = emu.url
            out = {}
            async with s.post(url + "/_emulator/faults",
                              json={"error_rate": 1.0, "error_status": 503}) as r:
                assert r.status == 200
            out["error"] = await stream_completion(s, url, prompt=[1, 2, 3], max_tokens=2)
            async with s.post(url + "/_emulator/faults", json={"error_rate": 0.0, "hang_rate": 1.0}):
                pass
            out["hang"] = await stream_completion(s, url, prompt=[1, 2, 3], max_tokens=2,
                                                  timeout_s=0.3)
            async with s.post(url + "/_emulator/faults", json={"hang_rate": 0.0, "health_status": 503}):
                pass
            async with s.get(url + "/health") as r:
                out["health"] = r.status
            async with s.post(url + "/_emulator/faults", json={"bogus": 1}) as r:
                out["bad"] = (r.status, await r.json())
            out["ok"] = await stream_completion(s, url, prompt=[1, 2, 3], max_tokens=2)
            return out

    out = arun(main())
    assert out["error"].status == 503 and "injected" in out["error"].error
    assert out["hang"].timed_out and out["hang"].chunk_times_s == []
    assert out["health"] == 503
    assert out["bad"][0] == 400 and "bogus" in out["bad"][1]["error"]["message"]
    assert out["ok"].ok


@pytest.mark.slow
def test_slowdown_multiplies_step_times():
    async def timed(slowdown):
        async with tiny_emulator() as emu, make_session(2) as s:
            url = emu.url
            async with s.post(url + "/_emulator/faults", json={"slowdown": slowdown}):
                pass
            r = await stream_completion(s, url, prompt=list(range(64)), max_tokens=40)
            return r.chunk_times_s[-1]  # prefill and every decode step, from the send

    fast = arun(timed(1.0))
    slow = arun(timed(3.0))
    assert slow / fast == pytest.approx(3.0, rel=0.35)


def test_reset_refuses_while_busy_then_empties_the_cache():
    async def main():
        async with tiny_emulator() as emu, make_session(4) as s:
            url = emu.url
            prompt = list(range(7000, 7100))
            await stream_completion(s, url, prompt=prompt, max_tokens=2)
            body = {"prompt": [9] * 50, "max_tokens": 3000, "stream": True, "ignore_eos": True}
            async with s.post(url + "/v1/completions", json=body) as resp:
                await resp.content.readline()
                async with s.post(url + "/_emulator/reset") as r:
                    busy = r.status
            for _ in range(200):
                async with s.post(url + "/_emulator/reset") as r:
                    if r.status == 200:
                        break
                await asyncio.sleep(0.01)
            again = await stream_completion(s, url, prompt=prompt, max_tokens=2)
            return busy, r.status, again

    busy, done, again = arun(main())
    assert busy == 409 and done == 200
    assert again.cached_tokens == 0  # the reset emptied the prefix cache


def test_crash_after_exits_the_process_mid_run():
    async def main(url):
        async with make_session(2) as s:
            first = await stream_completion(s, url, prompt=[1, 2, 3], max_tokens=3)
            second = await stream_completion(s, url, prompt=[1, 2, 3], max_tokens=3)
            return first, second

    with spawn(1, TINY, args=["--crash-after", "1"]) as urls:
        first, second = arun(main(urls[0]))
    assert first.ok
    assert not second.ok and second.status == 0


@pytest.mark.slow
def test_cli_help_says_stand_in_and_bad_profile_is_named():
    help_text = subprocess.run([sys.executable, "-m", "live.emulator", "--help"],
                               capture_output=True, text=True, timeout=30).stdout
    assert "STAND-IN" in help_text and "--crash-after" in help_text and "calibrate serve" in help_text
    bad = subprocess.run([sys.executable, "-m", "live.emulator", "--profile", "no-such"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "cpu-tiny" in bad.stderr and "no-such" in bad.stderr


@pytest.mark.slow
def test_emulator_processes_from_spawn_serve_and_are_stopped():
    with spawn(2, TINY) as urls:
        assert len(set(urls)) == 2 and all(u.startswith("http://127.0.0.1:") for u in urls)

        async def main():
            async with make_session(2) as s:
                return [await stream_completion(s, u, prompt=[4, 5], max_tokens=2) for u in urls]

        assert all(r.ok for r in arun(main()))

    async def gone():
        async with make_session(2) as s:
            return [await stream_completion(s, u, prompt=[4, 5], max_tokens=2) for u in urls]

    assert all(isinstance(r.error, str) and not r.ok for r in arun(gone()))
