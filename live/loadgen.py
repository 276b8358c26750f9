"""Replay a ``workload.Trace`` against live backends with its exact arrival times.

Measures what ``vllm bench serve`` measures (TTFT from the send, chunk gaps as
ITL, usage-based token counts) and writes one ``RequestRecord`` per request of
the trace, whatever happened to it (rule "one record per request" in
docs/architecture.md): ``ok``, ``error`` (with the text), ``timeout``,
``rejected`` (client-side routing found no healthy backend) or ``unfinished``
(in flight, or never sent, when the run's time bound hit).

Timing. Every send is scheduled at an absolute deadline ``t0 + arrival_s``
against one ``perf_counter`` origin, so lateness never accumulates. The event
loop's timers are millisecond-grained; with ``spin_s`` set, the dispatcher sleeps
until that long before the deadline and then yields to the loop until the
deadline has passed (other requests' streams are served meanwhile). The lag
``actual - scheduled`` of every send is returned (``benchmarks/loadgen_accuracy.py``).

Sessions. The trace says how its requests are sent (``workload.sessions``), and
the rules are the simulator's (``sim.sessions``): open (every request at its
deadline), closed sessions (a session's first turn at its deadline, each later
turn when the previous reply has been read in full plus its think time) or
``clients`` closed-loop clients (concurrency mode). A failed turn ends its
session: its later turns not yet sent are recorded as ``skipped``. Each record
says when the client was ready to send (``ready_s``) besides when it sent
(``arrival_s``), and the think time it waited (``think_s``).

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
from workload.sessions import SessionPlan
from workload.hashing import block_hash_chain
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


async def replay(
    trace: Trace,
    *,
    router: LiveRouter | None = None,
    gateway_url: str | None = None,
    backend_names: Sequence[str] = (),
    labels: RunLabels = RunLabels(),
    options: LoadOptions | None = None,
) -> ReplayResult:
    """Send every request of ``trace`` at its arrival time; one record per request.

    Give ``router`` (client-side routing; it must not be started yet: it is
    started on this replay's session, scraping and probing, and stopped at the
    end) or ``gateway_url`` (everything to one gateway).
    """
    if (router is None) == (gateway_url is None):
        raise ValueError("give exactly one of router (client-side routing) or gateway_url")
    return await _Replay(trace, router, gateway_url, backend_names, labels, options or LoadOptions()).run()


class _Replay:
    """One replay: the dispatch loop on the clock, one task per request, the drain."""

    def __init__(self, trace: Trace, router: LiveRouter | None, gateway_url: str | None,
                 backend_names: Sequence[str], labels: RunLabels, opts: LoadOptions) -> None:
        self.trace, self.router, self.labels, self.opts = trace, router, labels, opts
        self.gateway_url = gateway_url.rstrip("/") if gateway_url else None
        if not backend_names and router is not None:
            backend_names = [s.name for s in router.router.snapshots]
        self.backend_index = {name: i for i, name in enumerate(backend_names)}
        n = len(trace)
        self.records: list[RequestRecord | None] = [None] * n
        self.lags = np.full(n, np.nan)
        self.shareable = trace.shareable_blocks() if router is not None and router.track_prefix else None
        self.arrivals = np.asarray(trace.arrival_s, dtype=np.float64)
        self.bound = opts.max_duration_s if opts.max_duration_s else math.inf
        self.plan = SessionPlan.of(trace)
        self.next_row = self.plan.next_row.tolist()
        self.think = self.plan.think_s.tolist()
        #: Sessions that ended with a failed turn: their later turns are not sent.
        self.failed: set[int] = set()
        self.clock = time.perf_counter
        self.tasks: set[asyncio.Task] = set()
        self.stopped_early = False
        self.t0 = math.nan
        self.bar = tqdm(total=n, desc=f"{labels.strategy or 'replay'} seed {labels.seed}", unit="req",
                        disable=not opts.progress, leave=False)
        # Request bodies (prompt token ids as JSON) take a few tenths of a millisecond
        # each: make the first ones before the clock starts, the rest while waiting.
        sendable = n if self.bound == math.inf else int(np.searchsorted(self.arrivals, self.bound, "right"))
        self.bodies = [_body(trace, i, opts) for i in tqdm(
            range(min(sendable, PREPARED_BODIES)), desc="preparing requests", unit="req",
            disable=not opts.progress, leave=False)]
        headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else None
        self.client = StreamClient(router.urls if router is not None else [self.gateway_url],
                                   opts.concurrency, headers)

    async def run(self) -> ReplayResult:
        # The aiohttp session serves the router's scrapes and health probes only.
        async with make_session(8) as session:
            if self.router is not None:
                await self.router.start(session)
            self.t0 = self.clock() + self.opts.start_delay_s
            try:
                await self._dispatch()
                await self._drain()
            finally:
                await self._stop()
            wall = self.clock() - self.t0
        for i, rec in enumerate(self.records):
            if rec is None:  # never sent before the bound
                self.records[i] = _unsent_record(self.trace, i, self.labels)
        return ReplayResult(self.records, self.lags[np.isfinite(self.lags)], wall, self.stopped_early)

    def _take_body(self, i: int) -> bytes:
        body = self.bodies[i] if i < len(self.bodies) else _body(self.trace, i, self.opts)
        if i < len(self.bodies):
            self.bodies[i] = b""  # sent once: free it
        return body

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _dispatch(self) -> None:
        """Start each request (open) or session (closed) at its deadline ``t0 + arrival_s``,
        or the concurrency clients at once; stop at the bound."""
        plan = self.plan
        if plan.clients > 0:
            queue = iter(plan.first_rows().tolist() if plan.closed else range(len(self.trace)))
            for _ in range(plan.clients):
                self._spawn(self._client(queue))
            return
        rows = plan.first_rows().tolist() if plan.closed else range(len(self.trace))
        for i in rows:
            if self.arrivals[i] > self.bound:
                self.stopped_early = True
                return
            deadline = self.t0 + self.arrivals[i]
            await _sleep_until(deadline, self.opts.spin_s, self.clock)
            if plan.closed:
                self._spawn(self._session(i, deadline))
            elif self.failed and int(plan.session[i]) in self.failed:
                self._skip(i)
            else:
                self._spawn(self._send(i, self._take_body(i), deadline))

    async def _session(self, row: int, ready: float) -> bool:
        """Send a closed session's turns from ``row`` on, each after the previous reply plus
        its think time; a failed turn ends it. Returns whether every turn was sent and ok."""
        while True:
            status = await self._send(row, self._take_body(row), ready)
            if status != "ok":
                self._skip_rest(self.next_row[row], row)
                return False
            nxt = self.next_row[row]
            if nxt < 0:
                return True
            ready = self.clock() + self.think[nxt]  # the reply has been read in full: think
            if ready - self.t0 > self.bound:
                self.stopped_early = True
                return False  # never sent: recorded as unfinished at the end
            await _sleep_until(ready, self.opts.spin_s, self.clock)
            row = nxt

    async def _client(self, queue) -> None:
        """A concurrency client: the next request (or session) as soon as its last one ended."""
        plan = self.plan
        ready = self.t0
        await _sleep_until(ready, self.opts.spin_s, self.clock)
        for i in queue:
            if self.clock() - self.t0 > self.bound:
                self.stopped_early = True
                return
            if plan.closed:
                await self._session(i, ready)
            elif self.failed and int(plan.session[i]) in self.failed:
                self._skip(i)
                continue
            else:
                await self._send(i, self._take_body(i), ready)
            ready = self.clock()

    def _skip(self, row: int, failed_row: int = -1) -> None:
        trace = self.trace
        turn = f"turn {int(trace.turn[failed_row])}" if failed_row >= 0 else "an earlier turn"
        rec = _unsent_record(trace, row, self.labels)
        rec.status, rec.arrival_s = "skipped", math.nan
        rec.error = (f"not sent: {turn} of session {trace.conversation_id[row]} failed, which "
                     "ends the session")
        self.records[row] = rec
        self.bar.update(1)

    def _skip_rest(self, row: int, failed_row: int) -> None:
        while row >= 0:
            self._skip(row, failed_row)
            row = self.next_row[row]

    async def _drain(self) -> None:
        """Wait for requests in flight, up to ``drain_s`` (and the time bound).

        Closed sessions keep sending after the last session started: they get until
        ``drain_s`` after the last planned send (the simulator's horizon); concurrency
        clients until every request is done (or the time bound).
        """
        if not self.tasks:
            return
        left = self.opts.drain_s
        if self.plan.clients > 0:
            left = math.inf
        elif self.plan.closed and len(self.arrivals):
            left = self.t0 + float(self.arrivals.max()) + self.opts.drain_s - self.clock()
        if self.bound < math.inf:
            left = min(left, self.t0 + self.bound - self.clock())
        if left == math.inf:
            left = None
        _, pending = await asyncio.wait(set(self.tasks), timeout=None if left is None
                                        else max(left, 0.0))
        if pending:
            self.stopped_early = True

    async def _stop(self) -> None:
        """Cancel what is still running (recorded as unfinished), stop the router and the client."""
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.router is not None:
            await self.router.stop()
        self.client.close()
        self.bar.close()

    async def _send(self, i: int, body: bytes, scheduled: float) -> str:
        """Route and send request ``i`` (the client was ready at ``scheduled``); whatever
        happens, record it exactly once. Returns its status."""
        trace, router = self.trace, self.router
        res = CompletionResult(ok=False, status=0, start=math.nan)
        decision: Decision | None = None
        url = self.gateway_url
        status = "unfinished"
        try:
            if router is not None:
                try:
                    decision = router.dispatch(self._request_info(i))
                except NoHealthyBackend:
                    status = "rejected"
                    res.start = self.clock()
                    res.error = "no healthy backend"
                    return status
                url = router.urls[decision.backend]
            await self.client.post(url, "/v1/completions", body, res, self.opts.timeout_s)
            status = "ok" if res.ok else ("timeout" if res.timed_out else "error")
            return status
        finally:
            if status == "unfinished":
                res.error = "still in flight when the run's time bound hit (cancelled)"
            elif status != "ok":
                self.failed.add(int(self.plan.session[i]))
            self.lags[i] = res.start - scheduled
            self.records[i] = _record(trace, i, res, status, decision, self.t0, self.labels,
                                      self.backend_index, ready_s=scheduled - self.t0,
                                      think_s=self.think[i])
            if decision is not None:
                router.finish(Outcome(int(trace.request_id[i]), decision.backend, res.ok,
                                      int(trace.input_len[i]), res.output_tokens, res.ttft_s, res.e2el_s))
                if status != "unfinished":
                    router.report(decision.backend, res.ok)
            self.bar.update(1)

    def _request_info(self, i: int) -> RequestInfo:
        trace, router = self.trace, self.router
        if not router.track_prefix:
            hashes = np.zeros(0, np.uint64)
        elif router.router.wants_kv_events:
            # The exact mirror names blocks by the token ids the backends were sent (their
            # KV events carry them), not by the trace's own hashes: hash what is sent.
            hashes = block_hash_chain(prompt_token_ids(trace, i, self.opts.vocab_size),
                                      router.block_size)
        else:
            hashes = trace.hashes(i)
        return RequestInfo(
            int(trace.request_id[i]), int(trace.input_len[i]), router.now(), hashes,
            session_id=str(trace.conversation_id[i]), turn=int(trace.turn[i]),
            num_shareable_blocks=int(self.shareable[i]) if self.shareable is not None else -1)


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
            t0: float, labels: RunLabels, backend_index: dict[str, int], *,
            ready_s: float = math.nan, think_s: float = math.nan) -> RequestRecord:
    sent = res.start - t0
    times = res.chunk_times_s
    itl = ItlEncoder()
    for a, b in zip(times, times[1:]):
        itl.add(b - a)
    if decision is not None:
        backend = decision.backend
    elif res.routed_to:
        backend = backend_index.get(res.routed_to, -1)  # the gateway's x-gateway-backend
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
        input_len=int(trace.input_len[i]), cached_tokens=res.cached_tokens,
        output_len=res.output_tokens, requested_output_len=int(trace.output_len[i]),
        num_preemptions=0, status=status, error=res.error[:2000],
        itl_start=itl.start, itl_step=itl.step, itl_count=itl.count,
        ready_s=ready_s, think_s=think_s,
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
    """A request never sent: its arrival is its scheduled send time where it had one (open
    sends, a session's first turn), NaN for a later turn of a closed session."""
    nan = math.nan
    closed_later = trace.meta.get("sessions") == "closed" and trace.think_s[i] == trace.think_s[i]
    return RequestRecord(
        experiment_id=labels.experiment_id, point_id=labels.point_id, strategy=labels.strategy,
        seed=labels.seed, request_id=int(trace.request_id[i]),
        conversation_id=str(trace.conversation_id[i]), turn=int(trace.turn[i]), backend=-1,
        arrival_s=nan if closed_later else float(trace.arrival_s[i]), dispatch_s=nan,
        first_token_s=nan, last_token_s=nan, finish_s=nan, input_len=int(trace.input_len[i]),
        cached_tokens=0, output_len=0, requested_output_len=int(trace.output_len[i]),
        num_preemptions=0, status="unfinished", error="not sent: the run's time bound came first",
        think_s=float(trace.think_s[i]))
