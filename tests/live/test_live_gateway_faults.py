"""The gateway under the faults an operator meets: a huge prompt, a frozen backend,
clients that never finish their request, every backend down; and what it logs.

Everything runs on loopback with real sockets: emulator and gateway processes
(``python -m live.gateway``, RSS and file descriptors read from /proc), the
official ``openai`` client where a client is needed. Each wait is bounded.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
from live_helpers import TINY, arun

from live.emulator import spawn
from live.gateway import GatewayConfig, serve_gateway
from live.gateway.cli import build_parser
from live.transport.http import ClientLimits
from live.transport.processes import ChildServer, start_all, stop_all

pytestmark = [pytest.mark.timeout(240),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

#: The issue's prompt: 15.7 MB of text, under the old 16 MB body limit.
HUGE = {"prompt": "hello world " * 1310720, "max_tokens": 5}


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def gateway_process(urls, *args):
    child = ChildServer("live.gateway", ["--backends", ",".join(urls), "--port", "0", *args])
    try:
        start_all([child], 60)
        yield child
    finally:
        stop_all([child])


def post(url: str, doc: dict, timeout: float = 120) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(doc).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class HealthWatch:
    """Polls ``/health`` every 20 ms in a thread; ``worst_ms`` is the slowest answer.

    A second thread measures how late this process's own 5 ms sleeps wake up: the
    machine's scheduling delay over the same window (``noise_ms``). On a busy machine
    (several helpers' test suites at once) a process can wait hundreds of ms for a
    core whatever it does; ``bound_ms(100)`` allows exactly that much on top of 100 ms,
    so what is checked is the gateway's own stalls.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.late: list[float] = [0.0]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True),
                         threading.Thread(target=self._noise, daemon=True)]

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            with urllib.request.urlopen(self.url + "/health", timeout=30) as r:
                r.read()
            self.latencies.append(time.perf_counter() - t)
            time.sleep(0.02)

    def _noise(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            time.sleep(0.005)
            self.late.append(time.perf_counter() - t - 0.005)

    def __enter__(self) -> HealthWatch:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    @property
    def worst_ms(self) -> float:
        return max(self.latencies) * 1e3

    @property
    def noise_ms(self) -> float:
        return max(self.late) * 1e3

    def check(self, limit_ms: float = 100.0) -> None:
        assert len(self.latencies) >= 10
        assert self.worst_ms < limit_ms + self.noise_ms, (
            f"/health took {self.worst_ms:.0f} ms during the prompt (scheduling delay seen by "
            f"another process meanwhile: {self.noise_ms:.0f} ms; load average "
            f"{os.getloadavg()[0]:.1f})")


# --- one huge prompt ---------------------------------------------------------------------------
def test_a_huge_prompt_never_freezes_the_gateway_and_its_memory_returns():
    with spawn(2, TINY) as urls:
        # Defaults: the 15.7 MB body is over the 4 MiB limit: refused before any work.
        with gateway_process(urls) as gw:
            t0 = time.perf_counter()
            status, doc = post(gw.url, HUGE)
            assert status == 413 and "--max-body-bytes" in doc["error"]["message"]
            assert time.perf_counter() - t0 < 2

        # Body limit raised and the prompt check off: the whole prompt is tokenized (2.6M
        # tokens, seconds of work) on the prompt thread while /health keeps answering.
        with gateway_process(urls, "--max-body-bytes", str(32 << 20),
                             "--max-prompt-tokens", "0") as gw:
            post(gw.url, {"prompt": "warm up", "max_tokens": 1})
            start = rss_mb(gw.proc.pid)
            with HealthWatch(gw.url) as watch:
                t0 = time.perf_counter()
                status, doc = post(gw.url, HUGE)
                took = time.perf_counter() - t0
            # the emulator behind it refuses the prompt (over its 262,144-token context)
            assert status == 400 and "maximum context length" in doc["error"]["message"]
            assert took > 0.5, "the prompt must really have been tokenized"
            watch.check(100)
            time.sleep(0.5)
            after = rss_mb(gw.proc.pid)
            assert after < start + 100, f"RSS {start:.0f} MB -> {after:.0f} MB after the prompt"


def test_a_prompt_over_every_backends_context_is_refused_after_little_work(monkeypatch):
    # The gateway reads max_model_len from /v1/models (262,144 for cpu-tiny's KV capacity;
    # here 2,048) and stops tokenizing as soon as the count passes it.
    from workload.tokenizer import TextTokenizer

    calls = []
    real = TextTokenizer.encode_batch
    monkeypatch.setattr(TextTokenizer, "encode_batch",
                        lambda self, texts: calls.append(len(texts[0])) or real(self, texts))
    with spawn(2, TINY, args=["--max-model-len", "2048"]) as urls:
        async def main():
            async with serve_gateway(GatewayConfig(backends=urls, max_body_bytes=32 << 20)) as gw:
                assert gw.context_limit() == 2048 and gw.prompt_limit(text=True) == 4096
                client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
                t0 = time.perf_counter()
                with pytest.raises(openai.BadRequestError) as exc:
                    await client.completions.create(model=TINY, max_tokens=5,
                                                    prompt="hello world " * 1310720)
                return exc.value, time.perf_counter() - t0

        err, took = arun(main(), timeout=120)
    assert "the largest context a backend accepts is 2048 tokens" in str(err)
    assert "at least" in str(err) and "deepseek" in str(err)
    assert sum(calls) <= 2 * 65536, f"tokenized {sum(calls):,} characters of a 15.7 MB prompt"
    assert took < 5


def test_a_token_id_prompt_over_the_context_costs_nothing():
    with spawn(1, TINY, args=["--max-model-len", "100"]) as urls:
        async def main():
            async with serve_gateway(GatewayConfig(backends=urls)) as gw:
                client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
                with pytest.raises(openai.BadRequestError) as exc:
                    await client.completions.create(model=TINY, prompt=list(range(101)),
                                                    max_tokens=1)
                ok = await client.completions.create(model=TINY, prompt=list(range(50)),
                                                     max_tokens=2)
                return exc.value, ok

        err, ok = arun(main())
    assert "your prompt has 101 tokens" in str(err)
    assert ok.usage.completion_tokens >= 1


# --- a frozen backend --------------------------------------------------------------------------
def test_a_frozen_backend_is_found_by_default_and_its_requests_fail_over(caplog):
    """SIGSTOP one of two backends: with default settings it is ejected by its failed
    health probes, the requests waiting on it fail over, and none is routed to it
    afterwards; after SIGCONT it is probed back in."""
    caplog.set_level(logging.INFO, logger="live.gateway")
    with spawn(2, TINY) as urls:
        async def main():
            async with serve_gateway(GatewayConfig(backends=urls)) as gw:  # defaults
                cfg = gw.config
                assert cfg.health_interval_s > 0 and cfg.first_byte_timeout_s > 0 \
                    and cfg.read_timeout_s > 0
                client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
                os.kill(pid_of(urls[1]), signal.SIGSTOP)
                try:
                    t0 = time.perf_counter()
                    # round_robin: every other request goes to the frozen backend at first
                    results = await asyncio.gather(*(
                        client.completions.create(model=TINY, prompt=[1, 2, 3 + k], max_tokens=3,
                                                  stream=False) for k in range(6)))
                    took = time.perf_counter() - t0
                    healthy = [s.healthy for s in gw.fleet.router.snapshots]
                    decided_before = gw.metrics.decisions[1]._value.get()
                    after = await asyncio.gather(*(
                        client.completions.create(model=TINY, prompt=[9, k], max_tokens=2)
                        for k in range(4)))
                    decided_after = gw.metrics.decisions[1]._value.get()
                finally:
                    os.kill(pid_of(urls[1]), signal.SIGCONT)
                for _ in range(100):  # probed back in
                    if gw.fleet.healthy(1):
                        break
                    await asyncio.sleep(0.1)
                return results, took, healthy, decided_before, decided_after, after, gw.fleet.healthy(1)

        results, took, healthy, before, after_count, after, back = arun(main(), timeout=120)
    assert all(r.usage.completion_tokens >= 1 for r in results + after)
    assert healthy == [True, False]
    assert took < 30, f"requests waited {took:.0f} s on the frozen backend"
    assert after_count == before, "a request was routed to the ejected backend"
    assert back
    text = caplog.text
    assert "backend_ejected backend=backend-1" in text and "health probes in a row failed" in text
    assert "attempt_failed" in text and "backend stopped answering" in text
    assert "backend_recovered backend=backend-1" in text


def test_a_stream_on_a_backend_that_freezes_ends_with_an_error_event(caplog):
    caplog.set_level(logging.INFO, logger="live.gateway")
    with spawn(1, TINY) as urls:
        async def main():
            async with serve_gateway(GatewayConfig(backends=urls)) as gw:
                client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
                stream = await client.completions.create(
                    model=TINY, prompt=[5] * 20, max_tokens=100000, stream=True,
                    extra_body={"ignore_eos": True})
                got = 0
                t0 = None
                with pytest.raises(openai.APIError) as exc:
                    async for _ in stream:
                        got += 1
                        if got == 3:
                            os.kill(pid_of(urls[0]), signal.SIGSTOP)
                            t0 = time.perf_counter()
                return exc.value, time.perf_counter() - t0, got

        try:
            err, took, got = arun(main(), timeout=120)
        finally:
            os.kill(pid_of(urls[0]), signal.SIGCONT)
    assert got >= 3 and "stopped answering" in str(err)
    assert took < 25
    assert "stream_broken" in caplog.text and "backend=backend-0" in caplog.text


def pid_of(url: str) -> int:
    """The pid of the process listening on ``url``'s loopback port (from /proc/net/tcp)."""
    port = int(url.rsplit(":", 1)[1])
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if int(f[1].split(":")[1], 16) == port and f[3] == "0A":  # LISTEN
            inodes.add(f[9])
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return int(fd.parent.parent.name)
    raise LookupError(f"nothing listens on {url}")


# --- clients that never finish -----------------------------------------------------------------
def _half_request(url: str) -> socket.socket:
    host, port = url.split("//")[1].split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              b"content-length: 1000\r\n\r\n" + b'{"prompt": "' + b"a" * 400)
    return s


def test_clients_that_stall_are_timed_out_and_connections_are_capped():
    with spawn(1, TINY) as urls, gateway_process(
            urls, "--client-body-timeout", "2", "--client-header-timeout", "2",
            "--client-idle-timeout", "3", "--max-client-connections", "250") as gw:
        pid = gw.proc.pid
        base = open_fds(pid)
        socks = [_half_request(gw.url) for _ in range(300)]
        try:
            time.sleep(0.5)
            # 250 held at most; the other 50 were answered 503 and closed at once
            assert open_fds(pid) <= base + 250 + 5
            refused = 0
            for s in socks[250:]:
                s.settimeout(5)
                head = s.recv(200)
                refused += head.startswith(b"HTTP/1.1 503")
            assert refused == 50
            deadline = time.monotonic() + 10
            while open_fds(pid) > base + 5 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert open_fds(pid) <= base + 5, "stalled clients still hold connections"
            s = socks[0]
            s.settimeout(5)
            assert s.recv(200).startswith(b"HTTP/1.1 408")
        finally:
            for s in socks:
                s.close()
        # an idle keep-alive connection is closed after --client-idle-timeout
        host, port = gw.url.split("//")[1].split(":")
        idle = socket.create_connection((host, int(port)))
        idle.settimeout(10)
        t0 = time.monotonic()
        assert idle.recv(100) == b""
        assert 2.5 < time.monotonic() - t0 < 8
        idle.close()


def test_client_limits_are_on_by_default_and_stated_in_help():
    d = ClientLimits()
    assert d.header_timeout_s > 0 and d.body_timeout_s > 0 and d.idle_timeout_s > 0
    assert 64 <= d.max_connections
    text = build_parser().format_help()
    for flag in ("--client-header-timeout", "--client-body-timeout", "--client-idle-timeout",
                 "--max-client-connections", "--first-byte-timeout", "--read-timeout",
                 "--health-interval", "--probe-timeout", "--connect-timeout", "--log-level",
                 "--max-prompt-tokens", "--max-body-bytes"):
        assert flag in text
    assert "(default: 30.0)" in text and "(default: 300.0)" in text and "(default: 2.0)" in text


# --- logs ----------------------------------------------------------------------------------------
def test_the_gateway_logs_state_changes_and_failed_requests(tmp_path):
    """Started with one backend down (a warning), then a 502 with backend and reason, an
    ejection and an upstream timeout: one line each, on stderr, as key=value fields."""
    import subprocess

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()
    log_path = tmp_path / "gateway.log"
    with spawn(1, TINY, args=["--hang-after", "1"]) as urls, open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "live.gateway", "--backends", f"{urls[0]},{dead_url}",
             "--port", "0", "--max-retries", "0", "--eject-after", "1",
             "--first-byte-timeout", "1"],
            stdout=subprocess.PIPE, stderr=log_file, text=True)
        try:
            url = proc.stdout.readline().split()[1]
            client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
            # 1: backend-0 answers; 2: backend-1 is down: 502, and it is ejected
            client.completions.create(model=TINY, prompt=[1, 2], max_tokens=2)
            with pytest.raises(openai.APIStatusError) as exc:
                client.completions.create(model=TINY, prompt=[1, 2], max_tokens=2)
            assert exc.value.status_code == 502
            # 3: backend-0 leaves this one unanswered (--hang-after 1): no first byte in 1 s
            with pytest.raises(openai.APIStatusError) as exc:
                list(client.completions.create(model=TINY, prompt=[3], max_tokens=2, stream=True))
            assert exc.value.status_code == 502
        finally:
            proc.terminate()
            proc.wait(10)
    lines = log_path.read_text().splitlines()

    def has(*needles: str) -> bool:
        return any(all(n in ln for n in needles) for ln in lines)

    assert has("level=warning", "backend_unreachable backend=backend-1", dead_url)
    assert has("level=info", "gateway_started", "first_byte_timeout_s=1", "read_timeout_s=30")
    assert has("level=warning", "request_failed", "status=502", "backend=backend-1",
               "cannot connect")
    assert has("level=warning", "backend_ejected backend=backend-1", "requests in a row failed")
    assert has("request_failed", "kind=timeout", "--first-byte-timeout 1 s", "backend=backend-0")
    assert has("gateway_stopped")
    assert all(ln.split()[1].startswith("level=") for ln in lines if ln.startswith("20"))


def test_log_level_warning_keeps_only_failures(tmp_path):
    import subprocess

    log_path = tmp_path / "gateway.log"
    with spawn(1, TINY) as urls, open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "live.gateway", "--backends", f"{urls[0]},http://127.0.0.1:9",
             "--port", "0", "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=log_file, text=True)
        try:
            url = proc.stdout.readline().split()[1]
            assert post(url, {"prompt": [1, 2], "max_tokens": 1})[0] == 200
        finally:
            proc.terminate()
            proc.wait(10)
    text = log_path.read_text()
    assert "backend_unreachable" in text and "level=warning" in text
    assert "level=info" not in text and "gateway_started" not in text
