"""The router-side state of a live fleet: ``routing.Router`` plus scrapes and health.

The gateway and the load generator's client-side routing both route through
this one object, around the very ``routing.Router`` and strategy the simulator
uses (rule "pure decision" in docs/architecture.md): it feeds the router the
backends' ``/metrics`` scraped every ``scrape_interval_s`` (with the time each
scrape arrived, so strategies see its age), takes a backend out after ``eject_after`` consecutive failures
(``Router.set_healthy(False)``) and probes it back in through ``/health``.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import aiohttp

from live.transport.client import check_health, scrape_metrics
from routing import BackendSpec, Decision, Outcome, RequestInfo, Router, Strategy


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
        prefix_index_blocks: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
        on_health_change: Callable[[int, bool], None] | None = None,
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
        # The simulator sizes the router's prefix index to the engine's KV blocks; callers that
        # know them (profiling) pass them so both build the same index.
        extra = {} if prefix_index_blocks is None else {"prefix_index_blocks": prefix_index_blocks}
        specs = [BackendSpec(n, g, **extra) for n, g in zip(names, groups)]
        self.strategy = strategy
        self.track_prefix = strategy.needs_prefix_estimate if track_prefix is None else track_prefix
        self.router = Router(strategy, specs, block_size=block_size, track_prefix=self.track_prefix)
        self.block_size = block_size
        self.scrape_interval_s = scrape_interval_s
        self.scrape = strategy.needs_scrape if scrape is None else scrape
        self.eject_after = eject_after
        self.probe_interval_s = probe_interval_s
        self._clock = clock
        self._t0 = clock()
        self.failures = [0] * len(urls)
        self.ejections = [0] * len(urls)
        self.scrape_errors = [0] * len(urls)
        self._on_health_change = on_health_change
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []

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

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks.clear()

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

    def report(self, i: int, ok: bool) -> None:
        """Count a request's success or failure at backend ``i`` (ejection after N in a row)."""
        if ok:
            self.failures[i] = 0
            return
        self.failures[i] += 1
        if self.failures[i] >= self.eject_after and self.router.snapshots[i].healthy:
            self.router.set_healthy(i, False)
            self.ejections[i] += 1
            if self._on_health_change:
                self._on_health_change(i, False)

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
        while True:
            await asyncio.sleep(self.probe_interval_s)
            down = [i for i in range(len(self.urls)) if not self.healthy(i)]
            if not down:
                continue
            results = await asyncio.gather(
                *(check_health(self._session, self.urls[i], timeout_s=self.probe_interval_s)
                  for i in down))
            for i, ok in zip(down, results):
                if ok:
                    self.failures[i] = 0
                    self.router.set_healthy(i, True)
                    if self._on_health_change:
                        self._on_health_change(i, True)
