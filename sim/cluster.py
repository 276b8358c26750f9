"""The simulated fleet on SimPy: arrivals -> router -> one engine process per backend.

Every request of the trace ends as exactly one ``RequestRecord`` (rule "one
record per request" in docs/architecture.md). When each request is sent (open
arrivals, closed-loop sessions, concurrency clients) is ``sim.sessions``' job.
The router is ``routing.Router`` around a ``routing`` strategy, the very object the
gateway uses; it sees the router's own in-flight counts and each backend's
metrics as of its latest scrape.

Scrapes are exact but lazy. A real router scrapes backend ``b`` at times
``phase_b + k * interval``; what it holds at decision time ``t`` is the engine's
published state at the latest such tick. Rather than wake every backend at every
tick, a backend driver computes that state only when a decision asks for it (or
when a completed step is about to overwrite it), which gives the same values as
scraping eagerly at every tick.

Decode runs (see ``sim.engine``) are one SimPy event. When something must change
the batch mid-run (an arrival that can be admitted, a timeout), the driver is
interrupted, applies the steps that already ended, and lets the step in progress
finish before the batch changes: the same outcome as stepping one by one.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import simpy

from results.counters import BackendCounters, UnitCounters
from results.records import RequestRecord, RunLabels
from routing import BackendSpec, Decision, Outcome, RequestInfo, Router, ScrapedMetrics, Strategy
from routing.kv_events import KVEvent
from routing.router import NoHealthyBackend
from sim.engine import Engine, EngineConfig, EngineMetrics, Plan, RequestTooLong, StepOutput
from sim.frontend import FrontEnd
from sim.latency import LatencyProfile
from sim.request import EngineRequest, Status
from sim.sessions import SessionDriver
from sim.speed import SpeedWander
from workload.sessions import SessionPlan
from workload.trace import Trace

#: Upper bound on the length of one decode run (a run is cut earlier by any event).
MAX_RUN_STEPS = 1 << 20


@dataclass(frozen=True)
class BackendConfig:
    name: str
    group: str
    profile: LatencyProfile
    engine: EngineConfig
    #: The machine's speed wander (``sim.speed``): each step's duration times the factor at
    #: its start. None: the profile's speed throughout.
    speed: SpeedWander | None = None


@dataclass(frozen=True)
class ClusterConfig:
    backends: list[BackendConfig]
    scrape_interval_s: float = 0.5
    network_delay_s: float = 0.0
    timeout_s: float = 0.0  # 0 = no client timeout
    mode: str = "fast"  # "fast": decode runs in closed form; "exact": one event per step
    drain_s: float = 600.0

    def __post_init__(self) -> None:
        if not self.backends:
            raise ValueError("a cluster needs at least one backend")
        if self.mode not in ("fast", "exact"):
            raise ValueError(f"mode must be 'fast' or 'exact', got {self.mode!r}")
        if self.scrape_interval_s <= 0:
            raise ValueError("scrape_interval_s must be > 0")


@dataclass(slots=True)
class _Pending:
    """Router-side facts about a dispatched request, until its record is written."""

    index: int  # row in the trace
    decision: Decision
    dispatch_s: float
    #: When the client was ready to send it (= sent: a simulated client never lags).
    ready_s: float = math.nan
    deadline_hit: bool = False
    #: When the API-server front end delivered the first and last token (NaN: no front end).
    first_out: float = math.nan
    last_out: float = math.nan


@dataclass
class SimResult:
    records: list[RequestRecord]  # empty when the records went to a sink
    end_time: float
    engine_metrics: list[EngineMetrics] = field(default_factory=list)
    num_records: int = 0

    def counters(self) -> UnitCounters:
        """Every engine's counters over the run (they start at zero), for the record file."""
        return UnitCounters(tuple(
            BackendCounters(float(m.prefix_queries), float(m.prefix_hits), float(m.preemptions))
            for m in self.engine_metrics), "simulated engines' counters at the end of the unit")


def to_scraped(m: EngineMetrics) -> ScrapedMetrics:
    return ScrapedMetrics(
        running=float(m.running),
        waiting=float(m.waiting),
        kv_usage=m.kv_usage,
        prefix_queries=float(m.prefix_queries),
        prefix_hits=float(m.prefix_hits),
        preemptions=float(m.preemptions),
    )


class BackendDriver:
    """Steps one ``Engine`` on SimPy's clock."""

    def __init__(self, cluster: ClusterSim, index: int, engine: Engine, phase: float,
                 kv_events: Callable[[int, KVEvent, float], None] | None = None) -> None:
        self.cluster = cluster
        #: KV events the engine sent during the current call, with their ticks.
        self._events: list[tuple[KVEvent, int]] = []
        self._kv_events = kv_events
        self._event_lag = 1 if engine.async_scheduling else 0
        self.env = cluster.env
        self.index = index
        self.engine = engine
        self.phase = phase
        self.speed = cluster.config.backends[index].speed
        # A wandering machine gives every step its own factor: one step per plan.
        self.max_steps = MAX_RUN_STEPS if cluster.config.mode == "fast" and self.speed is None else 1
        self.plan: Plan | None = None
        self.plan_start = 0.0
        self.published_at = 0.0
        self.interruptible = False
        self.wake: simpy.Event | None = None
        self.pending_aborts: list[int] = []
        #: An interrupt was sent and its handler has not run yet.
        self.interrupt_pending = False
        #: When requests reached the engine during the current plan (to publish cut runs).
        self.submits_during_plan: list[float] = []
        self.tick_time = math.nan
        self.tick_metrics: EngineMetrics = engine.published
        #: The backend's API-server front end (``sim.frontend``), if its profile has one.
        fe = cluster.config.backends[index].profile.front_end
        self.frontend: FrontEnd | None = FrontEnd(fe) if fe.enabled else None
        self.proc = self.env.process(self._run())

    # --- KV events -------------------------------------------------------------------------
    def on_kv_event(self, event: KVEvent, tick: int) -> None:
        self._events.append((event, tick))

    def _publish_events(self, plan: Plan, start: float) -> None:
        """Hand the buffered events on with the times vLLM publishes them.

        An event of the step at tick ``t`` is published with that step's output:
        at its end, or, with asynchronous scheduling, at its start (with the
        previous step's output). ``plan`` started at ``start`` at tick ``plan.tick0``.
        """
        sink, lag, index = self._kv_events, self._event_lag, self.index
        for event, tick in self._events:
            sink(index, event, start + plan.time_of(max(0, tick - plan.tick0 - lag)))
        self._events.clear()

    # --- arrivals and aborts ------------------------------------------------------------
    def submit(self, req: EngineRequest) -> None:
        eng = self.engine
        if req.payload.deadline_hit:
            self.cluster.timed_out(req)  # the client gave up while it was on the network
            return
        try:
            eng.add_request(req, self.env.now)
        except RequestTooLong as exc:
            self.cluster.reject(req, str(exc))
            return
        if self.plan is not None:
            self.submits_during_plan.append(self.env.now)
        if self.wake is not None:
            wake, self.wake = self.wake, None
            wake.succeed()
        elif self.interruptible and eng.can_admit_next():
            self._interrupt()

    def abort(self, request_id: int) -> None:
        """Abort at the current time, after applying the decode steps that ended."""
        req = self.engine.requests.get(request_id)
        if req is not None and req.status == Status.RUNNING and (self.interruptible or self.interrupt_pending):
            # Apply it after the run's finished steps are applied, in the handler.
            self.pending_aborts.append(request_id)
            if self.interruptible:
                self._interrupt()
        else:
            self._apply_abort(request_id)

    def _interrupt(self) -> None:
        self.interruptible = False
        self.interrupt_pending = True
        self.proc.interrupt()

    def _apply_abort(self, request_id: int) -> None:
        eng = self.engine
        req = eng.abort(request_id)
        if req is not None:
            self.cluster.timed_out(req)
            # A queued request leaving may unblock the queue head.
            if self.interruptible and eng.can_admit_next():
                self._interrupt()

    # --- the engine process -----------------------------------------------------------
    def _run(self):
        env, eng = self.env, self.engine
        while True:
            if not eng.has_work:
                self.wake = env.event()
                yield self.wake
                continue
            plan = eng.plan(self.max_steps)
            start = env.now
            if self.speed is not None:
                factor = self.speed.factor_at(start)
                plan.first *= factor
                plan.delta *= factor
            self.plan, self.plan_start = plan, start
            if self.frontend is not None:
                self.frontend.track(start, plan)
            if self._events:
                self._publish_events(plan, start)
            self.submits_during_plan.clear()
            while True:
                self.interruptible = plan.is_run and plan.steps > 1
                try:
                    yield env.timeout(start + plan.duration - env.now)
                    break
                except simpy.Interrupt:
                    self.interruptible = False
                    self.interrupt_pending = False
                    done = plan.steps_done_by(env.now - start)
                    if done >= 1:
                        end_done = start + plan.time_of(done)
                        # Requests that arrived after those steps ended were not
                        # waiting yet when their metrics were published.
                        late = sum(1 for t in self.submits_during_plan if t > end_done)
                        self._complete(plan, done, start, end_done, late_arrivals=late)
                        tail = eng.tail(plan, done)
                        if late and eng.async_scheduling:
                            # The tail step's schedule was published anew (at end_done).
                            eng.published.waiting -= late
                        if self._events:
                            self._publish_events(plan, start)
                        plan, start = tail, end_done
                        self.plan, self.plan_start = plan, start
                    else:
                        tail = eng.tail(plan, 0)
                        if self._events:
                            self._publish_events(plan, start)
                        plan = tail
                        self.plan = plan
                    if self.frontend is not None:
                        self.frontend.track(start, plan)
                    for rid in self.pending_aborts:
                        self._apply_abort(rid)
                    self.pending_aborts.clear()
            # The run ended by itself: nothing may interrupt it any more (a stale flag
            # would interrupt the idle wait below when two requests arrive at once).
            self.interruptible = False
            self._complete(plan, plan.steps, start, start + plan.duration)
            self.plan = None

    def _complete(self, plan: Plan, steps: int, start: float, end: float,
                  late_arrivals: int = 0) -> None:
        self._remember_tick_before(end, plan, start)
        out = self.engine.complete(plan, steps, start)
        if self._events:
            self._publish_events(plan, start)
        if late_arrivals:
            self.engine.published.waiting -= late_arrivals
        self.published_at = end
        # Every first token and finish of a completion is in its last step.
        delivered = self.frontend.complete(steps) if self.frontend is not None else None
        self.cluster.on_output(self, out, delivered)

    def finalize(self, now: float) -> None:
        """At the horizon: apply the decode steps of an unfinished run that ended."""
        plan = self.plan
        if plan is not None and plan.is_run:
            done = plan.steps_done_by(now - self.plan_start)
            if done >= 1:
                self._complete(plan, done, self.plan_start, self.plan_start + plan.time_of(done))
        self.plan = None

    # --- scrapes -------------------------------------------------------------------------
    def latest_tick(self, now: float) -> float:
        """The time of the router's latest scrape of this backend at ``now`` (NaN: none yet)."""
        interval = self.cluster.config.scrape_interval_s
        if now < self.phase:
            return math.nan
        return self.phase + math.floor((now - self.phase) / interval) * interval

    def metrics_at_tick(self, tick: float) -> EngineMetrics:
        if tick == self.tick_time:
            return self.tick_metrics
        plan = self.plan
        if plan is not None and tick >= self.plan_start:
            m = self._metrics_in_plan(plan, self.plan_start, tick)
        elif tick >= self.published_at:
            m = self.engine.published
        else:  # pragma: no cover - guarded by _remember_tick_before
            raise AssertionError("scrape state for a past tick was not kept")
        self.tick_time, self.tick_metrics = tick, m
        return m

    def _remember_tick_before(self, end: float, plan: Plan, start: float) -> None:
        """Keep the state at the latest tick before ``end`` before a step overwrites it."""
        tick = self.latest_tick(end)
        if tick != tick or tick == self.tick_time or tick >= end or tick < self.published_at:
            return
        if tick >= start:
            m = self._metrics_in_plan(plan, start, tick)
        else:
            m = self.engine.published
        self.tick_time, self.tick_metrics = tick, m

    def _metrics_in_plan(self, plan: Plan, start: float, t: float) -> EngineMetrics:
        """Published metrics at ``t`` inside ``plan`` (which started at ``start``)."""
        m = self.engine.metrics_during(plan, t - start)
        if plan.is_run and m is not self.engine.published:
            # Requests queued during the run are published after the next step ends.
            last_end = start + plan.time_of(plan.steps_done_by(t - start))
            m.waiting += sum(1 for s in self.submits_during_plan if s <= last_end)
        return m


class ClusterSim:
    """One simulation: a trace through a router onto a fleet of engines."""

    def __init__(self, trace: Trace, strategy: Strategy, config: ClusterConfig, *,
                 labels: RunLabels = RunLabels(), seed: int = 0, share_analysis: bool = True,
                 decode_group: bool = True, replies_in_prompts: bool = True,
                 kv_events: Callable[[int, KVEvent, float], None] | None = None,
                 sink: Callable[[RequestRecord], None] | None = None) -> None:
        self.trace = trace
        self.config = config
        self.labels = labels
        self.env = simpy.Environment()
        block_sizes = {b.engine.block_size for b in config.backends}
        if block_sizes != {trace.block_size}:
            raise ValueError(
                f"the trace's block size {trace.block_size} must equal every backend's "
                f"block_size (got {sorted(block_sizes)}): prefix hashes are per block"
            )
        self.router = Router(
            strategy,
            [BackendSpec(b.name, b.group, b.engine.num_kv_blocks) for b in config.backends],
            block_size=trace.block_size,
            scrape_source=self._scrape,
        )
        n = len(config.backends)
        #: A router that mirrors caches from KV events gets every backend's events (and
        #: decisions first apply the steps that ended, see ``_arrivals``).
        self._router_events = self.router.wants_kv_events
        if self._router_events:
            kv_events = self._events_to_router(kv_events, n)
        self.drivers = []
        for i, b in enumerate(config.backends):
            engine = Engine(b.engine, b.profile.model, jitter_cv=b.profile.jitter_cv,
                            seed=seed * 1009 + i, decode_group=decode_group)
            driver = BackendDriver(self, i, engine, phase=config.scrape_interval_s * i / n,
                                   kv_events=kv_events)
            if kv_events is not None:
                engine.set_kv_event_sink(driver.on_kv_event)
            self.drivers.append(driver)
        #: One-way delay per backend: the network hop plus half the profile's
        #: per-request overhead (the other half is added on the way back).
        self._delay = [config.network_delay_s + b.profile.request_overhead_s / 2.0
                       for b in config.backends]
        #: Without a sink every record is kept here (row = trace row); with one,
        #: records go to the sink as requests end and only a written flag is kept.
        self.sink = sink
        self.records: list[RequestRecord | None] = [] if sink is not None else [None] * len(trace)
        self._done = bytearray(len(trace))
        self._pending: dict[int, _Pending] = {}
        self._written = 0
        self._all_done = self.env.event()
        #: Where each request's reply blocks are named (``Trace.reply_blocks``): a
        #: later turn that contains the reply hits them, as vLLM caches generated
        #: blocks. None: no prompt contains a served reply (reply blocks unique).
        replies = trace.reply_blocks() if replies_in_prompts else None
        if replies is not None and not replies[1].any():
            replies = None  # no later prompt holds a reply (single-turn sources)
        self._reply_rows = replies[0].tolist() if replies is not None else None
        self._reply_counts = replies[1].tolist() if replies is not None else None
        #: Exact speed-up, see ``sim.kv_cache``: unique blocks are tracked as counts.
        #: The router indexes prompts only, so it gets the prompt-only counts.
        self.shareable = self.engine_shareable = None
        if share_analysis:
            shared = trace.shareable_blocks()
            self.shareable = shared.tolist()
            self.engine_shareable = (trace.shareable_with_replies(shared, replies).tolist()
                                     if replies is not None else self.shareable)
        #: When each request is sent: open, closed sessions or concurrency (sim.sessions).
        self.sessions = SessionDriver(self, SessionPlan.of(trace))

    def _events_to_router(self, outer: Callable[[int, KVEvent, float], None] | None, n: int):
        """A KV-event sink that feeds the router (each event a batch, numbered per backend)."""
        record = self.router.record_kv_events
        seq = [0] * n

        def sink(index: int, event: KVEvent, t: float) -> None:
            record(index, (event,), t, seq[index])
            seq[index] += 1
            if outer is not None:
                outer(index, event, t)

        return sink

    # --- running -------------------------------------------------------------------------
    def run(self) -> SimResult:
        env = self.env
        n = len(self.trace)
        if n == 0:
            return SimResult([], 0.0)
        arrivals = self.trace.arrival_s
        if not (arrivals == arrivals).all():
            raise ValueError("the trace has no arrival times (NaN); assign arrivals first")
        horizon = self.sessions.horizon(self.config.drain_s)
        self.sessions.start()
        if horizon < math.inf:
            env.timeout(horizon).callbacks.append(self._stop)
        env.run(until=self._all_done)
        end = env.now
        for d in self.drivers:
            d.finalize(end)
        for rid in list(self._pending):
            self._write_unfinished(rid, end)
        for row in [i for i, done in enumerate(self._done) if not done]:
            self._write(row, self._unsent(row, "not sent: the run's horizon (drain_s after the "
                                               "last planned send) came first"))
        assert all(self._done), "every request must end as one record"
        return SimResult(self.records, end, [d.engine.published for d in self.drivers],
                         num_records=self._written)  # type: ignore[arg-type]

    def _stop(self, _event) -> None:
        if not self._all_done.triggered:
            self._all_done.succeed()

    # --- the client side (sim.sessions decides when) ------------------------------------
    def apply_due_steps(self) -> simpy.Event | None:
        """Before a routing decision on KV events: let decode runs publish the steps that
        ended (as stepping one by one would have). Returns an event to wait for, or None."""
        if not self._router_events:
            return None
        cut = [d for d in self.drivers if d.interruptible]
        if not cut:
            return None
        for d in cut:
            d._interrupt()
        return self.env.timeout(0)

    def dispatch_now(self, i: int, ready: float) -> None:
        """Send trace row ``i`` at once (the caller applied due steps)."""
        self._dispatch(i, ready)

    def send(self, i: int, ready: float) -> None:
        """Send trace row ``i`` now (after due steps are applied); the client was ready at ``ready``."""
        wait = self.apply_due_steps()
        if wait is None:
            self._dispatch(i, ready)
        else:
            wait.callbacks.append(lambda _e: self._dispatch(i, ready))

    def skip(self, i: int, reason: str) -> None:
        """Row ``i`` is never sent (its session ended): recorded as ``skipped``."""
        rec = self._unsent(i, reason)
        rec.status = "skipped"
        self._write(i, rec)

    def _unsent(self, i: int, reason: str) -> RequestRecord:
        nan = math.nan
        trace, labels = self.trace, self.labels
        return RequestRecord(
            experiment_id=labels.experiment_id, point_id=labels.point_id, strategy=labels.strategy,
            seed=labels.seed, request_id=int(trace.request_id[i]),
            conversation_id=str(trace.conversation_id[i]), turn=int(trace.turn[i]), backend=-1,
            arrival_s=nan, dispatch_s=nan, first_token_s=nan, last_token_s=nan, finish_s=nan,
            input_len=int(trace.input_len[i]), cached_tokens=0, output_len=0,
            requested_output_len=int(trace.output_len[i]), num_preemptions=0,
            status="unfinished", error=reason, think_s=float(trace.think_s[i]))

    def _dispatch(self, i: int, ready: float) -> None:
        env, trace = self.env, self.trace
        now = env.now
        rid = int(trace.request_id[i])
        hashes = trace.hashes(i).tolist()
        shareable = self.shareable[i] if self.shareable is not None else -1
        info = RequestInfo(
            request_id=rid,
            input_len=int(trace.input_len[i]),
            arrival_s=now,
            block_hashes=hashes,
            session_id=str(trace.conversation_id[i]),
            turn=int(trace.turn[i]),
            num_shareable_blocks=shareable,
        )
        try:
            decision = self.router.dispatch(info, now)
        except NoHealthyBackend as exc:  # pragma: no cover - the simulator keeps all backends up
            self._write(i, self._record(i, None, None, now, status="rejected", error=str(exc),
                                        end=now, ready=ready))
            self.sessions.ended(i, False, now)
            return
        pending = _Pending(i, decision, now, ready)
        self._pending[rid] = pending
        reply = None
        if self._reply_counts is not None and self._reply_counts[i]:
            lo = int(trace.hash_offsets[self._reply_rows[i]]) + info.input_len // trace.block_size
            reply = trace.block_hashes[lo:lo + self._reply_counts[i]]
        req = EngineRequest(rid, info.input_len, int(trace.output_len[i]), hashes, arrival=now,
                            payload=pending, output_hashes=reply,
                            num_shareable=self.engine_shareable[i] if self.engine_shareable is not None else -1)
        driver = self.drivers[decision.backend]
        delay = self._delay[decision.backend]
        if driver.frontend is not None:
            # Through the backend's API server first (sim.frontend).
            if delay > 0:
                env.timeout(delay).callbacks.append(lambda _e, d=driver, r=req: self._front_end_admit(d, r))
            else:
                self._front_end_admit(driver, req)
        elif delay > 0:
            env.timeout(delay).callbacks.append(lambda _e, d=driver, r=req: d.submit(r))
        else:
            driver.submit(req)
        if self.config.timeout_s > 0:
            env.timeout(self.config.timeout_s).callbacks.append(
                lambda _e, d=driver, r=rid: self._deadline(d, r))

    def _front_end_admit(self, driver: BackendDriver, req: EngineRequest) -> None:
        """The request reaches the backend's API server: it enters the engine when its input job ends."""
        now = self.env.now
        wait = driver.frontend.admit(now, req.prompt_len) - now
        if wait > 0:
            self.env.timeout(wait).callbacks.append(lambda _e, d=driver, r=req: d.submit(r))
        else:
            driver.submit(req)

    def _scrape(self, index: int, now: float) -> tuple[ScrapedMetrics, float] | None:
        """What the router's latest scrape of backend ``index`` returned (None: has it)."""
        d = self.drivers[index]
        tick = d.latest_tick(now)
        if tick != tick or tick == self.router.last_scrape_time(index):
            return None
        return to_scraped(d.metrics_at_tick(tick)), tick

    def _deadline(self, driver: BackendDriver, rid: int) -> None:
        pending = self._pending.get(rid)
        if pending is None:
            return  # finished in time
        pending.deadline_hit = True
        if rid in driver.engine.requests:
            driver.abort(rid)
        # else: still on the network; ``submit`` records the timeout when it lands.

    # --- outcomes ------------------------------------------------------------------------
    def on_output(self, driver: BackendDriver, out: StepOutput, delivered: float | None = None) -> None:
        """Requests that finished; ``delivered``: when the front end handed out this completion's tokens."""
        delay = self._delay[driver.index]
        if out.first_tokens and self.router.wants_first_tokens:
            for req in out.first_tokens:
                self.router.first_token(req.id)
        if delivered is not None:
            for req in out.first_tokens:
                req.payload.first_out = delivered
            for req in out.finished:
                req.payload.last_out = delivered
                self._finish(req.id, req, "ok", delivered + delay)
            return
        for req in out.finished:
            self._finish(req.id, req, "ok", req.last_token_time + delay)

    def reject(self, req: EngineRequest, reason: str) -> None:
        self._finish(req.id, None, "rejected", self.env.now, error=reason)

    def timed_out(self, req: EngineRequest) -> None:
        self._finish(req.id, req, "timeout", self.env.now,
                     error=f"no complete response within {self.config.timeout_s:g} s")

    def _write_unfinished(self, rid: int, end: float) -> None:
        pending = self._pending[rid]
        req = None
        for d in self.drivers:
            req = d.engine.requests.get(rid)
            if req is not None:
                d.engine.close_itl(req)
                break
        self._finish(rid, req, "unfinished", end, error="still in flight when the run ended",
                     observe=False, client=False)

    def _finish(self, rid: int, req: EngineRequest | None, status: str, end: float, *,
                error: str = "", observe: bool = True, client: bool = True) -> None:
        pending = self._pending.pop(rid)
        rec = self._record(pending.index, req, pending.decision, pending.dispatch_s,
                           status=status, end=end, error=error, pending=pending,
                           ready=pending.ready_s)
        self._write(pending.index, rec)
        if client:  # the client learns at ``end`` how its request went (sim.sessions)
            self.sessions.ended(pending.index, status == "ok", end)
        if observe:
            self.router.finish(Outcome(
                request_id=rid,
                backend_index=pending.decision.backend,
                ok=rec.status == "ok",
                input_len=rec.input_len,
                output_len=rec.output_len,
                ttft_s=rec.first_token_s - rec.arrival_s,
                e2el_s=rec.last_token_s - rec.arrival_s,
            ))

    def _write(self, row: int, rec: RequestRecord) -> None:
        if self._done[row]:
            raise AssertionError(f"request {rec.request_id} recorded twice")
        self._done[row] = 1
        if self.sink is not None:
            self.sink(rec)
        else:
            self.records[row] = rec
        self._written += 1
        if self._written == len(self._done) and not self._all_done.triggered:
            self._all_done.succeed()

    def _record(self, i: int, req: EngineRequest | None, decision: Decision | None,
                dispatch_s: float, *, status: str, end: float, error: str = "",
                pending: _Pending | None = None, ready: float = math.nan) -> RequestRecord:
        trace = self.trace
        labels = self.labels
        delay = self._delay[decision.backend] if decision is not None else 0.0
        if req is not None:
            first = req.first_token_time + delay
            last = req.last_token_time + delay
            if pending is not None and pending.first_out == pending.first_out:
                # Tokens reach the client when the API server has processed their step
                # (sim.frontend); the engine's ITL runs stay those of its steps.
                first = pending.first_out + delay
                last = (pending.last_out if pending.last_out == pending.last_out else req.last_token_time) + delay
            out_len = req.num_output
            cached = max(req.num_cached, 0)
            preemptions = req.num_preemptions
            itl = req.itl
            itl_start, itl_step, itl_count = itl.start, itl.step, itl.count
        else:
            first = last = math.nan
            out_len = cached = preemptions = 0
            itl_start, itl_step, itl_count = [], [], []
        return RequestRecord(
            experiment_id=labels.experiment_id,
            point_id=labels.point_id,
            strategy=labels.strategy,
            seed=labels.seed,
            request_id=int(trace.request_id[i]),
            conversation_id=str(trace.conversation_id[i]),
            turn=int(trace.turn[i]),
            backend=decision.backend if decision is not None else -1,
            arrival_s=ready,
            dispatch_s=dispatch_s,
            first_token_s=first,
            last_token_s=last,
            finish_s=end,
            input_len=int(trace.input_len[i]),
            cached_tokens=cached,
            output_len=out_len,
            requested_output_len=int(trace.output_len[i]),
            num_preemptions=preemptions,
            status=status,
            error=error,
            itl_start=itl_start,
            itl_step=itl_step,
            itl_count=itl_count,
            router_inflight_requests=decision.inflight_requests if decision else 0,
            router_inflight_tokens=decision.inflight_tokens if decision else 0,
            router_running=decision.running if decision else math.nan,
            router_waiting=decision.waiting if decision else math.nan,
            router_kv_usage=decision.kv_usage if decision else math.nan,
            router_scrape_age_s=decision.scrape_age_s if decision else math.nan,
            router_prefix_hit_tokens=decision.prefix_hit_tokens if decision else 0,
            ready_s=ready,
            think_s=float(trace.think_s[i]),
        )


def simulate(trace: Trace, strategy: Strategy, config: ClusterConfig, *,
             labels: RunLabels = RunLabels(), seed: int = 0, share_analysis: bool = True,
             decode_group: bool = True, replies_in_prompts: bool = True,
             kv_events: Callable[[int, KVEvent, float], None] | None = None,
             sink: Callable[[RequestRecord], None] | None = None) -> SimResult:
    """Run one (trace, strategy, fleet) simulation to completion or the drain horizon.

    ``share_analysis=False`` tracks every prompt block individually (the way a
    live engine must) and ``decode_group=False`` schedules every running request
    one by one; results are identical, only slower. Tests compare them. With a
    ``sink``, each record is handed to it as its request ends and none is kept,
    so memory does not grow with the number of requests.

    ``replies_in_prompts``: a later turn's prompt contains the earlier replies as
    the trace says (a chat client sends back what it got), so it hits the blocks
    vLLM cached while generating them. False when the replies a server generates
    are not what later prompts contain, as with the lab's live load generator
    (its prompts carry the trace's tokens, not the server's): reply blocks are
    then cached under hashes no prompt has.

    ``kv_events(backend_index, event, time)`` receives each backend's KV-cache
    events (``routing.kv_events``) with the simulated time vLLM publishes them at,
    in order per backend. The events of a decode run arrive when the run is
    applied, after the times they carry; a consumer that must see them as they
    happen orders them by time (or runs ``mode = "exact"``).
    """
    return ClusterSim(trace, strategy, config, labels=labels, seed=seed,
                      share_analysis=share_analysis, decode_group=decode_group,
                      replies_in_prompts=replies_in_prompts, kv_events=kv_events, sink=sink).run()
