"""Send planned requests to one backend and record each one's features and outcome.

Shared by profiling (``calibrate.profiling``) and the fidelity check
(``calibrate.check``). A *unit* is a batch of planned requests sent one way:

- ``sequential``: one at a time (idle engine: the closed-form regime);
- ``closed``: ``concurrency`` workers, each sending its next request when the
  previous one finishes (fixed load);
- ``open``: each request at its planned time ``at_s`` (Poisson, bursts).

Every request becomes one row with the predictors' feature columns as the
router saw them at send time (``routing.Router``'s decision: its in-flight
counts, the latest ``/metrics`` scrape and its age, its prefix-hit estimate,
which for these prompts equals the true hit, see ``calibrate.prompts``) and its
outcome (TTFT, TPOT, E2EL as ``vllm bench serve`` measures them, via
``live.transport.client``).
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

import routing
from calibrate.prompts import prompt_tokens
from live.transport.client import stream_completion
from live.router import LiveRouter
from routing import Decision, Outcome, RequestInfo
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
    #: Keep each request's token arrival times (``Runner.token_times``), e.g. to time decode steps.
    keep_token_times: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unit {self.name}: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.concurrency < 1:
            raise ValueError(f"unit {self.name}: concurrency must be >= 1")

    @property
    def key(self) -> str:
        return f"{self.phase}/{self.name}"


def decision_features(decision: Decision, input_len: int, group: str) -> dict:
    """The predictor-feature columns of one request, from the router's decision.

    The same mapping as ``predictors.dataset.RECORD_FEATURES`` applies to the
    simulator's and live mode's records (``router_*`` columns, written from the
    same ``Decision``), so profiling rows and routing-time rows are one thing.
    """
    return {
        "input_len": input_len,
        "prefix_hit_tokens": decision.prefix_hit_tokens,
        "inflight_requests": decision.inflight_requests,
        "inflight_tokens": decision.inflight_tokens,
        "running": decision.running,
        "waiting": decision.waiting,
        "kv_usage": decision.kv_usage,
        "scrape_age_s": decision.scrape_age_s,
        "group": group,
    }


class Runner:
    """Sends units to one backend through ``routing.Router``; returns one row per request.

    The router is the one every mode uses (``live.router.LiveRouter`` around
    ``routing.Router``, here with one backend and ``round_robin``): it keeps the
    in-flight counts, receives the ``/metrics`` scrapes every
    ``scrape_interval_s`` and estimates the prefix-cache hit with its bounded
    LRU ``PrefixIndex`` (sized to the backend's KV blocks, as the simulator
    sizes it). Each row's features are the router's ``Decision`` for that
    request. Use as ``async with Runner(...) as runner``.
    """

    def __init__(self, session: aiohttp.ClientSession, url: str, group: str, vocab_size: int, block_size: int,
                 *, num_kv_blocks: int | None = None, scrape_interval_s: float = 0.25, salt: int = 0,
                 model: str | None = None, timeout_s: float = 600.0,
                 on_done: Callable[[dict], None] | None = None) -> None:
        self.session, self.url, self.group = session, url, group
        self.vocab_size, self.block_size = vocab_size, block_size
        self.salt, self.model, self.timeout_s, self.on_done = salt, model, timeout_s, on_done
        self.fleet = LiveRouter([url], routing.build("round_robin"), names=[group], groups=[group],
                               block_size=block_size, scrape_interval_s=scrape_interval_s, scrape=True,
                               track_prefix=True,
                               prefix_index_blocks=num_kv_blocks if num_kv_blocks and num_kv_blocks > 0 else None)
        self.t0 = time.perf_counter()
        #: Every decision, by request id (tests compare rows with them).
        self.decisions: dict[int, Decision] = {}
        #: Token arrival times (perf_counter seconds) of the requests of units that keep them.
        self.token_times: dict[int, list[float]] = {}

    async def __aenter__(self) -> Runner:
        await self.fleet.start(self.session)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.fleet.stop()

    @property
    def scrape_failures(self) -> int:
        return sum(self.fleet.scrape_errors)

    def request_info(self, req: PlannedRequest, toks) -> RequestInfo:
        return RequestInfo(request_id=req.request_id, input_len=req.input_len, arrival_s=self.fleet.now(),
                           block_hashes=block_hash_chain(toks, self.block_size))

    async def _send(self, unit: Unit, req: PlannedRequest, unit_t0: float) -> dict:
        toks = prompt_tokens(req.request_id, req.input_len, prefix_id=req.prefix_id,
                             shared_len=req.shared_len, vocab_size=self.vocab_size, salt=self.salt)
        decision = self.fleet.dispatch(self.request_info(req, toks))
        self.decisions[req.request_id] = decision
        row = decision_features(decision, req.input_len, self.group)
        res = None
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
            ok = res is not None and res.ok
            self.fleet.finish(Outcome(
                request_id=req.request_id, backend_index=decision.backend, ok=ok, input_len=req.input_len,
                output_len=res.output_tokens if res is not None else 0,
                ttft_s=res.ttft_s if ok else math.nan, e2el_s=res.e2el_s if ok else math.nan))
        if unit.keep_token_times and res.ok:
            self.token_times[req.request_id] = [res.start + c for c in res.chunk_times_s]
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
