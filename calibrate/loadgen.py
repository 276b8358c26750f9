"""Send planned requests to one backend and record each one's features and outcome.

Shared by profiling (``calibrate.profiling``) and the fidelity check
(``calibrate.check``). A *unit* is a batch of planned requests sent one way:

- ``sequential``: one at a time (idle engine: the closed-form regime);
- ``closed``: ``concurrency`` workers, each sending its next request when the
  previous one finishes (fixed load);
- ``open``: each request at its planned time ``at_s`` (Poisson, bursts).

Every request becomes one row with the predictors' feature columns as they were
at send time (the runner's own in-flight counts; ``running``/``waiting``/
``kv_usage`` from the latest ``/metrics`` scrape and its age; the prefix-cache
hit known by construction) and its outcome (TTFT, TPOT, E2EL as ``vllm bench
serve`` measures them, via ``live.client``).
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from calibrate.prompts import hit_tokens, prompt_tokens
from live.client import scrape_metrics, stream_completion
from workload.hashing import block_hash_chain

MODES = ("sequential", "closed", "open")
#: Resends of a request whose connection failed before any response (status 0).
RETRIES = 1


@dataclass
class PlannedRequest:
    request_id: int
    input_len: int
    output_len: int
    prefix_id: int = -1
    shared_len: int = 0
    bucket: str = ""
    at_s: float = 0.0  # send time from the unit's start (open mode)


@dataclass
class Unit:
    phase: str
    name: str
    mode: str
    requests: list[PlannedRequest]
    concurrency: int = 1
    rate: float = math.nan
    time_cap_s: float = math.inf  # stop sending new requests after this long

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unit {self.name}: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.concurrency < 1:
            raise ValueError(f"unit {self.name}: concurrency must be >= 1")

    @property
    def key(self) -> str:
        return f"{self.phase}/{self.name}"


class Scraper:
    """Polls ``/metrics`` every ``interval_s``; keeps the latest scrape and its time."""

    def __init__(self, session: aiohttp.ClientSession, url: str, interval_s: float = 0.25) -> None:
        self.session, self.url, self.interval_s = session, url, interval_s
        self.latest = None
        self.at = math.nan
        self.failures = 0
        self._task: asyncio.Task | None = None

    async def _loop(self) -> None:
        while True:
            try:
                m = await scrape_metrics(self.session, self.url, timeout_s=max(self.interval_s * 4, 1.0))
                self.latest, self.at = m, time.perf_counter()
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                self.failures += 1
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def features(self, now: float) -> tuple[float, float, float, float]:
        """(running, waiting, kv_usage, scrape_age_s); NaN/inf before the first scrape."""
        m = self.latest
        if m is None:
            return math.nan, math.nan, math.nan, math.inf
        return float(m.running), float(m.waiting), float(m.kv_usage), now - self.at


@dataclass
class Runner:
    """Sends units to one backend; rows accumulate in ``rows``."""

    session: aiohttp.ClientSession
    url: str
    group: str
    vocab_size: int
    block_size: int
    scraper: Scraper
    salt: int = 0
    model: str | None = None
    timeout_s: float = 600.0
    on_done: Callable[[dict], None] | None = None  # progress callback, one call per request
    t0: float = field(default_factory=time.perf_counter)
    inflight_requests: int = 0
    inflight_tokens: int = 0
    seen_blocks: set = field(default_factory=set)

    async def _send(self, unit: Unit, req: PlannedRequest, unit_t0: float) -> dict:
        toks = prompt_tokens(req.request_id, req.input_len, prefix_id=req.prefix_id,
                             shared_len=req.shared_len, vocab_size=self.vocab_size, salt=self.salt)
        chain = block_hash_chain(toks, self.block_size)
        hit = hit_tokens(chain, self.seen_blocks, req.input_len, self.block_size)
        self.seen_blocks.update(chain.tolist())
        now = time.perf_counter()
        running, waiting, kv_usage, age = self.scraper.features(now)
        row = {
            "input_len": req.input_len,
            "prefix_hit_tokens": hit,
            "inflight_requests": self.inflight_requests,
            "inflight_tokens": self.inflight_tokens,
            "running": running,
            "waiting": waiting,
            "kv_usage": kv_usage,
            "scrape_age_s": age,
            "group": self.group,
        }
        self.inflight_requests += 1
        self.inflight_tokens += req.input_len
        try:
            for attempt in range(RETRIES + 1):
                res = await stream_completion(self.session, self.url, prompt=toks.tolist(),
                                              max_tokens=req.output_len, ignore_eos=True, model=self.model,
                                              timeout_s=self.timeout_s)
                # A pooled keep-alive connection the server had just closed fails before
                # anything is sent (status 0, no chunk): safe to send again, timed afresh.
                if res.ok or res.status != 0 or res.chunk_times_s or res.timed_out:
                    break
        finally:
            self.inflight_requests -= 1
            self.inflight_tokens -= req.input_len
        row.update({
            "ttft_s": res.ttft_s if res.ok else math.nan,
            "tpot_s": res.tpot_s if res.ok else math.nan,
            "e2el_s": res.e2el_s if res.ok else math.nan,
            "output_len": res.output_tokens,
            "cached_tokens": res.cached_tokens,
            "phase": unit.phase,
            "unit": unit.key,
            "bucket": req.bucket,
            "load": unit.name,
            "mode": unit.mode,
            "concurrency": unit.concurrency,
            "rate": unit.rate,
            "request_id": req.request_id,
            "prefix_id": req.prefix_id,
            "shared_len": req.shared_len,
            "max_tokens": req.output_len,
            "send_s": res.start - unit_t0,
            "unit_start_s": unit_t0 - self.t0,
            "prompt_tokens": res.prompt_tokens,
            "ok": bool(res.ok),
            "error": res.error,
        })
        if self.on_done is not None:
            self.on_done(row)
        return row

    async def run_unit(self, unit: Unit) -> list[dict]:
        """Send every request of ``unit`` (until its time cap); return rows in send order."""
        unit_t0 = time.perf_counter()
        deadline = unit_t0 + unit.time_cap_s
        rows: list[dict] = []
        if unit.mode == "sequential":
            for req in unit.requests:
                if time.perf_counter() > deadline:
                    break
                rows.append(await self._send(unit, req, unit_t0))
        elif unit.mode == "closed":
            queue = list(reversed(unit.requests))

            async def worker() -> None:
                while queue and time.perf_counter() <= deadline:
                    rows.append(await self._send(unit, queue.pop(), unit_t0))

            await asyncio.gather(*(worker() for _ in range(unit.concurrency)))
        else:
            tasks = []
            for req in sorted(unit.requests, key=lambda r: r.at_s):
                delay = unit_t0 + req.at_s - time.perf_counter()
                if unit_t0 + req.at_s > deadline:
                    break
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self._send(unit, req, unit_t0)))
            rows.extend(await asyncio.gather(*tasks))
        rows.sort(key=lambda r: r["send_s"])
        return rows
