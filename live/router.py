"""The router-side state of a live fleet: ``routing.Router`` plus scrapes and health.

The gateway and the load generator's client-side routing both route through
this one object, around the very ``routing.Router`` and strategy the simulator
uses (rule "pure decision" in docs/architecture.md): it feeds the router the
backends' ``/metrics`` scraped every ``scrape_interval_s`` (with the time each
scrape arrived, so strategies see its age), takes a backend out after ``eject_after`` consecutive failures
(``Router.set_healthy(False)``) and probes it back in through ``/health``.

With ``health_interval_s`` the backends that take traffic are probed too: a backend
that stops answering (frozen, overloaded past ``probe_timeout_s``, its host gone)
is ejected after ``eject_after`` probes in a row fail, even when no request has
failed yet (requests to a frozen server just wait). ``reasons[i]`` says why a
backend last changed state; ``on_health_change(i, healthy)`` is told each change.

For strategies that route on an exact mirror of each backend's cache
(``Router.wants_kv_events``), it also follows every backend's KV-event stream
(``live.kv_events.subscriber``): from the sources given, or with ``kv_events="auto"``
from each backend's ``GET /kv_event_sources`` (vLLM 0.32 and the emulator serve it),
asked again until a backend answers.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import aiohttp

from live.kv_events.subscriber import BackendStream, EventSource, sources_from_info
from live.logfmt import kv
from live.transport.client import scrape_metrics
from routing import BackendSpec, Decision, Outcome, RequestInfo, Router, Strategy

log = logging.getLogger("live.kv_events")

#: How often backends without a known event source are asked again (seconds).
KV_DISCOVERY_INTERVAL_S = 2.0
KV_RESYNC_MODES = ("replay", "reset")


class LiveRouter:
    """Backends by URL, one ``Router``, and the background scrape and probe loops."""

    def __init__(
        self,
        urls: Sequence[str],
        strategy: Strategy,
        *,
        names: Sequence[str] | None = None,
        groups: Sequence[str] | None = None,
        block_size: int = 16,
        scrape_interval_s: float = 0.5,
        scrape: bool | None = None,
        eject_after: int = 3,
        probe_interval_s: float = 1.0,
        track_prefix: bool | None = None,
        prefix_index_blocks: int | Sequence[int] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        on_health_change: Callable[[int, bool], None] | None = None,
        health_interval_s: float = 0.0,
        probe_timeout_s: float | None = None,
        kv_events: str | Sequence[EventSource | None] | None = "auto",
        kv_events_resync: str = "replay",
    ) -> None:
        if not urls:
            raise ValueError("a fleet needs at least one backend URL")
        if scrape_interval_s <= 0:
            raise ValueError(f"scrape_interval_s must be > 0, got {scrape_interval_s}")
        if eject_after < 1:
            raise ValueError(f"eject_after must be >= 1, got {eject_after}")
        self.urls = [u.rstrip("/") for u in urls]
        names = list(names) if names is not None else [f"backend-{i}" for i in range(len(urls))]
        groups = list(groups) if groups is not None else ["default"] * len(urls)
        # The simulator sizes the router's prefix index to each engine's KV blocks; callers that
        # know them (profiling, live runs of a scenario) pass them, one for all or one per
        # backend, so both build the same index. Unknown: llm-d's default (DEFAULT_INDEX_BLOCKS).
        if prefix_index_blocks is None or isinstance(prefix_index_blocks, int):
            sizes = [prefix_index_blocks] * len(urls)
        else:
            sizes = list(prefix_index_blocks)
            if len(sizes) != len(urls):
                raise ValueError(f"prefix_index_blocks has {len(sizes)} sizes for {len(urls)} backends")
        specs = [BackendSpec(n, g) if k is None else BackendSpec(n, g, prefix_index_blocks=int(k))
                 for n, g, k in zip(names, groups, sizes)]
        self.strategy = strategy
        # Prompts are hashed for every strategy that reads the prefix of a backend's cache:
        # the approximate index, the exact mirror (KV events) and the work in flight.
        reads_prefix = (strategy.needs_prefix_estimate or strategy.needs_precise_prefix
                        or strategy.needs_active_work)
        self.track_prefix = reads_prefix if track_prefix is None else track_prefix
        self.router = Router(strategy, specs, block_size=block_size, track_prefix=self.track_prefix)
        self.block_size = block_size
        self.scrape_interval_s = scrape_interval_s
        self.scrape = strategy.needs_scrape if scrape is None else scrape
        self.eject_after = eject_after
        self.probe_interval_s = probe_interval_s
        if health_interval_s < 0:
            raise ValueError(f"health_interval_s must be >= 0 (0: off), got {health_interval_s}")
        self.health_interval_s = health_interval_s
        self.probe_timeout_s = probe_timeout_s if probe_timeout_s is not None else probe_interval_s
        self.probe_failures = [0] * len(urls)
        self.reasons = [""] * len(urls)
        self.last_probe_error = [""] * len(urls)
        self._clock = clock
        self._t0 = clock()
        self.failures = [0] * len(urls)
        self.ejections = [0] * len(urls)
        self.scrape_errors = [0] * len(urls)
        self._on_health_change = on_health_change
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []
        if kv_events_resync not in KV_RESYNC_MODES:
            raise ValueError(f"kv_events_resync must be one of {', '.join(KV_RESYNC_MODES)}, got "
                             f"{kv_events_resync!r}")
        if kv_events is not None and not isinstance(kv_events, str):
            kv_events = list(kv_events)
            if len(kv_events) != len(self.urls):
                raise ValueError(f"kv_events: {len(kv_events)} sources for {len(self.urls)} backends")
        elif kv_events not in (None, "auto", "off"):
            raise ValueError(f"kv_events must be 'auto', 'off' or one source per backend, got "
                             f"{kv_events!r}")
        #: Where each backend's KV events come from ("auto": asked of the backend).
        self.kv_events = None if kv_events == "off" else kv_events
        self.kv_events_resync = kv_events_resync
        #: One stream per backend that publishes (None until its source is known).
        self.kv_streams: list[BackendStream | None] = [None] * len(self.urls)
        #: Why a backend has no stream ("" while it is being looked for).
        self.kv_missing: list[str] = [""] * len(self.urls)

    def __len__(self) -> int:
        return len(self.urls)

    def now(self) -> float:
        """Seconds since the fleet was made: the time the router sees."""
        return self._clock() - self._t0

    def healthy(self, i: int) -> bool:
        return self.router.snapshots[i].healthy

    # --- lifecycle ---------------------------------------------------------------
    async def start(self, session: aiohttp.ClientSession) -> None:
        """Start scraping (if the strategy needs it) and probing, on ``session``."""
        self._session = session
        if self.scrape:
            await self.scrape_once()
            self._tasks.append(asyncio.create_task(self._scrape_loop()))
        self._tasks.append(asyncio.create_task(self._probe_loop()))
        if self.health_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._health_loop()))
        if self.kv_events is not None and self.router.wants_kv_events:
            await self._start_kv_events()

    async def stop(self) -> None:
        for stream in self.kv_streams:
            if stream is not None:
                stream.close()
        for t in self._tasks:
            t.cancel()
        # Every task is awaited: one that died of its own error is logged, never raised
        # here, where it would skip the others and lose the caller's finished work.
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for t, res in zip(self._tasks, results):
            if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                log.warning(kv("background_task_failed", task=t.get_name(), error=repr(res)))
        self._tasks.clear()

    # --- KV-cache events --------------------------------------------------------
    async def _start_kv_events(self) -> None:
        if self.kv_events == "auto":
            await asyncio.gather(*(self._discover(i) for i in range(len(self.urls))))
            if any(s is None and not self.kv_missing[i] for i, s in enumerate(self.kv_streams)):
                self._tasks.append(asyncio.create_task(self._discovery_loop()))
        else:
            for i, source in enumerate(self.kv_events):
                if source is None:
                    self.kv_missing[i] = "no source given"
                else:
                    self._follow(i, source)
        if self.kv_events_resync == "reset":
            self._tasks.append(asyncio.create_task(self._resync_loop()))

    def _follow(self, i: int, source: EventSource) -> None:
        stream = BackendStream(i, self.router.snapshots[i].name, source, self.router, self.now,
                               self.block_size)
        self.kv_streams[i] = stream
        self._tasks.append(asyncio.create_task(stream.run()))

    async def _discover(self, i: int) -> None:
        """Ask backend ``i`` where it publishes (``GET /kv_event_sources``)."""
        url = self.urls[i] + "/kv_event_sources"
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                body = await resp.json(content_type=None) if resp.status == 200 else None
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
            log.info(kv("kv_events_discovery_pending", backend=self.router.snapshots[i].name,
                        reason=f"{type(exc).__name__}: {exc}", note="asked again"))
            return
        name = self.router.snapshots[i].name
        if status != 200:
            self.kv_missing[i] = f"/kv_event_sources answered HTTP {status}"
        else:
            try:
                source = sources_from_info(body, self.urls[i])
            except (ValueError, KeyError, TypeError) as exc:
                self.kv_missing[i] = str(exc)
            else:
                if source is None:
                    self.kv_missing[i] = "the backend publishes no KV events"
                else:
                    self._follow(i, source)
                    return
        log.warning(kv("kv_events_unavailable", backend=name, reason=self.kv_missing[i],
                       action="approximate index for this backend (counted as precise fallbacks)"))

    async def _discovery_loop(self) -> None:
        while any(s is None and not self.kv_missing[i] for i, s in enumerate(self.kv_streams)):
            await asyncio.sleep(KV_DISCOVERY_INTERVAL_S)
            await asyncio.gather(*(self._discover(i) for i, s in enumerate(self.kv_streams)
                                   if s is None and not self.kv_missing[i]))

    async def _resync_loop(self) -> None:
        """``kv_events_resync = "reset"``: a backend whose mirror cannot be trusted and
        cannot be repaired by replay is asked to reset its prefix cache (vLLM then
        publishes ``AllBlocksCleared``); vLLM refuses while blocks are in use, so it is
        asked again each second until the mirror is trusted."""
        while True:
            await asyncio.sleep(1.0)
            for i, stream in enumerate(self.kv_streams):
                if (stream is None or stream.disabled or stream.stats.batches == 0
                        or stream.replaying or self.router.kv_events_trusted(i)):
                    continue
                stream.stats.resets_requested += 1
                try:
                    async with self._session.post(self.urls[i] + "/reset_prefix_cache",
                                                  timeout=aiohttp.ClientTimeout(total=5)) as resp:
                        await resp.read()
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    pass

    # --- routing -----------------------------------------------------------------
    def dispatch(self, request: RequestInfo, exclude: Sequence[int] = ()) -> Decision:
        """Choose a healthy backend not in ``exclude`` (a retry's failed ones).

        Raises ``routing.NoHealthyBackend`` when none is left. Excluded backends
        are hidden from this one decision only (no await happens in between, so
        no other request can see them hidden).
        """
        router = self.router
        hidden = [i for i in exclude if router.snapshots[i].healthy]
        for i in hidden:
            router.set_healthy(i, False)
        try:
            return router.dispatch(request, self.now())
        finally:
            for i in hidden:
                router.set_healthy(i, True)

    def finish(self, outcome: Outcome) -> None:
        self.router.finish(outcome)

    def report(self, i: int, ok: bool, reason: str = "") -> None:
        """Count a request's success or failure at backend ``i`` (ejection after N in a row)."""
        if ok:
            self.failures[i] = 0
            return
        self.failures[i] += 1
        if self.failures[i] >= self.eject_after and self.router.snapshots[i].healthy:
            self._set(i, False, f"{self.failures[i]} requests in a row failed"
                                + (f" (last: {reason})" if reason else ""))

    def _set(self, i: int, healthy: bool, reason: str) -> None:
        self.router.set_healthy(i, healthy)
        self.reasons[i] = reason
        if healthy:
            self.failures[i] = 0
            self.probe_failures[i] = 0
        else:
            self.ejections[i] += 1
        if self._on_health_change:
            self._on_health_change(i, healthy)

    async def probe(self, i: int, timeout_s: float) -> str | None:
        """``GET /health`` of backend ``i``: None when it answers 200, else what went wrong."""
        try:
            async with self._session.get(self.urls[i] + "/health",
                                         timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                await resp.read()
                return None if resp.status == 200 else f"/health answered HTTP {resp.status}"
        except asyncio.TimeoutError:
            return f"no answer to /health within {timeout_s:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return f"/health failed: {type(exc).__name__}: {exc}"

    # --- background loops ------------------------------------------------------------
    async def scrape_once(self) -> None:
        """Scrape every healthy backend now, concurrently."""
        idx = [i for i in range(len(self.urls)) if self.healthy(i)]
        await asyncio.gather(*(self._scrape(i) for i in idx))

    async def _scrape(self, i: int) -> None:
        try:
            metrics = await scrape_metrics(self._session, self.urls[i],
                                           timeout_s=max(self.scrape_interval_s, 1.0))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
            self.scrape_errors[i] += 1
            return
        self.router.record_scrape(i, metrics, self.now())

    async def _scrape_loop(self) -> None:
        interval = self.scrape_interval_s
        next_at = self._clock() + interval
        while True:
            await asyncio.sleep(max(0.0, next_at - self._clock()))
            next_at += interval
            if next_at < self._clock():  # fell behind: skip missed ticks, do not burst
                next_at = self._clock() + interval
            await self.scrape_once()

    async def _probe_loop(self) -> None:
        """Ejected backends: probed every ``probe_interval_s`` until one answers."""
        while True:
            await asyncio.sleep(self.probe_interval_s)
            down = [i for i in range(len(self.urls)) if not self.healthy(i)]
            if not down:
                continue
            results = await asyncio.gather(*(self.probe(i, self.probe_timeout_s) for i in down))
            for i, error in zip(down, results):
                self.last_probe_error[i] = error or ""
                if error is None and not self.healthy(i):
                    self._set(i, True, "answered /health again")

    async def _health_loop(self) -> None:
        """Backends taking traffic: probed every ``health_interval_s``; ``eject_after``
        failed probes in a row eject one (a frozen server fails no request by itself)."""
        while True:
            await asyncio.sleep(self.health_interval_s)
            up = [i for i in range(len(self.urls)) if self.healthy(i)]
            if not up:
                continue
            results = await asyncio.gather(*(self.probe(i, self.probe_timeout_s) for i in up))
            for i, error in zip(up, results):
                self.last_probe_error[i] = error or ""
                if error is None:
                    self.probe_failures[i] = 0
                    continue
                self.probe_failures[i] += 1
                if self.probe_failures[i] >= self.eject_after and self.healthy(i):
                    self._set(i, False, f"{self.probe_failures[i]} health probes in a row "
                                        f"failed (last: {error})")
