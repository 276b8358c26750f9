"""The simulator's engine, stepped on the wall clock by one asyncio task.

``EngineDriver`` owns a ``sim.engine.Engine`` (the very class the simulator
steps on SimPy's clock: rule "one engine model, two clocks" in
docs/architecture.md) and runs it one step at a time: plan the step, sleep until the step's end, complete it, hand each request its new tokens.
Steps are timed against absolute deadlines, so timer lateness does not add up
over a long decode: step k+1 starts when step k was due to end, not when the
sleep happened to return (unless the loop fell behind by more than
``RESYNC_S``, in which case it restarts from now: an overloaded emulator is a
slow one, as a real server would be).

Requests arriving during a step join at the next one, as in vLLM. Aborting a
request (its client went away) frees its KV blocks at once.

A profile with an API-server front end (``sim.frontend``, fitted by
``calibrate``) is served the way the simulator serves it: a request enters the
engine when the front end's input job for it ends, and a step's tokens are
handed out when its output job ends, on the same FIFO server model.
"""
from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from live.kv_events.engine_events import EngineEvents
from routing.kv_events import AllBlocksCleared
from sim.engine import Engine, EngineConfig, EngineMetrics, RequestTooLong
from sim.frontend import FrontEnd
from sim.latency import LatencyProfile
from sim.request import EngineRequest, Status
from workload.hashing import block_hash_chain

#: How far behind schedule the stepping loop may fall before it stops catching up.
RESYNC_S = 0.05


class RequestState:
    """Driver-side view of one request: where its tokens go, and its timings (seconds).

    After each step that gives the request a token, the driver calls
    ``sink(state, finished)`` at once, in the stepping loop (the emulator writes
    the SSE chunk to the client's socket right there: no queue, no task switch).
    Times are on the driver's clock (``EngineDriver.now``).
    """

    __slots__ = ("engine_req", "sink", "arrival", "scheduled", "first_token", "last_token",
                 "finished_at", "output", "stop_at", "cached", "kv_keys")

    def __init__(self, engine_req: EngineRequest, stop_at: int, arrival: float,
                 sink: Callable[[RequestState, bool], None]) -> None:
        self.engine_req = engine_req
        self.sink = sink
        self.arrival = arrival
        self.scheduled = math.nan
        self.first_token = math.nan
        self.last_token = math.nan
        self.finished_at = math.nan
        self.output = 0
        #: The number of tokens after which the request stops (max_tokens or pseudo-EOS).
        self.stop_at = stop_at
        self.cached = 0
        #: Block hashes whose token ids the KV-event sink keeps for this request (or None).
        self.kv_keys: list[int] | None = None

    @property
    def id(self) -> int:
        return self.engine_req.id


class StepObserver:
    """Hooks the driver calls after each completed step (metrics subclass it)."""

    def on_first_token(self, state: RequestState, t: float) -> None:
        """``state`` got its first token at ``t`` (before ``state.last_token`` moves)."""

    def on_token(self, state: RequestState, t: float, n: int) -> None:
        """``state`` got ``n`` more tokens at ``t`` (``state.last_token`` is the previous time)."""

    def on_finish(self, state: RequestState, t: float) -> None:
        """``state`` finished (max_tokens or pseudo-EOS) at ``t``."""

    def on_step(self, prompt_tokens: int, gen_tokens: int) -> None:
        """A step completed: prompt tokens of requests that got their first token, tokens out."""


def scaled_profile(profile: LatencyProfile, slowdown: float) -> LatencyProfile:
    """The profile with every step time multiplied by ``slowdown`` (fault injection)."""
    if slowdown == 1.0:
        return profile
    return replace(profile, model=profile.model.scaled(slowdown))


class EngineDriver:
    """Steps one ``Engine`` in real time and hands each request its tokens as they come."""

    def __init__(self, profile: LatencyProfile, config: EngineConfig, *, seed: int = 0,
                 slowdown: float = 1.0, observer: StepObserver | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 kv_events: EngineEvents | None = None) -> None:
        if not slowdown > 0:
            raise ValueError(f"slowdown must be > 0, got {slowdown}")
        self.base_profile = profile
        self.profile = scaled_profile(profile, slowdown)
        self.config = config
        self.seed = seed
        #: The KV-event sink (``live.kv_events``): the engine's events, published per step.
        self.kv_events = kv_events
        self.engine = self._new_engine()
        self.observer = observer or StepObserver()
        self._clock = clock
        self._t0 = clock()
        self._next_id = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._after_abort: EngineMetrics | None = None
        self.steps = 0
        #: Seconds the loop woke up after a step's due end, summed (a health figure).
        self.total_lateness = 0.0
        self.frontend = FrontEnd(profile.front_end) if profile.front_end.enabled else None
        #: Requests in the front end's input queue, not yet in the engine (by id).
        self._entering: dict[int, EngineRequest] = {}
        #: Requests aborted while tokens of theirs may still be in the front end's output queue.
        self._gone: set[int] = set()
        #: Steps whose tokens wait for the front end's output job: (time it ends, tokens), in order.
        self._outbox: deque[tuple[float, list]] = deque()

    def _new_engine(self) -> Engine:
        return Engine(self.config, self.profile.model, jitter_cv=self.base_profile.jitter_cv,
                      seed=self.seed, kv_events=self.kv_events)

    def now(self) -> float:
        """Seconds since the driver was made (the engine's clock)."""
        return self._clock() - self._t0

    @property
    def block_size(self) -> int:
        return self.config.block_size

    @property
    def max_tokens_total(self) -> int:
        """KV capacity in tokens: no prompt plus output may exceed it."""
        return self.engine.max_tokens_total

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def set_slowdown(self, slowdown: float) -> None:
        """Scale step times from the next step on (fault injection at run time)."""
        if not slowdown > 0:
            raise ValueError(f"slowdown must be > 0, got {slowdown}")
        self.profile = scaled_profile(self.base_profile, slowdown)
        self.engine.latency = self.profile.model

    def reset_prefix_cache(self) -> bool:
        """vLLM's ``/reset_prefix_cache``: forget every cached block; False while blocks are in use."""
        ok = self.engine.reset_prefix_cache()
        if ok and self.kv_events is not None:
            self.kv_events.flush()
        return ok

    def reset(self) -> None:
        """Start over with an empty engine (cold prefix cache, zero counters).

        Only while idle: runs of different strategies against the same emulators
        each start from the same state. Raises ``RuntimeError`` with work in hand.
        """
        if self.engine.has_work:
            raise RuntimeError(
                f"cannot reset: {len(self.engine.running)} running and "
                f"{len(self.engine.waiting)} waiting requests")
        if self._entering:
            raise RuntimeError(f"cannot reset: {len(self._entering)} requests in the front end")
        self.engine = self._new_engine()
        if self.kv_events is not None:
            # A new engine starts with an empty cache: vLLM's reset says so with
            # AllBlocksCleared, and subscribers trust their mirror again.
            self.kv_events(AllBlocksCleared())
            self.kv_events.flush()
        self._after_abort = None
        if self.frontend is not None:
            self.frontend = FrontEnd(self.base_profile.front_end)
            self._gone.clear()

    # --- requests ----------------------------------------------------------------
    def submit(self, token_ids: Sequence[int], max_tokens: int,
               sink: Callable[[RequestState, bool], None], stop_at: int | None = None,
               hashes: np.ndarray | None = None) -> RequestState:
        """Queue a request; raises ``sim.engine.RequestTooLong`` if it can never fit.

        ``sink(state, finished)`` is called after every step that gives it a token.
        ``hashes``: the prompt's block hash chain when already computed (off the loop).
        """
        rid = self._next_id
        self._next_id += 1
        if hashes is None:
            hashes = block_hash_chain(token_ids, self.config.block_size)
        req = EngineRequest(rid, len(token_ids), max_tokens, prompt_hashes=hashes,
                            arrival=self.now())
        state = RequestState(req, max_tokens if stop_at is None else stop_at, req.arrival, sink)
        req.payload = state
        if self.kv_events is not None and len(hashes):
            state.kv_keys = self.kv_events.track(np.asarray(token_ids), hashes)
        if self.frontend is None:
            try:
                self.engine.add_request(req, req.arrival)
            except RequestTooLong:
                self._release(state)
                raise
            self._wake.set()
            return state
        if req.prompt_len + req.max_tokens > self.max_tokens_total:
            self._release(state)
            raise RequestTooLong(f"request {rid} needs {req.prompt_len + req.max_tokens} tokens of KV "
                                 f"but the engine holds {self.max_tokens_total}")
        wait = self.frontend.admit(req.arrival, req.prompt_len) - self.now()
        self._entering[rid] = req
        asyncio.get_running_loop().call_later(max(wait, 0.0), self._enter, rid)
        return state

    def _enter(self, rid: int) -> None:
        """The front end's input job for the request ended: it reaches the engine."""
        req = self._entering.pop(rid, None)
        if req is not None:  # else aborted while in the front end
            self.engine.add_request(req, self.now())
            self._wake.set()

    def abort(self, state: RequestState) -> bool:
        """Remove a request that has not finished (frees its KV blocks)."""
        if self._entering.pop(state.id, None) is not None:
            self._release(state)
            return True
        if self.engine.abort(state.id) is None:
            return False
        self._release(state)
        if self._outbox:
            self._gone.add(state.id)
        self._publish()
        return True

    @property
    def published(self) -> EngineMetrics:
        """What ``/metrics`` shows: the engine's state after its last step or abort."""
        return self._after_abort if self._after_abort is not None else self.engine.published

    def _publish(self) -> None:
        """Publish the state after a change outside a step (an abort).

        vLLM's gauges drop when a request is aborted even if no step follows; the
        engine publishes only when a step completes, so the driver keeps this view
        until the next one.
        """
        self._after_abort = self.engine.current_metrics()

    # --- the stepping loop ---------------------------------------------------------
    async def _run(self) -> None:
        obs = self.observer
        due: float | None = None  # when the previous step was due to end
        eos = False
        while True:
            if not self.engine.has_work:
                self._wake.clear()
                await self._wake.wait()
                due = None
            engine = self.engine  # after a wait: reset() may have replaced it
            now = self.now()
            start = due if due is not None and now - due < RESYNC_S else now
            plan = engine.plan(1)
            if plan is None:
                continue
            if self.frontend is not None:
                self.frontend.track(start, plan)
            for req, _ in plan.scheduled:
                st = req.payload
                if st.scheduled != st.scheduled:  # NaN: first time scheduled
                    st.scheduled = start
            end = start + plan.duration
            delay = end - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            woke = self.now()
            self.total_lateness += max(0.0, woke - end)
            out = engine.complete(plan, 1, start)
            if self.kv_events is not None:
                self.kv_events.flush()  # vLLM publishes a step's events with its output
            self._after_abort = None
            self.steps += 1
            due = end
            prompt_tokens = 0
            emitted = []
            for req in out.emitted:
                n = req.num_output
                if n == 1:
                    prompt_tokens += req.prompt_len
                done = req.status == Status.FINISHED  # reached max_tokens
                if not done and n >= req.payload.stop_at:
                    # Pseudo-EOS before max_tokens: free it as vLLM does on EOS.
                    engine.abort(req.id)
                    eos = True
                    done = True
                emitted.append((req, n, done))
            if eos:
                self._publish()
                eos = False
            obs.on_step(prompt_tokens, len(emitted))
            if self.frontend is None:
                self._hand_out(emitted, woke)
            else:
                # The tokens reach their clients when the front end has processed this step.
                at = self.frontend.complete(1)
                self._outbox.append((at, emitted))
                if len(self._outbox) == 1:
                    asyncio.get_running_loop().call_later(max(0.0, at - self.now()), self._deliver)

    def _deliver(self) -> None:
        """Hand out, in order, every step whose output job has ended (FIFO: their times never decrease)."""
        box = self._outbox
        while box and box[0][0] <= self.now():
            at, emitted = box.popleft()
            self._hand_out(emitted, at)
        if box:
            asyncio.get_running_loop().call_later(max(0.0, box[0][0] - self.now()), self._deliver)
        else:
            self._gone.clear()

    def _hand_out(self, emitted: list, t: float) -> None:
        """Give each request of a step its token at ``t``: observers first, then its sink."""
        obs = self.observer
        gone = self._gone
        for req, n, done in emitted:
            st = req.payload
            if gone and req.id in gone:
                continue  # its client went away after this step
            if st.output == 0:
                st.first_token = t
                st.cached = max(req.num_cached, 0)
                obs.on_first_token(st, t)
            else:
                obs.on_token(st, t, 1)
            st.output = n
            st.last_token = t
            if done:
                self._finish(st, t)
            else:
                st.sink(st, False)

    def _release(self, st: RequestState) -> None:
        if st.kv_keys is not None:
            self.kv_events.release(st.kv_keys)
            st.kv_keys = None

    def _finish(self, st: RequestState, t: float) -> None:
        self._release(st)
        st.finished_at = t
        self.observer.on_finish(st, t)
        st.sink(st, True)
