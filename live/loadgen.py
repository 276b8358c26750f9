"""Replay a ``workload.Trace`` against live backends with its exact arrival times.

Measures what ``vllm bench serve`` measures (TTFT from the send, chunk gaps as
ITL, usage-based token counts) and writes one ``RequestRecord`` per request of
the trace, whatever happened to it (rule "one record per request" in
docs/architecture.md): ``ok``, ``error`` (with the text), ``timeout``, ``rejected`` (client-side routing found no healthy backend)
or ``unfinished`` (in flight, or never sent, when the run's time bound hit).

Timing. Every send is scheduled at an absolute deadline ``t0 + arrival_s``
against one ``perf_counter`` origin, so lateness never accumulates. The event
loop's timers are millisecond-grained; with ``spin_s`` set, the dispatcher sleeps
until that long before the deadline and then yields to the loop until the
deadline has passed (other requests' streams are served meanwhile). The lag
``actual - scheduled`` of every send is returned (``benchmarks/loadgen_accuracy.py``).

Routing. Either client-side, through a ``live.router.LiveRouter`` (the
``routing.Router`` and strategy the simulator uses, scraping the backends
itself; the records then carry the decision's ``router_*`` features), or all to
one gateway URL (the backend is read from its ``x-gateway-backend`` header).
"""
from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson
from tqdm import tqdm

from live.transport.client import CompletionResult, completion_body, make_session
from live.router import LiveRouter
from live.transport.streamclient import StreamClient
from results.records import RequestRecord, RunLabels
from routing import Decision, NoHealthyBackend, Outcome, RequestInfo
from sim.itl import ItlEncoder
from workload.tokens import prompt_token_ids
from workload.trace import Trace


#: Request bodies made before the run starts (more are made during it).
PREPARED_BODIES = 20000


@dataclass
class LoadOptions:
    """How to send. Times in seconds; 0 or None means "no bound"."""

    #: Idle keep-alive connections kept per backend. The load is open-loop: a request
    #: is never held back for a free connection (that would move its send time).
    concurrency: int = 256
    timeout_s: float = 600.0  # per request, from its send
    max_duration_s: float | None = None  # wall bound from the first scheduled send
    drain_s: float = 600.0  # after the last send, how long in-flight requests may take
    vocab_size: int = 32000  # prompt token ids are drawn below this
    model: str | None = None
    api_key: str | None = None
    #: Yield-wait this close to each deadline (timers are ms-grained). Off by default:
    #: 2 ms halves the p50 lateness but costs about twice the CPU (benchmarks/loadgen_accuracy.py).
    spin_s: float = 0.0
    start_delay_s: float = 0.05  # from the call to the first scheduled send
    progress: bool = False


@dataclass
class ReplayResult:
    records: list[RequestRecord]
    #: Actual minus scheduled send time of every request that was sent (seconds).
    send_lag_s: np.ndarray
    wall_s: float
    stopped_early: bool = False


class _Target:
    """Where requests go: a fleet (client-side routing) or one gateway URL."""

    def __init__(self, fleet: LiveRouter | None, gateway_url: str | None,
                 backend_names: Sequence[str]) -> None:
        if (fleet is None) == (gateway_url is None):
            raise ValueError("give exactly one of fleet (client-side routing) or gateway_url")
        self.fleet = fleet
        self.gateway_url = gateway_url.rstrip("/") if gateway_url else None
        self.index = {name: i for i, name in enumerate(backend_names)}


async def replay(
    trace: Trace,
    *,
    fleet: LiveRouter | None = None,
    gateway_url: str | None = None,
    backend_names: Sequence[str] = (),
    labels: RunLabels = RunLabels(),
    options: LoadOptions | None = None,
) -> ReplayResult:
    """Send every request of ``trace`` at its arrival time; one record per request.

    With ``fleet``, the fleet must not be started yet: it is started on this
    replay's session (scraping and probing) and stopped at the end.
    """
    opts = options or LoadOptions()
    if not backend_names and fleet is not None:
        backend_names = [s.name for s in fleet.router.snapshots]
    target = _Target(fleet, gateway_url, backend_names)
    n = len(trace)
    records: list[RequestRecord | None] = [None] * n
    lags = np.full(n, np.nan)
    shareable = trace.shareable_blocks() if fleet is not None and fleet.track_prefix else None
    headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else None
    arrivals = np.asarray(trace.arrival_s, dtype=np.float64)
    bound = opts.max_duration_s if opts.max_duration_s else math.inf
    bar = tqdm(total=n, desc=f"{labels.strategy or 'replay'} seed {labels.seed}", unit="req",
               disable=not opts.progress, leave=False)
    clock = time.perf_counter
    tasks: set[asyncio.Task] = set()
    stopped_early = False
    # Request bodies (prompt token ids as JSON) take a few tenths of a millisecond
    # each: make the first ones before the clock starts, the rest while waiting.
    sendable = n if bound == math.inf else int(np.searchsorted(arrivals, bound, side="right"))
    bodies = [_body(trace, i, opts) for i in tqdm(
        range(min(sendable, PREPARED_BODIES)), desc="preparing requests", unit="req",
        disable=not opts.progress, leave=False)]

    client = StreamClient(fleet.urls if fleet is not None else [target.gateway_url],
                          opts.concurrency, headers)
    # The aiohttp session serves the fleet's scrapes and health probes only.
    async with make_session(8) as session:
        if fleet is not None:
            await fleet.start(session)
        t0 = clock() + opts.start_delay_s

        async def one(i: int, body: bytes, scheduled: float) -> None:
            res = CompletionResult(ok=False, status=0, start=math.nan)
            decision: Decision | None = None
            url = target.gateway_url
            status = "unfinished"
            try:
                if fleet is not None:
                    info = RequestInfo(
                        int(trace.request_id[i]), int(trace.input_len[i]), fleet.now(),
                        trace.hashes(i) if fleet.track_prefix else np.zeros(0, np.uint64),
                        session_id=str(trace.conversation_id[i]), turn=int(trace.turn[i]),
                        num_shareable_blocks=int(shareable[i]) if shareable is not None else -1)
                    try:
                        decision = fleet.dispatch(info)
                    except NoHealthyBackend:
                        status = "rejected"
                        res.start = clock()
                        res.error = "no healthy backend"
                        return
                    url = fleet.urls[decision.backend]
                await client.post(url, "/v1/completions", body, res, opts.timeout_s)
                status = "ok" if res.ok else ("timeout" if res.timed_out else "error")
            finally:
                if status == "unfinished":
                    res.error = "still in flight when the run's time bound hit (cancelled)"
                lags[i] = res.start - scheduled
                records[i] = _record(trace, i, res, status, decision, t0, labels, target)
                if decision is not None:
                    out_len = res.output_tokens
                    fleet.finish(Outcome(int(trace.request_id[i]), decision.backend, res.ok,
                                         int(trace.input_len[i]), out_len, res.ttft_s, res.e2el_s))
                    if status != "unfinished":
                        fleet.report(decision.backend, res.ok)
                bar.update(1)

        try:
            for i in range(n):
                if arrivals[i] > bound:
                    stopped_early = True
                    break
                body = bodies[i] if i < len(bodies) else _body(trace, i, opts)
                if i < len(bodies):
                    bodies[i] = b""  # sent once: free it
                deadline = t0 + arrivals[i]
                await _sleep_until(deadline, opts.spin_s, clock)
                task = asyncio.ensure_future(one(i, body, deadline))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                left = min(opts.drain_s, t0 + bound - clock()) if bound < math.inf else opts.drain_s
                _, pending = await asyncio.wait(set(tasks), timeout=max(left, 0.0))
                if pending:
                    stopped_early = True
        finally:
            for t in list(tasks):
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if fleet is not None:
                await fleet.stop()
            client.close()
            bar.close()
        wall = clock() - t0

    for i in range(n):
        if records[i] is None:  # never sent before the bound
            records[i] = _unsent_record(trace, i, labels)
    sent = lags[np.isfinite(lags)]
    return ReplayResult(records, sent, wall, stopped_early)


def _body(trace: Trace, i: int, opts: LoadOptions) -> bytes:
    # The conversation is the session: the OpenAI ``user`` field is how a gateway keys it.
    return orjson.dumps(completion_body(prompt_token_ids(trace, i, opts.vocab_size),
                                        int(trace.output_len[i]), ignore_eos=True,
                                        model=opts.model,
                                        extra={"user": str(trace.conversation_id[i])}))


async def _sleep_until(deadline: float, spin_s: float, clock) -> None:
    """Sleep to ``spin_s`` before ``deadline``, then yield to the loop until it passes."""
    delay = deadline - clock() - spin_s
    if delay > 0:
        await asyncio.sleep(delay)
    while clock() < deadline:
        await asyncio.sleep(0)


def _record(trace: Trace, i: int, res: CompletionResult, status: str, decision: Decision | None,
            t0: float, labels: RunLabels, target: _Target) -> RequestRecord:
    sent = res.start - t0
    times = res.chunk_times_s
    itl = ItlEncoder()
    for a, b in zip(times, times[1:]):
        itl.add(b - a)
    if decision is not None:
        backend = decision.backend
    elif res.routed_to:
        backend = target.index.get(res.routed_to, -1)
    else:
        backend = -1
    rec = RequestRecord(
        experiment_id=labels.experiment_id, point_id=labels.point_id, strategy=labels.strategy,
        seed=labels.seed, request_id=int(trace.request_id[i]),
        conversation_id=str(trace.conversation_id[i]), turn=int(trace.turn[i]), backend=backend,
        arrival_s=sent, dispatch_s=sent,
        first_token_s=sent + times[0] if times else math.nan,
        last_token_s=sent + times[-1] if times else math.nan,
        finish_s=sent + res.e2el_s if res.e2el_s == res.e2el_s else math.nan,
        input_len=int(trace.input_len[i]), cached_tokens=max(res.cached_tokens, 0),
        output_len=res.output_tokens, requested_output_len=int(trace.output_len[i]),
        num_preemptions=0, status=status, error=res.error[:2000],
        itl_start=itl.start, itl_step=itl.step, itl_count=itl.count,
    )
    if decision is not None:
        rec.router_inflight_requests = decision.inflight_requests
        rec.router_inflight_tokens = decision.inflight_tokens
        rec.router_running = decision.running
        rec.router_waiting = decision.waiting
        rec.router_kv_usage = decision.kv_usage
        rec.router_scrape_age_s = decision.scrape_age_s
        rec.router_prefix_hit_tokens = decision.prefix_hit_tokens
    return rec


def _unsent_record(trace: Trace, i: int, labels: RunLabels) -> RequestRecord:
    nan = math.nan
    return RequestRecord(
        experiment_id=labels.experiment_id, point_id=labels.point_id, strategy=labels.strategy,
        seed=labels.seed, request_id=int(trace.request_id[i]),
        conversation_id=str(trace.conversation_id[i]), turn=int(trace.turn[i]), backend=-1,
        arrival_s=float(trace.arrival_s[i]), dispatch_s=nan, first_token_s=nan, last_token_s=nan,
        finish_s=nan, input_len=int(trace.input_len[i]), cached_tokens=0, output_len=0,
        requested_output_len=int(trace.output_len[i]), num_preemptions=0, status="unfinished",
        error="not sent: the run's time bound came first")
